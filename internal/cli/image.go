package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images on a depot server"}
	cmd.AddCommand(newImageLsCmd(g), newImageCreateCmd(g), newImageShowCmd(g), newImageUpdateCmd(g),
		newImageCloneCmd(g), newImageRmCmd(g), newImagePushCmd(g), newImageHistoryCmd(g))
	return cmd
}

func fmtTime(f float64) string {
	if f == 0 {
		return "-"
	}
	return api.FromUnixFloat(f).Local().Format(time.DateTime)
}

func shortDigest(s string) string {
	if len(s) > 19 {
		return s[:19]
	}
	return s
}

func newImageLsCmd(g *globals) *cobra.Command {
	var showUIDs bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			imgs, err := c.ListImages(cmd.Context())
			if err != nil {
				return err
			}
			return g.emit(imgs, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				if showUIDs {
					fmt.Fprint(tw, "UID\t")
				}
				fmt.Fprintln(tw, "NAME\tFMT\tSIZE\tDIGEST\tFROZEN\tMODIFIED")
				for _, img := range imgs {
					if showUIDs {
						fmt.Fprint(tw, inert(img.UID)+"\t")
					}
					f, size, d := "-", "-", "-"
					if img.Content != nil {
						f, size, d = inert(img.Content.Fmt), humanBytes(img.Content.Size), inert(shortDigest(img.Content.Chksum))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", inert(img.Name), f, size, d, img.Frozen, fmtTime(img.LastModified))
				}
				tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&showUIDs, "show-uids", false, "show each image's UID")
	return cmd
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func newImageCreateCmd(g *globals) *cobra.Command {
	var desc, parent, distro string
	var frozen bool
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an empty image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			req := api.CreateImageRequest{Name: args[0]}
			f := cmd.Flags()
			if f.Changed("description") {
				req.Description = &desc
			}
			if f.Changed("parent") {
				req.Parent = &parent
			}
			if f.Changed("distro") {
				req.Distro = &distro
			}
			if f.Changed("frozen") {
				req.Frozen = &frozen
			}
			uid, err := c.CreateImage(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.emit(map[string]string{"uid": uid, "name": args[0]}, func(w io.Writer) {
				fmt.Fprintf(w, "created %s (uid %s)\n", inert(args[0]), inert(uid))
			})
		},
	}
	cmd.Flags().StringVar(&desc, "description", "", "description")
	cmd.Flags().StringVar(&parent, "parent", "", "parent image (UID or name)")
	cmd.Flags().StringVar(&distro, "distro", "", "distribution")
	cmd.Flags().BoolVar(&frozen, "frozen", false, "create frozen")
	return cmd
}

func newImageShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME|UID",
		Short: "Show an image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			img, err := c.GetImage(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.emit(img, func(w io.Writer) { printImage(w, img) })
		},
	}
}

func printImage(w io.Writer, img api.Image) {
	deref := func(p *string) string {
		if p == nil {
			return "-"
		}
		return inert(*p)
	}
	fmt.Fprintf(w, "name:          %s\nuid:           %s\ndescription:   %s\nfrozen:        %v\nparent:        %s\ndistro:        %s\n",
		inert(img.Name), inert(img.UID), inert(img.Description), img.Frozen, deref(img.Parent), deref(img.Distro))
	fmt.Fprintf(w, "last modified: %s by %s\n", fmtTime(img.LastModified), inert(img.LastModifiedBy))
	if img.Content == nil {
		fmt.Fprintln(w, "content:       none")
		return
	}
	c := img.Content
	fmt.Fprintf(w, "content:       %s, %s (%d bytes)\n  chksum:      %s\n  uploaded:    %s by %s\n",
		inert(c.Fmt), humanBytes(c.Size), c.Size, inert(c.Chksum), fmtTime(c.MTime), inert(c.LastModifiedBy))
	fmt.Fprintf(w, "revisions:     %d retained\n", len(img.History))
}

func newImageUpdateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "update NAME|UID key=value...",
		Short: "Change image fields: name, description, frozen, parent, distro",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := parsePatch(args[1:])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			img, err := c.UpdateImage(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return g.emit(img, func(w io.Writer) { printImage(w, img) })
		},
	}
}

// parsePatch turns key=value arguments into a patch.
func parsePatch(kvs []string) (api.PatchImageRequest, error) {
	var req api.PatchImageRequest
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return req, usageError{fmt.Errorf("%q: want key=value", kv)}
		}
		switch k {
		case "name":
			req.Name = &v
		case "description":
			req.Description = &v
		case "parent":
			req.Parent = &v
		case "distro":
			req.Distro = &v
		case "frozen":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return req, usageError{fmt.Errorf("frozen=%q: want true or false", v)}
			}
			req.Frozen = &b
		default:
			return req, usageError{fmt.Errorf("unknown field %q: use name, description, frozen, parent or distro", k)}
		}
	}
	return req, nil
}

func newImageCloneCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "clone SRC NEW",
		Short: "Create NEW sharing SRC's content (no copy)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			uid, err := c.CloneImage(cmd.Context(), args[0], api.CloneRequest{Name: args[1]})
			if err != nil {
				return err
			}
			return g.emit(map[string]string{"uid": uid, "name": args[1]}, func(w io.Writer) {
				fmt.Fprintf(w, "cloned %s to %s (uid %s)\n", inert(args[0]), inert(args[1]), inert(uid))
			})
		},
	}
}

func newImageRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME|UID",
		Short: "Delete an image (admin); its content is collected once unreferenced",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteImage(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.emit(map[string]string{"deleted": args[0]}, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", inert(args[0])) })
		},
	}
}

func newImageHistoryCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "history NAME|UID",
		Short: "List retained content revisions, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			revs, err := c.History(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.emit(revs, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "\tDIGEST\tFMT\tSIZE\tUPLOADED\tBY\tMESSAGE")
				for _, r := range revs {
					cur := ""
					if r.Current {
						cur = "*"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cur, inert(r.Chksum), inert(r.Fmt), humanBytes(r.Size), fmtTime(r.MTime), inert(r.By), inert(r.Message))
				}
				tw.Flush()
			})
		},
	}
}

type pushOptions struct {
	message string
	ifMatch string
	digest  string
	create  bool
}

func newImagePushCmd(g *globals) *cobra.Command {
	o := &pushOptions{}
	cmd := &cobra.Command{
		Use:   "push NAME|UID FILE",
		Short: "Upload FILE as the image's new content (created if absent)",
		Long: `Upload FILE as the image's new content. The file is hashed while it streams and
the digest is declared to the server, which stores nothing unless the bytes
match. The image is created first when it does not exist (see --create).

With --digest the digest is declared up front (from a checksum file, a build
system, or an earlier push) and the client does not hash the file at all; the
server still hashes every byte and refuses the push, storing nothing, if the
file does not match.

When the server says a digest declared up front saves it work (GET
/api/v1/server: prefer_declared_digest, true with S3 blobs, where it avoids
a server-side copy of the whole blob), push hashes the file first and then
declares it.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return runPush(cmd, g, c, o, args[0], args[1])
		},
	}
	cmd.Flags().StringVarP(&o.message, "message", "m", "", "revision message")
	cmd.Flags().StringVar(&o.ifMatch, "if-match", "", "only upload if the current content is this digest")
	cmd.Flags().StringVar(&o.digest, "digest", "", "the file's known sha256 (sha256:<hex> or <hex>); skips hashing on the client")
	cmd.Flags().BoolVar(&o.create, "create", true, "create the image when it does not exist")
	return cmd
}

func runPush(cmd *cobra.Command, g *globals, c *client.Client, o *pushOptions, ref, file string) error {
	ctx := cmd.Context()
	f, err := os.Open(file)
	if err != nil {
		return usageError{err}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return usageError{fmt.Errorf("%s is not a regular file", file)}
	}
	var base digest.Digest
	if o.ifMatch != "" {
		base = digest.Digest(o.ifMatch)
		if err := base.Validate(); err != nil {
			return usageError{fmt.Errorf("--if-match: %v", err)}
		}
	}
	var declared digest.Digest
	if o.digest != "" {
		declared = digest.Digest(o.digest)
		if !strings.Contains(o.digest, ":") {
			declared = digest.NewDigestFromEncoded(digest.SHA256, o.digest)
		}
		if contenthash.Validate(declared) != nil {
			return usageError{fmt.Errorf("--digest %q: want sha256:<64 hex>", o.digest)}
		}
	}
	if _, err := c.GetImage(ctx, ref); errors.Is(err, errdefs.ErrNotFound) && o.create {
		if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: ref}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	start := time.Now()
	tty := !g.json && isTerminal(g.stderr)
	if declared == "" {
		// With S3 blobs a digest declared up front saves the server a copy
		// of the whole blob, which costs more than hashing the file here
		// first. A server without GET /server simply gets a trailer.
		if si, err := c.ServerInfo(ctx); err == nil && si.PreferDeclaredDigest {
			if declared, err = hashFile(f, fi.Size(), tty, g.stderr); err != nil {
				return fmt.Errorf("hash %s: %w", file, err)
			}
		}
	}
	var body io.Reader = f
	if tty {
		bar := progressbar.DefaultBytes(fi.Size(), "push "+ref)
		body = progressFile{f: f, bar: bar}
		defer bar.Finish()
	}
	info, err := c.PushContent(ctx, ref, body, fi.Size(), client.PushOptions{IfMatch: base, Message: o.message, Digest: declared})
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	return g.emit(info, func(w io.Writer) {
		fmt.Fprintf(w, "pushed %s: %s (%s, %s) in %.1fs, %.0f MB/s\n", inert(ref), inert(info.Chksum), inert(info.Fmt), humanBytes(info.Size), secs, float64(info.Size)/secs/1e6)
	})
}

// progressFile shows the reads of f on bar, and keeps f's ReadAt and Seek:
// the client resends a push from the start to another head when the first
// one drops it, and then the bar starts over too.
type progressFile struct {
	f   *os.File
	bar *progressbar.ProgressBar
}

func (p progressFile) Read(b []byte) (int, error) {
	n, err := p.f.Read(b)
	p.bar.Add(n)
	return n, err
}

func (p progressFile) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.f.ReadAt(b, off)
	p.bar.Set64(off + int64(n))
	return n, err
}

func (p progressFile) Seek(off int64, whence int) (int64, error) { return p.f.Seek(off, whence) }

// hashFile is the sha256 of f, read from the start; f is left at the start
// again. If the file changes before it is sent, the server sees bytes that
// do not match and stores nothing.
func hashFile(f *os.File, size int64, tty bool, stderr io.Writer) (digest.Digest, error) {
	var r io.Reader = f
	if tty {
		bar := progressbar.NewOptions64(size, progressbar.OptionSetDescription("hash"), progressbar.OptionSetWriter(stderr),
			progressbar.OptionShowBytes(true), progressbar.OptionClearOnFinish())
		r = io.TeeReader(f, bar)
		defer bar.Finish()
	}
	dg := digest.SHA256.Digester()
	if _, err := io.CopyBuffer(dg.Hash(), r, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	return dg.Digest(), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

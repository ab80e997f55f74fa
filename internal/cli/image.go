package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/depot-images/depot/api"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images on a depot server"}
	cmd.AddCommand(newImageLsCmd(g), newImageCreateCmd(g), newImageShowCmd(g), newImageUpdateCmd(g),
		newImageCloneCmd(g), newImageRmCmd(g), newImagePushCmd(g), newImageHistoryCmd(g), newImageCaptureCmd(g))
	return cmd
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
	fmt.Fprintf(w, "last modified: %s by %s%s\n", fmtTime(img.LastModified), inert(img.LastModifiedBy), onHead(img.LastModifiedOn))
	if img.Content == nil {
		fmt.Fprintln(w, "content:       none")
		return
	}
	c := img.Content
	fmt.Fprintf(w, "content:       %s, %s (%d bytes)\n  chksum:      %s\n  uid:         %s\n  uploaded:    %s by %s%s\n",
		inert(c.Fmt), humanBytes(c.Size), c.Size, inert(c.Chksum), inert(c.UID), fmtTime(c.LastModified), inert(c.LastModifiedBy), onHead(c.LastModifiedOn))
	fmt.Fprintf(w, "revisions:     %d retained\n", len(img.History))
}

// onHead names the head a change was made on, when the record says.
func onHead(head string) string {
	if head == "" {
		return ""
	}
	return " on " + inert(head)
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
				fmt.Fprintln(tw, "\tDIGEST\tFMT\tSIZE\tUPLOADED\tBY\tMESSAGE\tMADE BY")
				for _, r := range revs {
					cur := ""
					if r.Current {
						cur = "*"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cur, inert(r.Chksum), inert(r.Fmt), humanBytes(r.Size), fmtTime(r.MTime), inert(r.By), inert(r.Message), madeBy(r.Provenance))
				}
				tw.Flush()
			})
		},
	}
}

// madeBy is a revision's provenance in one line: "capture of HOST:ROOT
// (FORMAT, COMPRESS, N excludes) at TIME", every string from the server
// printed inert.
func madeBy(p *api.Provenance) string {
	if p == nil {
		return "-"
	}
	s := fmt.Sprintf("%s of %s:%s (%s, %s, excludes: %s", inert(p.Method), inert(p.Host), inert(p.Root), inert(p.Format), inert(p.Compress), inertList(p.Excludes))
	if len(p.Emptied) > 0 {
		s += "; emptied: " + inertList(p.Emptied)
	}
	if p.ChangedFiles > 0 {
		s += fmt.Sprintf("; %d changed while read", p.ChangedFiles)
	}
	return s + ") at " + fmtTime(p.Time)
}

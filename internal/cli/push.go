package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
)

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
	info, err := uploadFile(ctx, g, c, ref, f, fi.Size(), client.PushOptions{IfMatch: base, Message: o.message, Digest: declared})
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	return g.emit(info, func(w io.Writer) {
		fmt.Fprintf(w, "pushed %s: %s (%s, %s) in %.1fs, %.0f MB/s\n", inert(ref), inert(info.Chksum), inert(info.Fmt), humanBytes(info.Size), secs, float64(info.Size)/secs/1e6)
	})
}

// uploadFile is the push path every upload of a local file takes (image
// push, image capture): f (size bytes) is sent as ref's new content with
// its digest declared, up front when the server prefers that (hashing f
// first) or else in a trailer as it streams, through the client's failover
// and with a progress bar on a terminal.
func uploadFile(ctx context.Context, g *globals, c *client.Client, ref string, f *os.File, size int64, o client.PushOptions) (api.ContentInfo, error) {
	if o.Digest == "" {
		// With S3 blobs a digest declared up front saves the server a copy
		// of the whole blob, which costs more than hashing the file here
		// first. A server without GET /server simply gets a trailer.
		if si, err := c.ServerInfo(ctx); err == nil && si.PreferDeclaredDigest {
			d, err := hashFile(f, g.hashBar(size))
			if err != nil {
				return api.ContentInfo{}, fmt.Errorf("hash %s: %w", f.Name(), err)
			}
			o.Digest = d
		}
	}
	bar := g.newProgress("push " + ref)
	defer bar.finish()
	return c.PushContent(ctx, ref, bar.file(f, size), size, o)
}

// hashFile is the sha256 of f, read from the start; f is left at the start
// again. If the file changes before it is sent, the server sees bytes that
// do not match and stores nothing. bar, when not nil, shows the reads.
func hashFile(f *os.File, bar *progressbar.ProgressBar) (digest.Digest, error) {
	var r io.Reader = f
	if bar != nil {
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

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
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/contenthash"
)

type pushOptions struct {
	message   string
	ifMatch   string
	digest    string
	create    bool
	noDelta   bool
	deltaBase string
	cache     cacheOptions
}

// pushResult is what image push reports: the stored content and what the
// push moved.
type pushResult struct {
	api.ContentInfo
	BytesSent   int64  `json:"bytes_sent"`
	BytesReused int64  `json:"bytes_reused"`
	Delta       bool   `json:"delta"`
	Fallback    string `json:"delta_fallback,omitempty"`
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
declares it.

Push sends only what the server lacks: it chunks FILE, reads the server's
chunk index of the image's current content (or of --delta-base), and sends
a recipe with the missing chunks, from which the server assembles and
verifies the whole file. When the server has no index, the cached copy of
the base is indexed instead (--cache). Without either, or against a server
that predates delta pushes, the file is sent whole. --no-delta always sends
it whole.`,
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
	cmd.Flags().BoolVar(&o.noDelta, "no-delta", false, "send the whole file, never a delta")
	cmd.Flags().StringVar(&o.deltaBase, "delta-base", "", "send a delta against this blob (sha256:<hex>) instead of the image's current content")
	o.cache.addDirFlag(cmd.Flags())
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
	var deltaBase digest.Digest
	if o.deltaBase != "" {
		deltaBase = digest.Digest(o.deltaBase)
		if contenthash.Validate(deltaBase) != nil {
			return usageError{fmt.Errorf("--delta-base %q: want sha256:<64 hex>", o.deltaBase)}
		}
		if o.noDelta {
			return usageError{errors.New("--delta-base and --no-delta contradict each other")}
		}
	}
	img, err := c.GetImage(ctx, ref)
	if errors.Is(err, errdefs.ErrNotFound) && o.create {
		if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: ref}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	} else if deltaBase == "" && !o.noDelta && img.Content != nil {
		deltaBase = digest.Digest(img.Content.Chksum)
	}
	start := time.Now()
	po := client.PushOptions{IfMatch: base, Message: o.message, Digest: declared}
	if deltaBase != "" {
		po.DeltaBase = deltaBase
		po.DeltaIndex = client.FirstIndex(c.ServerIndex(), cachedIndex(g, &o.cache))
	}
	info, stats, err := uploadFile(ctx, g, c, ref, f, fi.Size(), po)
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	res := pushResult{ContentInfo: info, BytesSent: stats.BytesSent, BytesReused: stats.BytesReused, Delta: stats.Delta, Fallback: stats.Fallback}
	return g.emit(res, func(w io.Writer) {
		fmt.Fprintf(w, "pushed %s: %s (%s, %s) in %.1fs, %.0f MB/s", inert(ref), inert(info.Chksum), inert(info.Fmt), humanBytes(info.Size), secs, float64(info.Size)/secs/1e6)
		if stats.Delta {
			fmt.Fprintf(w, "; sent %s, reused %s", humanBytes(stats.BytesSent), humanBytes(stats.BytesReused))
		}
		fmt.Fprintln(w)
		if stats.Fallback != "" {
			fmt.Fprintf(w, "sent whole, not as a delta: %s\n", inert(stats.Fallback))
		}
	})
}

// uploadFile is the push path every upload of a local file takes (image
// push, image capture): f (size bytes) is sent as ref's new content, as a
// delta against o.DeltaBase when it can be, with its digest declared: up
// front when the server prefers that and the push is not a delta (hashing
// f first; a delta hashes it while it chunks it) or else in a trailer as
// it streams, through the client's failover and with a progress bar on a
// terminal.
func uploadFile(ctx context.Context, g *globals, c *client.Client, ref string, f *os.File, size int64, o client.PushOptions) (api.ContentInfo, client.PushStats, error) {
	if o.Digest == "" && o.DeltaBase == "" {
		// With S3 blobs a digest declared up front saves the server a copy
		// of the whole blob, which costs more than hashing the file here
		// first. A server without GET /server simply gets a trailer.
		if si, err := c.ServerInfo(ctx); err == nil && si.PreferDeclaredDigest {
			d, err := hashFile(f, g.hashBar(size))
			if err != nil {
				return api.ContentInfo{}, client.PushStats{}, fmt.Errorf("hash %s: %w", f.Name(), err)
			}
			o.Digest = d
		}
	}
	bar := g.newProgress("push " + ref)
	defer bar.finish()
	var stats client.PushStats
	o.Stats, o.Progress = &stats, bar.pushCallback()
	info, err := c.PushContent(ctx, ref, f, size, o)
	return info, stats, err
}

// cachedIndex indexes the node cache's copy of a delta base, when the
// cache directory exists and holds it: the index source after the
// server's.
func cachedIndex(g *globals, o *cacheOptions) client.IndexSource {
	return client.IndexSourceFunc(func(ctx context.Context, base digest.Digest) (*chunks.Index, error) {
		if o.dir == "" {
			return nil, fmt.Errorf("no cache directory: %w", errdefs.ErrNotFound)
		}
		if _, err := os.Stat(o.dir); err != nil {
			return nil, fmt.Errorf("no cache at %s: %w", o.dir, errdefs.ErrNotFound)
		}
		cc, err := o.open(g)
		if err != nil {
			return nil, err
		}
		return client.FileIndex(cc.BlobPath(base)).BaseIndex(ctx, base)
	})
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

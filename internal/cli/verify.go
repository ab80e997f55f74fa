package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/size"
)

// errBadBlobs makes verify exit non-zero when anything was bad.
var errBadBlobs = fmt.Errorf("some cached blobs are corrupt or missing (see above); run depot verify --repair or depot pull again: %w", errdefs.ErrCorrupt)

type verifyOptions struct {
	cacheOptions
	full, repair, sources, refresh bool
	rate                           size.Bytes
}

func newVerifyCmd(g *globals) *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify [REF...]",
		Short: "Check cached blobs (BLAKE3 scrub; --full sha256), or with --sources check entries against their sources",
		Long: `Check every cached blob, or the named ones, in parallel. The default compares the
BLAKE3 recorded at ingest; --full re-computes sha256. A blob whose stat
fingerprint changed is re-hashed in full. A corrupt blob is moved to
quarantine/ and its pointers are dropped; --repair fetches a good copy: with
the blob's chunk index (made at ingest) only the corrupt chunks are fetched,
and the result says how many bytes moved.

--sources asks each entry's source what it names now (metadata or checksum
file, never a body) and reports current, changed or gone; --refresh fetches
the changed ones. Exit code 9 when anything was corrupt or missing.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.open(g)
			if err != nil {
				return err
			}
			if o.sources {
				return runSourceCheck(cmd.Context(), g, c, o.refresh)
			}
			vo := cache.VerifyOptions{Full: o.full, Repair: o.repair, RateLimit: int64(o.rate)}
			for _, a := range args {
				d, err := digestOf(cmd.Context(), c, a)
				if err != nil {
					return err
				}
				vo.Digests = append(vo.Digests, d)
			}
			start := time.Now()
			res, err := c.Verify(cmd.Context(), vo)
			if err != nil {
				return err
			}
			bad := 0
			var bytes, moved int64
			for _, r := range res {
				bytes += r.Size
				moved += r.BytesFetched
				if r.Bad() {
					bad++
				}
			}
			secs := time.Since(start).Seconds()
			if err := g.emit(res, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DIGEST\tSIZE\tSTATUS\tLEASED\tREFS\tDETAIL")
				for _, r := range res {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", shortDigest(r.Digest.String()), humanBytes(r.Size), r.Status, r.Leased, inert(strings.Join(r.Refs, ",")), inert(r.Detail))
				}
				tw.Flush()
				fmt.Fprintf(w, "%d blobs, %s in %.1fs (%.0f MB/s); %d bad\n", len(res), humanBytes(bytes), secs, float64(bytes)/secs/1e6, bad)
				if o.repair && moved > 0 {
					fmt.Fprintf(w, "repair fetched %s\n", humanBytes(moved))
				}
			}); err != nil {
				return err
			}
			for _, r := range res {
				if r.Bad() {
					return errBadBlobs
				}
			}
			return nil
		},
	}
	o.addDirFlag(cmd.Flags())
	cmd.Flags().BoolVar(&o.full, "full", false, "re-compute sha256 instead of the BLAKE3 scrub")
	cmd.Flags().BoolVar(&o.repair, "repair", false, "re-fetch corrupt or missing blobs from their source")
	cmd.Flags().BoolVar(&o.sources, "sources", false, "check each entry against its source (no bodies downloaded)")
	cmd.Flags().BoolVar(&o.refresh, "refresh", false, "with --sources: fetch entries that changed upstream")
	cmd.Flags().Var(&o.rate, "rate", "cap on bytes read per second, e.g. 200M (0: none)")
	return cmd
}

// digestOf maps a CLI argument to a cached digest: a pinned reference or a
// pointer already in the cache (never a network lookup).
func digestOf(ctx context.Context, c *cache.Cache, refStr string) (digest.Digest, error) {
	img, err := c.Ensure(ctx, refStr, cache.EnsureOptions{Policy: cache.Never})
	if err != nil {
		return "", err
	}
	return img.Digest, nil
}

func runSourceCheck(ctx context.Context, g *globals, c *cache.Cache, refresh bool) error {
	res, err := c.CheckSources(ctx, refresh)
	if err != nil {
		return err
	}
	return g.emit(res, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "REF\tCACHED\tUPSTREAM\tSTATUS\tDETAIL")
		for _, r := range res {
			status := r.Status
			if r.Refreshed {
				status += " (refreshed)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", inert(r.Ref), shortDigest(r.Cached.String()), inert(shortDigest(r.Upstream.String())), status, inert(r.Detail))
		}
		tw.Flush()
	})
}

package agent

import (
	"context"
	"log/slog"

	"github.com/depot-images/depot/cache"
)

// outcomes maps a scrub's VerifyResult.Status to its metrics label.
var outcomes = map[string]string{
	cache.StatusOK: "verified", cache.StatusFingerprint: "verified", cache.StatusCorrupt: "corrupt",
	cache.StatusMissing: "missing", cache.StatusRepaired: "repaired",
}

// tasks are the agent's three jobs on c, in the order they first run.
// Every task run is bounded by its interval, and every request by the
// HTTP timeouts (--stall-timeout), so one stalled source cannot stop the
// other entries, nor the next scrub or prune.
func tasks(c Cache, o Options, m metrics, log *slog.Logger) []task {
	return []task{
		{"scrub", o.ScrubEvery, func(ctx context.Context) error {
			res, err := c.Verify(ctx, cache.VerifyOptions{Repair: true, RateLimit: o.ScrubRate})
			for _, r := range res {
				outcome := outcomes[r.Status]
				m.blobs.WithLabelValues(outcome).Inc()
				m.bytes.WithLabelValues(outcome).Add(float64(r.Size))
				if r.Bad() || r.Status == cache.StatusRepaired {
					log.Warn("scrub", "digest", r.Digest, "status", r.Status, "detail", r.Detail)
				}
			}
			log.Info("scrub done", "blobs", len(res))
			return err
		}},
		{"revalidate", o.RevalidateEvery, func(ctx context.Context) error {
			res, err := c.CheckSources(ctx, true)
			log.Info("revalidation done", "entries", len(res))
			return err
		}},
		{"prune", o.PruneEvery, func(ctx context.Context) error {
			rep, err := c.Prune(ctx, o.Prune)
			for _, r := range rep.Rules {
				m.blobs.WithLabelValues("pruned").Add(float64(len(r.Blobs)))
				m.bytes.WithLabelValues("pruned").Add(float64(r.Bytes))
			}
			log.Info("prune done", "orphans", len(rep.Orphans))
			return err
		}},
	}
}

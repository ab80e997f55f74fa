// Package agent keeps a node cache true while it runs (`depot agent`): a
// rate-limited scrub that repairs what it finds corrupt, a revalidation of
// every entry against its source (refreshing what changed), and prune,
// each on its own interval, counted in Prometheus metrics.
//
// It owns the schedule (schedule.go), the tasks (tasks.go) and the metrics
// and their names (metrics.go), and nothing on disk: every change to the
// cache goes through the cache's own Verify, CheckSources and Prune.
//
// It must never run two tasks at once, let a task run past its interval,
// stop because a task failed, parse flags or print to a terminal (that is
// internal/cli's), or leave a goroutine running when Run returns.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/errdefs"
)

// Cache is what the agent maintains: the node cache's own checks (a
// *cache.Cache).
type Cache interface {
	Verify(ctx context.Context, o cache.VerifyOptions) ([]cache.VerifyResult, error)
	CheckSources(ctx context.Context, refresh bool) ([]cache.SourceCheck, error)
	Prune(ctx context.Context, o cache.PruneOptions) (cache.PruneReport, error)
}

var _ Cache = (*cache.Cache)(nil)

// Options tune Run.
type Options struct {
	// ScrubEvery, RevalidateEvery and PruneEvery are the tasks' intervals;
	// each run of a task is also bounded by its interval.
	ScrubEvery, RevalidateEvery, PruneEvery time.Duration
	// ScrubRate caps the bytes per second the scrub reads (0: no cap).
	ScrubRate int64
	// Prune is what each prune run applies.
	Prune cache.PruneOptions
	// Cycles stops Run after every task ran this many times (0: run until
	// ctx is done).
	Cycles int
	// Metrics, when set, serves the metrics at /metrics until Run returns
	// (Run closes it).
	Metrics net.Listener
	// Logger gets every task's outcome.
	Logger *slog.Logger
}

// Run runs the tasks on their intervals until ctx is done (then it returns
// nil) or, with Cycles, until every task ran that many times. A failed task
// is logged and counted, and runs again at its next time.
func Run(ctx context.Context, c Cache, o Options) error {
	if o.ScrubEvery <= 0 || o.RevalidateEvery <= 0 || o.PruneEvery <= 0 {
		if o.Metrics != nil {
			o.Metrics.Close()
		}
		return fmt.Errorf("agent intervals must be positive (scrub %s, revalidate %s, prune %s): %w",
			o.ScrubEvery, o.RevalidateEvery, o.PruneEvery, errdefs.ErrInvalidArgument)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	if s, ok := c.(interface{ TransferStats() cache.TransferStats }); ok {
		registerDelta(reg, s.TransferStats)
	}
	if o.Metrics != nil {
		stop := serveMetrics(o.Metrics, reg)
		defer stop() // joined: the server is gone when Run returns
		log.Info("agent metrics", "url", "http://"+o.Metrics.Addr().String()+"/metrics")
	}
	return schedule(ctx, tasks(c, o, m, log), o.Cycles, func(task string, err error) {
		res := "ok"
		if err != nil {
			res = "error"
			log.Error("agent task failed", "task", task, "err", err)
		}
		m.runs.WithLabelValues(task, res).Inc()
	})
}

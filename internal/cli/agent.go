package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/agent"
	"github.com/depot-images/depot/internal/size"
)

type agentOptions struct {
	pruneFlags
	scrubEvery, sourcesEvery, pruneEvery time.Duration
	scrubRate                            size.Bytes
	metricsAddr                          string
	cycles                               int
}

func newAgentCmd(g *globals) *cobra.Command {
	o := &agentOptions{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Keep the cache true: periodic rate-limited scrub, source revalidation and prune",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runAgent(ctx, g, o)
		},
	}
	o.addDirFlag(cmd.Flags())
	o.addMaxDownloadFlag(cmd.Flags())
	o.pruneFlags.add(cmd)
	f := cmd.Flags()
	f.DurationVar(&o.scrubEvery, "scrub-interval", 24*time.Hour, "how often every blob is scrubbed (BLAKE3)")
	o.scrubRate = 200 << 20
	f.Var(&o.scrubRate, "scrub-rate", "bytes per second the scrub may read, e.g. 200M (0: no limit)")
	f.DurationVar(&o.sourcesEvery, "revalidate-interval", time.Hour, "how often entries are checked against their sources (and refreshed)")
	f.DurationVar(&o.pruneEvery, "prune-interval", time.Hour, "how often prune runs")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics here (e.g. 127.0.0.1:9464)")
	f.IntVar(&o.cycles, "cycles", 0, "stop after every task ran this many times (0: run until stopped)")
	return cmd
}

func runAgent(ctx context.Context, g *globals, o *agentOptions) error {
	c, err := o.open(g)
	if err != nil {
		return err
	}
	po, err := o.options()
	if err != nil {
		return err
	}
	if o.scrubEvery <= 0 || o.sourcesEvery <= 0 || o.pruneEvery <= 0 {
		return usageError{errors.New("intervals must be positive")}
	}
	ao := agent.Options{
		ScrubEvery: o.scrubEvery, RevalidateEvery: o.sourcesEvery, PruneEvery: o.pruneEvery,
		ScrubRate: int64(o.scrubRate), Prune: po, Cycles: o.cycles,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
	if o.metricsAddr != "" {
		if ao.Metrics, err = net.Listen("tcp", o.metricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr: %v: %w", err, errdefs.ErrUnavailable)
		}
	}
	return agent.Run(ctx, c, ao)
}

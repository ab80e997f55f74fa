package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
quarantine/ and its pointers are dropped; --repair fetches a good copy.

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
			var bytes int64
			for _, r := range res {
				bytes += r.Size
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

func newLeaseCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "lease", Short: "Mark cached images as in use, so prune and quarantine leave them alone"}
	o := &cacheOptions{}
	var holder string
	var ttl time.Duration
	add := &cobra.Command{
		Use:   "add REF --holder ID [--ttl DURATION]",
		Short: "Ensure REF (policy IfNotPresent) and lease it and its backing chain to ID",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.open(g)
			if err != nil {
				return err
			}
			img, err := c.Ensure(cmd.Context(), args[0], cache.EnsureOptions{Policy: cache.IfNotPresent, Lease: holder, LeaseTTL: ttl})
			if err != nil {
				return err
			}
			return g.emit(img, func(w io.Writer) {
				fmt.Fprintf(w, "leased %s (%s) to %s\n%s\n", inert(args[0]), img.Digest, inert(holder), inert(img.Path))
			})
		},
	}
	add.Flags().StringVar(&holder, "holder", "", "who holds the lease (a VM or job ID)")
	add.Flags().DurationVar(&ttl, "ttl", 0, "expiry (0: until removed)")
	add.MarkFlagRequired("holder")
	o.addDirFlag(add.Flags())
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List leases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.open(g)
			if err != nil {
				return err
			}
			ls, err := c.Leases()
			if err != nil {
				return err
			}
			return g.emit(ls, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "HOLDER\tDIGEST\tREF\tCREATED\tEXPIRES")
				for _, l := range ls {
					exp := "never"
					if !l.Expires.IsZero() {
						exp = l.Expires.Local().Format(time.DateTime)
						if l.Expired(time.Now()) {
							exp += " (expired)"
						}
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", inert(l.Holder), shortDigest(l.Digest.String()), inert(l.Ref), l.Created.Local().Format(time.DateTime), exp)
				}
				tw.Flush()
			})
		},
	}
	o2 := &cacheOptions{}
	var rmHolder string
	rm := &cobra.Command{
		Use:   "rm --holder ID [REF]",
		Short: "Release ID's leases (on REF only, when given)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o2.open(g)
			if err != nil {
				return err
			}
			var d digest.Digest
			if len(args) == 1 {
				if d, err = digestOf(cmd.Context(), c, args[0]); err != nil {
					return err
				}
			}
			n, err := c.RemoveLeases(rmHolder, d)
			if err != nil {
				return err
			}
			return g.emit(map[string]any{"holder": rmHolder, "released": n}, func(w io.Writer) { fmt.Fprintf(w, "released %d leases of %s\n", n, inert(rmHolder)) })
		},
	}
	rm.Flags().StringVar(&rmHolder, "holder", "", "the lease holder")
	rm.MarkFlagRequired("holder")
	o2.addDirFlag(rm.Flags())
	o.addDirFlag(ls.Flags())
	cmd.AddCommand(add, ls, rm)
	return cmd
}

type pruneFlags struct {
	cacheOptions
	dryRun  bool
	maxAge  time.Duration
	maxSize budgetValue
	orphans bool
	partAge time.Duration
}

func (o *pruneFlags) options() (cache.PruneOptions, error) {
	return cache.PruneOptions{DryRun: o.dryRun, MaxAge: o.maxAge, Orphans: o.orphans, PartAge: o.partAge, MaxSize: int64(o.maxSize.n)}, nil
}

// budgetValue is a size limit whose zero means "no limit" to the code that
// takes it (--max-size, --max-download-size). 0 is refused: an operator who
// writes 0 means either no limit or nothing at all, and which one is not for
// depot to guess. No limit is the flag left out.
type budgetValue struct {
	n    size.Bytes
	flag string // for the hint
}

func (b *budgetValue) Set(s string) error {
	var n size.Bytes
	if err := n.Set(s); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("0 is not a limit: leave --%s out for none, or give a size like 200G: %w", b.flag, errdefs.ErrInvalidArgument)
	}
	b.n = n
	return nil
}

func (b *budgetValue) String() string {
	if b.n == 0 {
		return ""
	}
	return size.Format(int64(b.n))
}

func (b *budgetValue) Type() string { return "size" }

func (o *pruneFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&o.dryRun, "dry-run", false, "report what would be freed, delete nothing")
	f.DurationVar(&o.maxAge, "max-age", time.Hour, "seed 000's rule: evict entries unused this long that are identical to the server's copy (negative: off)")
	o.maxSize.flag = "max-size"
	f.Var(&o.maxSize, "max-size", "size budget for cached blobs, least recently used evicted first, e.g. 200G (binary units: 200G = 200GB = 200GiB; not 0; default no budget)")
	f.BoolVar(&o.orphans, "orphans", false, "also delete entries whose image the server no longer knows")
	f.DurationVar(&o.partAge, "part-age", 24*time.Hour, "sweep partial downloads untouched this long")
}

func newPruneCmd(g *globals) *cobra.Command {
	o := &pruneFlags{}
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Free cache space by rule; never touches leased blobs, workspaces, or (without --orphans) orphans",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.open(g)
			if err != nil {
				return err
			}
			po, err := o.options()
			if err != nil {
				return err
			}
			rep, err := c.Prune(cmd.Context(), po)
			if err != nil {
				return err
			}
			return g.emit(rep, func(w io.Writer) { printPrune(w, rep) })
		},
	}
	o.addDirFlag(cmd.Flags())
	o.add(cmd)
	return cmd
}

func printPrune(w io.Writer, rep cache.PruneReport) {
	verb := "freed"
	if rep.DryRun {
		verb = "would free"
	}
	for _, r := range rep.Rules {
		fmt.Fprintf(w, "%-20s %s %s (%d)\n", r.Rule, verb, humanBytes(r.Bytes), len(r.Blobs))
	}
	if rep.LeasesReaped > 0 {
		fmt.Fprintf(w, "expired leases reaped: %d\n", rep.LeasesReaped)
	}
	for _, k := range rep.Kept {
		fmt.Fprintf(w, "kept %s\n", inert(k))
	}
	for _, o := range rep.Orphans {
		fmt.Fprintf(w, "orphan %s (%s): %s; %s\n", inert(o.Ref), shortDigest(o.Digest.String()), inert(o.Reason), inert(o.Next))
	}
}

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

type agentMetrics struct {
	blobs, bytes *prometheus.CounterVec
	runs         *prometheus.CounterVec
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
	rate := int64(o.scrubRate)
	if o.scrubEvery <= 0 || o.sourcesEvery <= 0 || o.pruneEvery <= 0 {
		return usageError{errors.New("intervals must be positive")}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	reg := prometheus.NewRegistry()
	m := agentMetrics{
		blobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depot_cache_blobs_total", Help: "Blobs handled by the agent, by outcome (verified, corrupt, missing, repaired, pruned)."}, []string{"outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depot_cache_bytes_total", Help: "Bytes handled by the agent, by outcome."}, []string{"outcome"}),
		runs:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depot_cache_agent_runs_total", Help: "Agent task runs, by task and result."}, []string{"task", "result"}),
	}
	reg.MustRegister(m.blobs, m.bytes, m.runs)
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr: %v: %w", err, errdefs.ErrUnavailable)
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		defer func() { // joined: the server is gone when runAgent returns
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if srv.Shutdown(sctx) != nil {
				srv.Close()
			}
			<-served
		}()
		log.Info("agent metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	}
	count := func(task string, err error) {
		res := "ok"
		if err != nil {
			res = "error"
			log.Error("agent task failed", "task", task, "err", err)
		}
		m.runs.WithLabelValues(task, res).Inc()
	}
	// Every task run is bounded by its interval, and every request by the
	// HTTP timeouts (--stall-timeout), so one stalled source cannot stop
	// the other entries, nor the next scrub or prune.
	tasks := []struct {
		name  string
		every time.Duration
		run   func(ctx context.Context) error
	}{
		{"scrub", o.scrubEvery, func(ctx context.Context) error {
			res, err := c.Verify(ctx, cache.VerifyOptions{Repair: true, RateLimit: rate})
			for _, r := range res {
				outcome := map[string]string{cache.StatusOK: "verified", cache.StatusFingerprint: "verified", cache.StatusCorrupt: "corrupt", cache.StatusMissing: "missing", cache.StatusRepaired: "repaired"}[r.Status]
				m.blobs.WithLabelValues(outcome).Inc()
				m.bytes.WithLabelValues(outcome).Add(float64(r.Size))
				if r.Bad() || r.Status == cache.StatusRepaired {
					log.Warn("scrub", "digest", r.Digest, "status", r.Status, "detail", r.Detail)
				}
			}
			log.Info("scrub done", "blobs", len(res))
			return err
		}},
		{"revalidate", o.sourcesEvery, func(ctx context.Context) error {
			res, err := c.CheckSources(ctx, true)
			log.Info("revalidation done", "entries", len(res))
			return err
		}},
		{"prune", o.pruneEvery, func(ctx context.Context) error {
			rep, err := c.Prune(ctx, po)
			for _, r := range rep.Rules {
				m.blobs.WithLabelValues("pruned").Add(float64(len(r.Blobs)))
				m.bytes.WithLabelValues("pruned").Add(float64(r.Bytes))
			}
			log.Info("prune done", "orphans", len(rep.Orphans))
			return err
		}},
	}
	runs := make([]int, len(tasks))
	next := make([]time.Time, len(tasks))
	for {
		now := time.Now()
		soonest := now.Add(24 * time.Hour)
		done := o.cycles > 0
		for i, t := range tasks {
			if o.cycles > 0 && runs[i] >= o.cycles {
				continue
			}
			if !now.Before(next[i]) {
				tctx, cancel := context.WithTimeout(ctx, t.every)
				err := t.run(tctx)
				if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
					err = fmt.Errorf("%s did not finish within its interval of %s; it runs again next time: %w", t.name, t.every, errdefs.ErrUnavailable)
				}
				cancel()
				count(t.name, err)
				runs[i]++
				next[i] = time.Now().Add(t.every)
				if o.cycles > 0 && runs[i] >= o.cycles {
					continue // finished: its next run is not waited for
				}
			}
			done = false
			if next[i].Before(soonest) {
				soonest = next[i]
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(soonest)):
		}
	}
}

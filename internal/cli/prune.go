package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/depot-images/depot/cache"
)

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

package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/depot-images/depot/cache"
)

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

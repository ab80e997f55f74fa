package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/client"
)

// cacheOptions are the flags of the commands that use the node cache.
type cacheOptions struct {
	dir         string
	policy      string
	force       bool
	offlineOK   bool
	checksum    string
	checksumURL string
	printChain  bool
	connections int
	maxDownload budgetValue
	noDelta     bool
	dryRun      bool
}

func (o *cacheOptions) addDirFlag(f *pflag.FlagSet) {
	f.StringVar(&o.dir, "cache", envOr("DEPOT_CACHE", defaultCacheDir()), "cache directory (env DEPOT_CACHE)")
}

func (o *cacheOptions) addEnsureFlags(f *pflag.FlagSet, defPolicy string) {
	o.addDirFlag(f)
	f.StringVar(&o.policy, "policy", defPolicy, "pull policy: Always, IfNotPresent or Never")
	f.BoolVar(&o.force, "force", false, "re-resolve and re-download even a valid local copy")
	f.BoolVar(&o.offlineOK, "offline-ok", false, "with Always: use the last resolved copy when the source is unreachable")
	f.StringVar(&o.checksum, "checksum", "", "pin an http(s) reference to sha256:<hex>")
	f.StringVar(&o.checksumURL, "checksum-url", "", "checksum file of an http(s) reference (default: <url>.sha256, SHA256SUMS, CHECKSUM)")
	f.IntVar(&o.connections, "connections", 4, "parallel ranged connections for blobs over 64 MiB, and for the ranges of a delta (1: one stream)")
	f.BoolVar(&o.noDelta, "no-delta", false, "transfer whole: do not reuse chunks of cached blobs")
	o.addMaxDownloadFlag(f)
}

func (o *cacheOptions) addMaxDownloadFlag(f *pflag.FlagSet) {
	o.maxDownload.flag = "max-download-size"
	f.Var(&o.maxDownload, "max-download-size", "refuse a download whose source declares more than this, e.g. 200G (binary units; not 0; default: only the cache's free space bounds it)")
}

func defaultCacheDir() string {
	if os.Geteuid() == 0 {
		return "/var/cache/depot"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "depot")
	}
	return ""
}

func (o *cacheOptions) open(g *globals) (*cache.Cache, error) {
	if o.dir == "" {
		return nil, usageError{fmt.Errorf("no cache directory: set --cache or DEPOT_CACHE")}
	}
	tok, err := g.resolveToken()
	if err != nil {
		return nil, err
	}
	var dc *client.Client
	if g.server != "" {
		if dc, err = client.New(g.server, tok, client.WithTimeouts(g.timeouts)); err != nil {
			return nil, err
		}
	}
	level := g.logLevel
	if level == "info" { // the default: cache commands only say what went wrong
		level = "warn"
	}
	log, err := newLogger(os.Stderr, level, "text")
	if err != nil {
		return nil, err
	}
	return cache.Open(o.dir, cache.Options{Depot: dc, Logger: log, Connections: o.connections,
		HTTPClient: client.NewHTTPClient(g.timeouts), MaxDownloadSize: int64(o.maxDownload.n)})
}

func (o *cacheOptions) ensureOptions(g *globals, label string) (cache.EnsureOptions, func(), error) {
	p, err := cache.ParsePolicy(o.policy)
	if err != nil {
		return cache.EnsureOptions{}, nil, usageError{err}
	}
	eo := cache.EnsureOptions{Policy: p, Force: o.force, OfflineOK: o.offlineOK, ChecksumURL: o.checksumURL, Checksum: digest.Digest(o.checksum), NoDelta: o.noDelta}
	bar := g.newProgress(label)
	eo.Progress = bar.callback()
	eo.DeltaProgress = bar.deltaCallback()
	return eo, bar.finish, nil
}

func newPullCmd(g *globals) *cobra.Command {
	o := &cacheOptions{}
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Fetch REF into the node cache, verified (default policy Always)",
		Long: `Fetch REF into the node cache and verify it. REF is NAME, NAME@sha256:<hex>,
a 32-hex UID, an http(s):// URL (checksum from --checksum, --checksum-url or a
checksum file beside it), or oci://registry/repo:tag|@sha256:<hex>.

A pinned digest is fetched by digest, bypassing every name or URL pointer; if
the source no longer has it, the error names the wanted digest and what the
name points to now (exit 7).

From a depot server, a pull into a cache that already holds related content
(the previous revision, other images from the same base) is a delta: chunks
the cache has are copied from it (each re-hashed), only the rest is fetched,
and the result is verified whole as always. --no-delta transfers whole;
--dry-run prints what would be fetched and reused without fetching the body.
With --json the result reports bytes_fetched, bytes_reused and bytes_received
(the bytes that crossed the network: a depot server sends chunks compressed).

` + exitHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.dryRun {
				return runPlan(cmd, g, o, args[0])
			}
			return runEnsure(cmd, g, o, args[0], false)
		},
	}
	o.addEnsureFlags(cmd.Flags(), "Always")
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "print what would be fetched and reused, fetch no body")
	return cmd
}

func newEnsureCmd(g *globals) *cobra.Command {
	o := &cacheOptions{}
	cmd := &cobra.Command{
		Use:   "ensure REF",
		Short: "Print the verified local path of REF, fetching it if needed (default policy IfNotPresent)",
		Long: `Make sure REF is in the node cache, verified, and print its local path (for
scripts). With --print-chain, also print the qcow2 backing chain, one path per
line, top first. A pinned digest that is present answers without any network.

` + exitHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runEnsure(cmd, g, o, args[0], true)
		},
	}
	o.addEnsureFlags(cmd.Flags(), "IfNotPresent")
	cmd.Flags().BoolVar(&o.printChain, "print-chain", false, "print the qcow2 backing chain")
	return cmd
}

func runEnsure(cmd *cobra.Command, g *globals, o *cacheOptions, refStr string, pathOnly bool) error {
	c, err := o.open(g)
	if err != nil {
		return err
	}
	eo, finish, err := o.ensureOptions(g, "pull "+refStr)
	if err != nil {
		return err
	}
	img, err := c.Ensure(cmd.Context(), refStr, eo)
	finish()
	if err != nil {
		return err
	}
	return g.emit(img, func(w io.Writer) {
		if img.Offline {
			fmt.Fprintf(g.stderr, "depot: %s: source unreachable; using the last resolved copy %s\n", inert(refStr), img.Digest)
		}
		if img.Note != "" {
			fmt.Fprintf(g.stderr, "depot: %s: %s\n", inert(refStr), inert(img.Note))
		}
		switch {
		case pathOnly:
			fmt.Fprintln(w, inert(img.Path))
			if o.printChain {
				for _, l := range img.Chain {
					fmt.Fprintln(w, inert(l.Path))
				}
			}
		default:
			verb := "up to date"
			if img.Fetched {
				verb = "fetched"
				if img.Transfer == "delta" {
					verb = fmt.Sprintf("fetched %s, reused %s of", humanBytes(img.BytesFetched), humanBytes(img.BytesReused))
				}
			}
			fmt.Fprintf(w, "%s: %s %s (%s, %s)\n%s\n", inert(refStr), verb, img.Digest, inert(img.Format), humanBytes(img.Size), inert(img.Path))
			for _, l := range img.Chain {
				fmt.Fprintf(w, "  backing: %s %s\n", l.Digest, inert(l.Path))
			}
		}
	})
}

// runPlan is pull --dry-run: what a pull of refStr would fetch and reuse.
func runPlan(cmd *cobra.Command, g *globals, o *cacheOptions, refStr string) error {
	c, err := o.open(g)
	if err != nil {
		return err
	}
	eo, _, err := o.ensureOptions(g, "")
	if err != nil {
		return err
	}
	eo.Progress, eo.DeltaProgress = nil, nil
	plan, err := c.PlanPull(cmd.Context(), refStr, eo)
	if err != nil {
		return err
	}
	return g.emit(plan, func(w io.Writer) {
		switch {
		case plan.Present:
			fmt.Fprintf(w, "%s: %s is cached; nothing to fetch\n", inert(refStr), plan.Digest)
		case plan.Transfer == "delta":
			fmt.Fprintf(w, "%s: %s (%s): would fetch %s and reuse %s from %d cached blobs\n", inert(refStr), plan.Digest,
				humanBytes(plan.Size), humanBytes(plan.BytesFetched), humanBytes(plan.BytesReused), plan.Seeds)
		default:
			fmt.Fprintf(w, "%s: %s: would fetch it whole (%s)\n", inert(refStr), plan.Digest, humanBytes(plan.BytesFetched))
			if plan.Note != "" {
				fmt.Fprintf(w, "  %s\n", inert(plan.Note))
			}
		}
	})
}

func newCacheCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cache", Short: "Inspect the node cache"}
	o := &cacheOptions{}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List cached images with their digests and pointers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.open(g)
			if err != nil {
				return err
			}
			ents, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			quarantined, err := c.Quarantined()
			if err != nil {
				return err
			}
			out := struct {
				Entries     []cache.Entry `json:"entries"`
				Quarantined []string      `json:"quarantined"`
			}{ents, quarantined}
			return g.emit(out, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DIGEST\tFMT\tSIZE\tSTATE\tLAST USED\tVERIFIED\tREFS")
				for _, e := range ents {
					var refs []string
					for _, p := range e.Pointers {
						refs = append(refs, inert(p.Ref))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortDigest(e.Record.Digest.String()), inert(e.Record.Format), humanBytes(e.Record.Size),
						strings.Join(e.States, ","), e.Record.LastUsed.Local().Format("2006-01-02 15:04"), e.Record.VerifiedAt.Local().Format("2006-01-02 15:04"), strings.Join(refs, ","))
				}
				for _, q := range quarantined {
					fmt.Fprintf(tw, "%s\t\t\tcorrupt (quarantined)\t\t\t\n", inert(q))
				}
				tw.Flush()
			})
		},
	}
	o.addDirFlag(ls.Flags())
	cmd.AddCommand(ls)
	return cmd
}

func newRmCmd(g *globals) *cobra.Command {
	o := &cacheOptions{}
	var force bool
	cmd := &cobra.Command{
		Use:   "rm REF",
		Short: "Remove REF from the node cache (a pointer, or a pinned blob)",
		Long: "Remove REF from the node cache (a pointer, or a pinned blob). A blob no pointer names any more is deleted.\n" +
			"A leased blob is refused (exit 4, naming the holders) unless --force; when the leases cannot be read, nothing is removed (exit 9).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.open(g)
			if err != nil {
				return err
			}
			deleted, err := c.Remove(cmd.Context(), args[0], cache.RemoveOptions{Force: force})
			if err != nil {
				return err
			}
			return g.emit(map[string]any{"removed": args[0], "deleted_blobs": deleted}, func(w io.Writer) {
				fmt.Fprintf(w, "removed %s (%d blobs deleted)\n", inert(args[0]), len(deleted))
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete the blob even if it is leased")
	o.addDirFlag(cmd.Flags())
	return cmd
}

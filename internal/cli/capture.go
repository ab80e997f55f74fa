package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/capture"
)

// maxExcludeFrom bounds an --exclude-from file.
const maxExcludeFrom = 1 << 20

type captureOptions struct {
	excludes     []string
	excludeFrom  string
	keep         []string
	format       string
	compress     string
	parent       string
	message      string
	dryRun       bool
	tmpDir       string
	allowChanges bool
	dropACLs     bool
	cache        cacheOptions
}

func newImageCaptureCmd(g *globals) *cobra.Command {
	o := &captureOptions{}
	cmd := &cobra.Command{
		Use:   "capture NAME|UID [ROOT]",
		Short: "Capture this node's running filesystem (ROOT, default /) as the image's new content",
		Long: `Capture a running node's filesystem tree as the image's new content (seed
004's GET /image/{uid}/capture, run on the node: heads never log in to
nodes). The image is created when it does not exist.

It captures one filesystem: mount points below ROOT are kept as empty
directories and not entered. By default it leaves out, and says so:
  proc, sys, dev, run   the contents of /proc, /sys, /dev and /run
  tmp                   the contents of /tmp and /var/tmp
  depot                 depot's own cache and data directories
  swap                  swap files (found by their signature)
  machine-id            /etc/machine-id (and /var/lib/dbus/machine-id): kept, empty
  ssh-host-keys         /etc/ssh/ssh_host_*
Each can be kept with --keep NAME. --exclude patterns are paths under ROOT
(a leading / is optional), * and ? within one path component, ** across
directories; a matched directory is left out whole.

Ownership, modes, setuid bits, hard links, sparse files, device nodes and
extended attributes are kept exactly, which needs root. POSIX ACLs are
kept by --format tar; squashfs cannot hold them, so a squashfs capture of
a tree with ACLs is refused unless --drop-acls.

mksquashfs or tar writes one temporary file in --tmp-dir (default: the
node cache's capture/ directory, on disk and left out of every capture),
which is then uploaded with its digest through the same path as depot
image push (failover, If-Match on the content the image had when the
capture began, a progress bar on a terminal, --json) and removed. A file
that changes while it is read fails the capture (exit 4) unless
--allow-changes, which keeps it and reports it. The revision records how
it was made (host, ROOT, excludes, format, compression, time): see depot
image history.

--dry-run walks the tree and prints the file count, the estimated size and
what would be left out, writing nothing (and needs no root).`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := "/"
			if len(args) == 2 {
				root = args[1]
			}
			return runCapture(cmd, g, o, args[0], root)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.excludes, "exclude", nil, "leave out paths matching PATTERN (repeatable)")
	f.StringVar(&o.excludeFrom, "exclude-from", "", "read --exclude patterns from FILE, one a line (# comments and blank lines ignored)")
	f.StringSliceVar(&o.keep, "keep", nil, "keep a default exclude: "+strings.Join(capture.DefaultNames, ", ")+" (repeatable)")
	f.StringVar(&o.format, "format", capture.Squashfs, "image format: squashfs or tar")
	f.StringVar(&o.compress, "compress", "zstd", "compression: zstd, xz (squashfs only), gzip or none")
	f.StringVar(&o.parent, "parent", "", "record IMAGE (UID or name) as the image's parent")
	f.StringVarP(&o.message, "message", "m", "", "revision message")
	f.BoolVar(&o.dryRun, "dry-run", false, "print what would be captured and left out; write nothing")
	f.StringVar(&o.tmpDir, "tmp-dir", "", "directory for the temporary image file (default: <cache>/capture)")
	f.BoolVar(&o.allowChanges, "allow-changes", false, "keep a capture in which files changed while they were read (they are reported)")
	f.BoolVar(&o.dropACLs, "drop-acls", false, "squashfs: leave out POSIX ACLs instead of refusing the capture")
	o.cache.addDirFlag(f)
	return cmd
}

// captureReport is what capture prints under --json.
type captureReport struct {
	DryRun         bool             `json:"dry_run"`
	Image          string           `json:"image,omitempty"`
	Content        *api.ContentInfo `json:"content,omitempty"`
	Provenance     *api.Provenance  `json:"provenance,omitempty"`
	Plan           *capture.Plan    `json:"plan"`
	Changed        []string         `json:"changed,omitempty"`
	ChangedCount   int              `json:"changed_count,omitempty"`
	CaptureSeconds float64          `json:"capture_seconds,omitempty"`
	PushSeconds    float64          `json:"push_seconds,omitempty"`
}

func runCapture(cmd *cobra.Command, g *globals, o *captureOptions, ref, root string) error {
	// An interrupt stops the tool (in its own process group, out of the
	// terminal's reach) and removes the temporary file, instead of
	// leaving both behind.
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	abs, err := filepath.Abs(root)
	if err != nil {
		return usageError{err}
	}
	patterns := append([]string(nil), o.excludes...)
	if o.excludeFrom != "" {
		more, err := readPatterns(o.excludeFrom)
		if err != nil {
			return err
		}
		patterns = append(patterns, more...)
	}
	depotDirs := []string{envOr("DEPOT_DATA", defaultDataDir())}
	if o.cache.dir != "" {
		depotDirs = append(depotDirs, o.cache.dir)
	}
	copts := capture.Options{Root: abs, Excludes: patterns, Keep: o.keep, DepotDirs: depotDirs, Format: o.format, Compress: o.compress,
		AllowChanges: o.allowChanges, DropACLs: o.dropACLs, Log: slog.Default()}
	rules, err := copts.Rules()
	if err != nil {
		return err
	}
	if o.dryRun {
		copts.DryRun = true
		plan, err := capture.Scan(ctx, copts)
		if err != nil {
			return err
		}
		return g.emit(captureReport{DryRun: true, Plan: plan}, func(w io.Writer) {
			fmt.Fprintf(w, "dry run: would capture %s as %s (%s): %d entries, %d files, about %s before compression\n",
				inert(abs), o.format, o.compress, plan.Entries, plan.Files, humanBytes(plan.Bytes))
			printPlan(w, plan)
			if len(plan.Unreadable) > 0 {
				fmt.Fprintf(w, "could not read (not root?): %s\n", inertList(plan.Unreadable))
			}
		})
	}
	if euid := os.Geteuid(); euid != 0 {
		return &capture.NeedRootError{EUID: euid}
	}
	host, err := os.Hostname()
	if err != nil {
		return err
	}
	prov := &api.Provenance{Method: "capture", Host: host, Root: abs, Format: o.format, Compress: o.compress, Time: api.UnixFloat(time.Now()), Excludes: []string{}}
	for _, r := range rules {
		if r.Empty {
			prov.Emptied = append(prov.Emptied, r.Patterns...)
			continue
		}
		if r.Swap {
			prov.Excludes = append(prov.Excludes, "(swap files)")
		}
		prov.Excludes = append(prov.Excludes, r.Patterns...)
	}
	if _, err := api.EncodeProvenance(*prov); err != nil { // before minutes of capture, not after
		return usageError{err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	// The image as it is now: the upload is conditional on its content
	// not moving while the capture runs.
	var base digest.Digest
	exists := true
	img, err := c.GetImage(ctx, ref)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		exists = false
	case err != nil:
		return err
	case img.Frozen:
		return fmt.Errorf("image %s is frozen; unfreeze it first (depot image update %s frozen=false): %w", ref, ref, errdefs.ErrConflict)
	case img.Content != nil:
		base = digest.Digest(img.Content.Chksum)
	}
	if o.parent != "" { // before minutes of capture, not after
		if _, err := c.GetImage(ctx, o.parent); err != nil {
			return fmt.Errorf("--parent: %w", err)
		}
	}
	tmpDir := o.tmpDir
	if tmpDir == "" {
		if o.cache.dir == "" {
			return usageError{fmt.Errorf("no --tmp-dir and no cache directory (--cache, DEPOT_CACHE)")}
		}
		tmpDir = filepath.Join(o.cache.dir, "capture")
		if err := os.MkdirAll(tmpDir, 0o700); err != nil {
			return err
		}
	}
	tmp, err := os.CreateTemp(tmpDir, "capture-*.img")
	if err != nil {
		return fmt.Errorf("capture: temporary file in %s: %w", tmpDir, err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	start := time.Now()
	res, err := capture.Run(ctx, copts, tmp.Name())
	if err != nil {
		return err
	}
	f, err := os.Open(tmp.Name()) // what the tool wrote, whichever way it wrote it
	if err != nil {
		return err
	}
	defer f.Close()
	captured := time.Since(start)
	prov.Time, prov.ChangedFiles = api.UnixFloat(res.Start), res.ChangedCount
	if !exists {
		req := api.CreateImageRequest{Name: ref}
		if o.parent != "" {
			req.Parent = &o.parent
		}
		if _, err := c.CreateImage(ctx, req); err != nil {
			return err
		}
	}
	pushStart := time.Now()
	info, _, err := uploadFile(ctx, g, c, ref, f, res.Size, client.PushOptions{IfMatch: base, Message: o.message, Provenance: prov})
	if err != nil {
		return err
	}
	pushed := time.Since(pushStart)
	if exists && o.parent != "" {
		if _, err := c.UpdateImage(ctx, ref, api.PatchImageRequest{Parent: &o.parent}); err != nil {
			return fmt.Errorf("captured and pushed, but setting the parent: %w", err)
		}
	}
	rep := captureReport{Image: ref, Content: &info, Provenance: prov, Plan: res.Plan, Changed: res.Changed, ChangedCount: res.ChangedCount,
		CaptureSeconds: captured.Seconds(), PushSeconds: pushed.Seconds()}
	return g.emit(rep, func(w io.Writer) {
		fmt.Fprintf(w, "captured %s on %s as %s (%s): %d entries, %d files, %s of data -> %s image in %.1fs\n",
			inert(abs), inert(host), o.format, o.compress, res.Plan.Entries, res.Plan.Files, humanBytes(res.Plan.Bytes), humanBytes(res.Size), captured.Seconds())
		printPlan(w, res.Plan)
		if res.ChangedCount > 0 {
			fmt.Fprintf(w, "changed while read, kept (--allow-changes): %d: %s\n", res.ChangedCount, inertList(res.Changed))
		}
		fmt.Fprintf(w, "pushed %s: %s (%s, %s) in %.1fs\n", inert(ref), inert(info.Chksum), inert(info.Fmt), humanBytes(info.Size), pushed.Seconds())
	})
}

// printPlan says what a capture leaves out.
func printPlan(w io.Writer, p *capture.Plan) {
	fmt.Fprintln(w, "left out:")
	for _, x := range p.Excluded {
		what := x.What
		if x.Name == "exclude" {
			what += " (" + strings.Join(x.Patterns, " ") + ")"
		}
		fmt.Fprintf(w, "  %-14s %s: %d", x.Name, inert(what), x.Count)
		if x.Count > 0 {
			fmt.Fprintf(w, ": %s", inertList(x.Paths))
			if x.Count > len(x.Paths) {
				fmt.Fprint(w, " …")
			}
		}
		fmt.Fprintln(w)
	}
	if len(p.MountPoints) > 0 {
		fmt.Fprintf(w, "mount points not crossed (kept as empty directories): %s\n", inertList(p.MountPoints))
	}
	if len(p.Emptied) > 0 {
		fmt.Fprintf(w, "kept present but emptied: %s\n", inertList(p.Emptied))
	}
	if p.NoACLCount > 0 {
		fmt.Fprintf(w, "POSIX ACLs squashfs cannot hold: %d: %s\n", p.NoACLCount, inertList(p.NoACLs))
	}
}

func inertList(l []string) string {
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = inert(s)
	}
	return strings.Join(out, ", ")
}

// readPatterns reads an --exclude-from file: one pattern a line; blank
// lines and lines starting with # are skipped.
func readPatterns(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usageError{fmt.Errorf("--exclude-from: %w", err)}
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(io.LimitReader(f, maxExcludeFrom+1))
	n := 0
	for sc.Scan() {
		n += len(sc.Bytes()) + 1
		if n > maxExcludeFrom {
			return nil, fmt.Errorf("--exclude-from %s is over %d bytes: %w", path, maxExcludeFrom, errdefs.ErrTooLarge)
		}
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, usageError{fmt.Errorf("--exclude-from %s: %w", path, err)}
	}
	return out, nil
}

// Package capture turns a running node's filesystem tree into an image
// file: squashfs (mksquashfs) or tar (GNU tar), one filesystem only, with
// what must never be in an image left out (see DefaultRules) and what it
// left out reported. Ownership, modes, setuid bits, hard links, sparse
// files, device nodes and extended attributes are kept exactly, which
// needs root; POSIX ACLs are kept by tar and refused by squashfs, which
// cannot hold them. A file that changes while it is read is reported, and
// fails the capture unless the caller allows it.
//
// It owns the walk that plans a capture (Scan, also the dry run), the
// rules, and running the tool into a file the caller names. It must never
// write outside that file and a private directory beside it, follow a
// symbolic link, enter another filesystem, or upload anything: the caller
// pushes the file through the ordinary push path.
package capture

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/depot-images/depot/errdefs"
)

// Formats.
const (
	Squashfs = "squashfs"
	Tar      = "tar"
)

// Options describe a capture.
type Options struct {
	// Root is the directory captured (an absolute path).
	Root string
	// Excludes are the caller's own patterns (see CheckPattern).
	Excludes []string
	// Keep names default rules not to apply (DefaultNames).
	Keep []string
	// DepotDirs are depot's own directories on this host (the node cache,
	// a head's data directory): left out when under Root.
	DepotDirs []string
	// Format is Squashfs or Tar; Compress zstd, xz, gzip or none.
	Format   string
	Compress string
	// AllowChanges keeps a capture in which files changed while they
	// were read (they are reported); by default it fails (ChangedError).
	AllowChanges bool
	// DropACLs lets a squashfs capture leave out the POSIX ACLs it cannot
	// hold; by default it refuses (UnkeepableError).
	DropACLs bool
	// DryRun makes Scan tolerate directories it cannot read.
	DryRun bool
	// Started, if set, is called once the tool runs (after the walk).
	Started func()
	Log     *slog.Logger
}

// Rules are the rules o applies, defaults first, then the caller's.
func (o *Options) Rules() ([]Rule, error) {
	switch o.Format {
	case Squashfs, Tar:
	default:
		return nil, fmt.Errorf("--format %q: want squashfs or tar: %w", o.Format, errdefs.ErrInvalidArgument)
	}
	switch o.Compress {
	case "zstd", "gzip", "none":
	case "xz":
		if o.Format == Tar {
			return nil, fmt.Errorf("--format tar --compress xz: depot edits tar images that are plain, gzip or zstd; use one of those: %w", errdefs.ErrInvalidArgument)
		}
	default:
		return nil, fmt.Errorf("--compress %q: want zstd, xz, gzip or none: %w", o.Compress, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(o.Root) {
		return nil, fmt.Errorf("capture root %q: want an absolute path: %w", o.Root, errdefs.ErrInvalidArgument)
	}
	rules, err := DefaultRules(o.Root, o.DepotDirs, o.Keep)
	if err != nil {
		return nil, err
	}
	var mine []string
	for _, p := range o.Excludes {
		c, err := CheckPattern(p)
		if err != nil {
			return nil, err
		}
		mine = append(mine, c)
	}
	if len(mine) > 0 {
		rules = append(rules, Rule{Name: "exclude", What: "your --exclude patterns", Patterns: mine})
	}
	return rules, nil
}

// Scan plans a capture without writing anything: what it would take, its
// estimated size, and what it would leave out.
func Scan(ctx context.Context, o Options) (*Plan, error) {
	rules, err := o.Rules()
	if err != nil {
		return nil, err
	}
	p, _, _, err := scan(ctx, &o, rules, nil, time.Time{})
	return p, err
}

// Result is a finished capture.
type Result struct {
	Plan *Plan
	// Size is the image file's size.
	Size int64
	// Start is when the capture began (before the walk).
	Start time.Time
	// Changed are the files that changed while they were read, when
	// AllowChanges kept the capture anyway; ChangedCount counts them all.
	Changed      []string
	ChangedCount int
}

// Run captures o.Root into the file out, which the caller has created
// (empty) in a directory of its choosing; Run writes only there and in a
// private directory beside it, removed when it returns. There is no
// second copy: the tool writes out, and out is what the caller uploads.
func Run(ctx context.Context, o Options, out string) (*Result, error) {
	if euid := os.Geteuid(); euid != 0 {
		return nil, &NeedRootError{EUID: euid}
	}
	o.DryRun = false
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	rules, err := o.Rules()
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(filepath.Dir(out), ".depot-capture-")
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	defer os.RemoveAll(work)
	skip := map[string]bool{}
	for _, p := range []string{out, work} {
		if rel, ok := under(o.Root, p); ok && rel != "" {
			skip[rel] = true
		}
	}
	start := time.Now()
	plan, _, _, err := scan(ctx, &o, rules, skip, time.Time{})
	if err != nil {
		return nil, err
	}
	if plan.NoACLCount > 0 && o.Format == Squashfs && !o.DropACLs {
		return nil, &UnkeepableError{Paths: plan.NoACLs, Count: plan.NoACLCount}
	}
	t := &tool{o: &o, plan: plan, out: out, work: work}
	toolChanged, stopped, err := t.run(ctx)
	if err != nil {
		return nil, err
	}
	// Whatever the tool noticed or not: every file whose inode changed
	// since the walk began (content, size, owner, mode, xattrs) changed
	// while the capture could have been reading it.
	_, changed, n, err := scan(ctx, &o, rules, skip, start)
	if err != nil {
		return nil, err
	}
	changed, n = merge(changed, n, toolChanged)
	if stopped {
		return nil, &ChangedError{Paths: changed, Count: n, Stopped: true}
	}
	if n > 0 && !o.AllowChanges {
		return nil, &ChangedError{Paths: changed, Count: n}
	}
	var st unix.Stat_t
	if err := unix.Stat(out, &st); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return &Result{Plan: plan, Size: st.Size, Start: start, Changed: changed, ChangedCount: n}, nil
}

// merge adds the tool's reports to the walk's, counting each path once.
func merge(walk []string, n int, tool []string) ([]string, int) {
	seen := map[string]bool{}
	for _, p := range walk {
		seen[p] = true
	}
	for _, p := range tool {
		if !seen[p] {
			seen[p] = true
			n++
			if len(walk) < listMax {
				walk = append(walk, p)
			}
		}
	}
	return walk, n
}

package capture

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/depot-images/depot/errdefs"
)

// listMax bounds every list a Plan shows (the counts are exact).
const listMax = 100

// Plan is what a capture takes and leaves out, from a walk of the tree
// that reads metadata only (and, for swap files, 10 bytes of each large
// file).
type Plan struct {
	Root string `json:"root"`
	// Entries is everything captured (files, directories, links, device
	// nodes, …); Files the regular files among them.
	Entries int64 `json:"entries"`
	Files   int64 `json:"files"`
	// Bytes is the estimated size: the space the captured regular files
	// take on disk (a sparse file's holes are not counted), before
	// compression.
	Bytes int64 `json:"estimated_bytes"`
	// Excluded says what each rule left out.
	Excluded []Excluded `json:"excluded"`
	// MountPoints are directories on another filesystem, kept as empty
	// directories and not entered.
	MountPoints []string `json:"mount_points,omitempty"`
	// Emptied are files kept present but empty.
	Emptied []string `json:"emptied,omitempty"`
	// NoACLs are entries with extended attributes the format cannot hold
	// (POSIX ACLs, or other system.* attributes, in squashfs); NoACLCount
	// counts them all.
	NoACLs     []string `json:"unkeepable_xattrs,omitempty"`
	NoACLCount int      `json:"unkeepable_xattrs_count,omitempty"`
	// Unreadable are directories a dry run could not list (not root).
	Unreadable []string `json:"unreadable,omitempty"`

	dev      uint64
	excludes []string  // topmost excluded paths, relative
	mounts   []special // mount points, as empty directories
	emptied  []special // files kept empty
	skip     map[string]bool
}

// Excluded is what one rule left out.
type Excluded struct {
	Rule
	// Count is the number of paths matched (a directory counts once,
	// whatever is below it); Paths the first of them.
	Count int      `json:"count"`
	Paths []string `json:"paths,omitempty"`
}

// special is an entry the tools get as a synthetic one: its path and the
// attributes to give it.
type special struct {
	rel      string
	mode     fs.FileMode
	uid, gid uint32
	mtime    time.Time
}

type scanner struct {
	o       *Options
	rules   []Rule
	plan    *Plan
	since   time.Time // when set, non-directories changed after it are collected
	changed []string
	nchange int
	page    int64
	dryRun  bool
}

// scan walks o.Root on its own filesystem, applying rules.
func scan(ctx context.Context, o *Options, rules []Rule, skip map[string]bool, since time.Time) (*Plan, []string, int, error) {
	root := o.Root
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return nil, nil, 0, fmt.Errorf("capture root %s: %w", root, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, nil, 0, fmt.Errorf("capture root %s is not a directory: %w", root, errdefs.ErrInvalidArgument)
	}
	p := &Plan{Root: root, dev: st.Dev, skip: skip}
	for _, r := range rules {
		p.Excluded = append(p.Excluded, Excluded{Rule: r})
	}
	s := &scanner{o: o, rules: rules, plan: p, since: since, page: int64(os.Getpagesize()), dryRun: o.DryRun}
	p.Entries = 1 // the root
	if err := s.dir(ctx, root, ""); err != nil {
		return nil, nil, 0, err
	}
	return p, s.changed, s.nchange, nil
}

func (s *scanner) dir(ctx context.Context, abs, rel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ents, err := os.ReadDir(abs)
	if err != nil {
		if s.dryRun && errors.Is(err, fs.ErrPermission) {
			addBounded(&s.plan.Unreadable, "/"+rel)
			return nil
		}
		return fmt.Errorf("capture: read directory %s: %w", abs, err)
	}
	for _, e := range ents {
		crel := e.Name()
		if rel != "" {
			crel = rel + "/" + e.Name()
		}
		cabs := filepath.Join(abs, e.Name())
		if s.plan.skip[crel] { // depot's own temporary files: left out silently
			s.plan.excludes = append(s.plan.excludes, crel)
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(cabs, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) { // gone since the listing
				if !s.since.IsZero() {
					s.change(crel)
				}
				continue
			}
			return fmt.Errorf("capture: %s: %w", cabs, err)
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		isReg := st.Mode&unix.S_IFMT == unix.S_IFREG
		if s.exclude(crel, cabs, &st, isReg) {
			continue
		}
		s.plan.Entries++
		if !s.since.IsZero() && !isDir && time.Unix(st.Ctim.Sec, st.Ctim.Nsec).After(s.since) {
			s.change(crel)
		}
		if s.o.Format == Squashfs && !s.o.DropACLs {
			if odd, err := oddXattrs(cabs); err != nil {
				return err
			} else if odd {
				s.plan.NoACLCount++
				addBounded(&s.plan.NoACLs, "/"+crel)
			}
		}
		switch {
		case isDir && st.Dev != s.plan.dev:
			addBounded(&s.plan.MountPoints, "/"+crel)
			s.plan.mounts = append(s.plan.mounts, specialOf(crel, &st))
		case isDir:
			if err := s.dir(ctx, cabs, crel); err != nil {
				return err
			}
		case isReg:
			s.plan.Files++
			s.plan.Bytes += min(st.Size, st.Blocks*512)
		}
	}
	return nil
}

func (s *scanner) change(rel string) {
	s.nchange++
	if len(s.changed) < listMax {
		s.changed = append(s.changed, "/"+rel)
	}
}

// exclude applies the rules to one entry, recording a match.
func (s *scanner) exclude(rel, abs string, st *unix.Stat_t, isReg bool) bool {
	for i, r := range s.rules {
		hit := false
		for _, p := range r.Patterns {
			if Match(p, rel) {
				hit = true
				break
			}
		}
		if !hit && r.Swap && isReg {
			hit = isSwap(abs, st, s.page)
		}
		if !hit {
			continue
		}
		if r.Empty {
			if !isReg {
				continue // a link or a directory by that name is left alone
			}
			addBounded(&s.plan.Emptied, "/"+rel)
			s.plan.emptied = append(s.plan.emptied, specialOf(rel, st))
			s.plan.Entries++
		}
		x := &s.plan.Excluded[i]
		x.Count++
		if len(x.Paths) < listMax {
			x.Paths = append(x.Paths, "/"+rel)
		}
		s.plan.excludes = append(s.plan.excludes, rel)
		return true
	}
	return false
}

func addBounded(l *[]string, s string) {
	if len(*l) < listMax {
		*l = append(*l, s)
	}
}

func specialOf(rel string, st *unix.Stat_t) special {
	return special{rel: rel, mode: fs.FileMode(st.Mode & 0o7777), uid: st.Uid, gid: st.Gid, mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec)}
}

// isSwap reports whether a regular file is a Linux swap area: at least 1
// MiB, whole pages, and "SWAPSPACE2" at the end of its first page.
func isSwap(abs string, st *unix.Stat_t, page int64) bool {
	if st.Size < 1<<20 || st.Size%page != 0 {
		return false
	}
	f, err := os.OpenFile(abs, os.O_RDONLY|syscall.O_NOATIME|syscall.O_NOFOLLOW, 0)
	if err != nil {
		f, err = os.OpenFile(abs, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return false
		}
	}
	defer f.Close()
	b := make([]byte, 10)
	if _, err := f.ReadAt(b, page-10); err != nil {
		return false
	}
	return string(b) == "SWAPSPACE2" || string(b) == "SWAP-SPACE"
}

// oddXattrs reports whether an entry has an extended attribute outside
// the user, trusted and security namespaces: squashfs keeps only those
// three, so POSIX ACLs (system.posix_acl_*) would be lost.
func oddXattrs(abs string) (bool, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(abs, buf)
	if errors.Is(err, unix.ERANGE) {
		sz, err2 := unix.Llistxattr(abs, nil)
		if err2 != nil {
			return false, fmt.Errorf("capture: xattrs of %s: %w", abs, err2)
		}
		buf = make([]byte, sz)
		n, err = unix.Llistxattr(abs, buf)
	}
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("capture: xattrs of %s: %w", abs, err)
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		if !strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, "trusted.") && !strings.HasPrefix(name, "security.") {
			return true, nil
		}
	}
	return false, nil
}

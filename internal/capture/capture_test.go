package capture_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/capture"
	"github.com/depot-images/depot/internal/capture/capturetest"
	"github.com/depot-images/depot/internal/testenv"
)

var ctx = context.Background()

func opts(tr *capturetest.Tree, format, compress string) capture.Options {
	return capture.Options{Root: tr.Root, Format: format, Compress: compress, Excludes: []string{"home/*/.cache"},
		DepotDirs: []string{filepath.Join(tr.Root, "var/cache/depot"), "/var/lib/depot-not-under-root"}}
}

func outFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "capture.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// unpack unpacks an image the way `depot edit` checks it out.
func unpack(t *testing.T, format, img string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	var cmd *exec.Cmd
	if format == capture.Squashfs {
		cmd = exec.Command("unsquashfs", "-quiet", "-no-progress", "-d", dir, img)
	} else {
		os.MkdirAll(dir, 0o755)
		cmd = exec.Command("tar", "-x", "-f", img, "-C", dir, "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v %s", cmd.Args, err, out)
	}
	return dir
}

// TestCaptureKeepsTheTreeExactly: squashfs and tar captures of a real
// tree unpack to the tree minus what a capture leaves out, with modes,
// set-id bits, owners, device nodes, hard links, sparseness and xattrs
// as they were (ACLs too, in tar), the tmpfs inside it not crossed, and
// the plan saying what was left out.
func TestCaptureKeepsTheTreeExactly(t *testing.T) {
	testenv.Need(t, "mksquashfs", "unsquashfs", "tar", "zstd")
	for _, c := range []struct{ format, compress string }{{capture.Squashfs, "zstd"}, {capture.Squashfs, "none"}, {capture.Tar, "zstd"}, {capture.Tar, "none"}} {
		t.Run(c.format+"-"+c.compress, func(t *testing.T) {
			withACL := c.format == capture.Tar
			tr := capturetest.Build(t, withACL)
			out := outFile(t)
			res, err := capture.Run(ctx, opts(tr, c.format, c.compress), out)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(out)
			if res.Size == 0 || res.Size != fi.Size() || res.ChangedCount != 0 {
				t.Errorf("result: size %d (file %d), %d changed", res.Size, fi.Size(), res.ChangedCount)
			}
			tr.Compare(t, unpack(t, c.format, out), withACL)
			p := res.Plan
			if !slices.Equal(p.MountPoints, []string{"/mnt/scratch"}) || !slices.Equal(p.Emptied, []string{"/etc/machine-id"}) {
				t.Errorf("plan: mount points %v, emptied %v", p.MountPoints, p.Emptied)
			}
			left := map[string][]string{}
			for _, x := range p.Excluded {
				left[x.Name] = x.Paths
			}
			for rule, want := range map[string][]string{"proc": {"/proc/1"}, "dev": {"/dev/null"}, "tmp": {"/tmp/scratch", "/var/tmp/scratch"},
				"depot": {"/var/cache/depot"}, "swap": {"/swapfile"}, "ssh-host-keys": {"/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub"},
				"exclude": {"/home/ann/.cache"}, "machine-id": {"/etc/machine-id"}} {
				if !slices.Equal(left[rule], want) {
					t.Errorf("rule %s left out %v, want %v", rule, left[rule], want)
				}
			}
			// The directory beside the output is gone.
			if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
				t.Errorf("beside the output: %v", ents)
			}
		})
	}
}

// TestCaptureKeepFlags: a kept default is captured as it is.
func TestCaptureKeepFlags(t *testing.T) {
	testenv.Need(t, "mksquashfs", "unsquashfs")
	tr := capturetest.Build(t, false)
	o := opts(tr, capture.Squashfs, "gzip")
	o.Keep = []string{"machine-id", "tmp"}
	out := outFile(t)
	if _, err := capture.Run(ctx, o, out); err != nil {
		t.Fatal(err)
	}
	got := unpack(t, capture.Squashfs, out)
	if b, _ := os.ReadFile(filepath.Join(got, "etc/machine-id")); len(b) == 0 {
		t.Error("--keep machine-id: emptied anyway")
	}
	if _, err := os.Stat(filepath.Join(got, "tmp/scratch")); err != nil {
		t.Errorf("--keep tmp: %v", err)
	}
	o.Keep = []string{"etc"}
	if _, err := capture.Run(ctx, o, out); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("--keep etc: %v", err)
	}
}

// TestCaptureSquashfsRefusesACLs: squashfs cannot hold POSIX ACLs; the
// capture says so and writes nothing, unless told to drop them.
func TestCaptureSquashfsRefusesACLs(t *testing.T) {
	testenv.Need(t, "mksquashfs", "unsquashfs")
	tr := capturetest.Build(t, true)
	out := outFile(t)
	_, err := capture.Run(ctx, opts(tr, capture.Squashfs, "zstd"), out)
	var ue *capture.UnkeepableError
	if !errors.As(err, &ue) || !errors.Is(err, errdefs.ErrInvalidArgument) || !slices.Equal(ue.Paths, []string{"/srv/acl"}) || !strings.Contains(err.Error(), "--format tar") {
		t.Fatalf("squashfs of a tree with an ACL: %v", err)
	}
	if fi, _ := os.Stat(out); fi.Size() != 0 {
		t.Errorf("the refused capture wrote %d bytes", fi.Size())
	}
	o := opts(tr, capture.Squashfs, "zstd")
	o.DropACLs = true
	if _, err := capture.Run(ctx, o, out); err != nil {
		t.Fatalf("--drop-acls: %v", err)
	}
	tr.Compare(t, unpack(t, capture.Squashfs, out), false)
}

// TestCaptureReportsChangedFiles: a file written while the tool runs is
// reported. Kept growing, it fails the capture (mksquashfs, which would
// re-read it for ever, is stopped); changed once with changes allowed,
// the capture is kept and names it.
func TestCaptureReportsChangedFiles(t *testing.T) {
	testenv.Need(t, "mksquashfs", "tar")
	for _, format := range []string{capture.Squashfs, capture.Tar} {
		t.Run(format+"/growing", func(t *testing.T) {
			tr := capturetest.Build(t, false)
			log := filepath.Join(tr.Root, "var/log/growing")
			os.WriteFile(log, make([]byte, 4<<20), 0o644)
			o := opts(tr, format, "none")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			o.Started = func() {
				appendTo(t, log) // at least once while the tool runs: deterministic
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
							appendTo(t, log)
						}
					}
				})
			}
			_, err := capture.Run(ctx, o, outFile(t))
			close(stop)
			wg.Wait()
			var ce *capture.ChangedError
			if !errors.As(err, &ce) || !errors.Is(err, errdefs.ErrConflict) || !slices.Contains(ce.Paths, "/var/log/growing") {
				t.Fatalf("capture of a growing file: %v", err)
			}
			if !strings.Contains(err.Error(), "--allow-changes") && !ce.Stopped {
				t.Errorf("the error does not say what to do: %v", err)
			}
		})
		t.Run(format+"/allowed", func(t *testing.T) {
			tr := capturetest.Build(t, false)
			log := filepath.Join(tr.Root, "var/log/changed")
			os.WriteFile(log, []byte("before\n"), 0o644)
			o := opts(tr, format, "none")
			o.AllowChanges = true
			o.Started = func() { appendTo(t, log) }
			res, err := capture.Run(ctx, o, outFile(t))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(res.Changed, "/var/log/changed") || res.ChangedCount < 1 {
				t.Errorf("changed: %v (%d)", res.Changed, res.ChangedCount)
			}
		})
	}
	t.Run("squashfs/kept-growing-allowed", func(t *testing.T) {
		tr := capturetest.Build(t, false)
		log := filepath.Join(tr.Root, "var/log/growing")
		os.WriteFile(log, make([]byte, 4<<20), 0o644)
		o := opts(tr, capture.Squashfs, "none")
		o.AllowChanges = true
		stop := make(chan struct{})
		var wg sync.WaitGroup
		o.Started = func() {
			appendTo(t, log)
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
						appendTo(t, log)
					}
				}
			})
		}
		done := make(chan struct{})
		var res *capture.Result
		var err error
		go func() { res, err = capture.Run(ctx, o, outFile(t)); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			t.Fatal("a capture of a file that keeps growing did not end")
		}
		close(stop)
		wg.Wait()
		// Either mksquashfs got a stable read (kept, reported) or it was
		// stopped: never a hang, never silent.
		var ce *capture.ChangedError
		if err == nil {
			if !slices.Contains(res.Changed, "/var/log/growing") {
				t.Errorf("kept without reporting the file: %v", res.Changed)
			}
		} else if !errors.As(err, &ce) || !ce.Stopped || !slices.Contains(ce.Paths, "/var/log/growing") {
			t.Errorf("capture: %v", err)
		}
	})
}

func appendTo(t *testing.T, p string) {
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Error(err)
		return
	}
	f.Write(make([]byte, 64<<10))
	f.Close()
}

// TestDryRunWritesNothing: Scan counts and estimates without writing: the
// tree and its parent are unchanged, to the nanosecond.
func TestDryRunWritesNothing(t *testing.T) {
	tr := capturetest.Build(t, false)
	before := snapshot(t, filepath.Dir(tr.Root))
	o := opts(tr, capture.Squashfs, "zstd")
	o.DryRun = true
	p, err := capture.Scan(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, filepath.Dir(tr.Root)); !slices.Equal(before, after) {
		t.Errorf("the dry run changed the tree:\n%v\n%v", before, after)
	}
	// 8 KiB of the sparse file, the busybox copies, and the small files.
	bb, _ := exec.LookPath("busybox")
	fi, _ := os.Stat(bb)
	if p.Bytes < 2*fi.Size()+8192 || p.Bytes > 2*fi.Size()+1<<20 || p.Files < 10 || p.Entries <= p.Files {
		t.Errorf("plan: %d entries, %d files, %d bytes (busybox is %d)", p.Entries, p.Files, p.Bytes, fi.Size())
	}
}

func snapshot(t *testing.T, dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		out = append(out, p+" "+fi.Mode().String()+" "+fi.ModTime().String()+" "+string(rune(fi.Size())))
		return nil
	})
	return out
}

// TestPatterns: a caller's patterns are anchored at the root, * stays in
// one component, ** spans directories, and an escaped name matches only
// itself, in both tools.
func TestPatterns(t *testing.T) {
	for _, c := range []struct {
		pat, rel string
		want     bool
	}{
		{"var/log/*.gz", "var/log/a.gz", true},
		{"var/log/*.gz", "var/log/x/a.gz", false},
		{"*.gz", "var/a.gz", false},
		{"**/*.gz", "var/log/x/a.gz", true},
		{"**/*.gz", "a.gz", true},
		{"home/*/.cache", "home/ann/.cache", true},
		{capture.EscapePattern("a*[b]"), "a*[b]", true},
		{capture.EscapePattern("a*[b]"), "axb", false},
	} {
		p, err := capture.CheckPattern(c.pat)
		if err != nil {
			t.Fatal(err)
		}
		if got := capture.Match(p, c.rel); got != c.want {
			t.Errorf("Match(%q, %q) = %v", c.pat, c.rel, got)
		}
	}
	for _, bad := range []string{"", "/", "a/../b", "a/[", "./a"} {
		if _, err := capture.CheckPattern(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("CheckPattern(%q) = %v", bad, err)
		}
	}
	testenv.Need(t, "mksquashfs", "unsquashfs", "tar")
	for _, format := range []string{capture.Squashfs, capture.Tar} {
		t.Run(format, func(t *testing.T) {
			tr := capturetest.Build(t, false)
			odd := []string{" lead", "trail ", "new\nline", "star*", "br[a]ck", ".hidden", "back\\slash", "tab\tx", "ü"}
			for _, n := range append(odd, "a*", "ab") {
				os.MkdirAll(filepath.Join(tr.Root, "odd"), 0o755)
				os.WriteFile(filepath.Join(tr.Root, "odd", n), []byte(n), 0o644)
			}
			o := opts(tr, format, "none")
			o.Excludes = append(o.Excludes, `odd/a\*`)
			for _, n := range odd {
				o.Excludes = append(o.Excludes, "odd/"+capture.EscapePattern(n))
			}
			out := outFile(t)
			if _, err := capture.Run(ctx, o, out); err != nil {
				t.Fatal(err)
			}
			ents, _ := os.ReadDir(filepath.Join(unpack(t, format, out), "odd"))
			if len(ents) != 1 || ents[0].Name() != "ab" {
				t.Errorf("odd/ holds %v, want only ab", ents)
			}
		})
	}
}

package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/depot-images/depot/errdefs"
)

// maxRereads is how often mksquashfs may re-read one changing file, with
// changes allowed, before the capture stops: it would re-read a file that
// keeps growing for ever.
const maxRereads = 3

// tool runs mksquashfs or tar for one capture.
type tool struct {
	o    *Options
	plan *Plan
	out  string
	work string // private directory: exclude list, pseudo file, staged files
}

// run runs the tool into t.out and returns the files it said changed
// while it read them, and whether it had to be stopped for one.
func (t *tool) run(ctx context.Context) (changed []string, stopped bool, err error) {
	var args []string
	var name string
	switch t.o.Format {
	case Squashfs:
		name = "mksquashfs"
		args, err = t.squashfsArgs()
	default:
		name = "tar"
		args, err = t.tarArgs()
	}
	if err != nil {
		return nil, false, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // tar's compressor goes with it
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, false, err
	}
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("capture: start %s (install squashfs-tools or tar): %w", name, err)
	}
	if t.o.Started != nil {
		t.o.Started()
	}
	w := &watcher{t: t, tool: name, stop: cancel, rereads: map[string]int{}}
	readErr := w.read(stderr) // to EOF: the tool has exited, or been killed
	waitErr := cmd.Wait()
	t.o.Log.Debug("capture tool done", "tool", name, "err", waitErr)
	if w.stopped {
		return w.changed, true, nil
	}
	if w.stoppedChanged {
		return w.changed, false, &ChangedError{Paths: w.changed, Count: len(w.changed)}
	}
	if err := ctx.Err(); err != nil { // only the caller's context ends it otherwise
		return nil, false, err
	}
	var ee *exec.ExitError
	if name == "tar" && errors.As(waitErr, &ee) && ee.ExitCode() == 1 {
		// GNU tar: "some files differ", that is, changed while read.
		if len(w.changed) == 0 {
			return []string{"(tar did not say which)"}, false, nil
		}
		return w.changed, false, nil
	}
	if waitErr != nil {
		return nil, false, fmt.Errorf("capture: %s failed: %v: %s", name, waitErr, w.tail())
	}
	if readErr != nil {
		return nil, false, readErr
	}
	return w.changed, false, nil
}

// watcher reads a tool's stderr: it keeps the last lines for an error
// message and picks out the files the tool says changed.
type watcher struct {
	t    *tool
	tool string
	stop context.CancelFunc

	last           []string
	changed        []string
	rereads        map[string]int
	stopped        bool // a file kept changing
	stoppedChanged bool // stopped at the first change (not allowed)
}

func (w *watcher) read(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			w.line(strings.TrimRight(string(line), "\n"))
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			// An over-long line: skip the rest of it.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

func (w *watcher) line(l string) {
	if len(w.last) == 20 {
		w.last = w.last[1:]
	}
	w.last = append(w.last, l)
	rel, ok := w.changedPath(l)
	if !ok {
		return
	}
	p := "/" + rel
	if w.rereads[p] == 0 && len(w.changed) < listMax {
		w.changed = append(w.changed, p)
	}
	w.rereads[p]++
	switch {
	case !w.t.o.AllowChanges && w.tool == "mksquashfs":
		w.stoppedChanged = true
		w.stop()
	case w.rereads[p] > maxRereads && w.tool == "mksquashfs":
		w.stopped = true
		w.stop()
	}
}

// changedPath recognises a tool's "this file changed" message.
func (w *watcher) changedPath(l string) (string, bool) {
	root := strings.TrimRight(w.t.o.Root, "/") + "/"
	if w.tool == "mksquashfs" {
		// File <root>/<rel> changed size while reading filesystem, attempting to re-read
		const pre, suf = "File ", " changed size while reading filesystem, attempting to re-read"
		if strings.HasPrefix(l, pre) && strings.HasSuffix(l, suf) {
			return strings.TrimPrefix(l[len(pre):len(l)-len(suf)], root), true
		}
		return "", false
	}
	// tar: ./<rel>: file changed as we read it (or shrank, or was removed)
	for _, suf := range []string{": file changed as we read it", ": File removed before we read it", ": file removed before we read it"} {
		if strings.HasPrefix(l, "tar: ./") && strings.HasSuffix(l, suf) {
			return l[len("tar: ./") : len(l)-len(suf)], true
		}
	}
	if strings.HasPrefix(l, "tar: ./") && strings.Contains(l, ": File shrank by ") {
		return l[len("tar: ./"):strings.Index(l, ": File shrank by ")], true
	}
	return "", false
}

func (w *watcher) tail() string { return strings.Join(w.last, "; ") }

// squashfsArgs: mksquashfs on the root, one filesystem, the compression
// asked for, mount points and emptied files as pseudo definitions, and the
// exclusions as escaped (literal) wildcard patterns.
func (t *tool) squashfsArgs() ([]string, error) {
	args := []string{t.o.Root, t.out, "-noappend", "-no-progress", "-quiet", "-one-file-system", "-xattrs"}
	switch t.o.Compress {
	case "none":
		args = append(args, "-noI", "-noD", "-noF", "-noX")
	default:
		args = append(args, "-comp", t.o.Compress)
	}
	var pseudo strings.Builder
	for _, m := range t.plan.mounts {
		name, err := pseudoName(m.rel)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&pseudo, "%s d %04o %d %d\n", name, m.mode, m.uid, m.gid)
	}
	for _, e := range t.plan.emptied {
		name, err := pseudoName(e.rel)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&pseudo, "%s f %04o %d %d true\n", name, e.mode, e.uid, e.gid)
	}
	if pseudo.Len() > 0 {
		pf := filepath.Join(t.work, "pseudo")
		if err := os.WriteFile(pf, []byte(pseudo.String()), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "-pf", pf)
	}
	var list strings.Builder
	var odd []string
	for _, rel := range t.plan.excludes {
		if plainLine(rel) {
			list.WriteString(escapeFnmatch(rel) + "\n")
		} else {
			odd = append(odd, escapeFnmatch(rel))
		}
	}
	ef := filepath.Join(t.work, "exclude")
	if err := os.WriteFile(ef, []byte(list.String()), 0o600); err != nil {
		return nil, err
	}
	args = append(args, "-wildcards", "-ef", ef)
	if len(odd) > 0 {
		args = append(append(args, "-e"), odd...) // -e takes the rest of the line
	}
	return args, nil
}

// tarArgs: GNU tar of the root, one filesystem, numeric owners, sparse
// files, every xattr and ACL; the emptied files first, from a staging
// directory, then the tree with the exclusions as literal anchored names
// (tar's exclusions apply to the members named after them).
func (t *tool) tarArgs() ([]string, error) {
	args := []string{"--create", "--file", t.out, "--one-file-system", "--numeric-owner", "--sparse",
		"--xattrs", "--xattrs-include=*", "--acls", "--format=posix"}
	switch t.o.Compress {
	case "zstd":
		args = append(args, "--use-compress-program=zstd -T0 -q")
	case "gzip":
		args = append(args, "--use-compress-program=gzip")
	}
	if len(t.plan.emptied) > 0 {
		stage := filepath.Join(t.work, "stage")
		args = append(args, "--directory", stage)
		for _, e := range t.plan.emptied {
			p := filepath.Join(stage, e.rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return nil, err
			}
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				return nil, err
			}
			if err := os.Lchown(p, int(e.uid), int(e.gid)); err != nil {
				return nil, err
			}
			if err := os.Chmod(p, e.mode); err != nil {
				return nil, err
			}
			if err := os.Chtimes(p, e.mtime, e.mtime); err != nil {
				return nil, err
			}
			args = append(args, "./"+e.rel)
		}
	}
	args = append(args, "--anchored", "--no-wildcards")
	var list strings.Builder
	for _, rel := range t.plan.excludes {
		if plainLine(rel) {
			list.WriteString("./" + rel + "\n")
		} else {
			args = append(args, "--exclude=./"+rel)
		}
	}
	ef := filepath.Join(t.work, "exclude")
	if err := os.WriteFile(ef, []byte(list.String()), 0o600); err != nil {
		return nil, err
	}
	return append(args, "--exclude-from="+ef, "--directory", t.o.Root, "."), nil
}

// plainLine reports whether a name can be one line of an exclude file:
// no control characters and no blank at either end.
func plainLine(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return !strings.HasPrefix(s, " ") && !strings.HasSuffix(s, " ") && !strings.Contains(s, "/ ") && !strings.Contains(s, " /")
}

// escapeFnmatch makes rel a wildcard pattern matching only itself
// (mksquashfs matches -wildcards with fnmatch: a backslash makes any
// character literal).
func escapeFnmatch(rel string) string {
	var b strings.Builder
	for _, r := range rel {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '/') {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// pseudoName escapes rel for a mksquashfs pseudo definition.
func pseudoName(rel string) (string, error) {
	var b strings.Builder
	for _, r := range rel {
		switch {
		case r == '\n' || r == '\r':
			return "", fmt.Errorf("capture: %s has a line break in its name, which mksquashfs cannot be told about; use --format tar: %w", strconv.Quote(rel), errdefs.ErrInvalidArgument)
		case r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '/' || r == '.' || r == '_' || r == '-':
		default:
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String(), nil
}

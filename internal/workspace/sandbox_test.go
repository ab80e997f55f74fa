package workspace

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/server/servertest"
)

// probeSrc is a small static program for the sandbox tests:
//
//	probe euid           prints the effective UID (run setuid root as nobody)
//	probe escape MARKER  the classic chroot escape (mkdir, chroot into it,
//	                     chdir .. many times, chroot .), then writes MARKER
const probeSrc = `package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

func must(what string, err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(3)
	}
}

func main() {
	switch os.Args[1] {
	case "euid":
		fmt.Printf("euid=%d\n", os.Geteuid())
	case "escape":
		must("mkdir jail", os.MkdirAll("/escape-jail", 0o755))
		must("chroot jail", syscall.Chroot("/escape-jail"))
		for range 64 {
			syscall.Chdir("..")
		}
		must("chroot .", syscall.Chroot("."))
		must("mkdir marker dir", os.MkdirAll(filepath.Dir(os.Args[2]), 0o755))
		must("write marker", os.WriteFile(os.Args[2], []byte("escaped\n"), 0o644))
		fmt.Println("chroot escape done, wrote", os.Args[2])
	}
}
`

var probeOnce struct {
	sync.Once
	path string
	err  error
}

// probe builds probeSrc once per test binary (static, CGO off) and returns
// its path.
func probe(t *testing.T) string {
	t.Helper()
	need(t, "go")
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "depot-probe")
		if err != nil {
			probeOnce.err = err
			return
		}
		src := filepath.Join(dir, "probe.go")
		if err := os.WriteFile(src, []byte(probeSrc), 0o644); err != nil {
			probeOnce.err = err
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "probe"), src)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeOnce.err = errors.New(string(out))
			return
		}
		probeOnce.path = filepath.Join(dir, "probe")
	})
	if probeOnce.err != nil {
		t.Fatalf("build probe: %v", probeOnce.err)
	}
	return probeOnce.path
}

func copyExec(t *testing.T, src, dst string, mode fs.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil { // after the umask
		t.Fatal(err)
	}
}

// asNobody runs argv as uid/gid 65534 with no supplementary groups.
// setpriv keeps root's capabilities up to its own execve (it sets
// PR_SET_KEEPCAPS), so that execve would still find argv[0] through a
// 0700 directory; a shell started by it runs as nobody with no
// capabilities, and its exec is the one that must be refused.
func asNobody(argv ...string) (string, error) {
	args := append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c", `exec "$@"`, "sh"}, argv...)
	out, err := exec.Command("setpriv", args...).CombinedOutput()
	return string(out), err
}

// TestWorkspaceUnreachableByOthers: a checkout keeps setuid-root binaries
// (the image needs them), so no other user may reach <cache>/work: it and
// every workspace are 0700, on a new cache and on an old one that had
// them 0755.
func TestWorkspaceUnreachableByOthers(t *testing.T) {
	need(t, "setpriv")
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (depot runs as root on nodes)")
	}
	prog := probe(t)
	// A world-readable base like /var/cache, so only depot's own modes
	// can keep nobody out.
	base, err := os.MkdirTemp("", "depot-perm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)

	// The control: the same setuid copy, reachable, gives nobody euid 0.
	// Without it a "permission denied" below could mean nosuid or a
	// broken setpriv.
	copyExec(t, prog, filepath.Join(base, "probe"), 0o755|fs.ModeSetuid)
	if out, err := asNobody(filepath.Join(base, "probe"), "euid"); err != nil || strings.TrimSpace(out) != "euid=0" {
		t.Fatalf("control: a reachable setuid-root copy run as nobody: %v %q", err, out)
	}

	c, _ := newServer(t)
	root := rootfs(t)
	copyExec(t, prog, filepath.Join(root, "bin", "probe"), 0o755|fs.ModeSetuid)
	servertest.Push(t, c, "suid", squash(t, root))
	cc := filepath.Join(base, "cache")
	m := newManagerAt(t, c, cc)
	st, err := m.Edit(ctx, "suid", EditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(st.Dir, "root", "bin", "probe")
	if fi, err := os.Stat(inside); err != nil || fi.Mode()&fs.ModeSetuid == 0 {
		t.Fatalf("the checkout should keep the setuid bit (the image needs it): %v %v", fi, err)
	}
	reach := func(when string) {
		t.Helper()
		for _, d := range []string{m.Cache.WorkDir(), st.Dir} {
			if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("%s: %s has mode %v (%v), want 0700", when, d, fi.Mode().Perm(), err)
			}
		}
		out, err := asNobody(inside, "euid")
		if err == nil || strings.Contains(out, "euid=") || !strings.Contains(out, "Permission denied") {
			t.Fatalf("%s: nobody ran the checkout's setuid-root copy: %v %q", when, err, out)
		}
	}
	reach("new cache")

	// A cache from before: work/ and the workspace 0755. Opening the
	// workspaces (any of ls, show, edit, commit) tightens them.
	os.Chmod(m.Cache.WorkDir(), 0o755)
	os.Chmod(st.Dir, 0o755)
	if out, err := asNobody(inside, "euid"); err != nil || strings.TrimSpace(out) != "euid=0" {
		t.Fatalf("old layout: the setuid copy should be reachable before tightening: %v %q", err, out)
	}
	if _, err := m.List(ctx); err != nil {
		t.Fatal(err)
	}
	reach("old cache after ls")
}

func newManagerAt(t *testing.T, c *client.Client, dir string) *Manager {
	t.Helper()
	cc, err := cache.Open(dir, cache.Options{Depot: c})
	if err != nil {
		t.Fatal(err)
	}
	return &Manager{Cache: cc, Client: c}
}

// sandboxed checks out a fresh image (rootfs) and returns its manager and
// workspace root.
func sandboxed(t *testing.T) (*Manager, string) {
	t.Helper()
	need(t, "bwrap")
	c, _ := newServer(t)
	servertest.Push(t, c, "box", squash(t, rootfs(t)))
	m := newManager(t, c)
	st, err := m.Edit(ctx, "box", EditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m, filepath.Join(st.Dir, "root")
}

// TestExecCannotEscape: the classic chroot escape run by --exec writes its
// marker inside the workspace root, never at the host path it names.
func TestExecCannotEscape(t *testing.T) {
	prog := probe(t)
	m, root := sandboxed(t)
	copyExec(t, prog, filepath.Join(root, "probe"), 0o755)
	marker := filepath.Join(t.TempDir(), "escaped")
	var out, errb bytes.Buffer
	_, err := m.Edit(ctx, "box", EditOptions{Exec: "/probe escape " + marker, Stdout: &out, Stderr: &errb})
	if _, serr := os.Stat(marker); serr == nil {
		t.Fatalf("the --exec command escaped the workspace and wrote %s on the host (%s%s)", marker, out.String(), errb.String())
	}
	if err != nil {
		t.Fatalf("the escape program should run (and stay inside): %v %s%s", err, out.String(), errb.String())
	}
	// It ran, chroot and all, and its "host" write landed in the root.
	if b, err := os.ReadFile(filepath.Join(root, marker)); err != nil || string(b) != "escaped\n" {
		t.Fatalf("the marker should be inside the workspace root: %v %q (%s%s)", err, b, out.String(), errb.String())
	}
}

// TestExecNeedsBwrap: without bwrap --exec refuses with an install hint;
// it never falls back to chroot.
func TestExecNeedsBwrap(t *testing.T) {
	m, root := sandboxed(t)
	empty := t.TempDir()
	t.Setenv("PATH", empty)
	var out bytes.Buffer
	_, err := m.Edit(ctx, "box", EditOptions{Exec: "echo ran > /ran", Stdout: &out, Stderr: &out})
	if !errors.Is(err, ErrNoSandbox) || !strings.Contains(err.Error(), "install bubblewrap") {
		t.Fatalf("--exec without bwrap: %v, want ErrNoSandbox with an install hint", err)
	}
	if _, err := os.Stat(filepath.Join(root, "ran")); err == nil {
		t.Fatal("the command ran without a sandbox")
	}
}

// ifaces lists the interface names in a /proc/net/dev.
func ifaces(dev string) []string {
	var out []string
	for _, l := range strings.Split(dev, "\n") {
		if name, _, ok := strings.Cut(l, ":"); ok && !strings.Contains(name, "|") {
			out = append(out, strings.TrimSpace(name))
		}
	}
	slices.Sort(out)
	return out
}

// TestExecSandbox: by default the sandbox has its own network (only lo),
// its own PID namespace and hostname, a read-only /proc/sys, and none of
// depot's environment (DEPOT_TOKEN). --network shares the host's network.
func TestExecSandbox(t *testing.T) {
	m, root := sandboxed(t)
	t.Setenv("DEPOT_TOKEN", "secret-token-must-not-leak")
	run := func(network bool, script string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if _, err := m.Edit(ctx, "box", EditOptions{Exec: script, Network: network, Stdout: &out, Stderr: &errb}); err != nil {
			t.Fatalf("%s: %v %s", script, err, errb.String())
		}
		return out.String() + errb.String()
	}
	if got := ifaces(run(false, "busybox cat /proc/net/dev")); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("default network: interfaces %v, want only lo", got)
	}
	host, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ifaces(run(true, "busybox cat /proc/net/dev")), ifaces(string(host)); !slices.Equal(got, want) {
		t.Errorf("--network: interfaces %v, want the host's %v", got, want)
	}
	if out := run(false, "busybox env"); strings.Contains(out, "secret-token") || !strings.Contains(out, "PATH=") {
		t.Errorf("the sandbox environment leaks depot's or lacks PATH:\n%s", out)
	}
	// PID 1 is the sandbox's own; there are few processes.
	if out := run(false, "busybox ls /proc | busybox grep -c '^[0-9]'"); strings.TrimSpace(out) == "" || len(strings.TrimSpace(out)) > 1 {
		t.Errorf("the sandbox sees %s processes: not its own PID namespace", strings.TrimSpace(out))
	}
	// Writing /proc/sys (core_pattern would run a host program as root)
	// is refused. The write puts back the value just read, so it changes
	// nothing even where it would succeed.
	if out := run(false, "busybox cat /proc/sys/kernel/hostname > /proc/sys/kernel/hostname; echo rc=$?"); !strings.Contains(out, "Read-only file system") || strings.Contains(out, "rc=0") {
		t.Errorf("/proc/sys is writable in the sandbox: %s", out)
	}
	// Root keeps exactly the allowlisted capabilities, and cannot gain more
	// by exec (no_new_privs).
	status := run(false, "busybox cat /proc/self/status")
	var want uint64
	for _, c := range sandboxCaps {
		bit, ok := capBits[c]
		if !ok {
			t.Fatalf("unknown capability %s", c)
		}
		want |= 1 << bit
	}
	for _, field := range []string{"CapEff", "CapPrm"} {
		var got uint64
		for _, l := range strings.Split(status, "\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				got, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			}
		}
		if got != want {
			t.Errorf("%s in the sandbox = %x, want %x (%v)", field, got, want, sandboxCaps)
		}
		for _, c := range []string{"CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_MKNOD", "CAP_SYS_MODULE", "CAP_NET_ADMIN"} {
			if got&(1<<capBits[c]) != 0 {
				t.Errorf("%s holds %s", field, c)
			}
		}
	}
	if !strings.Contains(status, "NoNewPrivs:\t1") {
		t.Errorf("no_new_privs is not set in the sandbox:\n%s", status)
	}
	// Mount points the sandbox needed are not left in the image.
	for _, d := range []string{"proc", "dev"} {
		if _, err := os.Lstat(filepath.Join(root, d)); err == nil {
			t.Errorf("--exec left /%s in a root that had none", d)
		}
	}
}

// capBits are the capability numbers of linux/capability.h that the
// sandbox test looks at.
var capBits = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
	"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_ADMIN": 12, "CAP_SYS_MODULE": 16,
	"CAP_SYS_CHROOT": 18, "CAP_SYS_ADMIN": 21, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}

// TestExecRefusesLinkedMountPoint: an image whose /proc is a symlink is
// refused before bwrap would follow it to mount there.
func TestExecRefusesLinkedMountPoint(t *testing.T) {
	m, root := sandboxed(t)
	if err := os.Symlink("/etc", filepath.Join(root, "proc")); err != nil {
		t.Fatal(err)
	}
	_, err := m.Edit(ctx, "box", EditOptions{Exec: "echo ran > /ran"})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "/proc") {
		t.Fatalf("a symlinked /proc: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "ran")); err == nil {
		t.Fatal("the command ran")
	}
}

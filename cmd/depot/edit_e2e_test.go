package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/depot-images/depot/internal/cli"
	"github.com/depot-images/depot/internal/testenv"
)

// TestEditExecSandbox: `depot edit --exec` runs in bubblewrap with no
// network unless --network; without bwrap on PATH it refuses with an
// install hint (and runs nothing); --network without --exec is a usage
// error; the workspace directory is private.
func TestEditExecSandbox(t *testing.T) {
	testenv.Need(t, "mksquashfs", "unsquashfs", "busybox", "bwrap")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	bb, _ := exec.LookPath("busybox")
	b, _ := os.ReadFile(bb)
	os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	img := filepath.Join(t.TempDir(), "root.squashfs")
	if out, err := exec.Command("mksquashfs", root, img, "-noappend", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	data := t.TempDir()
	h := startServe(t, data)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + cacheDir}
	if _, errs, code := run(t, env, "image", "push", "node", img); code != 0 {
		t.Fatalf("push: %s", errs)
	}
	out, errs, code := run(t, env, "edit", "node", "--exec", "busybox cat /proc/net/dev")
	if code != 0 {
		t.Fatalf("edit --exec: %d %s", code, errs)
	}
	if got := netIfaces(out); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("the default sandbox has interfaces %v, want only lo", got)
	}
	host, _ := os.ReadFile("/proc/net/dev")
	out, errs, code = run(t, env, "edit", "node", "--network", "--exec", "busybox cat /proc/net/dev")
	if got, want := netIfaces(out), netIfaces(string(host)); code != 0 || !slices.Equal(got, want) {
		t.Errorf("--network: interfaces %v, want the host's %v (exit %d, %s)", got, want, code, errs)
	}
	if fi, err := os.Stat(filepath.Join(cacheDir, "work")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("work/ is %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	// No bwrap: refused, with the hint, and nothing ran.
	_, errs, code = run(t, append(env, "PATH="+t.TempDir()), "edit", "node", "--exec", "busybox touch /ran")
	if code != cli.ExitError || !strings.Contains(errs, "install bubblewrap") {
		t.Errorf("--exec without bwrap: exit %d, %s", code, errs)
	}
	matches, _ := filepath.Glob(filepath.Join(cacheDir, "work", "*", "root", "ran"))
	if len(matches) != 0 {
		t.Errorf("--exec without bwrap ran the command: %v", matches)
	}
	if _, errs, code := run(t, env, "edit", "node", "--network"); code != cli.ExitUsage {
		t.Errorf("--network without --exec: exit %d, %s", code, errs)
	}
}

var ifaceRE = regexp.MustCompile(`(?m)^\s*([^\s:|]+):\s+\d`)

// netIfaces lists the interfaces named in /proc/net/dev text.
func netIfaces(s string) []string {
	var out []string
	for _, m := range ifaceRE.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	slices.Sort(out)
	return out
}

package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/internal/capture/capturetest"
	"github.com/depot-images/depot/internal/cli"
	"github.com/depot-images/depot/internal/testenv"
)

// TestCaptureEditRoundTrip: `depot image capture` of a real tree (busybox
// root, setuid and setgid files, device nodes, hard links, a sparse file,
// xattrs, ACLs in tar, a tmpfs mounted inside) against a real `depot
// serve`, then `depot edit` of the image: the workspace holds the tree
// minus what a capture leaves out, exactly. image history says how the
// revision was made.
func TestCaptureEditRoundTrip(t *testing.T) {
	testenv.Need(t, "mksquashfs", "unsquashfs", "tar", "zstd")
	data := t.TempDir()
	h := startServe(t, data)
	for _, format := range []string{"squashfs", "tar"} {
		t.Run(format, func(t *testing.T) {
			withACL := format == "tar"
			tr := capturetest.Build(t, withACL)
			cache := t.TempDir()
			env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_TOKEN_FILE=", "DEPOT_CACHE=" + cache}
			name := "gold-" + format
			out, errs, code := run(t, env, "image", "capture", name, tr.Root, "--format", format, "--exclude", "/home/*/.cache", "-m", "golden")
			if code != 0 {
				t.Fatalf("capture: %d %s %s", code, out, errs)
			}
			for _, want := range []string{"left out:", "/proc/1", "/etc/ssh/ssh_host_ed25519_key", "/swapfile", "/var/cache/depot",
				"mount points not crossed (kept as empty directories): /mnt/scratch", "kept present but emptied: /etc/machine-id", "pushed " + name + ": sha256:"} {
				if !strings.Contains(out, want) {
					t.Errorf("capture output lacks %q:\n%s", want, out)
				}
			}
			out, errs, code = run(t, env, "edit", name, "--json")
			if code != 0 {
				t.Fatalf("edit: %d %s %s", code, out, errs)
			}
			var st struct {
				Dir string `json:"dir"`
			}
			if err := json.Unmarshal([]byte(out), &st); err != nil || st.Dir == "" {
				t.Fatalf("edit --json: %s %v", out, err)
			}
			tr.Compare(t, filepath.Join(st.Dir, "root"), withACL)

			out, _, _ = run(t, env, "image", "history", name)
			host, _ := os.Hostname()
			if !strings.Contains(out, "capture of "+host+":"+tr.Root+" ("+format+", zstd, excludes: proc/*, sys/*") || !strings.Contains(out, "home/*/.cache") {
				t.Errorf("image history:\n%s", out)
			}
			out, _, _ = run(t, env, "image", "history", name, "--json")
			var revs []api.Revision
			if err := json.Unmarshal([]byte(out), &revs); err != nil || len(revs) != 1 || revs[0].Provenance == nil || revs[0].Provenance.Root != tr.Root {
				t.Errorf("image history --json: %s %v", out, err)
			}
		})
	}
}

// TestCaptureRefusesNonRoot: run as an ordinary user, capture refuses
// with a clear error (exit 5) and writes nothing; its dry run works.
func TestCaptureRefusesNonRoot(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	// A copy of the binary and a tree the user can reach.
	dir, err := os.MkdirTemp("", "depot-nonroot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	b, _ := os.ReadFile(depotBin)
	bin := filepath.Join(dir, "depot")
	os.WriteFile(bin, b, 0o755)
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1 localhost\n"), 0o644)
	tmp := filepath.Join(dir, "tmp")
	os.Mkdir(tmp, 0o777)
	os.Chmod(tmp, 0o777)
	nobody := func(args ...string) (string, string, int) {
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + filepath.Join(tmp, "cache"), "HOME=" + tmp}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	_, errs, code := nobody("image", "capture", "gold", root, "--tmp-dir", tmp)
	if code != cli.ExitAuth || !strings.Contains(errs, "capture needs root (running as uid 65534)") {
		t.Errorf("capture as nobody: exit %d, %s", code, errs)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("the refused capture wrote %v", ents)
	}
	out, errs, code := nobody("image", "capture", "gold", root, "--dry-run")
	if code != 0 || !strings.Contains(out, "dry run: would capture "+root) || !strings.Contains(out, "2 files") && !strings.Contains(out, "1 files") {
		t.Errorf("dry run as nobody: exit %d, %s %s", code, out, errs)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("the dry run wrote %v", ents)
	}
}

// TestCaptureInterrupted: an interrupted capture stops its tool (which
// runs in a process group of its own, out of the terminal's reach) and
// leaves no temporary file.
func TestCaptureInterrupted(t *testing.T) {
	testenv.Need(t, "mksquashfs", "xz")
	data := t.TempDir()
	h := startServe(t, data)
	root := t.TempDir()
	big := make([]byte, 256<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(root, "big"), big, 0o644) // xz makes this take many seconds
	cache := t.TempDir()
	cmd := exec.Command(depotBin, "image", "capture", "slow", root, "--compress", "xz")
	cmd.Env = append(os.Environ(), "DEPOT_SERVER="+h.url, "DEPOT_TOKEN="+adminToken(t, data), "DEPOT_TOKEN_FILE=", "DEPOT_CACHE="+cache)
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "capture")
	deadline := time.Now().Add(time.Minute)
	for { // until mksquashfs has written something
		if m, _ := filepath.Glob(filepath.Join(dir, "capture-*.img")); len(m) == 1 {
			if fi, err := os.Stat(m[0]); err == nil && fi.Size() > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the capture never started writing: %s", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
		t.Errorf("interrupted capture: %v %s", err, errb.String())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, _ := os.ReadFile(p); strings.Contains(string(b), dir) {
			t.Errorf("still running: %q", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	if out, _, _ := run(t, []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data)}, "image", "history", "slow", "--json"); strings.Contains(out, "sha256:") {
		t.Errorf("the interrupted capture left a revision: %s", out)
	}
}

package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/cli"
	"github.com/depot-images/depot/internal/testenv"
)

// TestCLIUnsafeImageExitCode: with the real binary, a qcow2 that names a
// host file is refused at push (exit 12 with the fix) and at ensure from a
// plain HTTPS-less source that has correct checksums (exit 12, no path
// printed); a digest-named chain ensures, and qemu opens exactly the
// printed chain.
func TestCLIUnsafeImageExitCode(t *testing.T) {
	testenv.Need(t, "qemu-img")
	data := t.TempDir()
	h := startServe(t, data)
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_TOKEN_FILE=", "DEPOT_CACHE=" + t.TempDir()}
	files := t.TempDir()
	mk := func(name string, args ...string) string {
		p := filepath.Join(files, name)
		args = append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "64M")
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v %s", args, err, out)
		}
		b, _ := os.ReadFile(p)
		os.WriteFile(p+".sha256", []byte(digest.FromBytes(b).Encoded()+"  "+name+"\n"), 0o644)
		return p
	}
	evil := mk("evil.qcow2", "-u", "-b", "/etc/shadow", "-F", "raw")
	_, errs, code := run(t, env, "image", "push", "evil", evil)
	if code != cli.ExitUnsafe || !strings.Contains(errs, "/etc/shadow") || !strings.Contains(errs, "qemu-img rebase") {
		t.Fatalf("push: exit %d %q, want %d with the fix", code, errs, cli.ExitUnsafe)
	}
	s := httptest.NewServer(http.FileServer(http.Dir(files)))
	t.Cleanup(s.Close)
	out, errs, code := run(t, env, "ensure", s.URL+"/evil.qcow2", "--print-chain")
	if code != cli.ExitUnsafe || strings.TrimSpace(out) != "" || !strings.Contains(errs, "/etc/shadow") {
		t.Fatalf("ensure: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	base := mk("base.qcow2")
	if _, errs, code := run(t, env, "image", "push", "base", base); code != 0 {
		t.Fatalf("push base: %d %s", code, errs)
	}
	b, _ := os.ReadFile(base)
	child := mk("child.qcow2", "-u", "-b", digest.FromBytes(b).Encoded(), "-F", "qcow2")
	if _, errs, code := run(t, env, "image", "push", "child", child); code != 0 {
		t.Fatalf("push child: %d %s", code, errs)
	}
	out, errs, code = run(t, env, "ensure", "child", "--print-chain")
	if code != 0 {
		t.Fatalf("ensure child: %d %s", code, errs)
	}
	printed := strings.Fields(out)
	info, err := exec.Command("qemu-img", "info", "-U", "--backing-chain", printed[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info --backing-chain: %v %s", err, info)
	}
	for _, p := range printed {
		if !strings.Contains(string(info), "image: "+p) {
			t.Errorf("qemu does not open printed link %s:\n%s", p, info)
		}
	}
	if n := strings.Count(string(info), "image: "); n != 2 || len(printed) != 2 {
		t.Errorf("chain of %d images, %d printed (%q)", n, len(printed), out)
	}
}

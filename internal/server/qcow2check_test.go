package server

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/testenv"
)

// TestUploadRefusesHostBackedQcow2 pushes qcow2 images made by real
// qemu-img whose header names a host file: each is refused with 422
// unsafe_content and a fix-it message, and nothing is stored. A backing
// file named by the bare hex of a digest, with its format, is accepted.
func TestUploadRefusesHostBackedQcow2(t *testing.T) {
	testenv.Need(t, "qemu-img")
	e := newEnv(t, nil)
	dir := t.TempDir()
	mk := func(args ...string) []byte {
		p := filepath.Join(dir, "x.qcow2")
		os.Remove(p)
		if args[0] != "-f" {
			args = append([]string{"-f", "qcow2"}, args...)
		}
		args = append(append([]string{"create", "-q"}, args...), p, "64M")
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v %s", args, err, out)
		}
		b, _ := os.ReadFile(p)
		return b
	}
	hex := digest.FromString("base").Encoded()
	e.raw("POST", "/api/v1/images", "writer", []byte(`{"name":"img"}`), nil)
	for name, args := range map[string][]string{
		"host file":          {"-u", "-b", "/etc/shadow", "-F", "raw"},
		"relative":           {"-u", "-b", "../../../../etc/shadow", "-F", "raw"},
		"digest in a path":   {"-u", "-b", "/var/cache/depot/blobs/sha256/" + hex, "-F", "qcow2"},
		"digest.qcow2":       {"-u", "-b", hex + ".qcow2", "-F", "qcow2"},
		"json":               {"-u", "-b", `json:{"driver":"file","filename":"/etc/shadow"}`, "-F", "raw"},
		"external data file": {"-o", "data_file=/etc/shadow"},
		"qcow v1":            {"-f", "qcow", "-b", "/etc/shadow", "-F", "raw"},
		"qed":                {"-f", "qed", "-b", "/etc/shadow", "-F", "raw"},
		"vmdk":               {"-f", "vmdk"},
	} {
		before := e.blobCount()
		resp, env, _ := e.raw("PUT", "/api/v1/image/img/content", "writer", mk(args...), nil)
		if resp.StatusCode != http.StatusUnprocessableEntity || env.Code != "unsafe_content" || !strings.Contains(env.Error, "qemu-img ") {
			t.Errorf("%s: %d %+v", name, resp.StatusCode, env)
		}
		if n := e.blobCount(); n != before {
			t.Errorf("%s: %d blobs stored, want %d", name, n, before)
		}
	}
	resp, env, _ := e.raw("PUT", "/api/v1/image/img/content", "writer", mk("-u", "-b", hex, "-F", "qcow2"), nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("digest-named backing refused: %d %+v", resp.StatusCode, env)
	}
}

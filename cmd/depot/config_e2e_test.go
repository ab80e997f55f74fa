package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/depot-images/depot/cli"
	"github.com/depot-images/depot/client"
)

// runIn runs the real binary in directory dir, bounded to 20 s (a serve
// that should have refused its flags would otherwise run forever).
func runIn(t *testing.T, dir string, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, depotBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("depot %v did not exit within 20 s:\n%s", args, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestServeBlobsURL: --blobs takes a plain path or a file:///abs/path URL;
// any other scheme or a malformed file URL is exit 2 before anything is
// created (--blobs file:///srv/blobs used to create ./file:/srv/blobs).
func TestServeBlobsURL(t *testing.T) {
	cwd := t.TempDir()
	blobs := t.TempDir()
	data := t.TempDir()
	// startServe runs in the package directory: catch, and clean up, a
	// file: directory made there.
	wd, _ := os.Getwd()
	stray := filepath.Join(wd, "file:")
	t.Cleanup(func() {
		if _, err := os.Stat(stray); err == nil {
			os.RemoveAll(stray)
			t.Error("--blobs file:///… created a directory named file: in the working directory")
		}
	})
	h := startServe(t, data, "--blobs", "file://"+blobs)
	c, _ := client.New(h.url, adminToken(t, data))
	_, d := pushRandom(t, c, "img", 1<<10)
	if _, err := os.Stat(filepath.Join(blobs, "blobs", "sha256", d.Encoded())); err != nil {
		t.Errorf("--blobs file://%s: the blob is not in %s: %v", blobs, blobs, err)
	}
	for _, bad := range []string{
		"ftp://host/srv/blobs", "http://host/blobs", "file://host/srv/blobs", "file:relative/blobs", "file:///srv/blobs?x=1",
		"file:///srv/blobs#frag", "file://", "file:///", "s4://bucket", "blobs:dir", "file:///srv/%zz",
	} {
		_, errs, code := runIn(t, cwd, nil, "serve", "--data", filepath.Join(cwd, "data"), "--addr", "127.0.0.1:0", "--blobs", bad)
		if code != cli.ExitUsage || !strings.Contains(errs, "--blobs") {
			t.Errorf("serve --blobs %s: exit %d %q, want %d naming --blobs", bad, code, errs, cli.ExitUsage)
		}
		if ents, _ := os.ReadDir(cwd); len(ents) != 0 {
			t.Errorf("serve --blobs %s created %v in the working directory", bad, ents)
			os.RemoveAll(cwd)
			os.Mkdir(cwd, 0o700)
		}
	}
}

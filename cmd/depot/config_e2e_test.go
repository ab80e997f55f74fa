package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/cli"
)

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
		_, errs, code := runIn(t, cwd, 20*time.Second, nil, "serve", "--data", filepath.Join(cwd, "data"), "--addr", "127.0.0.1:0", "--blobs", bad)
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

// TestTokenCreateDataOnEtcdHead: `depot token create --data DIR` mints
// only into the catalog the head on DIR uses. A head on etcd records that in
// DIR at start, and token create --data refuses there (it used to create a
// stray catalog.db and print a token no head accepts), pointing at token
// create through the server; on a bbolt head's stopped data dir it mints a
// token the head accepts; a directory no head has run on is refused.
func TestTokenCreateDataOnEtcdHead(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data, "--catalog", etcdCatalog(t, "tokdata"))
	h.cmd.Process.Kill()
	h.cmd.Wait()
	out, errs, code := run(t, nil, "token", "create", "--data", data, "--role", "admin")
	if code != cli.ExitUsage || !strings.Contains(errs, "etcd") || !strings.Contains(errs, "depot token create") || strings.TrimSpace(out) != "" {
		t.Errorf("token create --data on an etcd head's dir: exit %d, out %q, err %q", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(data, "catalog.db")); err == nil {
		t.Error("token create --data left a stray catalog.db in an etcd head's data dir")
	}

	// A bbolt head: the stopped data dir takes a token, and the head
	// accepts it after a restart.
	bdata := t.TempDir()
	b := startServe(t, bdata)
	b.cmd.Process.Kill()
	b.cmd.Wait()
	out, errs, code = run(t, nil, "token", "create", "--data", bdata, "--role", "reader")
	if code != 0 {
		t.Fatalf("token create --data on a bbolt head's dir: %d %s", code, errs)
	}
	b = startServe(t, bdata)
	c, _ := client.New(b.url, strings.TrimSpace(out))
	if _, err := c.ListImages(context.Background()); err != nil {
		t.Errorf("the bbolt head refuses a token minted with --data: %v", err)
	}

	// A directory no head ever ran on: refused, nothing created.
	empty := t.TempDir()
	if _, errs, code := run(t, nil, "token", "create", "--data", empty); code != cli.ExitUsage || !strings.Contains(errs, "depot serve") {
		t.Errorf("token create --data on an empty dir: exit %d %q", code, errs)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("token create --data on an empty dir created %v", ents)
	}
}

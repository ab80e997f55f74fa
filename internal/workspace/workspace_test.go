package workspace

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/server/servertest"
	"github.com/depot-images/depot/internal/testenv"
)

var ctx = context.Background()

func need(t *testing.T, tools ...string) { t.Helper(); testenv.Need(t, tools...) }

func newServer(t *testing.T) (*client.Client, *client.Client) {
	t.Helper()
	h := servertest.Start(t, servertest.Options{})
	return h.Client(t, "admin1", auth.RoleAdmin), h.Client(t, "colleague", auth.RoleAdmin)
}

func newManager(t *testing.T, c *client.Client) *Manager {
	cc, err := cache.Open(t.TempDir(), cache.Options{Depot: c})
	if err != nil {
		t.Fatal(err)
	}
	return &Manager{Cache: cc, Client: c}
}

// rootfs builds a small root with a static busybox as /bin/sh.
func rootfs(t *testing.T) string {
	t.Helper()
	need(t, "busybox", "mksquashfs", "unsquashfs", "bwrap")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	bb, _ := exec.LookPath("busybox")
	b, _ := os.ReadFile(bb)
	os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("base\n"), 0o644)
	return root
}

func squash(t *testing.T, root string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "img.squashfs")
	if b, err := exec.Command("mksquashfs", root, out, "-noappend", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v %s", err, b)
	}
	b, _ := os.ReadFile(out)
	return b
}

// unpackServer downloads an image's content and unsquashes it.
func unpackServer(t *testing.T, c *client.Client, ref string) string {
	t.Helper()
	rc, err := c.OpenContent(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.ReadFrom(rc)
	rc.Close()
	p := filepath.Join(t.TempDir(), "x.squashfs")
	os.WriteFile(p, buf.Bytes(), 0o644)
	dst := filepath.Join(t.TempDir(), "root")
	if b, err := exec.Command("unsquashfs", "-quiet", "-no-progress", "-d", dst, p).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v %s", err, b)
	}
	return dst
}

func TestEditInStagesThenCommit(t *testing.T) {
	c, _ := newServer(t)
	base := servertest.Push(t, c, "node", squash(t, rootfs(t)))
	m := newManager(t, c)
	st, err := m.Edit(ctx, "node", EditOptions{Exec: "echo one > /etc/stage1"})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Modified || st.Base != base || st.Kind != Tree {
		t.Fatalf("after stage 1: %+v", st)
	}
	// A second session continues the same workspace: stage 1 is kept.
	st, err = m.Edit(ctx, "node", EditOptions{Exec: "test -f /etc/stage1 && echo two > /etc/stage2"})
	if err != nil {
		t.Fatalf("second session: %v", err)
	}
	baseBlob, _ := os.ReadFile(m.Cache.BlobPath(base))
	if digest.FromBytes(baseBlob) != base {
		t.Fatal("the cached base blob was modified")
	}
	res, err := m.Commit(ctx, "node", CommitOptions{Message: "two stages"})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := c.ContentInfo(ctx, "node")
	if info.Chksum != res.Digest.String() || res.Base != base || info.Fmt != "squashfs" {
		t.Fatalf("server info %+v after commit %+v", info, res)
	}
	root := unpackServer(t, c, "node")
	for f, want := range map[string]string{"etc/stage1": "one\n", "etc/stage2": "two\n", "etc/hostname": "base\n"} {
		if b, _ := os.ReadFile(filepath.Join(root, f)); string(b) != want {
			t.Errorf("server content %s = %q, want %q", f, b, want)
		}
	}
	// Re-based: clean, on the new digest, and further stages continue.
	st, _ = m.Show(ctx, "node")
	if st.Modified || st.Base != res.Digest || st.State != StateCurrent {
		t.Fatalf("after commit: %+v", st)
	}
	if _, err := m.Edit(ctx, "node", EditOptions{Exec: "echo three > /etc/stage3"}); err != nil {
		t.Fatal(err)
	}
	res2, err := m.Commit(ctx, "node", CommitOptions{})
	if err != nil || res2.Base != res.Digest {
		t.Fatalf("second commit: %+v %v", res2, err)
	}
	hist, _ := c.History(ctx, "node")
	if len(hist) != 3 || hist[1].Message != "two stages" {
		t.Errorf("history: %+v", hist)
	}
}

// TestSeed000Story: edit A; rm A on the server; clone another image to the
// name A (new UID); edit and commit both detect it and say what to do;
// --to <new UID> uploads the staged changes.
func TestSeed000Story(t *testing.T) {
	c, _ := newServer(t)
	root := rootfs(t)
	servertest.Push(t, c, "A", squash(t, root))
	os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("other\n"), 0o644)
	servertest.Push(t, c, "Other", squash(t, root))
	m := newManager(t, c)
	st, err := m.Edit(ctx, "A", EditOptions{Exec: "echo mine > /etc/staged"})
	if err != nil {
		t.Fatal(err)
	}
	oldUID := st.UID
	if err := c.DeleteImage(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	newUID, err := c.CloneImage(ctx, "Other", api.CloneRequest{Name: "A"})
	if err != nil {
		t.Fatal(err)
	}
	for name, fn := range map[string]func() error{
		"edit":   func() error { _, err := m.Edit(ctx, "A", EditOptions{}); return err },
		"commit": func() error { _, err := m.Commit(ctx, "A", CommitOptions{}); return err },
	} {
		err := fn()
		if !errors.Is(err, errdefs.ErrConflict) {
			t.Fatalf("%s: %v, want a conflict", name, err)
		}
		for _, want := range []string{oldUID, newUID, "--to " + newUID, "workspace discard"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s message lacks %q: %v", name, want, err)
			}
		}
	}
	ls, _ := m.List(ctx)
	if len(ls) != 1 || ls[0].State != StateNameTaken || ls[0].NewUID != newUID || !ls[0].Modified {
		t.Fatalf("workspace ls: %+v", ls)
	}
	res, err := m.Commit(ctx, "A", CommitOptions{To: newUID})
	if err != nil {
		t.Fatal(err)
	}
	if res.UID != newUID {
		t.Fatalf("retargeted commit went to %s", res.UID)
	}
	got := unpackServer(t, c, newUID)
	if b, _ := os.ReadFile(filepath.Join(got, "etc", "staged")); string(b) != "mine\n" {
		t.Errorf("staged change missing on the new image: %q", b)
	}
	info, _ := c.ContentInfo(ctx, newUID)
	if info.Chksum != res.Digest.String() {
		t.Errorf("server has %s, commit said %s", info.Chksum, res.Digest)
	}
	// The workspace now follows the new UID and is current.
	st, err = m.Show(ctx, "A")
	if err != nil || st.UID != newUID || st.State != StateCurrent || st.Modified {
		t.Fatalf("after --to: %+v %v", st, err)
	}
}

func TestBaseMovedAndFrozen(t *testing.T) {
	c, colleague := newServer(t)
	root := rootfs(t)
	servertest.Push(t, c, "shared", squash(t, root))
	m := newManager(t, c)
	if _, err := m.Edit(ctx, "shared", EditOptions{Exec: "echo me > /etc/me"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "etc", "theirs"), []byte("x"), 0o644)
	theirs := servertest.Push(t, colleague, "shared", squash(t, root))
	_, err := m.Commit(ctx, "shared", CommitOptions{})
	var pe *errdefs.PreconditionError
	if !errors.As(err, &pe) || pe.Have != theirs || !strings.Contains(err.Error(), "colleague") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("base moved: %v", err)
	}
	if info, _ := c.ContentInfo(ctx, "shared"); info.Chksum != theirs.String() {
		t.Fatal("a refused commit changed the server")
	}
	frozen := true
	c.UpdateImage(ctx, "shared", api.PatchImageRequest{Frozen: &frozen})
	if _, err := m.Commit(ctx, "shared", CommitOptions{Force: true}); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "frozen=false") {
		t.Fatalf("frozen: %v", err)
	}
	frozen = false
	c.UpdateImage(ctx, "shared", api.PatchImageRequest{Frozen: &frozen})
	res, err := m.Commit(ctx, "shared", CommitOptions{Force: true})
	if err != nil {
		t.Fatalf("--force: %v", err)
	}
	if info, _ := c.ContentInfo(ctx, "shared"); info.Chksum != res.Digest.String() {
		t.Fatal("--force did not upload")
	}
}

func TestQcow2OverlayEdit(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	c, _ := newServer(t)
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	data, _ := os.ReadFile(p)
	base := servertest.Push(t, c, "disk", data)
	m := newManager(t, c)
	st, err := m.Edit(ctx, "disk", EditOptions{Exec: `qemu-io -c "write -P 0xab 1M 64k" "$DEPOT_DISK" >/dev/null`})
	if err != nil {
		t.Fatal(err)
	}
	if st.Kind != Overlay || !st.Modified {
		t.Fatalf("overlay: %+v", st)
	}
	if b, _ := os.ReadFile(m.Cache.BlobPath(base)); digest.FromBytes(b) != base {
		t.Fatal("the cached base was modified through the overlay")
	}
	res, err := m.Commit(ctx, "disk", CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Format != "qcow2" {
		t.Fatalf("committed format %s", res.Format)
	}
	// The committed image is flat (no backing file) and holds the write.
	out, err := exec.Command("qemu-io", "-r", "-c", "read -P 0xab 1M 64k", m.Cache.BlobPath(res.Digest)).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("committed image lacks the write: %v %s", err, out)
	}
	info, _ := exec.Command("qemu-img", "info", m.Cache.BlobPath(res.Digest)).Output()
	if strings.Contains(string(info), "backing file") {
		t.Errorf("committed image still has a backing file:\n%s", info)
	}
	st, _ = m.Show(ctx, "disk")
	if st.Modified || st.Base != res.Digest {
		t.Errorf("after commit: %+v", st)
	}
}

func TestTarGzWorkspace(t *testing.T) { testTarWorkspace(t, "gzip", "-z") }

func TestTarZstWorkspace(t *testing.T) { testTarWorkspace(t, "zstd", "--zstd") }

func testTarWorkspace(t *testing.T, compressor, flag string) {
	need(t, "tar", compressor)
	c, _ := newServer(t)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("hello\n"), 0o644)
	// An xattr (as depot image capture keeps them) must survive edit and
	// commit.
	if err := unix.Setxattr(filepath.Join(src, "etc", "motd"), "user.depot", []byte("kept"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	tgz := filepath.Join(t.TempDir(), "root.tar")
	if b, err := exec.Command("tar", "-c", flag, "--format=posix", "--xattrs", "--xattrs-include=*", "-f", tgz, "-C", src, ".").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	data, _ := os.ReadFile(tgz)
	servertest.Push(t, c, "tgz", data)
	m := newManager(t, c)
	st, err := m.Edit(ctx, "tgz", EditOptions{})
	if err != nil || st.Kind != Tree || st.Modified {
		t.Fatalf("edit: %+v %v", st, err)
	}
	// Stage a change by hand in the unpacked root.
	os.WriteFile(filepath.Join(st.Dir, "root", "etc", "added"), []byte("new\n"), 0o644)
	if st, _ = m.Show(ctx, "tgz"); !st.Modified {
		t.Fatal("a new file is not seen as a change")
	}
	res, err := m.Commit(ctx, "tgz", CommitOptions{})
	if err != nil || res.Format != compressor {
		t.Fatalf("commit: %+v %v", res, err)
	}
	out := t.TempDir()
	if b, err := exec.Command("tar", "-x", flag, "--xattrs", "--xattrs-include=*", "-f", m.Cache.BlobPath(res.Digest), "-C", out).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	xb := make([]byte, 64)
	if n, err := unix.Getxattr(filepath.Join(out, "etc", "motd"), "user.depot", xb); err != nil || string(xb[:n]) != "kept" {
		t.Errorf("the committed tar lost etc/motd's xattr: %q, %v", xb[:max(n, 0)], err)
	}
	for f, want := range map[string]string{"etc/motd": "hello\n", "etc/added": "new\n"} {
		if b, _ := os.ReadFile(filepath.Join(out, f)); string(b) != want {
			t.Errorf("%s = %q", f, b)
		}
	}
	// Nothing changed since: commit says so and uploads nothing.
	again, err := m.Commit(ctx, "tgz", CommitOptions{})
	if err != nil || !again.Unchanged {
		t.Fatalf("second commit: %+v %v", again, err)
	}
	if hist, _ := c.History(ctx, "tgz"); len(hist) != 2 {
		t.Errorf("history has %d revisions, want 2", len(hist))
	}
}

func TestSameCluster(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"http://h1:8484", "http://h1:8484", true},
		{"http://h1:8484,http://h2:8484", "http://h2:8484,http://h1:8484", true},
		{"http://h1:8484", "http://h1:8484/,http://h3:8484", true},
		{"http://h1:8484", "http://h2:8484", false},
	} {
		if got := sameCluster(tc.a, tc.b); got != tc.want {
			t.Errorf("sameCluster(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

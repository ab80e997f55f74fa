package workspace

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/server/servertest"
)

func qemu(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v %s", name, args, err, out)
	}
}

// TestDiskCommitPinsChain edits a two-link qcow2 chain from a cache given
// as a relative directory, while the edit's command re-points the overlay's
// header at a host file. The commit must hold the chain's data and the
// edit's write, and not one byte of the host file: qemu-img opens exactly
// the verified blobs, whatever the headers say.
func TestDiskCommitPinsChain(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	c, _ := newServer(t)
	src := t.TempDir()
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(src, "base"), "64M")
	qemu(t, "qemu-io", "-c", "write -P 0x11 2M 64k", filepath.Join(src, "base"))
	baseData, _ := os.ReadFile(filepath.Join(src, "base"))
	bd := servertest.Push(t, c, "base", baseData)
	os.Rename(filepath.Join(src, "base"), filepath.Join(src, bd.Encoded()))
	child := filepath.Join(src, "child")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", bd.Encoded(), "-F", "qcow2", child, "64M")
	qemu(t, "qemu-io", "-c", "write -P 0x22 3M 64k", child)
	childData, _ := os.ReadFile(child)
	servertest.Push(t, c, "child", childData)

	host := filepath.Join(t.TempDir(), "secret.raw")
	os.WriteFile(host, bytes.Repeat([]byte("HOSTMARKER"), 64<<20/10), 0o600)

	t.Chdir(t.TempDir())
	cc, err := cache.Open("cache", cache.Options{Depot: c})
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Cache: cc, Client: c}
	if _, err := m.Edit(ctx, "child", EditOptions{Exec: `qemu-io -c "write -P 0xab 1M 64k" "$DEPOT_DISK" >/dev/null && ` +
		`qemu-img rebase -u -b ` + host + ` -F raw "$DEPOT_DISK"`}); err != nil {
		t.Fatal(err)
	}
	res, err := m.Commit(ctx, "child", CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	flat := filepath.Join(t.TempDir(), "flat.raw")
	qemu(t, "qemu-img", "convert", "-O", "raw", m.Cache.BlobPath(res.Digest), flat)
	b, _ := os.ReadFile(flat)
	if bytes.Contains(b, []byte("HOSTMARKER")) {
		t.Fatal("the host file reached the committed image")
	}
	for off, p := range map[int]byte{1 << 20: 0xab, 2 << 20: 0x11, 3 << 20: 0x22} {
		if !bytes.Equal(b[off:off+64<<10], bytes.Repeat([]byte{p}, 64<<10)) {
			t.Errorf("committed image lacks %#x at %d", p, off)
		}
	}
	if digest.FromBytes(mustReadFile(t, m.Cache.BlobPath(bd))) != bd {
		t.Error("the cached base changed")
	}
}

// TestDiskCommitRefusesDataFile: the edit re-creates the overlay with an
// external data file that is a host file. The pinned chain cannot pin
// that (qemu reads it from the overlay's header), so the commit refuses
// before qemu-img runs, and the server keeps its content.
func TestDiskCommitRefusesDataFile(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	c, _ := newServer(t)
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
	data, _ := os.ReadFile(p)
	base := servertest.Push(t, c, "disk", data)
	host := filepath.Join(t.TempDir(), "secret.raw")
	os.WriteFile(host, bytes.Repeat([]byte("HOSTMARKER"), 64<<20/10), 0o600)
	m := newManager(t, c)
	st, err := m.Edit(ctx, "disk", EditOptions{Exec: `qemu-img create -q -f qcow2 -o data_file=` + host + ` -o data_file_raw=on "$DEPOT_DISK" 64M`})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Commit(ctx, "disk", CommitOptions{})
	if !errors.Is(err, errdefs.ErrUnsafeContent) || !strings.Contains(err.Error(), host) {
		t.Fatalf("commit of an overlay with a host data file: %v (workspace %+v)", err, st)
	}
	if info, _ := c.ContentInfo(ctx, "disk"); info.Chksum != base.String() {
		t.Fatalf("the server's content moved to %s", info.Chksum)
	}
}

// TestPushRefusesHostBackedImage: the server refuses an image whose header
// names a host file, and the client reports the typed error (exit 12).
func TestPushRefusesHostBackedImage(t *testing.T) {
	need(t, "qemu-img")
	c, _ := newServer(t)
	p := filepath.Join(t.TempDir(), "evil.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", p, "64M")
	data, _ := os.ReadFile(p)
	if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "evil"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.PushContent(ctx, "evil", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
	if !errors.Is(err, errdefs.ErrUnsafeContent) || !strings.Contains(err.Error(), "/etc/shadow") {
		t.Fatalf("push of a host-backed image: %v", err)
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

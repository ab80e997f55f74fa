package qcow2

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/depot-images/depot/testenv"
)

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	testenv.Need(t, "qemu-img")
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v %s", args, err, out)
	}
}

func TestRealChain(t *testing.T) {
	dir := t.TempDir()
	hex := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	base := filepath.Join(dir, hex+".qcow2")
	qemuImg(t, "create", "-f", "qcow2", base, "1G")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	for _, tc := range []struct {
		path, backing string
	}{{base, ""}, {top, base}} {
		f, _ := os.Open(tc.path)
		h, err := ReadHeader(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if h.VirtualSize != 1<<30 || h.BackingFile != tc.backing {
			t.Errorf("%s: %+v", tc.path, h)
		}
		if tc.backing != "" && h.BackingFormat != "qcow2" {
			t.Errorf("backing format = %q", h.BackingFormat)
		}
	}
	if d := BackingDigest(base); d.Encoded() != hex {
		t.Errorf("BackingDigest(%s) = %s", base, d)
	}
	if d := BackingDigest("/var/cache/depot/blobs/sha256/" + hex); d.Encoded() != hex {
		t.Errorf("BackingDigest(blob path) = %s", d)
	}
	if d := BackingDigest("/images/base.qcow2"); d != "" {
		t.Errorf("BackingDigest(no hex) = %s", d)
	}
}

func TestNotQcow2(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("QFI"), bytes.Repeat([]byte{0}, 200), append([]byte("QFI\xfb\x00\x00\x00\x07"), make([]byte, 100)...)} {
		if _, err := ReadHeader(bytes.NewReader(b)); !errors.Is(err, ErrNotQcow2) {
			t.Errorf("ReadHeader(%q...) = %v", b[:min(len(b), 8)], err)
		}
	}
}

func FuzzReadHeader(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "x.qcow2")
	if exec.Command("qemu-img", "create", "-f", "qcow2", "-b", "/x/base.qcow2", "-F", "qcow2", "-u", p, "1G").Run() == nil {
		b, _ := os.ReadFile(p)
		f.Add(b[:min(len(b), 4096)])
	}
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bytes.NewReader(b))
		if err == nil && len(h.BackingFile) > maxBackingName {
			t.Fatalf("backing name of %d bytes", len(h.BackingFile))
		}
	})
}

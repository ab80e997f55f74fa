package format

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/depot-images/depot/internal/testenv"
)

func readHead(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, HeaderSize)
	n, _ := f.Read(b)
	return b[:n]
}

func TestDetectRealQcow2(t *testing.T) {
	testenv.Need(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "d.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", p, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	if got := Detect(readHead(t, p)); got != QCOW2 {
		t.Errorf("Detect(qcow2) = %s", got)
	}
	raw := filepath.Join(t.TempDir(), "d.raw")
	if out, err := exec.Command("qemu-img", "create", "-f", "raw", raw, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	if got := Detect(readHead(t, raw)); got != Raw {
		t.Errorf("Detect(raw) = %s", got)
	}
}

func TestDetectRealSquashfs(t *testing.T) {
	testenv.Need(t, "mksquashfs")
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "hello"), []byte("hi"), 0o644)
	p := filepath.Join(t.TempDir(), "fs.squashfs")
	if out, err := exec.Command("mksquashfs", src, p, "-quiet", "-noappend").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v %s", err, out)
	}
	if got := Detect(readHead(t, p)); got != Squashfs {
		t.Errorf("Detect(squashfs) = %s", got)
	}
}

func TestDetectSynthetic(t *testing.T) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("hello"))
	zw.Close()
	iso := make([]byte, 0x9000)
	copy(iso[0x8001:], "CD001")
	cases := map[string][]byte{
		Tar:     tarBuf.Bytes(),
		Gzip:    gz.Bytes(),
		Zstd:    {0x28, 0xb5, 0x2f, 0xfd, 0, 0},
		XZ:      {0xfd, '7', 'z', 'X', 'Z', 0, 0},
		ISO9660: iso,
		Empty:   {},
		Raw:     bytes.Repeat([]byte{0}, 4096),
		VMDK:    []byte("KDMV\x01\x00\x00\x00"),
	}
	// What qemu probes as a format that names other files, whatever
	// depot called it before: qcow v1, qed, vmdk's other magic and its
	// text descriptor (comments and spaces first, as qemu allows).
	for head, want := range map[string]string{
		"QFI\xfb\x00\x00\x00\x01":                         QCOW,
		"QED\x00\x01\x00\x00\x00":                         QED,
		"COWD\x01\x00\x00\x00":                            VMDK,
		"# Disk DescriptorFile\nversion=1\nCID=fffffffe":  VMDK,
		"#c\n   version=3\r\nRW 1 FLAT \"/etc/shadow\" 0": VMDK,
		"\nversion=1\n":                                   Raw, // qemu's probe allows no blank line first
		"version=4\n":                                     Raw,
	} {
		if got := Detect([]byte(head)); got != want {
			t.Errorf("Detect(%q) = %s, want %s", head, got, want)
		}
	}
	// A qcow2 magic with a bogus version is not qcow2.
	if got := Detect([]byte("QFI\xfb\x00\x00\x00\x09")); got != Raw {
		t.Errorf("Detect(qcow2 v9) = %s, want raw", got)
	}
	for want, head := range cases {
		if got := Detect(head); got != want {
			t.Errorf("Detect(%s sample) = %s", want, got)
		}
	}
}

func TestSnifferKeepsOnlyHeader(t *testing.T) {
	var s Sniffer
	big := bytes.Repeat([]byte{1}, HeaderSize+1000)
	s.Write(big[:10])
	s.Write(big[10:])
	if len(s.head) != HeaderSize {
		t.Fatalf("sniffer kept %d bytes", len(s.head))
	}
}

func FuzzDetect(f *testing.F) {
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Add([]byte("hsqs"))
	f.Add(make([]byte, 300))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Detect(b)
		if got == "" {
			t.Fatal("empty format name")
		}
		if len(b) == 0 && got != Empty {
			t.Fatal("empty input not reported empty")
		}
	})
}

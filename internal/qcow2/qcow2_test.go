package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/testenv"
)

func qemuImg(t testing.TB, args ...string) {
	t.Helper()
	testenv.Need(t, "qemu-img")
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v %s", args, err, out)
	}
}

func readFile(t testing.TB, path string) Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := ReadHeader(f)
	if err != nil {
		t.Fatalf("ReadHeader(%s): %v", path, err)
	}
	return h
}

const hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestMatchesQemu parses images qemu-img made and compares every field
// depot relies on with what qemu-img info reports for the same file.
func TestMatchesQemu(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "host.raw")
	os.WriteFile(host, make([]byte, 1<<20), 0o644)
	cases := map[string][]string{
		"plain":      {"create", "-q", "-f", "qcow2"},
		"v2":         {"create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-u", "-b", hex, "-F", "raw"},
		"backed":     {"create", "-q", "-f", "qcow2", "-u", "-b", hex, "-F", "qcow2"},
		"hostpath":   {"create", "-q", "-f", "qcow2", "-u", "-b", host, "-F", "raw"},
		"datafile":   {"create", "-q", "-f", "qcow2", "-o", "data_file=" + host},
		"bigcluster": {"create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "-u", "-b", hex, "-F", "qcow2"},
	}
	for name, args := range cases {
		p := filepath.Join(dir, name+".qcow2")
		qemuImg(t, append(args, p, "64M")...)
		out, err := exec.Command("qemu-img", "info", "--output=json", "-U", p).Output()
		if err != nil {
			t.Fatalf("%s: qemu-img info: %v", name, err)
		}
		var info struct {
			VirtualSize    uint64 `json:"virtual-size"`
			Backing        string `json:"backing-filename"`
			BackingFmt     string `json:"backing-filename-format"`
			FormatSpecific struct {
				Data struct {
					DataFile string `json:"data-file"`
				} `json:"data"`
			} `json:"format-specific"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatal(err)
		}
		h := readFile(t, p)
		if h.VirtualSize != info.VirtualSize || h.BackingFile != info.Backing || h.BackingFormat != info.BackingFmt || h.DataFile != info.FormatSpecific.Data.DataFile {
			t.Errorf("%s: depot read %+v, qemu-img info says %s", name, h, out)
		}
		if h.ExternalData() != (info.FormatSpecific.Data.DataFile != "") {
			t.Errorf("%s: ExternalData() = %v", name, h.ExternalData())
		}
	}
}

func TestResolveAccepts(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, fmt, dir string
	}{
		{hex, "qcow2", ""},
		{hex, "raw", ""},
		{"./" + hex, "qcow2", ""},
		{hex, "qcow2", dir},
		{filepath.Join(dir, hex), "qcow2", dir},
	} {
		p := filepath.Join(dir, "top.qcow2")
		os.Remove(p)
		qemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", tc.name, "-F", tc.fmt, p, "1G")
		b, err := Resolve(readFile(t, p), tc.dir)
		if err != nil || b.Digest.Encoded() != hex || b.Format != tc.fmt || b.Name != tc.name {
			t.Errorf("Resolve(%q, %q in %q) = %+v, %v", tc.name, tc.fmt, tc.dir, b, err)
		}
	}
	p := filepath.Join(dir, "plain.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", p, "1G")
	if b, err := Resolve(readFile(t, p), dir); err != nil || b != (Backing{}) {
		t.Errorf("no backing: %+v, %v", b, err)
	}
}

// TestResolveRefuses builds each hostile image with real qemu-img: every
// name that would make qemu open something other than the sibling blob of
// the digest it names, a missing or foreign backing format, and external
// data files.
func TestResolveRefuses(t *testing.T) {
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	os.MkdirAll(blobs, 0o755)
	cases := map[string][]string{
		"host file":          {"-u", "-b", "/etc/shadow", "-F", "raw"},
		"relative escape":    {"-u", "-b", "../../../../etc/passwd", "-F", "raw"},
		"dotdot to a digest": {"-u", "-b", "../sha256/" + hex, "-F", "qcow2"},
		"digest elsewhere":   {"-u", "-b", "/anywhere/" + hex, "-F", "qcow2"},
		"digest.qcow2":       {"-u", "-b", hex + ".qcow2", "-F", "qcow2"},
		"upper-case hex":     {"-u", "-b", strings.ToUpper(hex), "-F", "qcow2"},
		"json":               {"-u", "-b", `json:{"driver":"file","filename":"/etc/shadow"}`, "-F", "raw"},
		"protocol":           {"-u", "-b", "nbd:127.0.0.1:10809", "-F", "raw"},
		"file protocol":      {"-u", "-b", "file:" + hex, "-F", "raw"},
		"foreign format":     {"-u", "-b", hex, "-F", "vmdk"},
		"data file":          {"-o", "data_file=/etc/shadow"},
		"abs outside dir":    {"-u", "-b", filepath.Join(dir, hex), "-F", "qcow2"},
	}
	for name, args := range cases {
		p := filepath.Join(blobs, "top")
		os.Remove(p)
		qemuImg(t, append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "1G")...)
		for _, d := range []string{"", blobs} {
			_, err := Resolve(readFile(t, p), d)
			var ue *errdefs.UnsafeContentError
			if !errors.Is(err, errdefs.ErrUnsafeContent) || !errors.As(err, &ue) {
				t.Errorf("%s (dir %q): Resolve = %v, want unsafe content", name, d, err)
				continue
			}
			if !strings.Contains(err.Error(), "qemu-img ") {
				t.Errorf("%s: the message has no fix: %v", name, err)
			}
		}
	}
}

// TestResolveRefusesUnrecordedFormat takes a good image and turns its
// backing-format extension into an unknown one (qemu skips unknown
// extensions), so qemu would probe the base's format.
func TestResolveRefusesUnrecordedFormat(t *testing.T) {
	p := filepath.Join(t.TempDir(), "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", hex, "-F", "qcow2", p, "1G")
	b, _ := os.ReadFile(p)
	i := bytes.Index(b, []byte{0xE2, 0x79, 0x2A, 0xCA})
	if i < 0 {
		t.Fatal("no backing format extension")
	}
	copy(b[i:], []byte{0x12, 0x34, 0x56, 0x78})
	os.WriteFile(p, b, 0o644)
	out, _ := exec.Command("qemu-img", "info", "-U", p).CombinedOutput()
	if strings.Contains(string(out), "backing file format") {
		t.Fatalf("qemu still sees a backing format: %s", out)
	}
	h := readFile(t, p)
	if _, err := Resolve(h, ""); !errors.Is(err, errdefs.ErrUnsafeContent) || !strings.Contains(err.Error(), "probe") {
		t.Errorf("Resolve = %v, want refused: no backing format", err)
	}
}

func TestNotQcow2(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("QFI"), bytes.Repeat([]byte{0}, 200), append([]byte("QFI\xfb\x00\x00\x00\x07"), make([]byte, 100)...)} {
		if _, err := ReadHeader(bytes.NewReader(b)); !errors.Is(err, ErrNotQcow2) {
			t.Errorf("ReadHeader(%q...) = %v", b[:min(len(b), 8)], err)
		}
	}
}

// encode writes a minimal qcow2 v3 header holding h's fields, as qemu lays
// them out: header, extensions, end marker, backing name. Tests only.
func encode(h Header) []byte {
	be := binary.BigEndian
	b := make([]byte, 104)
	copy(b, "QFI\xfb")
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], h.ClusterBits)
	be.PutUint64(b[24:], h.VirtualSize)
	be.PutUint64(b[72:], h.IncompatibleFeatures)
	be.PutUint32(b[100:], 104)
	ext := func(typ uint32, v string) {
		var e [8]byte
		be.PutUint32(e[:], typ)
		be.PutUint32(e[4:], uint32(len(v)))
		b = append(b, e[:]...)
		b = append(b, v...)
		b = append(b, make([]byte, (8-len(v)%8)%8)...)
	}
	if h.BackingFormat != "" {
		ext(extBackingFmt, h.BackingFormat)
	}
	if h.HasDataFileExt {
		ext(extDataFile, h.DataFile)
	}
	b = append(b, make([]byte, 8)...) // end
	if h.BackingFile != "" {
		be.PutUint64(b[8:], uint64(len(b)))
		be.PutUint32(b[16:], uint32(len(h.BackingFile)))
		b = append(b, h.BackingFile...)
	}
	return b
}

// FuzzReadHeader: any input parses or fails cleanly; what parses respects
// the bounds qemu applies; and whatever Resolve accepts names exactly a
// sibling blob in a format depot verifies.
func FuzzReadHeader(f *testing.F) {
	dir := f.TempDir()
	for i, args := range [][]string{
		{"-u", "-b", "/x/base.qcow2", "-F", "qcow2"},
		{"-u", "-b", hex, "-F", "qcow2"},
		{"-o", "data_file=/x"},
	} {
		p := filepath.Join(dir, "x.qcow2")
		os.Remove(p)
		if exec.Command("qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "1G")...).Run() == nil {
			b, _ := os.ReadFile(p)
			f.Add(b[:min(len(b), 4096)])
		} else if i == 0 {
			f.Log("qemu-img not available: seeding with encoded headers only")
		}
	}
	f.Add(encode(Header{ClusterBits: 16, VirtualSize: 1 << 30, BackingFile: hex, BackingFormat: "raw"}))
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(h.BackingFile) > maxBackingName || len(h.BackingFormat) > maxBackingFormat {
			t.Fatalf("out-of-bounds fields: %+v", h)
		}
		bk, err := Resolve(h, "/cache/blobs/sha256")
		if err != nil {
			if !errors.Is(err, errdefs.ErrUnsafeContent) {
				t.Fatalf("Resolve error outside the vocabulary: %v", err)
			}
			return
		}
		if h.ExternalData() {
			t.Fatalf("accepted an external data file: %+v", h)
		}
		if h.BackingFile == "" {
			return
		}
		got := h.BackingFile
		if !filepath.IsAbs(got) {
			got = filepath.Join("/cache/blobs/sha256", got)
		}
		if got != "/cache/blobs/sha256/"+bk.Digest.Encoded() || (bk.Format != "qcow2" && bk.Format != "raw") {
			t.Fatalf("accepted %q (%q) as %+v", h.BackingFile, h.BackingFormat, bk)
		}
	})
}

// FuzzHeaderRoundTrip: a header written the way qemu lays it out reads back
// field for field.
func FuzzHeaderRoundTrip(f *testing.F) {
	f.Add(uint8(16), uint64(1<<30), hex, "qcow2", false, "", uint64(0))
	f.Add(uint8(9), uint64(0), "", "", true, "/etc/shadow", uint64(IncompatDataFile))
	f.Fuzz(func(t *testing.T, cb uint8, size uint64, name, bfmt string, dataExt bool, data string, incompat uint64) {
		if cb < minClusterBits || cb > maxClusterBits || len(name) > maxBackingName || len(bfmt) > maxBackingFormat ||
			len(data) > 4096 || (name == "" && bfmt != "") {
			return
		}
		in := Header{Version: 3, ClusterBits: uint32(cb), VirtualSize: size, IncompatibleFeatures: incompat,
			BackingFile: name, BackingFormat: bfmt, HasDataFileExt: dataExt}
		if dataExt {
			in.DataFile = data
		}
		b := encode(in)
		if uint64(len(b)) > uint64(1)<<cb { // does not fit in the first cluster
			return
		}
		out, err := ReadHeader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("ReadHeader(encode(%+v)): %v", in, err)
		}
		if out != in {
			t.Fatalf("round trip: wrote %+v, read %+v", in, out)
		}
	})
}

// FuzzHeaderBuffer: an upload's header, kept by HeaderBuffer from the
// stream in arbitrary pieces, reads exactly as the whole file does.
func FuzzHeaderBuffer(f *testing.F) {
	f.Add(encode(Header{ClusterBits: 16, VirtualSize: 1 << 30, BackingFile: "/etc/shadow", BackingFormat: "raw"}), uint16(7))
	f.Add(encode(Header{ClusterBits: 9, HasDataFileExt: true, DataFile: "/x", IncompatibleFeatures: IncompatDataFile}), uint16(1))
	f.Fuzz(func(t *testing.T, b []byte, step uint16) {
		var hb HeaderBuffer
		for rest := b; len(rest) > 0; {
			k := min(int(step)%4096+1, len(rest))
			if n, err := hb.Write(rest[:k]); n != k || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			rest = rest[k:]
		}
		want, werr := ReadHeader(bytes.NewReader(b))
		got, gerr := hb.Header()
		if (werr == nil) != (gerr == nil) || got != want {
			t.Fatalf("whole file: %+v, %v; streamed: %+v, %v", want, werr, got, gerr)
		}
		if werr == nil && !hb.IsQcow2() {
			t.Fatal("a qcow2 header, but IsQcow2 is false")
		}
		if len(hb.b) > 1<<maxClusterBits {
			t.Fatalf("kept %d bytes", len(hb.b))
		}
	})
}

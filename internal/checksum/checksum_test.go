package checksum

import (
	"errors"
	"strings"
	"testing"

	"github.com/depot-images/depot/errdefs"
)

const (
	a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestFind(t *testing.T) {
	file := "# comment\n" +
		a + "  disk.qcow2\n" +
		b + " *disk.qcow2.old\n" +
		"SHA256 (Fedora.qcow2) = " + strings.ToUpper(b) + "\r\n" +
		"SHA512 (Fedora.qcow2) = " + a + a + "\n" +
		a + "  ./dot.img\n"
	cases := map[string]string{"disk.qcow2": a, "disk.qcow2.old": b, "Fedora.qcow2": b, "dot.img": a}
	for name, want := range cases {
		got, err := Find(strings.NewReader(file), name, false)
		if err != nil || got.Encoded() != want {
			t.Errorf("Find(%s) = %s, %v; want %s", name, got, err, want)
		}
	}
	// Exact names only: no substring, suffix or prefix matches.
	for _, name := range []string{"disk", "qcow2", "isk.qcow2", "disk.qcow2.o", "sub/disk.qcow2"} {
		if _, err := Find(strings.NewReader(file), name, false); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Find(%s) = %v, want ErrNotFound", name, err)
		}
	}
}

func TestBareAndAmbiguous(t *testing.T) {
	// A bare digest is the answer only in the file's own sidecar.
	if d, err := Find(strings.NewReader(a+"\n"), "anything.img", true); err != nil || d.Encoded() != a {
		t.Errorf("bare in a sidecar: %s %v", d, err)
	}
	// In a directory-level file (SHA256SUMS, CHECKSUM) it names no file.
	if d, err := Find(strings.NewReader(a+"\n"), "anything.img", false); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("bare in a directory-level file = %s, %v; want ErrNotFound", d, err)
	}
	amb := a + "  x.img\n" + b + "  x.img\n"
	if _, err := Find(strings.NewReader(amb), "x.img", true); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("ambiguous: %v", err)
	}
	if _, err := Find(strings.NewReader(strings.Repeat("x", MaxSize+10)), "x", true); err == nil {
		t.Error("oversized file accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(a + "  disk.qcow2\n")
	f.Add("SHA256 (x) = " + b)
	f.Add(a)
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.Digest.Validate() != nil {
				t.Fatalf("invalid digest %q from %q", e.Digest, s)
			}
			if e.Name != "" && strings.Contains(s, e.Name) == false {
				t.Fatalf("name %q not in input", e.Name)
			}
		}
	})
}

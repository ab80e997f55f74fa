package ref

import (
	"errors"
	"strings"
	"testing"

	"github.com/depot-images/depot/errdefs"
)

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseGood(t *testing.T) {
	cases := map[string]Ref{
		"NewImage":                                    {Kind: Depot, Name: "NewImage"},
		"NewImage@sha256:" + hex64:                    {Kind: Depot, Name: "NewImage", Digest: "sha256:" + hex64},
		"d16d9eb8786c408ba32780ee6b722a50":            {Kind: Depot, UID: "d16d9eb8786c408ba32780ee6b722a50"},
		"https://h.example/a/disk.qcow2":              {Kind: HTTP, URL: "https://h.example/a/disk.qcow2"},
		"http://127.0.0.1:8080/x.img@sha256:" + hex64: {Kind: HTTP, URL: "http://127.0.0.1:8080/x.img", Digest: "sha256:" + hex64},
		"oci://127.0.0.1:5000/vm/base:v1":             {Kind: OCI, Registry: "127.0.0.1:5000", Repository: "vm/base", Tag: "v1"},
		"oci://reg.example/vm@sha256:" + hex64:        {Kind: OCI, Registry: "reg.example", Repository: "vm", Digest: "sha256:" + hex64},
		"oci://[::1]:5000/a__b.c--d/e:T_.-1":          {Kind: OCI, Registry: "[::1]:5000", Repository: "a__b.c--d/e", Tag: "T_.-1"},
	}
	for in, want := range cases {
		got, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("Parse(%q) = %+v, want %+v", in, got, want)
		}
		if got.String() != in {
			t.Errorf("String() = %q, want %q", got.String(), in)
		}
	}
}

func TestParseBad(t *testing.T) {
	for _, in := range []string{
		"", "../etc/passwd", "a/b", "name@sha256:short", "name@md5:" + hex64, "name@sha256:" + strings.ToUpper(hex64),
		"ftp://host/x", "https://", "https://host/", "https://user:pw@host/x", "https://host/x#frag",
		"oci://reg/repo", "oci://reg/Repo:tag", "oci://reg/repo:tag@sha256:" + hex64, "oci://repo:tag",
		"oci://reg/repo:bad tag", "name with space", "name\n", "oci://reg/repo:" + strings.Repeat("t", 200),
		// Where oras-go's grammar alone would accept: no tag (it defaults
		// to latest), a tag beside a digest (it drops the tag), another
		// algorithm, an empty port or one over 5 digits, a long repository.
		"oci://reg/repo@", "oci://reg/repo:", "oci://reg/repo:@sha256:" + hex64,
		"oci://reg/repo@sha512:" + hex64 + hex64, "oci://reg:/repo:tag", "oci://reg:123456/repo:tag",
		"oci://reg_x/repo:tag", "oci://reg/" + strings.Repeat("r", 256) + ":tag",
		// A bracketed host that is no IPv6 address (refused since ref
		// parses with oras-go; the OCI source refused it later before).
		"oci://[0]/repo:tag",
	} {
		if r, err := Parse(in); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrInvalidArgument", in, r, err)
		}
	}
}

func TestKeyIgnoresPin(t *testing.T) {
	a, _ := Parse("img")
	b, _ := Parse("img@sha256:" + hex64)
	if a.Key("s") != b.Key("s") || a.Key("s") == a.Key("other") {
		t.Errorf("keys: %q %q", a.Key("s"), b.Key("s"))
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"img", "img@sha256:" + hex64, "https://h/x.qcow2", "oci://r:5000/a/b:t", "oci://r/a@sha256:" + hex64} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error outside the vocabulary: %v", err)
			}
			return
		}
		// A parsed reference round-trips.
		again, err := Parse(r.String())
		if err != nil || again != r {
			t.Fatalf("round trip of %q: %+v → %q → %+v, %v", s, r, r.String(), again, err)
		}
		if r.Pinned() && r.Digest.Validate() != nil {
			t.Fatalf("pinned with invalid digest %q", r.Digest)
		}
	})
}

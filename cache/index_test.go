package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// FuzzDecodeIndex: whatever decodes is a fixpoint of encode∘decode (what
// depot writes back is what it read, nothing lost or invented on a
// read-modify-write), and every failure is ErrCorrupt.
func FuzzDecodeIndex(f *testing.F) {
	f.Add([]byte(`{"key":"k","digest":"sha256:00","size":1}`))
	f.Add([]byte(`{"digest":"sha256:00","stat":{"size":1,"inode":2},"verified_at":"2026-11-29T13:00:00.123456789+01:00"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFixpoint[Pointer](t, b)
		checkFixpoint[BlobRecord](t, b)
	})
}

func checkFixpoint[T any](t *testing.T, b []byte) {
	v, err := decodeRecord[T](b)
	if err != nil {
		if !errors.Is(err, errdefs.ErrCorrupt) {
			t.Fatal(err)
		}
		return
	}
	once, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("a decoded record does not encode: %v", err)
	}
	v2, err := decodeRecord[T](once)
	if err != nil {
		t.Fatalf("depot cannot read back what it wrote: %v\n%s", err, once)
	}
	twice, _ := json.Marshal(v2)
	if !bytes.Equal(once, twice) {
		t.Fatalf("encode∘decode is not stable:\n%s\n%s", once, twice)
	}
}

// FuzzIndexRoundTrip: every field of a blob record and a pointer survives
// write and read exactly.
func FuzzIndexRoundTrip(f *testing.F) {
	f.Add("k", "ref", int64(5), int64(1795384317123456789), "etag", "current", "fmt", uint64(7), uint32(0o444), "/q/x")
	f.Fuzz(func(t *testing.T, key, ref string, size, ns int64, validator, upstream, fmtName string, inode uint64, mode uint32, quarantined string) {
		// Index strings come from parsed references, which are valid UTF-8
		// (ref.Parse escapes URLs and refuses other bytes); JSON would
		// replace invalid bytes with U+FFFD.
		for _, s := range []string{key, ref, validator, upstream, fmtName, quarantined} {
			if !utf8.ValidString(s) {
				return
			}
		}
		tm := time.Unix(0, ns).UTC()
		if tm.Year() < 0 || tm.Year() > 9999 { // outside RFC 3339
			return
		}
		d := digest.FromString(key)
		p := Pointer{Key: key, Ref: ref, Digest: d, Size: size, ResolvedAt: tm, Validator: validator, Source: ref, UID: key, Upstream: upstream, CheckedAt: tm}
		r := BlobRecord{Digest: d, Size: size, BLAKE3: validator, Format: fmtName, VerifiedAt: tm, LastUsed: tm,
			Stat: Fingerprint{Size: size, MTime: ns, Inode: inode, Mode: mode}, Source: ref, Ref: ref, Quarantined: quarantined}
		for _, in := range []any{p, r} {
			b, err := json.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			var out any
			switch in.(type) {
			case Pointer:
				out, err = decodeRecord[Pointer](b)
			case BlobRecord:
				out, err = decodeRecord[BlobRecord](b)
			}
			if err != nil {
				t.Fatalf("%T: %v", in, err)
			}
			if !equalRecords(in, out) {
				t.Fatalf("round trip:\nwrote %+v\nread  %+v", in, out)
			}
		}
	})
}

func equalRecords(a, b any) bool {
	switch a := a.(type) {
	case Pointer:
		b := b.(Pointer)
		return a.ResolvedAt.Equal(b.ResolvedAt) && a.CheckedAt.Equal(b.CheckedAt) &&
			a.Key == b.Key && a.Ref == b.Ref && a.Digest == b.Digest && a.Size == b.Size && a.Validator == b.Validator &&
			a.Source == b.Source && a.UID == b.UID && a.Upstream == b.Upstream
	case BlobRecord:
		b := b.(BlobRecord)
		return a.VerifiedAt.Equal(b.VerifiedAt) && a.LastUsed.Equal(b.LastUsed) &&
			a.Digest == b.Digest && a.Size == b.Size && a.BLAKE3 == b.BLAKE3 && a.Format == b.Format && a.Stat == b.Stat &&
			a.Source == b.Source && a.Ref == b.Ref && a.Quarantined == b.Quarantined
	}
	return false
}

package recipe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/chunks"
)

var smallParams = chunks.Params{Algorithm: chunks.Algorithm, Min: 1 << 10, Avg: 2 << 10, Max: 8 << 10}

func randomBytes(seed byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

func index(t testing.TB, data []byte) *chunks.Index {
	t.Helper()
	x, err := chunks.Build(context.Background(), bytes.NewReader(data), smallParams, digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// edit returns a copy of v1 with a few extents rewritten and bytes inserted.
func edit(v1 []byte) []byte {
	v2 := slices.Clone(v1)
	copy(v2[10000:], randomBytes(7, 3000))
	copy(v2[len(v2)/2:], randomBytes(8, 500))
	mid := len(v2) * 3 / 4
	return slices.Concat(v2[:mid], randomBytes(9, 5000), v2[mid:])
}

// body plans, encodes and renders the delta body of v2 against v1.
func body(t testing.TB, v1, v2 []byte) (*Recipe, []byte) {
	t.Helper()
	rc, err := Plan(index(t, v2), index(t, v1))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := rc.Encode(Limits{Size: int64(len(v2)), BaseSize: int64(len(v1))})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc.Body(enc, bytes.NewReader(v2)))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != rc.BodyLen() {
		t.Fatalf("body is %d bytes, BodyLen says %d", len(b), rc.BodyLen())
	}
	return rc, b
}

func assemble(v1 []byte, size int64, b []byte) ([]byte, int64, error) {
	r := bytes.NewReader(b)
	rc, err := Read(r, Limits{Size: size, BaseSize: int64(len(v1))})
	if err != nil {
		return nil, 0, err
	}
	var out bytes.Buffer
	reused, err := Assemble(context.Background(), &out, rc, bytes.NewReader(v1), r, make([]byte, 4096))
	return out.Bytes(), reused, err
}

// TestPlanAssembleRoundTrip: a small edit reuses most of the base, the body
// carries only the changed chunks, and assembly gives v2 exactly.
func TestPlanAssembleRoundTrip(t *testing.T) {
	v1 := randomBytes(1, 1<<20)
	v2 := edit(v1)
	rc, b := body(t, v1, v2)
	if rc.Reused() < int64(len(v2))*8/10 {
		t.Fatalf("reused %d of %d bytes", rc.Reused(), len(v2))
	}
	if rc.Inline+rc.Reused() != int64(len(v2)) {
		t.Fatalf("inline %d + reused %d != %d", rc.Inline, rc.Reused(), len(v2))
	}
	got, reused, err := assemble(v1, int64(len(v2)), b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, v2) || reused != rc.Reused() {
		t.Fatalf("assembled %d bytes (equal %v), reused %d want %d", len(got), bytes.Equal(got, v2), reused, rc.Reused())
	}
	t.Logf("v2 %d bytes: body %d bytes (%d inline, %d entries), reused %d", len(v2), len(b), rc.Inline, len(rc.Entries), reused)
}

// TestAssembleRefusesLies: a base entry whose bytes do not hash to the
// recipe's hash (a lying client, or a base that is not what the client
// thinks) and an inline entry that does not match are both typed
// verification errors; a body that runs on or stops short is a bad recipe.
func TestAssembleRefusesLies(t *testing.T) {
	v1 := randomBytes(1, 256<<10)
	v2 := edit(v1)
	rc, b := body(t, v1, v2)
	enc, _ := rc.Encode(Limits{Size: int64(len(v2)), BaseSize: int64(len(v1))})

	var baseAt, inlineAt = -1, -1
	for i, e := range rc.Entries {
		if e.Kind == Base && baseAt < 0 {
			baseAt = i
		}
		if e.Kind == Inline && inlineAt < 0 {
			inlineAt = i
		}
	}
	if baseAt < 0 || inlineAt < 0 {
		t.Fatal("the edit gave no base or no inline entry")
	}
	// A base entry pointing at other base bytes, keeping its hash.
	lie := slices.Clone(b)
	off := HeaderSize + baseAt*EntrySize + 8
	lie[off+7] ^= 1 // offset + 1
	_, _, err := assemble(v1, int64(len(v2)), lie)
	var me *MismatchError
	if !errors.As(err, &me) || !errors.Is(err, errdefs.ErrVerification) || me.Kind != Base {
		t.Fatalf("moved base entry: %v", err)
	}
	// An inline byte changed.
	lie = slices.Clone(b)
	lie[len(enc)] ^= 1
	if _, _, err := assemble(v1, int64(len(v2)), lie); !errors.As(err, &me) || me.Kind != Inline {
		t.Fatalf("changed inline byte: %v", err)
	}
	// Extra bytes after the inline data; the body cut short.
	if _, _, err := assemble(v1, int64(len(v2)), append(slices.Clone(b), 0)); !errors.Is(err, ErrBadRecipe) {
		t.Fatalf("trailing byte: %v", err)
	}
	if _, _, err := assemble(v1, int64(len(v2)), b[:len(b)-1]); !errors.Is(err, ErrBadRecipe) {
		t.Fatalf("short body: %v", err)
	}
}

// TestReadRefuses: every rule of the header and entries, each broken once.
func TestReadRefuses(t *testing.T) {
	v1 := randomBytes(1, 256<<10)
	v2 := edit(v1)
	rc, b := body(t, v1, v2)
	size := int64(len(v2))
	lim := Limits{Size: size, BaseSize: int64(len(v1))}
	firstBase := slices.IndexFunc(rc.Entries, func(e Entry) bool { return e.Kind == Base })
	firstInline := slices.IndexFunc(rc.Entries, func(e Entry) bool { return e.Kind == Inline })
	ent := func(i int) int { return HeaderSize + i*EntrySize }
	put32 := func(b []byte, at int, v uint32) {
		b[at], b[at+1], b[at+2], b[at+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	put64 := func(b []byte, at int, v uint64) { put32(b, at, uint32(v>>32)); put32(b, at+4, uint32(v)) }
	cases := map[string]func(b []byte) (Limits, []byte){
		"magic":          func(b []byte) (Limits, []byte) { b[0] = 'X'; return lim, b },
		"version":        func(b []byte) (Limits, []byte) { b[8] = 2; return lim, b },
		"reserved":       func(b []byte) (Limits, []byte) { b[10] = 1; return lim, b },
		"declared size":  func(b []byte) (Limits, []byte) { l := lim; l.Size++; return l, b },
		"count huge":     func(b []byte) (Limits, []byte) { put32(b, 12, 1<<31); return lim, b },
		"count vs size":  func(b []byte) (Limits, []byte) { put32(b, 12, uint32(size/MinEntryLen+2)); return lim, b },
		"count too few":  func(b []byte) (Limits, []byte) { put32(b, 12, 1); return lim, b },
		"count one less": func(b []byte) (Limits, []byte) { put32(b, 12, uint32(len(rc.Entries)-1)); return lim, b },
		"inline > size":  func(b []byte) (Limits, []byte) { put64(b, 24, uint64(size+1)); return lim, b },
		"inline sum":     func(b []byte) (Limits, []byte) { put64(b, 24, uint64(rc.Inline-1)); return lim, b },
		"size huge":      func(b []byte) (Limits, []byte) { put64(b, 16, 1<<63); return lim, b },
		"kind":           func(b []byte) (Limits, []byte) { b[ent(0)] = 3; return lim, b },
		"entry reserved": func(b []byte) (Limits, []byte) { b[ent(0)+2] = 1; return lim, b },
		"length zero":    func(b []byte) (Limits, []byte) { put32(b, ent(0)+4, 0); return lim, b },
		"length > max":   func(b []byte) (Limits, []byte) { put32(b, ent(0)+4, MaxEntryLen+1); return lim, b },
		"length < min":   func(b []byte) (Limits, []byte) { put32(b, ent(0)+4, MinEntryLen-1); return lim, b },
		"inline offset":  func(b []byte) (Limits, []byte) { put64(b, ent(firstInline)+8, 1); return lim, b },
		"base past end":  func(b []byte) (Limits, []byte) { put64(b, ent(firstBase)+8, uint64(len(v1))); return lim, b },
		"base negative":  func(b []byte) (Limits, []byte) { put64(b, ent(firstBase)+8, 1<<63); return lim, b },
		"small base":     func(b []byte) (Limits, []byte) { l := lim; l.BaseSize = 100; return l, b },
		"cut in header":  func(b []byte) (Limits, []byte) { return lim, b[:HeaderSize-1] },
		"cut in entries": func(b []byte) (Limits, []byte) { return lim, b[:ent(len(rc.Entries))-1] },
	}
	for name, mutate := range cases {
		l, m := mutate(slices.Clone(b))
		if _, err := Read(bytes.NewReader(m), l); !errors.Is(err, ErrBadRecipe) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: Read = %v, want ErrBadRecipe", name, err)
		}
	}
	if _, err := Read(bytes.NewReader(b), lim); err != nil {
		t.Fatalf("the unmutated body: %v", err)
	}
}

// TestReadDoesNotTrustCount: a header claiming many entries, followed by
// none, costs the reader no more than its first allocation.
func TestReadDoesNotTrustCount(t *testing.T) {
	size := int64(MaxEntries) * MinEntryLen
	rc := &Recipe{Size: size, Inline: size}
	h, err := (&Recipe{Size: 1, Inline: 1, Entries: []Entry{{Kind: Inline, Length: 1}}}).Encode(Limits{Size: 1})
	if err != nil {
		t.Fatal(err)
	}
	h = h[:HeaderSize]
	binary.BigEndian.PutUint32(h[12:], MaxEntries)
	binary.BigEndian.PutUint64(h[16:], uint64(rc.Size))
	binary.BigEndian.PutUint64(h[24:], uint64(rc.Inline))
	allocs := testing.AllocsPerRun(5, func() {
		if _, err := Read(bytes.NewReader(h), Limits{Size: size}); !errors.Is(err, ErrBadRecipe) {
			t.Fatalf("Read = %v", err)
		}
	})
	if allocs > 20 {
		t.Fatalf("%v allocations for an empty recipe claiming %d entries", allocs, MaxEntries)
	}
}

// TestEmptyBlob: a zero-byte blob is a recipe of no entries.
func TestEmptyBlob(t *testing.T) {
	rc := &Recipe{}
	enc, err := rc.Encode(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	got, reused, err := assemble(nil, 0, enc)
	if err != nil || len(got) != 0 || reused != 0 {
		t.Fatalf("empty: %q %d %v", got, reused, err)
	}
}

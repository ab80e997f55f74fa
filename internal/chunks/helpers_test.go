package chunks

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/opencontainers/go-digest"
)

// smallParams make chunks small enough for tests and fuzzing to cross many
// boundaries in little data.
var smallParams = Params{Algorithm: Algorithm, Min: 1 << 10, Avg: 2 << 10, Max: 8 << 10}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(seed byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// build indexes data in one pass through Build.
func build(t testing.TB, data []byte, p Params) *Index {
	t.Helper()
	x, err := Build(context.Background(), bytes.NewReader(data), p, digest.FromBytes(data))
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return x
}

// split indexes data through a Splitter, writing it in pieces whose sizes
// come from next (which may return 0), and collects what emit saw.
func split(t testing.TB, data []byte, p Params, next func() int) (*Index, []Extent) {
	t.Helper()
	var seen []Extent
	s, err := NewSplitter(p, func(e Extent) error { seen = append(seen, e); return nil })
	if err != nil {
		t.Fatal(err)
	}
	for rest := data; len(rest) > 0; {
		n := min(next(), len(rest))
		if w, err := s.Write(rest[:n]); err != nil || w != n {
			t.Fatalf("Write(%d bytes) = %d, %v", n, w, err)
		}
		rest = rest[n:]
		if c := cap(s.feed.stage); c > int(p.Max) {
			t.Fatalf("splitter stage grew to %d bytes, over Max %d", c, p.Max)
		}
	}
	x, err := s.Finish(digest.FromBytes(data))
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	return x, seen
}

// checkCovers checks x against the bytes it indexes: exact coverage, every
// hash right, every length within bounds.
func checkCovers(t testing.TB, x *Index, data []byte) {
	t.Helper()
	if err := x.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if x.Size != int64(len(data)) || x.Blob != digest.FromBytes(data) {
		t.Fatalf("index says %d bytes %s, data is %d bytes %s", x.Size, x.Blob, len(data), digest.FromBytes(data))
	}
	var end int64
	for e := range x.Extents() {
		if e.Offset != end {
			t.Fatalf("extent at %d, previous ended at %d", e.Offset, end)
		}
		if HashOf(data[e.Offset:e.Offset+int64(e.Length)]) != e.Hash {
			t.Fatalf("chunk at %d+%d: hash does not match its bytes", e.Offset, e.Length)
		}
		end += int64(e.Length)
	}
	if end != int64(len(data)) {
		t.Fatalf("extents end at %d, data has %d bytes", end, len(data))
	}
}

// syntheticIndex is a valid index of made-up chunks (no data needed).
func syntheticIndex(p Params, lengths []uint32, seed byte) *Index {
	x := &Index{Params: p, Blob: digest.FromBytes([]byte{seed})}
	r := rand.NewChaCha8([32]byte{seed, 1})
	for _, l := range lengths {
		var c Chunk
		c.Length = l
		r.Read(c.Hash[:])
		x.Chunks = append(x.Chunks, c)
		x.Size += int64(l)
	}
	return x
}

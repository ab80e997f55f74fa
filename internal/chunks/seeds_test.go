package chunks

import (
	"errors"
	"runtime"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// lengthsOf returns n chunk lengths valid under DefaultParams.
func lengthsOf(n int) []uint32 {
	l := make([]uint32, n)
	for i := range l {
		l[i] = 20000 + uint32(i%1000)
	}
	return l
}

func TestSeedsLookup(t *testing.T) {
	data := randomBytes(10, 4<<20)
	x := build(t, data, DefaultParams)
	s, err := NewSeeds(DefaultParams, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add(x, 0); err != nil {
		t.Fatal(err)
	}
	if s.Len() != len(x.Chunks) {
		t.Fatalf("Len = %d, want %d", s.Len(), len(x.Chunks))
	}
	for e := range x.Extents() {
		loc, ok := s.Lookup(e.Chunk)
		if !ok || loc != (Location{Blob: x.Blob, Offset: e.Offset, Length: e.Length}) {
			t.Fatalf("Lookup(chunk at %d) = %+v, %v", e.Offset, loc, ok)
		}
		if HashOf(data[loc.Offset:loc.Offset+int64(loc.Length)]) != e.Hash {
			t.Fatal("location does not hold the chunk")
		}
	}
	other := x.Chunks[0]
	other.Length++
	if _, ok := s.Lookup(other); ok {
		t.Fatal("a chunk with the same hash prefix but another length matched")
	}
	other = x.Chunks[0]
	other.Hash[0] ^= 1
	if _, ok := s.Lookup(other); ok {
		t.Fatal("an unknown hash matched")
	}
}

// A chunk held by several seeds is found in the preferred one: higher
// priority, then the one added last. Re-adding a blob replaces it.
func TestSeedsPreferHigherPriority(t *testing.T) {
	a := syntheticIndex(DefaultParams, lengthsOf(10), 1)
	b := syntheticIndex(DefaultParams, lengthsOf(10), 1) // same chunks,
	b.Blob = digest.FromString("b")                      // another blob
	s, _ := NewSeeds(DefaultParams, 100)
	if err := s.Add(a, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(b, 1); err != nil {
		t.Fatal(err)
	}
	if loc, _ := s.Lookup(a.Chunks[3]); loc.Blob != a.Blob {
		t.Fatalf("found in %s, want the higher-priority %s", loc.Blob, a.Blob)
	}
	if s.Len() != 10 {
		t.Fatalf("Len = %d: a shared chunk is held twice", s.Len())
	}
	if err := s.Add(b, 5); err != nil { // same priority, added later: preferred
		t.Fatal(err)
	}
	if loc, _ := s.Lookup(a.Chunks[3]); loc.Blob != b.Blob {
		t.Fatalf("found in %s, want the later %s", loc.Blob, b.Blob)
	}
	if s.Len() != 10 {
		t.Fatalf("Len = %d after re-adding", s.Len())
	}
}

// The cap holds: the lowest-priority seeds lose their chunks first (oldest
// first among equals), a seed cut in part keeps its lowest offsets, and the
// memory held is the stated SeedEntryBytes per entry.
func TestSeedsBound(t *testing.T) {
	const limit = 25000
	s, _ := NewSeeds(DefaultParams, limit)
	seeds := make([]*Index, 6)
	prio := []int64{3, 1, 2, 1, 5, 4}
	for i := range seeds {
		seeds[i] = syntheticIndex(DefaultParams, lengthsOf(6000), byte(10+i))
		if err := s.Add(seeds[i], prio[i]); err != nil {
			t.Fatal(err)
		}
		if s.Len() > limit || cap(s.entries) > limit {
			t.Fatalf("after %d seeds: %d entries, capacity %d, cap %d", i+1, s.Len(), cap(s.entries), limit)
		}
	}
	// 36000 chunks for 25000 entries: the two priority-1 seeds give up
	// 11000, all of seed 1 (older) and the 5000 highest offsets of seed 3.
	held := func(x *Index) (n, last int) {
		i := -1
		for e := range x.Extents() {
			i++
			if loc, ok := s.Lookup(e.Chunk); ok {
				if loc.Blob != x.Blob || loc.Offset != e.Offset {
					t.Fatalf("chunk of %s at %d found at %+v", x.Blob, e.Offset, loc)
				}
				n++
				last = i
			}
		}
		return n, last
	}
	want := []int{6000, 0, 6000, 1000, 6000, 6000}
	for i, x := range seeds {
		n, last := held(x)
		if n != want[i] {
			t.Errorf("seed %d (priority %d) holds %d chunks, want %d", i, prio[i], n, want[i])
		}
		if i == 3 && last != 999 {
			t.Errorf("seed 3 kept chunk %d: a partly dropped seed must keep its first chunks", last)
		}
	}
	if s.Len() != limit {
		t.Fatalf("Len = %d, want the cap %d", s.Len(), limit)
	}
}

func TestSeedsMemory(t *testing.T) {
	const max = 200000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, _ := NewSeeds(DefaultParams, max)
	for i := range 5 {
		x := syntheticIndex(DefaultParams, lengthsOf(100000), byte(30+i))
		if err := s.Add(x, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if limit := int64(max*SeedEntryBytes + 64<<10); held > limit {
		t.Fatalf("%d entries hold %d bytes of heap, over %d (%d bytes per entry stated)", s.Len(), held, limit, SeedEntryBytes)
	}
	t.Logf("%d entries: %d bytes held, %.1f per entry", s.Len(), held, float64(held)/float64(s.Len()))
	runtime.KeepAlive(s)
}

func TestSeedsRefuse(t *testing.T) {
	s, _ := NewSeeds(DefaultParams, 10)
	if err := s.Add(syntheticIndex(smallParams, []uint32{2000}, 1), 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("index with other params: %v", err)
	}
	bad := syntheticIndex(DefaultParams, []uint32{20000, 20000}, 1)
	bad.Size++
	if err := s.Add(bad, 0); !errors.Is(err, ErrBadIndex) {
		t.Fatalf("invalid index: %v", err)
	}
	if _, err := NewSeeds(DefaultParams, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("zero cap: %v", err)
	}
}

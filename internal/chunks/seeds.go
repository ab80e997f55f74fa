package chunks

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// SeedEntryBytes is what Seeds keeps per chunk: an 8-byte hash prefix, an
// 8-byte offset, a 4-byte seed number and a 4-byte length, in one sorted
// array with no per-entry pointers. A cache of 4 TiB at the default
// parameters (about 50 KiB a chunk) is about 84 Mi chunks, 2 GiB at this rate: set the cap
// (NewSeeds) to what the node can spare, and the highest-priority seeds keep
// their chunks.
const SeedEntryBytes = 24

// Location is where a chunk can be copied from: a byte range of a blob the
// node already has. It is a hint, never a fact: the caller re-hashes the
// bytes against the wanted Chunk.Hash before using them.
type Location struct {
	Blob   digest.Digest
	Offset int64
	Length uint32
}

// Seeds maps chunk hashes to places in blobs the node already has, within a
// fixed number of entries.
//
// Memory: at most max entries of SeedEntryBytes each, plus about 200 bytes
// per seed blob; while Add merges it briefly holds a second copy of the
// entries and of the added index's. Lookups match on the first 8 bytes of
// the hash and on the length: a false match (2^-64 per pair) only costs a
// seed chunk that fails its re-hash and is fetched instead.
//
// Beyond max, entries are dropped from the lowest-priority seed first (among
// equal priorities, the one added first), and within that seed from its
// highest offsets. A chunk found in several seeds is kept once, for the
// highest-priority one. Seeds is safe for concurrent use.
type Seeds struct {
	mu      sync.RWMutex
	params  Params
	max     int
	seeds   []seed
	byBlob  map[digest.Digest]int
	entries []seedEntry // sorted by key, keys unique
	added   uint64
}

type seed struct {
	blob     digest.Digest
	priority int64
	order    uint64 // when it was (last) added; older is dropped first
	count    int    // entries it holds
}

type seedEntry struct {
	key    uint64
	offset int64
	seed   uint32
	length uint32
}

func keyOf(h Hash) uint64 { return binary.BigEndian.Uint64(h[:8]) }

// NewSeeds returns an empty lookup for indexes made with p, holding at most
// max entries (max*SeedEntryBytes bytes).
func NewSeeds(p Params, max int) (*Seeds, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, fmt.Errorf("seeds: cap %d is not positive: %w", max, errdefs.ErrInvalidArgument)
	}
	return &Seeds{params: p, max: max, byBlob: map[digest.Digest]int{}}, nil
}

// Len is the number of entries held.
func (s *Seeds) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.entries)
}

// Add makes the chunks of x available as seeds, with the given priority
// (higher is kept longer: the previous revision of the same image above
// other images, recent above old). Adding a blob again replaces its entries
// and priority. x is validated first; an index made with other Params than
// the Seeds' is refused with errdefs.ErrInvalidArgument, since its chunks
// could never match.
func (s *Seeds) Add(x *Index, priority int64) error {
	if err := x.Validate(); err != nil {
		return err
	}
	if x.Params != s.params {
		return fmt.Errorf("seeds: index of %s uses %+v, not %+v: %w", x.Blob, x.Params, s.params, errdefs.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.added++
	id, ok := s.byBlob[x.Blob]
	if ok {
		s.dropWhere(func(e seedEntry) bool { return int(e.seed) == id })
		s.seeds[id].priority, s.seeds[id].order = priority, s.added
	} else {
		id = len(s.seeds)
		s.seeds = append(s.seeds, seed{blob: x.Blob, priority: priority, order: s.added})
		s.byBlob[x.Blob] = id
	}

	// The new entries, sorted by key; within the blob the first occurrence
	// of a chunk wins (stable sort keeps offset order).
	batch := make([]seedEntry, 0, min(len(x.Chunks), s.max))
	var off int64
	for _, c := range x.Chunks {
		batch = append(batch, seedEntry{key: keyOf(c.Hash), offset: off, seed: uint32(id), length: c.Length})
		off += int64(c.Length)
		if len(batch) == cap(batch) && cap(batch) < len(x.Chunks) {
			break // the cap would drop the rest of this seed at once anyway
		}
	}
	slices.SortStableFunc(batch, func(a, b seedEntry) int { return cmp.Compare(a.key, b.key) })
	batch = slices.CompactFunc(batch, func(a, b seedEntry) bool { return a.key == b.key })

	s.entries = s.merge(s.entries, batch)
	s.recount()
	if excess := len(s.entries) - s.max; excess > 0 {
		s.evict(excess)
	}
	s.shrink()
	return nil
}

// better reports whether seed a is preferred to seed b.
func (s *Seeds) better(a, b uint32) bool {
	sa, sb := &s.seeds[a], &s.seeds[b]
	if sa.priority != sb.priority {
		return sa.priority > sb.priority
	}
	return sa.order > sb.order
}

// merge returns the union of two key-sorted, key-unique slices, keeping the
// better seed's entry for a shared key, in a new slice of exactly that size.
func (s *Seeds) merge(a, b []seedEntry) []seedEntry {
	out := make([]seedEntry, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i].key < b[j].key:
			out = append(out, a[i])
			i++
		case a[i].key > b[j].key:
			out = append(out, b[j])
			j++
		default:
			if s.better(b[j].seed, a[i].seed) {
				out = append(out, b[j])
			} else {
				out = append(out, a[i])
			}
			i++
			j++
		}
	}
	out = append(out, a[i:]...)
	out = append(out, b[j:]...)
	return slices.Clip(out)
}

func (s *Seeds) recount() {
	for i := range s.seeds {
		s.seeds[i].count = 0
	}
	for _, e := range s.entries {
		s.seeds[e.seed].count++
	}
}

// evict drops n entries: whole seeds from the least preferred up, then the
// highest offsets of the next one.
func (s *Seeds) evict(n int) {
	order := make([]uint32, len(s.seeds))
	for i := range order {
		order[i] = uint32(i)
	}
	slices.SortFunc(order, func(a, b uint32) int {
		switch {
		case s.better(a, b):
			return 1
		case s.better(b, a):
			return -1
		}
		return 0
	})
	whole := map[uint32]bool{}
	partial, limit := -1, int64(0)
	for _, id := range order {
		c := s.seeds[id].count
		if n == 0 {
			break
		}
		if c <= n {
			whole[id] = true
			n -= c
			continue
		}
		offs := make([]int64, 0, c)
		for _, e := range s.entries {
			if e.seed == id {
				offs = append(offs, e.offset)
			}
		}
		slices.Sort(offs)
		partial, limit = int(id), offs[c-n-1] // keep the c-n lowest offsets
		n = 0
	}
	s.dropWhere(func(e seedEntry) bool { return whole[e.seed] || (int(e.seed) == partial && e.offset > limit) })
	s.recount()
}

// dropWhere removes the entries drop selects, keeping the order, and
// shrinks the array to what it holds when that is under its capacity.
func (s *Seeds) dropWhere(drop func(seedEntry) bool) {
	s.entries = slices.DeleteFunc(s.entries, drop)
	s.shrink()
}

// shrink reallocates the entries to exactly their length, so that the
// capacity (the memory held) never stays above the cap after an Add.
func (s *Seeds) shrink() {
	if cap(s.entries) > len(s.entries) {
		e := make([]seedEntry, len(s.entries))
		copy(e, s.entries)
		s.entries = e
	}
}

// Lookup returns a place holding c, if a seed has a chunk with the same hash
// prefix and length.
func (s *Seeds) Lookup(c Chunk) (Location, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := keyOf(c.Hash)
	i, found := slices.BinarySearchFunc(s.entries, k, func(e seedEntry, k uint64) int { return cmp.Compare(e.key, k) })
	if !found || s.entries[i].length != c.Length {
		return Location{}, false
	}
	e := s.entries[i]
	return Location{Blob: s.seeds[e.seed].blob, Offset: e.offset, Length: e.length}, true
}

package chunks

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/depot-images/depot/errdefs"
)

// FuzzDecodeIndex: Decode never panics, refuses with a typed error, and what
// it accepts is valid and re-encodes to exactly the input.
func FuzzDecodeIndex(f *testing.F) {
	for i, lengths := range [][]uint32{nil, {1}, {16 << 10, 5}, {64 << 10, 100 << 10, DefaultParams.Max, 20000}} {
		enc, err := syntheticIndex(DefaultParams, lengths, byte(i)).Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	enc, err := build(f, randomBytes(8, 40<<10), smallParams).Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc)
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrBadIndex) || !errors.Is(err, errdefs.ErrCorrupt) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if err := x.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid index: %v", err)
		}
		re, err := x.Encode()
		if err != nil {
			t.Fatalf("Encode of a decoded index: %v", err)
		}
		if !slices.Equal(re, b) {
			t.Fatal("encode(decode(b)) != b")
		}
		y, err := Decode(re)
		if err != nil || y.Params != x.Params || y.Size != x.Size || y.Blob != x.Blob || !slices.Equal(y.Chunks, x.Chunks) {
			t.Fatalf("decode(encode(x)) != x: %v", err)
		}
	})
}

// FuzzSplitterChunking: any split of the writes gives the boundaries of one
// pass (Build), and they cover the input exactly with the right hashes.
func FuzzSplitterChunking(f *testing.F) {
	f.Add([]byte("hello"), uint64(1), uint16(0), uint16(100))
	f.Add(randomBytes(9, 3000), uint64(2), uint16(500), uint16(9000))
	f.Add(make([]byte, 100), uint64(3), uint16(4000), uint16(1))
	f.Fuzz(func(t *testing.T, head []byte, seed uint64, extend uint16, maxWrite uint16) {
		// Extend the input with pseudo-random bytes (every other run) or
		// zeros so that it crosses many boundaries of smallParams.
		// Bounded so that an exec stays cheap (minimizing runs many).
		data := slices.Clone(head[:min(len(head), 64<<10)])
		tail := make([]byte, int(extend)%(64<<10))
		if seed%2 == 0 {
			rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(tail)
		}
		data = append(data, tail...)
		r := rand.New(rand.NewPCG(seed, uint64(maxWrite)))
		limit := int(maxWrite)%(3*int(smallParams.Max)) + 1
		got, seen := split(t, data, smallParams, func() int { return r.IntN(limit + 1) })
		want := build(t, data, smallParams)
		checkCovers(t, got, data)
		if !slices.Equal(got.Chunks, want.Chunks) {
			t.Fatalf("%d bytes in writes of up to %d: boundaries differ from one pass", len(data), limit)
		}
		if !slices.Equal(seen, slices.Collect(got.Extents())) {
			t.Fatal("emitted extents differ from the index")
		}
	})
}

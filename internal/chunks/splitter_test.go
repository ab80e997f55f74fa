package chunks

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// The Splitter gives Build's boundaries however the writes are cut, and
// both cover the data exactly with the right hashes.
func TestSplitterMatchesBuild(t *testing.T) {
	data := randomBytes(1, 6<<20)
	copy(data[2<<20:], make([]byte, 1<<20)) // a zero run, as in a sparse image
	want := build(t, data, DefaultParams)
	checkCovers(t, want, data)
	if n := len(want.Chunks); n < 40 {
		t.Fatalf("only %d chunks in 6 MiB", n)
	}
	for _, size := range []int{1, 7, 4096, 64 << 10, 256<<10 - 1, 256 << 10, 256<<10 + 1, 1 << 20, len(data)} {
		got, seen := split(t, data, DefaultParams, func() int { return size })
		if !slices.Equal(got.Chunks, want.Chunks) || got.Size != want.Size || got.Blob != want.Blob || got.Params != want.Params {
			t.Fatalf("writes of %d bytes: splitter index differs from Build's", size)
		}
		if !slices.Equal(seen, slices.Collect(want.Extents())) {
			t.Fatalf("writes of %d bytes: emitted extents differ from the index", size)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	got, _ := split(t, data, DefaultParams, func() int { return r.IntN(600 << 10) })
	if !slices.Equal(got.Chunks, want.Chunks) {
		t.Fatal("random writes: splitter index differs from Build's")
	}
}

// Chunks are reported as soon as their end is known: never more than Max
// bytes behind what was written.
func TestSplitterEmitsIncrementally(t *testing.T) {
	data := randomBytes(2, 4<<20)
	var reported int64
	s, err := NewSplitter(DefaultParams, func(e Extent) error { reported = e.Offset + int64(e.Length); return nil })
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 32 << 10 {
		if _, err := s.Write(data[off : off+32<<10]); err != nil {
			t.Fatal(err)
		}
		if lag := s.Size() - reported; lag >= int64(DefaultParams.Max) {
			t.Fatalf("after %d bytes only %d reported: %d behind, Max is %d", s.Size(), reported, lag, DefaultParams.Max)
		}
	}
	if _, err := s.Finish(digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	if reported != int64(len(data)) {
		t.Fatalf("reported %d of %d bytes", reported, len(data))
	}
}

func TestSplitterSmallBlobs(t *testing.T) {
	p := DefaultParams
	for _, n := range []int{0, 1, int(p.Min) - 1, int(p.Min), int(p.Min) + 1, int(p.Max) - 1, int(p.Max), int(p.Max) + 1, 2 * int(p.Max)} {
		data := randomBytes(3, n)
		want := build(t, data, p)
		checkCovers(t, want, data)
		got, _ := split(t, data, p, func() int { return 1000 })
		if !slices.Equal(got.Chunks, want.Chunks) || got.Size != int64(n) {
			t.Fatalf("%d bytes: splitter and Build differ", n)
		}
		if n == 0 && len(got.Chunks) != 0 {
			t.Fatalf("empty blob has %d chunks", len(got.Chunks))
		}
	}
}

// A run of zeros, the bulk of a sparse raw image, is cut at Max, so it costs
// 36 bytes of index per Max (the Rabin chunker cut it at Min: 16x more).
func TestZerosCutAtMax(t *testing.T) {
	x := build(t, make([]byte, 4<<20), DefaultParams)
	if want := (4 << 20) / int(DefaultParams.Max); len(x.Chunks) != want {
		t.Fatalf("4 MiB of zeros: %d chunks, want %d", len(x.Chunks), want)
	}
	for _, c := range x.Chunks {
		if c.Length != DefaultParams.Max || c.Hash != x.Chunks[0].Hash {
			t.Fatalf("zero chunk %+v", c)
		}
	}
}

// The boundaries are part of the format: an index made today must match the
// chunks a later build cuts from the same bytes. A module upgrade that moved
// them would change this digest.
func TestBoundariesPinned(t *testing.T) {
	data := randomBytes(4, 2<<20)
	enc, err := build(t, data, DefaultParams).Encode()
	if err != nil {
		t.Fatal(err)
	}
	const want = "sha256:860a9877b4307cae0e9acf947a81cef483047b37bf2cdf6651920cd6df0bda06"
	if got := DigestOf(enc); got != want {
		t.Fatalf("index of the pinned input is %s, want %s: boundaries or encoding changed", got, want)
	}
}

func TestSplitterErrors(t *testing.T) {
	boom := errors.New("boom")
	s, err := NewSplitter(DefaultParams, func(Extent) error { return boom })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(randomBytes(5, 1<<20)); !errors.Is(err, boom) {
		t.Fatalf("Write with a failing emit = %v, want boom", err)
	}
	if _, err := s.Write([]byte{1}); !errors.Is(err, boom) {
		t.Fatalf("the error does not stick: %v", err)
	}
	if _, err := s.Finish(digest.FromString("")); !errors.Is(err, boom) {
		t.Fatalf("Finish after a failure = %v", err)
	}

	s, _ = NewSplitter(DefaultParams, nil)
	if _, err := s.Finish(digest.FromString("")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte{1}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Write after Finish = %v", err)
	}
	if _, err := s.Finish(digest.FromString("")); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("second Finish = %v", err)
	}
	if _, err := NewSplitter(Params{Algorithm: "rabin", Min: 1 << 14, Avg: 1 << 16, Max: 1 << 18}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("unknown algorithm = %v", err)
	}
	s, _ = NewSplitter(DefaultParams, nil)
	s.Write([]byte("abc"))
	if _, err := s.Finish("sha256:nothex"); !errors.Is(err, ErrBadIndex) {
		t.Fatalf("Finish with a bad blob digest = %v", err)
	}
}

func TestBuildErrors(t *testing.T) {
	data := randomBytes(6, 1<<20)
	ctx := context.Background()
	var verr *errdefs.VerificationError
	if _, err := Build(ctx, bytes.NewReader(data), DefaultParams, digest.FromString("other")); !errors.As(err, &verr) {
		t.Fatalf("Build with the wrong digest = %v, want a VerificationError", err)
	}
	if x, err := Build(ctx, bytes.NewReader(data), DefaultParams, ""); err != nil || x.Blob != digest.FromBytes(data) {
		t.Fatalf("Build without a digest = %v, %v", x, err)
	}
	if _, err := Build(ctx, bytes.NewReader(data), DefaultParams, "md5:abc"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Build with a non-sha256 want = %v", err)
	}
	boom := errors.New("disk on fire")
	r := io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom))
	if _, err := Build(ctx, r, DefaultParams, ""); !errors.Is(err, boom) {
		t.Fatalf("Build over a failing reader = %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Build(cctx, bytes.NewReader(data), DefaultParams, ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("Build with a cancelled context = %v", err)
	}
	// A reader that hands out one byte at a time still gives the same index.
	x, err := Build(ctx, iotest.OneByteReader(bytes.NewReader(data)), DefaultParams, digest.FromBytes(data))
	if err != nil || !slices.Equal(x.Chunks, build(t, data, DefaultParams).Chunks) {
		t.Fatalf("one-byte reads: %v", err)
	}
}

package chunks

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	data := randomBytes(7, 3<<20)
	for _, x := range []*Index{
		build(t, data, DefaultParams),
		build(t, nil, DefaultParams),
		build(t, data[:100], smallParams),
		syntheticIndex(DefaultParams, []uint32{DefaultParams.Max, DefaultParams.Min, 70000, 1}, 1),
	} {
		enc, err := x.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if want := 8 + 2 + 1 + len(Algorithm) + 12 + 8 + 32 + 8 + 36*len(x.Chunks); len(enc) != want {
			t.Fatalf("encoding is %d bytes, want %d", len(enc), want)
		}
		got, err := Decode(enc)
		if err != nil {
			t.Fatal(err)
		}
		if got.Params != x.Params || got.Size != x.Size || got.Blob != x.Blob || !slices.Equal(got.Chunks, x.Chunks) {
			t.Fatalf("decode(encode(x)) != x for a %d-byte blob", x.Size)
		}
		if got, err := DecodeVerified(enc, DigestOf(enc)); err != nil || got.Size != x.Size {
			t.Fatalf("DecodeVerified with the right digest: %v", err)
		}
		if got, err := Read(bytes.NewReader(enc), DigestOf(enc)); err != nil || got.Size != x.Size {
			t.Fatalf("Read: %v", err)
		}
	}
}

// mutate returns a valid encoding with one thing changed.
func mutate(t *testing.T, f func(x *Index, enc []byte) []byte) []byte {
	t.Helper()
	x := syntheticIndex(DefaultParams, []uint32{64 << 10, 100 << 10, 16 << 10, 5}, 2)
	enc, err := x.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return f(x, enc)
}

// Offsets in the encoding of a DefaultParams index.
const (
	offAlgLen  = 10
	offParams  = offAlgLen + 1 + len(Algorithm)
	offSize    = offParams + 12
	offCount   = offSize + 8 + 32
	offEntries = offCount + 8
)

func TestDecodeRefuses(t *testing.T) {
	put32 := func(b []byte, off int, v uint32) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
	put64 := func(b []byte, off int, v uint64) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
	entry := func(i int) int { return offEntries + i*entrySize }
	cases := map[string][]byte{
		"empty":          {},
		"bad magic":      mutate(t, func(_ *Index, b []byte) []byte { b[0] = 'X'; return b }),
		"version 2":      mutate(t, func(_ *Index, b []byte) []byte { b[9] = 2; return b }),
		"truncated head": mutate(t, func(_ *Index, b []byte) []byte { return b[:offCount+3] }),
		"unknown algorithm": mutate(t, func(_ *Index, b []byte) []byte {
			b[offAlgLen+1] = 'X'
			return b
		}),
		"algorithm with a control character": mutate(t, func(_ *Index, b []byte) []byte {
			b[offAlgLen+1] = '\x1b'
			return b
		}),
		"no algorithm":     mutate(t, func(_ *Index, b []byte) []byte { b[offAlgLen] = 0; return b }),
		"min above avg":    mutate(t, func(_ *Index, b []byte) []byte { return put32(b, offParams, 128<<10) }),
		"min below floor":  mutate(t, func(_ *Index, b []byte) []byte { return put32(b, offParams, 1) }),
		"max above ceil":   mutate(t, func(_ *Index, b []byte) []byte { return put32(b, offParams+8, 1<<30) }),
		"avg not pow2":     mutate(t, func(_ *Index, b []byte) []byte { return put32(b, offParams+4, 65<<10) }),
		"size too big":     mutate(t, func(x *Index, b []byte) []byte { return put64(b, offSize, uint64(x.Size)+1) }),
		"size too small":   mutate(t, func(x *Index, b []byte) []byte { return put64(b, offSize, uint64(x.Size)-1) }),
		"size negative":    mutate(t, func(_ *Index, b []byte) []byte { return put64(b, offSize, 1<<63) }),
		"count too small":  mutate(t, func(_ *Index, b []byte) []byte { return put64(b, offCount, 0) }),
		"count over input": mutate(t, func(_ *Index, b []byte) []byte { return put64(b, offCount, 5) }),
		"count huge":       mutate(t, func(_ *Index, b []byte) []byte { return put64(b, offCount, 1<<62) }),
		"trailing byte":    mutate(t, func(_ *Index, b []byte) []byte { return append(b, 0) }),
		"missing entry":    mutate(t, func(_ *Index, b []byte) []byte { return b[:len(b)-entrySize] }),
		"zero length":      mutate(t, func(_ *Index, b []byte) []byte { return put32(b, entry(3), 0) }),
		"over max": mutate(t, func(x *Index, b []byte) []byte {
			put32(b, entry(0), DefaultParams.Max+1)
			return put64(b, offSize, uint64(x.Size)+uint64(DefaultParams.Max+1)-(64<<10))
		}),
		"short middle chunk": mutate(t, func(_ *Index, b []byte) []byte {
			put32(b, entry(2), DefaultParams.Min-1)
			return put32(b, entry(3), 16<<10+5-(DefaultParams.Min-1))
		}),
		"overlap (lengths past size)": mutate(t, func(_ *Index, b []byte) []byte { return put32(b, entry(3), 6) }),
		"gap (lengths short of size)": mutate(t, func(_ *Index, b []byte) []byte { return put32(b, entry(3), 4) }),
		"over the size limit":         make([]byte, MaxEncodedSize+1),
	}
	for name, b := range cases {
		x, err := Decode(b)
		if err == nil {
			t.Errorf("%s: decoded %+v", name, x)
			continue
		}
		if !errors.Is(err, ErrBadIndex) || !errors.Is(err, errdefs.ErrCorrupt) || errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: error %v is not ErrBadIndex/ErrCorrupt alone", name, err)
		}
		if strings.ContainsAny(err.Error(), "\x1b\x00") {
			t.Errorf("%s: error prints a control character: %q", name, err)
		}
	}
}

// A declared count is checked against the input before anything is
// allocated for it.
func TestDecodeDoesNotTrustCount(t *testing.T) {
	b := mutate(t, func(_ *Index, b []byte) []byte {
		binary.BigEndian.PutUint64(b[offCount:], MaxChunks)
		binary.BigEndian.PutUint64(b[offSize:], MaxChunks*(64<<10))
		return b
	})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, err := Decode(b); !errors.Is(err, ErrBadIndex) {
			t.Fatalf("Decode = %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 100; per > 4<<10 {
		t.Fatalf("refusing a %d-chunk claim allocated %d bytes per call", MaxChunks, per)
	}
}

func TestDecodeVerifiedRefusesOtherDigest(t *testing.T) {
	enc, err := syntheticIndex(DefaultParams, []uint32{20000}, 3).Encode()
	if err != nil {
		t.Fatal(err)
	}
	var verr *errdefs.VerificationError
	if _, err := DecodeVerified(enc, digest.FromString("another index")); !errors.As(err, &verr) {
		t.Fatalf("DecodeVerified with another digest = %v", err)
	}
	if _, err := Read(bytes.NewReader(enc), digest.FromString("another index")); !errors.As(err, &verr) {
		t.Fatalf("Read with another digest = %v", err)
	}
}

// countingReader counts what is read from it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestReadStopsAtLimit(t *testing.T) {
	cr := &countingReader{r: io.LimitReader(zeroReader{}, 1<<40)}
	_, err := Read(cr, "")
	if !errors.Is(err, ErrBadIndex) {
		t.Fatalf("Read of an endless stream = %v", err)
	}
	if cr.n > int64(MaxEncodedSize)+1 {
		t.Fatalf("read %d bytes, limit %d", cr.n, MaxEncodedSize)
	}
}

// An index of a size-byte blob fits EncodedSizeBound, even one of all
// Min-sized chunks (the most there can be), and ReadAtMost stops one byte
// past its limit.
func TestEncodedSizeBound(t *testing.T) {
	p := smallParams
	for _, size := range []int64{0, 1, int64(p.Min), int64(p.Min) + 1, 100 << 10} {
		x := &Index{Params: p, Size: size, Blob: digest.FromString("b")}
		for left := size; left > 0; left -= int64(p.Min) {
			x.Chunks = append(x.Chunks, Chunk{Length: uint32(min(left, int64(p.Min)))})
		}
		enc, err := x.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if b := EncodedSizeBound(p, size); int64(len(enc)) > b {
			t.Errorf("size %d: the densest index is %d bytes, over the bound %d", size, len(enc), b)
		}
		if _, err := ReadAtMost(bytes.NewReader(enc), DigestOf(enc), int64(len(enc))); err != nil {
			t.Errorf("size %d: ReadAtMost at the exact length: %v", size, err)
		}
	}
	x := build(t, randomBytes(9, 200<<10), p)
	if enc, _ := x.Encode(); int64(len(enc)) > EncodedSizeBound(p, x.Size) {
		t.Errorf("a real index of %d bytes is %d bytes, over the bound", x.Size, len(enc))
	}
	if b := EncodedSizeBound(DefaultParams, 1<<30); b > 5<<20 {
		t.Errorf("bound for 1 GiB is %d bytes; want under 5 MiB", b)
	}
	if EncodedSizeBound(DefaultParams, -1) != int64(MaxEncodedSize) {
		t.Error("an unknown size is not bounded by MaxEncodedSize")
	}
	cr := &countingReader{r: io.LimitReader(zeroReader{}, 1<<40)}
	if _, err := ReadAtMost(cr, "", 4096); !errors.Is(err, ErrBadIndex) || cr.n > 4097 {
		t.Fatalf("ReadAtMost(4096) of an endless stream = %v after %d bytes", err, cr.n)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// A hand-built Index gets the same checks as a decoded one.
func TestEncodeValidates(t *testing.T) {
	bad := []*Index{
		syntheticIndex(DefaultParams, []uint32{1000, 20000}, 4),       // short first chunk
		syntheticIndex(DefaultParams, []uint32{300 << 10}, 4),         // over max
		syntheticIndex(DefaultParams, []uint32{20000, 0}, 4),          // empty chunk
		{Params: DefaultParams, Size: 5, Blob: digest.FromString("")}, // no chunks for 5 bytes
		{Params: DefaultParams, Size: 0, Blob: "sha512:abc"},
		{Params: Params{Algorithm: Algorithm}, Blob: digest.FromString("")},
	}
	for i, x := range bad {
		if _, err := x.Encode(); !errors.Is(err, ErrBadIndex) {
			t.Errorf("case %d: Encode = %v, want ErrBadIndex", i, err)
		}
	}
	x := syntheticIndex(DefaultParams, []uint32{20000, 7}, 4)
	x.Size++
	if _, err := x.Encode(); !errors.Is(err, ErrBadIndex) {
		t.Errorf("size past the chunks: Encode = %v", err)
	}
}

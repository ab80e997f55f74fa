package chunks

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// ErrBadIndex says an encoded or in-memory index broke a rule of the format.
// It matches errdefs.ErrCorrupt with errors.Is; every error Decode and
// Validate return wraps it.
var ErrBadIndex = fmt.Errorf("bad chunk index: %w", errdefs.ErrCorrupt)

// The encoding, version 1, all integers big-endian:
//
//	magic    8 bytes  "DEPOTCIX"
//	version  uint16   1
//	alglen   uint8    1..255, then alglen bytes of Params.Algorithm
//	min      uint32
//	avg      uint32
//	max      uint32
//	size     uint64   the blob's size, at most 2^63-1
//	blob     32 bytes the blob's sha256
//	count    uint64   number of entries, at most MaxChunks
//	entries  count × (length uint32, BLAKE3-256 32 bytes)
//
// Nothing follows the entries. Offsets are implicit. The encoding of an Index
// is unique, so decode(encode(x)) == x and encode(decode(b)) == b, and the
// sha256 of the encoding (DigestOf) identifies the index.
const (
	magic       = "DEPOTCIX"
	version     = 1
	entrySize   = 4 + 32
	fixedHeader = len(magic) + 2 + 1 + 3*4 + 8 + 32 + 8 // without the algorithm name
)

// MaxEncodedSize bounds an encoded index: the largest header and MaxChunks
// entries (about 151 MiB). Read refuses anything longer before decoding it.
const MaxEncodedSize = fixedHeader + 255 + MaxChunks*entrySize

// Encode returns the binary encoding of x, after validating it.
func (x *Index) Encode() ([]byte, error) {
	if err := x.Validate(); err != nil {
		return nil, err
	}
	sum, err := hex.DecodeString(x.Blob.Encoded())
	if err != nil { // Validate checked the digest; kept for safety
		return nil, fmt.Errorf("blob digest: %v: %w", err, ErrBadIndex)
	}
	b := make([]byte, 0, fixedHeader+len(x.Params.Algorithm)+len(x.Chunks)*entrySize)
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint16(b, version)
	b = append(b, byte(len(x.Params.Algorithm)))
	b = append(b, x.Params.Algorithm...)
	b = binary.BigEndian.AppendUint32(b, x.Params.Min)
	b = binary.BigEndian.AppendUint32(b, x.Params.Avg)
	b = binary.BigEndian.AppendUint32(b, x.Params.Max)
	b = binary.BigEndian.AppendUint64(b, uint64(x.Size))
	b = append(b, sum...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(x.Chunks)))
	for _, c := range x.Chunks {
		b = binary.BigEndian.AppendUint32(b, c.Length)
		b = append(b, c.Hash[:]...)
	}
	return b, nil
}

// DigestOf returns the digest a revision records for an encoded index: the
// sha256 of its bytes.
func DigestOf(encoded []byte) digest.Digest { return digest.SHA256.FromBytes(encoded) }

// decoder reads the header fields in order; the first short read sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) next(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("truncated header: %w", ErrBadIndex)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.next(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.next(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.next(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.next(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// Decode parses and validates an encoded index. The input is untrusted: every
// bound is checked against the input's own length before anything
// proportional to a declared count is allocated, and the result satisfies
// Validate. Every error wraps ErrBadIndex.
func Decode(b []byte) (*Index, error) {
	if len(b) > MaxEncodedSize {
		return nil, fmt.Errorf("%d bytes, over the limit of %d: %w", len(b), MaxEncodedSize, ErrBadIndex)
	}
	d := &decoder{b: b}
	if m := d.next(len(magic)); m != nil && string(m) != magic {
		return nil, fmt.Errorf("not a chunk index (bad magic): %w", ErrBadIndex)
	}
	if v := d.u16(); d.err == nil && v != version {
		return nil, fmt.Errorf("unsupported version %d: %w", v, ErrBadIndex)
	}
	var x Index
	x.Params.Algorithm = string(d.next(int(d.u8())))
	x.Params.Min, x.Params.Avg, x.Params.Max = d.u32(), d.u32(), d.u32()
	size := d.u64()
	sum := d.next(32)
	count := d.u64()
	if d.err != nil {
		return nil, d.err
	}
	if err := x.Params.check(); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrBadIndex)
	}
	if size > 1<<63-1 {
		return nil, fmt.Errorf("size %d out of range: %w", size, ErrBadIndex)
	}
	x.Size = int64(size)
	x.Blob = digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(sum))
	if lo, hi := x.Params.chunkCountBounds(x.Size); count > MaxChunks || int64(count) < lo || int64(count) > hi {
		return nil, fmt.Errorf("%d chunks cannot cover %d bytes with sizes %d..%d (limit %d): %w",
			count, x.Size, x.Params.Min, x.Params.Max, MaxChunks, ErrBadIndex)
	}
	// count <= MaxChunks, so the product cannot overflow; the entries must
	// be exactly the rest of the input.
	if uint64(len(d.b)) != count*entrySize {
		return nil, fmt.Errorf("%d chunks need %d bytes of entries, %d follow the header: %w",
			count, count*entrySize, len(d.b), ErrBadIndex)
	}
	if count > 0 {
		x.Chunks = make([]Chunk, count)
	}
	for i := range x.Chunks {
		e := d.b[i*entrySize : (i+1)*entrySize]
		x.Chunks[i].Length = binary.BigEndian.Uint32(e)
		copy(x.Chunks[i].Hash[:], e[4:])
	}
	if err := checkChunks(x.Params, x.Size, x.Chunks); err != nil {
		return nil, err
	}
	return &x, nil
}

// DecodeVerified decodes b only if its digest is want: the way a node reads
// an index whose digest a revision recorded. A digest mismatch is an
// *errdefs.VerificationError; the index is not parsed at all.
func DecodeVerified(b []byte, want digest.Digest) (*Index, error) {
	if got := DigestOf(b); got != want {
		return nil, &errdefs.VerificationError{Want: want, Got: got}
	}
	return Decode(b)
}

// EncodedSizeBound is the longest encoding an index of a size-byte blob
// under p can have (p's algorithm name and its greatest chunk count), at
// most MaxEncodedSize: 36 bytes per Min bytes of blob (about 4.5 MiB for
// 1 GiB under DefaultParams' 8 KiB minimum). A reader that knows the
// blob's size reads no more than this.
func EncodedSizeBound(p Params, size int64) int64 {
	if size < 0 || p.Min == 0 {
		return int64(MaxEncodedSize)
	}
	_, hi := p.chunkCountBounds(size)
	if hi > MaxChunks {
		return int64(MaxEncodedSize)
	}
	return int64(fixedHeader+len(p.Algorithm)) + hi*entrySize
}

// Read reads one encoded index from r, at most MaxEncodedSize bytes, and
// decodes it; with a non-empty want it verifies the bytes first, as
// DecodeVerified does. A longer input is refused (ErrBadIndex) without
// reading more than one byte past the limit.
func Read(r io.Reader, want digest.Digest) (*Index, error) {
	return ReadAtMost(r, want, int64(MaxEncodedSize))
}

// ReadAtMost is Read with a tighter bound, limit bytes (at most
// MaxEncodedSize; see EncodedSizeBound).
func ReadAtMost(r io.Reader, want digest.Digest, limit int64) (*Index, error) {
	limit = min(limit, int64(MaxEncodedSize))
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read chunk index: %w", err)
	}
	if n > limit {
		return nil, fmt.Errorf("over %d bytes: %w", limit, ErrBadIndex)
	}
	if want != "" {
		return DecodeVerified(buf.Bytes(), want)
	}
	return Decode(buf.Bytes())
}

package chunks

import (
	"encoding/hex"
	"fmt"
	"iter"

	"github.com/opencontainers/go-digest"
	"github.com/zeebo/blake3"
)

// Hash is the BLAKE3-256 of one chunk's bytes.
type Hash [32]byte

// HashOf returns the Hash of b.
func HashOf(b []byte) Hash { return blake3.Sum256(b) }

// String is the hash in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Chunk is one index entry. Its offset is implicit: the sum of the lengths
// before it.
type Chunk struct {
	Length uint32
	Hash   Hash
}

// Extent is a chunk with its offset in the blob.
type Extent struct {
	Offset int64
	Chunk
}

// Index is the chunk index of one blob. A valid Index (see Validate) covers
// [0, Size) exactly with its Chunks, in order.
type Index struct {
	Params Params
	Size   int64         // the blob's size in bytes
	Blob   digest.Digest // the blob's sha256 digest: its identity
	Chunks []Chunk
}

// Extents yields every chunk with its offset, in order.
func (x *Index) Extents() iter.Seq[Extent] {
	return func(yield func(Extent) bool) {
		var off int64
		for _, c := range x.Chunks {
			if !yield(Extent{Offset: off, Chunk: c}) {
				return
			}
			off += int64(c.Length)
		}
	}
}

// Validate checks everything Decode checks, for an Index built in memory:
// valid Params, a sha256 blob digest, a chunk count within MaxChunks and
// consistent with Size, and chunks that cover [0, Size) exactly, each within
// [1, Max] bytes and each but the last at least Min. The error wraps
// ErrBadIndex.
func (x *Index) Validate() error {
	if err := x.Params.check(); err != nil {
		return fmt.Errorf("%v: %w", err, ErrBadIndex)
	}
	if x.Blob.Algorithm() != digest.SHA256 || x.Blob.Validate() != nil {
		return fmt.Errorf("blob digest %q is not a valid sha256 digest: %w", x.Blob, ErrBadIndex)
	}
	return checkChunks(x.Params, x.Size, x.Chunks)
}

// checkChunks is the coverage check shared by Validate and Decode.
func checkChunks(p Params, size int64, chunks []Chunk) error {
	if size < 0 {
		return fmt.Errorf("negative size %d: %w", size, ErrBadIndex)
	}
	n := int64(len(chunks))
	if n > MaxChunks {
		return fmt.Errorf("%d chunks, over the limit of %d: %w", n, MaxChunks, ErrBadIndex)
	}
	if lo, hi := p.chunkCountBounds(size); n < lo || n > hi {
		return fmt.Errorf("%d chunks cannot cover %d bytes with sizes %d..%d: %w", n, size, p.Min, p.Max, ErrBadIndex)
	}
	var off int64
	for i, c := range chunks {
		last := i == len(chunks)-1
		if c.Length == 0 || c.Length > p.Max || (!last && c.Length < p.Min) {
			return fmt.Errorf("chunk %d at offset %d has length %d, outside %d..%d: %w", i, off, c.Length, p.Min, p.Max, ErrBadIndex)
		}
		off += int64(c.Length) // at most MaxChunks*MaxChunkCeil = 2^46: no overflow
	}
	if off != size {
		return fmt.Errorf("chunks cover %d bytes, the blob has %d: %w", off, size, ErrBadIndex)
	}
	return nil
}

package chunks

import (
	"fmt"

	"github.com/depot-images/depot/errdefs"
)

// Algorithm names the boundary algorithm and the chunk hash of every index
// this package writes: FastCDC as go-cdc-chunkers versions it, and BLAKE3-256
// of each chunk. Indexes with another name are refused, since their
// boundaries could not be reproduced here.
const Algorithm = "fastcdc-v1.0.0+blake3"

// Hard bounds on parameters and indexes. They hold for any index this package
// accepts, whatever its parameters say.
const (
	// MinChunkFloor is the smallest Params.Min accepted.
	MinChunkFloor = 1 << 10
	// MaxChunkCeil is the largest Params.Max accepted: a reader may buffer
	// a whole chunk to verify it before use.
	MaxChunkCeil = 16 << 20
	// MaxChunks bounds the entries of one index (36 bytes each, so an
	// encoded index is at most about 151 MiB). With DefaultParams every blob
	// up to MaxChunks*8 KiB = 32 GiB is guaranteed an index, and typical
	// content (about 50 KiB a chunk) up to about 200 GiB; a blob that
	// exceeds it gets none (ErrTooLarge) and moves whole, and one over
	// MaxChunks*128 KiB = 512 GiB never has one.
	MaxChunks = 1 << 22
)

// Params are the chunking parameters an index was made with. Two indexes
// share chunks only when their Params are equal.
type Params struct {
	Algorithm     string
	Min, Avg, Max uint32
}

// DefaultParams are min/avg/max 8/32/128 KiB. This FastCDC's real mean
// chunk is about 1.5× its Avg (about 50 KiB here, and 98 KiB at casync's
// 16/64/256), so these sizes cut chunks about as large as casync's own
// (about 85 KiB) and smaller; on bench/delta.sh's pairs they moved 24 to 45%
// fewer bytes than 16/64/256 for twice the index (BENCHMARKS.md, "Chunk
// size"). Changing them makes every stored index stale: servers and caches
// recompute an index of other parameters when they next need it.
var DefaultParams = Params{Algorithm: Algorithm, Min: 8 << 10, Avg: 32 << 10, Max: 128 << 10}

// Validate reports whether p can be used to chunk and to decode: a known
// algorithm, MinChunkFloor <= Min < Avg < Max <= MaxChunkCeil, and Avg a power
// of two (FastCDC derives its masks from log2(Avg)). The error wraps
// errdefs.ErrInvalidArgument.
func (p Params) Validate() error {
	if err := p.check(); err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// check is Validate without an error class, for callers that give their own
// (an index's params are ErrBadIndex, a caller's ErrInvalidArgument).
func (p Params) check() error {
	switch {
	case p.Algorithm != Algorithm:
		return fmt.Errorf("chunk params: unknown algorithm %q", p.Algorithm)
	case p.Min < MinChunkFloor || p.Max > MaxChunkCeil || p.Min >= p.Avg || p.Avg >= p.Max:
		return fmt.Errorf("chunk params: need %d <= min < avg < max <= %d, got %d/%d/%d",
			MinChunkFloor, MaxChunkCeil, p.Min, p.Avg, p.Max)
	case p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunk params: avg %d is not a power of two", p.Avg)
	}
	return nil
}

// chunkCountBounds returns the least and the greatest number of chunks a blob
// of size bytes can have under p: every chunk is at most Max bytes, every one
// but the last at least Min, and none is empty.
func (p Params) chunkCountBounds(size int64) (lo, hi int64) {
	if size == 0 {
		return 0, 0
	}
	lo = (size + int64(p.Max) - 1) / int64(p.Max)
	hi = (size-1)/int64(p.Min) + 1
	return lo, hi
}

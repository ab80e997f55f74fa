// Package source is where the node cache fetches from: a depot server, a
// plain HTTP(S) URL with a checksum file, or an OCI registry.
//
// A Source answers two questions: what digest does the pointer resolve to
// now (one small request: metadata, a checksum file or a manifest, never
// the body), and give me the bytes of digest D from offset N. A source never
// verifies; the cache hashes everything it receives.
package source

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/chunks"
)

// Descriptor is what a pointer resolves to.
type Descriptor struct {
	Digest digest.Digest
	Size   int64 // -1 when unknown
	// Validator is an opaque version tag (an HTTP ETag) used to resume a
	// partial download only while the source still serves the same bytes.
	Validator string
	// Identity is the object the pointer named (a depot image's UID), so a
	// delete-and-recreate under the same name is told apart (seed 000).
	Identity string
	// Chunks is the digest of the content's chunk index when the origin
	// recorded one with the revision: an index fetched for Digest is
	// trusted only if it hashes to it (chunks.DecodeVerified). Empty when
	// unknown.
	Chunks digest.Digest
}

// Body is an open download.
type Body struct {
	io.ReadCloser
	// Offset is where the bytes start: the requested offset when the source
	// honoured the range, 0 when it sent everything.
	Offset int64
	// Size is the total size of the content when known, else -1.
	Size      int64
	Validator string
	// Ranges reports that the origin honours byte ranges, so the rest may be
	// fetched over several connections.
	Ranges bool
}

// Source is one origin of content.
type Source interface {
	// Resolve reports what the reference's pointer names now. A pinned
	// reference may resolve without any request. Errors: ErrNotFound when
	// the pointer names nothing, ErrUnavailable when the origin is
	// unreachable.
	Resolve(ctx context.Context) (Descriptor, error)
	// Open starts a download of d from offset, length bytes (-1: to the
	// end). validator, when non-empty, makes a ranged request conditional
	// (If-Range). Errors: ErrNotFound when the origin cannot supply d,
	// ErrUnavailable when unreachable.
	Open(ctx context.Context, d digest.Digest, offset, length int64, validator string) (Body, error)
	// ByDigest reports whether Open can fetch any digest (depot, OCI),
	// rather than only the one content the pointer names (a plain URL).
	ByDigest() bool
	// String names the origin for messages.
	String() string
}

// Indexer is a source that can serve the chunk index of a blob (a depot
// server: GET /blob/<digest>/chunks), so a node fetches only the chunks
// it lacks as byte ranges. Sources without one (plain HTTP, OCI) are
// transferred whole.
type Indexer interface {
	// ChunkIndex returns the validated index of d. With a non-empty
	// want (the digest a revision recorded) the encoded index must hash
	// to it. size, when known (>= 0), is d's declared size: no more is
	// read than an index of that size under chunks.DefaultParams can
	// take (chunks.EncodedSizeBound), so a hostile origin cannot make
	// every pull read chunks.MaxEncodedSize. The index is still a claim
	// about d's bytes: callers verify every chunk and the whole-file
	// digest. Errors: ErrNotFound when the origin has no index (an older
	// server), ErrCorrupt (chunks.ErrBadIndex) or
	// *errdefs.VerificationError for a bad one, ErrUnavailable when
	// unreachable.
	ChunkIndex(ctx context.Context, d, want digest.Digest, size int64) (*chunks.Index, error)
}

// Recorder is a source that can say what its origin recorded with the
// revision holding a digest (a depot image's content and history): its
// size and the digest of its chunk index. A pinned reference resolves
// without a request; a transfer that fetches the blob whole asks this
// once, so that the index it takes is still checked against a digest the
// revision recorded.
type Recorder interface {
	// Recorded returns the descriptor of d as a revision recorded it.
	// Errors: ErrNotFound when no revision the origin keeps holds d.
	Recorded(ctx context.Context, d digest.Digest) (Descriptor, error)
}

// DeltaIndexer is an Indexer that can send an index as a delta against
// the index of a blob the caller holds (a depot server: GET
// /blob/<digest>/chunks?base=<digest>, a zstd frame with the base's index
// as its dictionary). It is an optimisation only: any error means ask
// ChunkIndex instead.
type DeltaIndexer interface {
	// ChunkIndexDelta returns the validated index of d, checked as
	// ChunkIndex checks it (against want when non-empty, bounded by
	// size), and the bytes that crossed the network for it.
	ChunkIndexDelta(ctx context.Context, d, want digest.Digest, size int64, base *chunks.Index) (*chunks.Index, int64, error)
}

// Compressor is a source that can send a byte range of a blob compressed
// (a depot server: GET /blob/<digest>/zstd), so a delta transfer moves
// fewer bytes than the chunks it lacks. It is an optimisation only: a
// source that answers errdefs.ErrNotFound (an older server, or a head that
// redirects downloads to an object store) is asked for plain ranges
// instead.
type Compressor interface {
	// OpenCompressed starts a download of d's bytes [offset,
	// offset+length); the body reads as exactly those plain bytes. Errors
	// while reading: errdefs.ErrCorrupt for a frame that does not decode
	// to length bytes, errdefs.ErrUnavailable for a broken connection.
	OpenCompressed(ctx context.Context, d digest.Digest, offset, length int64) (CompressedBody, error)
}

// CompressedBody is an open compressed range: Read yields plain bytes.
type CompressedBody interface {
	io.ReadCloser
	// WireBytes is how many compressed bytes were read so far.
	WireBytes() int64
}

// Heads is how many origins s fails over between: a depot cluster's heads,
// 1 for anything else. A transfer that stalled is retried only when there is
// another head to go to.
func Heads(s Source) int {
	if h, ok := s.(interface{ Heads() int }); ok {
		return h.Heads()
	}
	return 1
}

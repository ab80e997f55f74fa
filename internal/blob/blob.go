// Package blob defines depot's content-addressed blob storage seam.
//
// A blob is an immutable byte string named by its sha256 digest. The seam is
// split by role, after containerd's content store: a Provider reads committed
// blobs, an Ingester streams new ones in, and a Manager deletes and walks.
// Backends (blob/local, blob/s3) implement all three and run the one
// conformance suite in blob/blobtest.
//
// The central contract: a blob becomes visible only through Writer.Commit,
// after its size and digest were checked. Nothing partial is ever returned by
// Open, Stat or Walk. This package never decides what to keep: reference
// counting and garbage collection belong to the catalog and the server.
package blob

import (
	"context"
	"io"
	"net/url"
	"time"

	"github.com/opencontainers/go-digest"
)

// Info describes a committed blob.
type Info struct {
	Digest digest.Digest
	Size   int64
	// BLAKE3 is the hex BLAKE3-256 of the content. Commit always fills it;
	// Stat and Walk may leave it empty when the backend does not keep it.
	BLAKE3 string
	// Committed is when the blob became visible (the file's mtime for local).
	Committed time.Time
}

// Reader is a committed blob opened for reading. Reads are ranged through
// ReadAt or Seek; the caller closes it.
type Reader interface {
	io.ReaderAt
	io.ReadSeeker
	io.Closer
}

// Provider reads committed blobs.
type Provider interface {
	// Open returns the blob for ranged reads. A blob that is not committed
	// returns an error matching errdefs.ErrNotFound.
	Open(ctx context.Context, dgst digest.Digest) (Reader, error)
	// Stat returns the blob's Info, or errdefs.ErrNotFound.
	Stat(ctx context.Context, dgst digest.Digest) (Info, error)
}

// Writer receives the bytes of one blob. It hashes as it writes.
type Writer interface {
	io.Writer
	// Digest is the sha256 of what was written so far.
	Digest() digest.Digest
	// Size is the number of bytes written so far.
	Size() int64
	// Commit makes the blob visible under its digest. A size >= 0 and a
	// non-empty expected digest are checked first; on mismatch nothing is
	// committed and the error is an *errdefs.VerificationError. Committing
	// content that already exists succeeds and returns the existing Info.
	// Commit always closes the writer, even on error.
	Commit(ctx context.Context, size int64, expected digest.Digest) (Info, error)
	// Close abandons the write and discards everything written. Calling
	// Close after Commit is a no-op.
	Close() error
}

// WriteOptions is what a caller knows about a blob before its first byte.
type WriteOptions struct {
	// Expected, when set, is the declared sha256 of the content. The write
	// then commits only content with this digest, whatever Commit is given,
	// and a backend may use it to write straight to the final location
	// (the S3 store uploads to the digest's key and completes the upload
	// only after verification).
	Expected digest.Digest
	// SizeHint, when > 0, is the declared length; a backend may use it to
	// size its writes (S3 part size). Commit still checks the real size.
	SizeHint int64
}

// Ingester starts new writes.
type Ingester interface {
	// Writer starts a private, invisible write. An opts.Expected that is
	// not a well-formed sha256 digest is an errdefs.ErrInvalidArgument.
	Writer(ctx context.Context, opts WriteOptions) (Writer, error)
}

// Manager deletes and enumerates committed blobs.
type Manager interface {
	// Delete removes a committed blob, or returns errdefs.ErrNotFound.
	// Readers that already opened it may finish (POSIX semantics locally).
	Delete(ctx context.Context, dgst digest.Digest) error
	// Walk calls fn for every committed blob, in no particular order. An
	// error from fn stops the walk and is returned.
	Walk(ctx context.Context, fn func(Info) error) error
}

// Store is a complete backend.
type Store interface {
	Provider
	Ingester
	Manager
}

// IngestSweeper is an optional capability: it removes abandoned partial
// writes older than the given age and reports how many it removed.
type IngestSweeper interface {
	SweepIngests(ctx context.Context, olderThan time.Duration) (int, error)
}

// Presigner is an optional capability of stores that clients can read
// directly (object storage): a URL that GETs blob d, with Range, without
// depot credentials, until expiry. A missing blob is errdefs.ErrNotFound.
type Presigner interface {
	PresignGet(ctx context.Context, d digest.Digest, expiry time.Duration) (*url.URL, error)
}

// DeclaredDigestPreferrer is an optional capability of stores for which a
// write whose digest is declared up front (WriteOptions.Expected) commits
// more cheaply than one whose digest is known only at the end: the S3 store
// uploads it straight to its final key, with no copy.
type DeclaredDigestPreferrer interface {
	PrefersDeclaredDigest() bool
}

// IndexStore is an optional capability: it keeps one small record beside
// each blob, keyed by the blob's digest (the server keeps the blob's chunk
// index there). The records are opaque to the store, are not blobs (Walk,
// Stat and Open never see them) and are never part of a blob's commit: a
// caller writes one after the blob commits and deletes it with the blob.
// Every backend that implements it runs blobtest's IndexStore tests.
type IndexStore interface {
	// PutIndex stores data as d's record, replacing any earlier one. A
	// reader sees the old record or the new, never a mix.
	PutIndex(ctx context.Context, d digest.Digest, data []byte) error
	// GetIndex returns d's record, or errdefs.ErrNotFound. A record over
	// limit bytes is not read: the error matches errdefs.ErrCorrupt.
	GetIndex(ctx context.Context, d digest.Digest, limit int64) ([]byte, error)
	// DeleteIndex removes d's record. A missing one is not an error.
	DeleteIndex(ctx context.Context, d digest.Digest) error
}

// Ingest streams r into s and commits it, checking size (when >= 0) and
// expected (when non-empty). It is the one-call form of Writer/Commit.
func Ingest(ctx context.Context, s Ingester, r io.Reader, size int64, expected digest.Digest) (Info, error) {
	w, err := s.Writer(ctx, WriteOptions{Expected: expected, SizeHint: size})
	if err != nil {
		return Info{}, err
	}
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(w, readerOnly{ctx, r}, buf); err != nil {
		w.Close()
		return Info{}, err
	}
	return w.Commit(ctx, size, expected)
}

// readerOnly hides any WriterTo of r so that CopyBuffer uses our buffer, and
// stops the copy when ctx is cancelled.
type readerOnly struct {
	ctx context.Context
	r   io.Reader
}

func (r readerOnly) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// Package catalog defines depot's metadata seam: Image objects, the name →
// UID index, content revisions, blob reference counts, tokens and secrets.
//
// The catalog never touches blob bytes. It records which digests images
// reference so that the server can garbage-collect blobs nobody references.
// This package holds the types, the interfaces and the rules of single
// records (names, reference records, tokens); it never stores anything.
// catalog/kv implements Catalog once over a small transaction interface,
// and the backends (catalog/bolt, one head; catalog/etcd, several heads)
// adapt their stores to it and run the conformance suite in
// catalog/catalogtest.
//
// A record that does not decode is ErrCorrupt, never a default: a damaged
// reference count read as zero would let GC delete a referenced blob. Every
// operation that needs such a record refuses, naming it.
//
// All multi-key changes go through Images.Update, an atomic read-modify-write:
// catalog/kv maintains the name index and adjusts reference counts from the
// image's before/after digest sets (RefDiff) inside the same transaction.
package catalog

import (
	"context"
	"time"

	"github.com/opencontainers/go-digest"
)

// Images stores Image objects.
type Images interface {
	// Create stores a new image. An empty UID is assigned. The name must be
	// valid (ValidateName) and unused, else ErrInvalidArgument or
	// ErrAlreadyExists. The image's digests gain a reference.
	Create(ctx context.Context, img Image) (Image, error)
	// Get finds an image by UID or name, or returns ErrNotFound.
	Get(ctx context.Context, ref string) (Image, error)
	// List returns up to limit images ordered by name, starting after the
	// name after ("" for the start).
	List(ctx context.Context, after string, limit int) ([]Image, error)
	// Update atomically applies fn to the image found by ref and stores the
	// result. fn may run more than once (backends retry on contention), so
	// it must only compute from its argument. An error from fn aborts the
	// update and is returned unchanged. The UID cannot change; a new name is
	// validated and must be free. Reference counts follow RefDiff.
	Update(ctx context.Context, ref string, fn func(*Image) error) (Image, error)
	// Delete atomically removes the image found by ref after check (may be
	// nil) approves it. Its digests lose a reference; the name is free again.
	Delete(ctx context.Context, ref string, check func(Image) error) (Image, error)
}

// Refs tracks blob reference counts for garbage collection.
type Refs interface {
	// Ref returns the record of dgst, or ErrNotFound when the catalog has
	// never heard of it (a blob left by a crash between commit and Touch).
	Ref(ctx context.Context, dgst digest.Digest) (BlobRef, error)
	// Touch records that dgst exists in the blob store, or is about to: an
	// upload touches the digest before it commits the bytes. An unreferenced
	// blob's grace period restarts at now. A claimed blob is ErrConflict:
	// the caller waits for the collector to Forget it, then touches again.
	Touch(ctx context.Context, dgst digest.Digest, now time.Time) error
	// Collectable lists blobs with zero references since before cutoff,
	// claimed ones included (a collector may have died before Forget).
	// Damaged records are never candidates: when there are any, the intact
	// candidates come back together with a *CorruptRefsError (matching
	// ErrCorrupt) that names the damaged digests, so one damaged record
	// neither stops collection nor lets its blob be deleted.
	Collectable(ctx context.Context, cutoff time.Time) ([]BlobRef, error)
	// Claim marks dgst as being collected if it still has zero references
	// since before cutoff; otherwise it returns ErrConflict and the blob
	// must be kept. While claimed, Touch and new references fail with
	// ErrConflict, so no upload can count on bytes the collector is about
	// to delete. Claiming a claimed blob keeps the first claim's time.
	Claim(ctx context.Context, dgst digest.Digest, cutoff, now time.Time) error
	// Forget drops the record of a claimed blob once its bytes are deleted
	// (ErrConflict if it is not claimed).
	Forget(ctx context.Context, dgst digest.Digest) error
}

// Tokens stores token records.
type Tokens interface {
	PutToken(ctx context.Context, t Token) error
	// GetToken returns the record or ErrNotFound (a revoked token).
	GetToken(ctx context.Context, id string) (Token, error)
	ListTokens(ctx context.Context) ([]Token, error)
	DeleteToken(ctx context.Context, id string) error
}

// Secrets stores small shared secrets such as the token signing key.
type Secrets interface {
	// Secret returns the secret called name, creating it with gen the first
	// time. Concurrent callers (on any head) all get the same value.
	Secret(ctx context.Context, name string, gen func() ([]byte, error)) ([]byte, error)
}

// Catalog is a complete backend.
type Catalog interface {
	Images
	Refs
	Tokens
	Secrets
	Close() error
}

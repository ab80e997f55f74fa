// Package catalog defines depot's metadata seam: Image objects, the name →
// UID index, content revisions, blob reference counts, tokens and secrets.
//
// The catalog never touches blob bytes. It records which digests images
// reference so that the server can garbage-collect blobs nobody references.
// Backends (catalog/bolt, one head; catalog/etcd, several heads) implement
// Catalog and run the conformance suite in catalog/catalogtest.
//
// A record that does not decode is ErrCorrupt, never a default: a damaged
// reference count read as zero would let GC delete a referenced blob. Every
// operation that needs such a record refuses, naming it.
//
// All multi-key changes go through Images.Update, an atomic read-modify-write:
// the backend maintains the name index and adjusts reference counts from the
// image's before/after digest sets (RefDiff) inside the same transaction.
package catalog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/names"
)

// Image is one Image object (seed 004).
type Image struct {
	UID            string    `json:"uid"`
	Name           string    `json:"name"`
	Description    string    `json:"description,omitempty"`
	Frozen         bool      `json:"frozen,omitempty"`
	Parent         string    `json:"parent,omitempty"` // a UID
	Distro         string    `json:"distro,omitempty"`
	Content        *Content  `json:"content,omitempty"`
	History        []Content `json:"history,omitempty"` // oldest first; the last entry is the current content
	Created        time.Time `json:"created"`
	LastModified   time.Time `json:"last_modified"`
	LastModifiedBy string    `json:"last_modified_by,omitempty"`
}

// Content is one content revision of an image: a reference to a blob.
type Content struct {
	Digest  digest.Digest `json:"digest"`
	Size    int64         `json:"size"`
	MTime   time.Time     `json:"mtime"`
	Format  string        `json:"fmt"`
	BLAKE3  string        `json:"blake3,omitempty"`
	By      string        `json:"by,omitempty"`
	Message string        `json:"message,omitempty"`
}

// Digests is the set of blobs the image references: its current content and
// every retained revision.
func (img *Image) Digests() map[digest.Digest]bool {
	set := map[digest.Digest]bool{}
	if img == nil {
		return set
	}
	if img.Content != nil {
		set[img.Content.Digest] = true
	}
	for _, c := range img.History {
		set[c.Digest] = true
	}
	return set
}

// RefDiff returns the digests whose reference count goes up and down when an
// image changes from before to after (either may be nil).
func RefDiff(before, after *Image) (inc, dec []digest.Digest) {
	b, a := before.Digests(), after.Digests()
	for d := range a {
		if !b[d] {
			inc = append(inc, d)
		}
	}
	for d := range b {
		if !a[d] {
			dec = append(dec, d)
		}
	}
	return inc, dec
}

// BlobRef is the catalog's record of one blob.
type BlobRef struct {
	Digest digest.Digest `json:"digest"`
	Refs   int           `json:"refs"`
	// ZeroSince is when Refs last became zero (or the blob was touched
	// without references). Zero time when Refs > 0.
	ZeroSince time.Time `json:"zero_since,omitzero"`
	// Claimed is when a garbage collector claimed the blob for deletion
	// (Refs.Claim); zero otherwise. The bytes may already be gone.
	Claimed time.Time `json:"claimed,omitzero"`
}

// Collectable reports whether r has had no references since before cutoff.
func (r BlobRef) Collectable(cutoff time.Time) bool {
	return r.Refs == 0 && r.ZeroSince.Before(cutoff)
}

// errClaimed is what touching or referencing a claimed blob returns.
func errClaimed(d digest.Digest) error {
	return fmt.Errorf("blob %s is being garbage-collected: %w", d, errdefs.ErrConflict)
}

// DecodeRef decodes the stored reference record of d. Bytes that are not
// a record of d (bad JSON, another digest, a negative count) are
// ErrCorrupt: nobody can tell how many images reference d.
func DecodeRef(d digest.Digest, v []byte) (BlobRef, error) {
	r := BlobRef{Digest: d}
	if err := json.Unmarshal(v, &r); err != nil {
		return BlobRef{}, corruptRef(d, err.Error())
	}
	if r.Digest != d {
		return BlobRef{}, corruptRef(d, fmt.Sprintf("the record names %q", r.Digest))
	}
	if r.Refs < 0 {
		return BlobRef{}, corruptRef(d, fmt.Sprintf("negative reference count %d", r.Refs))
	}
	return r, nil
}

func corruptRef(d digest.Digest, why string) error {
	return fmt.Errorf("reference record of blob %s is damaged (%s); it is kept and nothing that depends on its count proceeds until the record is repaired: %w", d, why, errdefs.ErrCorrupt)
}

// CorruptRefsError is what Collectable returns beside the intact candidates
// when some reference records do not decode. It matches ErrCorrupt.
type CorruptRefsError struct {
	Digests []string // the damaged records' keys (digests, as stored)
}

func (e *CorruptRefsError) Error() string {
	const show = 5
	names := e.Digests
	more := ""
	if len(names) > show {
		names, more = names[:show], fmt.Sprintf(" and %d more", len(e.Digests)-show)
	}
	return fmt.Sprintf("%d damaged blob reference records (%s%s): their blobs are kept: %v", len(e.Digests), strings.Join(names, ", "), more, errdefs.ErrCorrupt)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptRefsError) Is(target error) bool { return target == errdefs.ErrCorrupt }

// DecodeToken decodes a stored token record; damage is ErrCorrupt.
func DecodeToken(id string, v []byte) (Token, error) {
	var t Token
	if err := json.Unmarshal(v, &t); err != nil {
		return Token{}, fmt.Errorf("token record %q is damaged: %v: %w", id, err, errdefs.ErrCorrupt)
	}
	return t, nil
}

// Touch applies Refs.Touch to the record r of a blob that is in the store
// (or about to be committed to it): its grace period restarts at now. A
// claimed blob is ErrConflict.
func (r *BlobRef) Touch(now time.Time) error {
	if !r.Claimed.IsZero() {
		return errClaimed(r.Digest)
	}
	if r.Refs == 0 {
		r.ZeroSince = now
	}
	return nil
}

// Claim applies Refs.Claim to r.
func (r *BlobRef) Claim(cutoff, now time.Time) error {
	if !r.Collectable(cutoff) {
		return fmt.Errorf("blob %s is referenced or in its grace period: %w", r.Digest, errdefs.ErrConflict)
	}
	if r.Claimed.IsZero() {
		r.Claimed = now
	}
	return nil
}

// CheckForget is the rule of Refs.Forget: only a claimed record goes.
func (r BlobRef) CheckForget() error {
	if r.Claimed.IsZero() {
		return fmt.Errorf("blob %s was not claimed for collection: %w", r.Digest, errdefs.ErrConflict)
	}
	return nil
}

// Token is the record of an issued API token. The secret never is stored:
// tokens are signed, and the record exists so a token can be listed and revoked.
type Token struct {
	ID        string    `json:"id"`
	Subject   string    `json:"subject"`
	Role      string    `json:"role"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// Images stores Image objects.
type Images interface {
	// Create stores a new image. An empty UID is assigned. The name must be
	// valid (names.ValidateName) and unused, else ErrInvalidArgument or
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

// NewUID returns a fresh random UID.
func NewUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b)
}

// NotFound wraps ErrNotFound for an image reference.
func NotFound(ref string) error {
	return fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
}

// Clone returns a deep copy (content and history are not shared).
func (img *Image) Clone() *Image {
	out := *img
	if img.Content != nil {
		c := *img.Content
		out.Content = &c
	}
	out.History = append([]Content(nil), img.History...)
	return &out
}

// ApplyRefDiff adjusts blob records for an image changing from before to
// after (either may be nil), inside the caller's transaction: each digest
// the image gains gets one more reference and leaves its grace period; each
// it loses gets one fewer, and starts its grace period at now on reaching
// zero. Backends supply get (a missing record is the zero BlobRef with the
// digest set; a damaged one is ErrCorrupt, which aborts the change) and put. Keeping this in one place keeps GC's rules identical
// on every backend.
func ApplyRefDiff(before, after *Image, now time.Time, get func(digest.Digest) (BlobRef, error), put func(BlobRef) error) error {
	inc, dec := RefDiff(before, after)
	for _, d := range inc {
		r, err := get(d)
		if err != nil {
			return err
		}
		if !r.Claimed.IsZero() {
			return errClaimed(d)
		}
		r.Refs++
		r.ZeroSince = time.Time{}
		if err := put(r); err != nil {
			return err
		}
	}
	for _, d := range dec {
		r, err := get(d)
		if err != nil {
			return err
		}
		if r.Refs > 0 {
			r.Refs--
		}
		if r.Refs == 0 {
			r.ZeroSince = now
		}
		if err := put(r); err != nil {
			return err
		}
	}
	return nil
}

// PrepareNew validates an image about to be created and fills what the
// caller left empty (UID, timestamps). Every backend's Create calls it.
func PrepareNew(img *Image, now time.Time) error {
	if err := names.ValidateName(img.Name); err != nil {
		return err
	}
	if img.UID == "" {
		img.UID = NewUID()
	}
	if !names.IsUID(img.UID) {
		return fmt.Errorf("uid %q: %w", img.UID, errdefs.ErrInvalidArgument)
	}
	if img.Created.IsZero() {
		img.Created = now
	}
	if img.LastModified.IsZero() {
		img.LastModified = now
	}
	return nil
}

// CheckUpdate enforces what an Update may not do, on every backend: change
// the UID, or rename to an invalid name. (Whether a new name is free is the
// backend's check, inside its transaction.)
func CheckUpdate(before, after *Image) error {
	if after.UID != before.UID {
		return fmt.Errorf("image %s: the UID cannot change: %w", before.UID, errdefs.ErrInvalidArgument)
	}
	if after.Name != before.Name {
		return names.ValidateName(after.Name)
	}
	return nil
}

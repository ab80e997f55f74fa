package catalog

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

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

// AddRef applies one more reference to r (an image gains the blob): it
// leaves its grace period. A claimed blob is ErrConflict.
func (r *BlobRef) AddRef() error {
	if !r.Claimed.IsZero() {
		return errClaimed(r.Digest)
	}
	r.Refs++
	r.ZeroSince = time.Time{}
	return nil
}

// DropRef applies one reference fewer to r (an image loses the blob); on
// reaching zero its grace period starts at now.
func (r *BlobRef) DropRef(now time.Time) {
	if r.Refs > 0 {
		r.Refs--
	}
	if r.Refs == 0 {
		r.ZeroSince = now
	}
}

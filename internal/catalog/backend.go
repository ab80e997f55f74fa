package catalog

import (
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

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
	if err := ValidateName(img.Name); err != nil {
		return err
	}
	if img.UID == "" {
		img.UID = NewUID()
	}
	if !IsUID(img.UID) {
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
		return ValidateName(after.Name)
	}
	return nil
}

package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
)

// RemoveOptions tune Remove.
type RemoveOptions struct {
	// Force deletes a blob even when it is leased (the leases stay, and
	// name a blob that is gone).
	Force bool
}

// LeasedError says Remove refused to delete a leased blob.
type LeasedError struct {
	Digest  digest.Digest
	Holders []string
}

func (e *LeasedError) Error() string {
	return fmt.Sprintf("%s is leased by %s: release it (depot lease rm --holder ID) or remove it with --force", e.Digest, strings.Join(e.Holders, ", "))
}

// Is makes errors.Is(err, errdefs.ErrConflict) true.
func (e *LeasedError) Is(target error) bool { return target == errdefs.ErrConflict }

// Remove forgets refStr: a pointer reference drops its pointer, a pinned
// reference its blob. A blob no pointer names any more is deleted, under
// its digest lock. A leased blob is not deleted unless o.Force: Remove
// then changes nothing and returns a *LeasedError (ErrConflict) naming the
// holders; when the leases cannot be read it changes nothing and returns
// ErrCorrupt. It reports the digests whose bytes were deleted.
func (c *Cache) Remove(ctx context.Context, refStr string, o RemoveOptions) ([]digest.Digest, error) {
	r, err := ref.Parse(refStr)
	if err != nil {
		return nil, err
	}
	ptrs, err := c.pointers()
	if err != nil {
		return nil, err
	}
	// What goes: the pointers, and the blobs no other pointer names.
	var drop []string // pointer keys
	var candidates []digest.Digest
	if r.Digest != "" && r.Kind != ref.OCI {
		candidates = append(candidates, r.Digest)
		for _, p := range ptrs {
			if p.Digest == r.Digest {
				drop = append(drop, p.Key)
			}
		}
	} else {
		key := r.Key(c.server())
		p, ok, err := readJSON[Pointer](c.pointerPath(key))
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%s is not in the cache: %w", refStr, errdefs.ErrNotFound)
		}
		drop = append(drop, key)
		named := false
		for _, q := range ptrs {
			named = named || (q.Digest == p.Digest && q.Key != key)
		}
		if !named {
			candidates = append(candidates, p.Digest)
		}
	}
	// Lock the blobs first (in digest order, so two removals cannot
	// deadlock), then check their leases: nothing changes unless all of
	// them may go.
	slices.Sort(candidates)
	for _, d := range candidates {
		unlock, err := c.lockDigest(ctx, d)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	now := time.Now()
	for _, d := range candidates {
		hs, err := c.holders(d, now)
		if err != nil {
			return nil, err
		}
		if len(hs) > 0 && !o.Force {
			if _, err := os.Stat(c.BlobPath(d)); err == nil {
				return nil, &LeasedError{Digest: d, Holders: hs}
			}
		}
	}
	for _, key := range drop {
		if err := os.Remove(c.pointerPath(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	var deleted []digest.Digest
	for _, d := range candidates {
		err := os.Remove(c.BlobPath(d))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return deleted, err
		}
		os.Remove(c.recordPath(d))
		os.Remove(c.chunkIndexPath(d))
		if err == nil {
			deleted = append(deleted, d)
		}
	}
	if r.Digest != "" && r.Kind != ref.OCI && len(deleted) == 0 {
		return nil, fmt.Errorf("%s is not in the cache: %w", r.Digest, errdefs.ErrNotFound)
	}
	return deleted, nil
}

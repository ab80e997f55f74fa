package cache

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// fetch transfers want.Digest from src (once across processes), verifies it
// and commits it. want.Size, when known (>= 0), is the size the source
// declared when it resolved; want.Validator makes a resume conditional.
func (c *Cache) fetch(ctx context.Context, r ref.Ref, src source.Source, want source.Descriptor, o EnsureOptions) (Image, error) {
	d := want.Digest
	if err := contenthash.Validate(d); err != nil {
		return Image{}, err
	}
	lock := flock.New(filepath.Join(c.dir, "locks", d.Encoded()+".lock"))
	if _, err := lock.TryLockContext(ctx, 20*time.Millisecond); err != nil {
		return Image{}, fmt.Errorf("waiting for the transfer of %s: %w", d, err)
	}
	defer lock.Unlock()
	if !o.Force {
		if img, ok, err := c.local(d); err != nil || ok {
			return img, err // another process fetched it while we waited
		}
	}
	xs := &xferStats{}
	img, err := c.withRetries(ctx, src, d, func() (Image, error) { return c.transfer(ctx, r, src, want, o, xs) })
	if err != nil && errors.Is(err, errdefs.ErrNotFound) {
		return Image{}, c.unavailable(ctx, r, src, d)
	}
	if err != nil {
		return Image{}, err
	}
	img.Fetched = true
	img.BytesFetched, img.BytesReused, img.BytesReceived = xs.fetched.Load(), xs.reused.Load(), xs.received.Load()
	if n := xs.note.Load(); n != nil && img.Transfer == "whole" {
		img.Note = *n
	}
	return img, nil
}

// unavailable builds the typed error for a digest the source cannot supply,
// naming what the pointer holds now.
func (c *Cache) unavailable(ctx context.Context, r ref.Ref, src source.Source, want digest.Digest) error {
	e := &errdefs.DigestUnavailableError{Ref: r.String(), Want: want}
	if desc, err := src.Resolve(ctx); err == nil && desc.Digest != want {
		e.Have = desc.Digest
	}
	return e
}

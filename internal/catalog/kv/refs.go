package kv

import (
	"context"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

// getRef reads the record of d: the zero record when there is none,
// ErrCorrupt when it does not decode.
func getRef(r Reader, d digest.Digest) (catalog.BlobRef, error) {
	v, err := r.Get(Blobs, d.String())
	if err != nil {
		return catalog.BlobRef{}, err
	}
	if v != nil {
		return catalog.DecodeRef(d, v)
	}
	return catalog.BlobRef{Digest: d}, nil
}

func putRef(tx Tx, r catalog.BlobRef) error { return putJSON(tx, Blobs, r.Digest.String(), r) }

// applyRefDiff adjusts blob records for an image changing from before to
// after (either may be nil), inside tx: each digest the image gains gets
// one more reference and leaves its grace period; each it loses gets one
// fewer, and starts its grace period at now on reaching zero. A damaged
// record is ErrCorrupt and aborts the change; a claimed one gains no
// reference (ErrConflict).
func applyRefDiff(tx Tx, before, after *catalog.Image, now time.Time) error {
	inc, dec := catalog.RefDiff(before, after)
	for _, d := range inc {
		r, err := getRef(tx, d)
		if err != nil {
			return err
		}
		if err := r.AddRef(); err != nil {
			return err
		}
		if err := putRef(tx, r); err != nil {
			return err
		}
	}
	for _, d := range dec {
		r, err := getRef(tx, d)
		if err != nil {
			return err
		}
		r.DropRef(now)
		if err := putRef(tx, r); err != nil {
			return err
		}
	}
	return nil
}

// Ref implements catalog.Refs.
func (c *Catalog) Ref(ctx context.Context, d digest.Digest) (catalog.BlobRef, error) {
	var r catalog.BlobRef
	err := c.s.View(ctx, func(v View) error {
		b, err := v.Get(Blobs, d.String())
		if err != nil {
			return err
		}
		if b == nil {
			return fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
		}
		r, err = catalog.DecodeRef(d, b)
		return err
	})
	return r, err
}

// Touch implements catalog.Refs.
func (c *Catalog) Touch(ctx context.Context, d digest.Digest, now time.Time) error {
	return c.s.Update(ctx, func(tx Tx) error {
		r, err := getRef(tx, d)
		if err != nil {
			return err
		}
		if r.Refs > 0 {
			return nil
		}
		if err := r.Touch(now); err != nil {
			return err
		}
		return putRef(tx, r)
	})
}

// Collectable implements catalog.Refs.
func (c *Catalog) Collectable(ctx context.Context, cutoff time.Time) ([]catalog.BlobRef, error) {
	var out []catalog.BlobRef
	var damaged []string
	err := c.s.View(ctx, func(v View) error {
		return v.Scan(Blobs, "", 0, func(k string, b []byte) error {
			r, err := catalog.DecodeRef(digest.Digest(k), b)
			if err != nil {
				damaged = append(damaged, k)
				return nil
			}
			if r.Collectable(cutoff) {
				out = append(out, r)
			}
			return nil
		})
	})
	if err == nil && len(damaged) > 0 {
		err = &catalog.CorruptRefsError{Digests: damaged}
	}
	return out, err
}

// Claim implements catalog.Refs.
func (c *Catalog) Claim(ctx context.Context, d digest.Digest, cutoff, now time.Time) error {
	return c.s.Update(ctx, func(tx Tx) error {
		r, err := getRef(tx, d)
		if err != nil {
			return err
		}
		if err := r.Claim(cutoff, now); err != nil {
			return err
		}
		return putRef(tx, r)
	})
}

// Forget implements catalog.Refs.
func (c *Catalog) Forget(ctx context.Context, d digest.Digest) error {
	return c.s.Update(ctx, func(tx Tx) error {
		r, err := getRef(tx, d)
		if err != nil {
			return err
		}
		if err := r.CheckForget(); err != nil {
			return err
		}
		return tx.Delete(Blobs, d.String())
	})
}

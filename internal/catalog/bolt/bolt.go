// Package bolt is the embedded catalog backend: one bbolt file, no setup.
//
// Buckets: images (uid → JSON Image), names (name → uid), blobs (digest →
// JSON BlobRef), tokens (id → JSON Token), secrets (name → bytes). Every
// catalog operation is one bbolt transaction, so the name index and the
// reference counts can never disagree with the images.
package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/names"
)

var (
	bImages  = []byte("images")
	bNames   = []byte("names")
	bBlobs   = []byte("blobs")
	bTokens  = []byte("tokens")
	bSecrets = []byte("secrets")
)

// Catalog is a catalog.Catalog in a bbolt file.
type Catalog struct {
	db *bbolt.DB
}

var _ catalog.Catalog = (*Catalog)(nil)

// Open opens (creating if needed) the catalog file at path. It waits up to
// timeout for another process holding the file to release it.
func Open(path string, timeout time.Duration) (*Catalog, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("catalog %s is locked by another process (is depot serve running?): %w", path, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bImages, bNames, bBlobs, bTokens, bSecrets} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	return &Catalog{db: db}, nil
}

// Close implements catalog.Catalog.
func (c *Catalog) Close() error { return c.db.Close() }

func getImage(tx *bbolt.Tx, ref string) (*catalog.Image, error) {
	uid := ref
	if !names.IsUID(ref) {
		v := tx.Bucket(bNames).Get([]byte(ref))
		if v == nil {
			return nil, catalog.NotFound(ref)
		}
		uid = string(v)
	}
	v := tx.Bucket(bImages).Get([]byte(uid))
	if v == nil {
		return nil, catalog.NotFound(ref)
	}
	var img catalog.Image
	if err := json.Unmarshal(v, &img); err != nil {
		return nil, fmt.Errorf("image %s: %v: %w", uid, err, errdefs.ErrCorrupt)
	}
	return &img, nil
}

func putImage(tx *bbolt.Tx, img *catalog.Image) error {
	v, err := json.Marshal(img)
	if err != nil {
		return err
	}
	return tx.Bucket(bImages).Put([]byte(img.UID), v)
}

func adjustRefs(tx *bbolt.Tx, before, after *catalog.Image, now time.Time) error {
	b := tx.Bucket(bBlobs)
	return catalog.ApplyRefDiff(before, after, now,
		func(d digest.Digest) (catalog.BlobRef, error) { return getRef(b, d) },
		func(r catalog.BlobRef) error { return putRef(b, r) })
}

// getRef reads the record of d: the zero record when there is none,
// ErrCorrupt when it does not decode.
func getRef(b *bbolt.Bucket, d digest.Digest) (catalog.BlobRef, error) {
	if v := b.Get([]byte(d)); v != nil {
		return catalog.DecodeRef(d, v)
	}
	return catalog.BlobRef{Digest: d}, nil
}

func putRef(b *bbolt.Bucket, r catalog.BlobRef) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put([]byte(r.Digest), v)
}

// Create implements catalog.Images.
func (c *Catalog) Create(ctx context.Context, img catalog.Image) (catalog.Image, error) {
	now := time.Now().UTC()
	if err := catalog.PrepareNew(&img, now); err != nil {
		return catalog.Image{}, err
	}
	err := c.db.Update(func(tx *bbolt.Tx) error {
		names := tx.Bucket(bNames)
		if names.Get([]byte(img.Name)) != nil {
			return fmt.Errorf("image name %q is taken: %w", img.Name, errdefs.ErrAlreadyExists)
		}
		if tx.Bucket(bImages).Get([]byte(img.UID)) != nil {
			return fmt.Errorf("image uid %s: %w", img.UID, errdefs.ErrAlreadyExists)
		}
		if err := names.Put([]byte(img.Name), []byte(img.UID)); err != nil {
			return err
		}
		if err := adjustRefs(tx, nil, &img, now); err != nil {
			return err
		}
		return putImage(tx, &img)
	})
	if err != nil {
		return catalog.Image{}, err
	}
	return img, nil
}

// Get implements catalog.Images.
func (c *Catalog) Get(ctx context.Context, ref string) (catalog.Image, error) {
	var img *catalog.Image
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		img, err = getImage(tx, ref)
		return err
	})
	if err != nil {
		return catalog.Image{}, err
	}
	return *img, nil
}

// List implements catalog.Images.
func (c *Catalog) List(ctx context.Context, after string, limit int) ([]catalog.Image, error) {
	var out []catalog.Image
	err := c.db.View(func(tx *bbolt.Tx) error {
		cur := tx.Bucket(bNames).Cursor()
		var k, v []byte
		if after == "" {
			k, v = cur.First()
		} else {
			k, v = cur.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = cur.Next()
			}
		}
		for ; k != nil && len(out) < limit; k, v = cur.Next() {
			img, err := getImage(tx, string(v))
			if err != nil {
				return err
			}
			out = append(out, *img)
		}
		return nil
	})
	return out, err
}

// Update implements catalog.Images.
func (c *Catalog) Update(ctx context.Context, ref string, fn func(*catalog.Image) error) (catalog.Image, error) {
	var result catalog.Image
	err := c.db.Update(func(tx *bbolt.Tx) error {
		before, err := getImage(tx, ref)
		if err != nil {
			return err
		}
		after := before.Clone()
		if err := fn(after); err != nil {
			return err
		}
		if err := catalog.CheckUpdate(before, after); err != nil {
			return err
		}
		if after.Name != before.Name {
			names := tx.Bucket(bNames)
			if names.Get([]byte(after.Name)) != nil {
				return fmt.Errorf("image name %q is taken: %w", after.Name, errdefs.ErrAlreadyExists)
			}
			if err := names.Delete([]byte(before.Name)); err != nil {
				return err
			}
			if err := names.Put([]byte(after.Name), []byte(after.UID)); err != nil {
				return err
			}
		}
		if err := adjustRefs(tx, before, after, time.Now().UTC()); err != nil {
			return err
		}
		result = *after
		return putImage(tx, after)
	})
	return result, err
}

// Delete implements catalog.Images.
func (c *Catalog) Delete(ctx context.Context, ref string, check func(catalog.Image) error) (catalog.Image, error) {
	var result catalog.Image
	err := c.db.Update(func(tx *bbolt.Tx) error {
		img, err := getImage(tx, ref)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(*img); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bNames).Delete([]byte(img.Name)); err != nil {
			return err
		}
		if err := tx.Bucket(bImages).Delete([]byte(img.UID)); err != nil {
			return err
		}
		result = *img
		return adjustRefs(tx, img, nil, time.Now().UTC())
	})
	return result, err
}

// Ref implements catalog.Refs.
func (c *Catalog) Ref(ctx context.Context, dgst digest.Digest) (catalog.BlobRef, error) {
	var r catalog.BlobRef
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bBlobs)
		if b.Get([]byte(dgst)) == nil {
			return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
		}
		var err error
		r, err = getRef(b, dgst)
		return err
	})
	return r, err
}

// Touch implements catalog.Refs.
func (c *Catalog) Touch(ctx context.Context, dgst digest.Digest, now time.Time) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bBlobs)
		r, err := getRef(b, dgst)
		if err != nil {
			return err
		}
		if r.Refs > 0 {
			return nil
		}
		if err := r.Touch(now); err != nil {
			return err
		}
		return putRef(b, r)
	})
}

// Collectable implements catalog.Refs.
func (c *Catalog) Collectable(ctx context.Context, cutoff time.Time) ([]catalog.BlobRef, error) {
	var out []catalog.BlobRef
	var damaged []string
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bBlobs).ForEach(func(k, v []byte) error {
			r, err := catalog.DecodeRef(digest.Digest(k), v)
			if err != nil {
				damaged = append(damaged, string(k))
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
func (c *Catalog) Claim(ctx context.Context, dgst digest.Digest, cutoff, now time.Time) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bBlobs)
		r, err := getRef(b, dgst)
		if err != nil {
			return err
		}
		if err := r.Claim(cutoff, now); err != nil {
			return err
		}
		return putRef(b, r)
	})
}

// Forget implements catalog.Refs.
func (c *Catalog) Forget(ctx context.Context, dgst digest.Digest) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bBlobs)
		r, err := getRef(b, dgst)
		if err != nil {
			return err
		}
		if err := r.CheckForget(); err != nil {
			return err
		}
		return b.Delete([]byte(dgst))
	})
}

// PutToken implements catalog.Tokens.
func (c *Catalog) PutToken(ctx context.Context, t catalog.Token) error {
	v, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return c.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bTokens).Put([]byte(t.ID), v) })
}

// GetToken implements catalog.Tokens.
func (c *Catalog) GetToken(ctx context.Context, id string) (catalog.Token, error) {
	var t catalog.Token
	err := c.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bTokens).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("token %s: %w", id, errdefs.ErrNotFound)
		}
		var err error
		t, err = catalog.DecodeToken(id, v)
		return err
	})
	return t, err
}

// ListTokens implements catalog.Tokens.
func (c *Catalog) ListTokens(ctx context.Context) ([]catalog.Token, error) {
	var out []catalog.Token
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bTokens).ForEach(func(k, v []byte) error {
			t, err := catalog.DecodeToken(string(k), v)
			if err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

// DeleteToken implements catalog.Tokens.
func (c *Catalog) DeleteToken(ctx context.Context, id string) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bTokens)
		if b.Get([]byte(id)) == nil {
			return fmt.Errorf("token %s: %w", id, errdefs.ErrNotFound)
		}
		return b.Delete([]byte(id))
	})
}

// Secret implements catalog.Secrets.
func (c *Catalog) Secret(ctx context.Context, name string, gen func() ([]byte, error)) ([]byte, error) {
	var out []byte
	err := c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bSecrets)
		if v := b.Get([]byte(name)); v != nil {
			out = append([]byte(nil), v...)
			return nil
		}
		v, err := gen()
		if err != nil {
			return err
		}
		out = v
		return b.Put([]byte(name), v)
	})
	return out, err
}

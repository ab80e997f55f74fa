package kv

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/names"
)

func getImage(r Reader, ref string) (*catalog.Image, error) {
	uid := ref
	if !names.IsUID(ref) {
		v, err := r.Get(Names, ref)
		if err != nil {
			return nil, err
		}
		if v == nil {
			return nil, catalog.NotFound(ref)
		}
		uid = string(v)
	}
	v, err := r.Get(Images, uid)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, catalog.NotFound(ref)
	}
	var img catalog.Image
	if err := json.Unmarshal(v, &img); err != nil {
		return nil, fmt.Errorf("image %s: %v: %w", uid, err, errdefs.ErrCorrupt)
	}
	return &img, nil
}

func putJSON(tx Tx, space Space, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(space, key, b)
}

// nameFree fails with ErrAlreadyExists when name is in the index.
func nameFree(tx Tx, name string) error {
	v, err := tx.Get(Names, name)
	if err != nil {
		return err
	}
	if v != nil {
		return fmt.Errorf("image name %q is taken: %w", name, errdefs.ErrAlreadyExists)
	}
	return nil
}

// prepareNew validates an image about to be created and fills what the
// caller left empty (UID, timestamps).
func prepareNew(img *catalog.Image, now time.Time) error {
	if err := names.ValidateName(img.Name); err != nil {
		return err
	}
	if img.UID == "" {
		img.UID = catalog.NewUID()
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

// checkUpdate enforces what an Update may not do: change the UID, or
// rename to an invalid name. (Whether a new name is free is checked in
// the transaction.)
func checkUpdate(before, after *catalog.Image) error {
	if after.UID != before.UID {
		return fmt.Errorf("image %s: the UID cannot change: %w", before.UID, errdefs.ErrInvalidArgument)
	}
	if after.Name != before.Name {
		return names.ValidateName(after.Name)
	}
	return nil
}

// Create implements catalog.Images.
func (c *Catalog) Create(ctx context.Context, img catalog.Image) (catalog.Image, error) {
	now := time.Now().UTC()
	if err := prepareNew(&img, now); err != nil {
		return catalog.Image{}, err
	}
	err := c.s.Update(ctx, func(tx Tx) error {
		if err := nameFree(tx, img.Name); err != nil {
			return err
		}
		v, err := tx.Get(Images, img.UID)
		if err != nil {
			return err
		}
		if v != nil {
			return fmt.Errorf("image uid %s: %w", img.UID, errdefs.ErrAlreadyExists)
		}
		if err := tx.Put(Names, img.Name, []byte(img.UID)); err != nil {
			return err
		}
		if err := applyRefDiff(tx, nil, &img, now); err != nil {
			return err
		}
		return putJSON(tx, Images, img.UID, img)
	})
	if err != nil {
		return catalog.Image{}, err
	}
	return img, nil
}

// Get implements catalog.Images.
func (c *Catalog) Get(ctx context.Context, ref string) (catalog.Image, error) {
	var img *catalog.Image
	err := c.s.View(ctx, func(v View) error {
		var err error
		img, err = getImage(v, ref)
		return err
	})
	if err != nil {
		return catalog.Image{}, err
	}
	return *img, nil
}

// List implements catalog.Images: one page of the name index and the
// images it names, from one snapshot.
func (c *Catalog) List(ctx context.Context, after string, limit int) ([]catalog.Image, error) {
	if limit <= 0 {
		return nil, nil
	}
	var out []catalog.Image
	err := c.s.View(ctx, func(v View) error {
		var uids []string
		err := v.Scan(Names, after, limit, func(_ string, uid []byte) error {
			uids = append(uids, string(uid))
			return nil
		})
		if err != nil {
			return err
		}
		for _, uid := range uids {
			img, err := getImage(v, uid)
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
	err := c.s.Update(ctx, func(tx Tx) error {
		before, err := getImage(tx, ref)
		if err != nil {
			return err
		}
		after := before.Clone()
		if err := fn(after); err != nil {
			return err
		}
		if err := checkUpdate(before, after); err != nil {
			return err
		}
		if after.Name != before.Name {
			if err := nameFree(tx, after.Name); err != nil {
				return err
			}
			if err := tx.Delete(Names, before.Name); err != nil {
				return err
			}
			if err := tx.Put(Names, after.Name, []byte(after.UID)); err != nil {
				return err
			}
		}
		if err := applyRefDiff(tx, before, after, time.Now().UTC()); err != nil {
			return err
		}
		result = *after
		return putJSON(tx, Images, after.UID, after)
	})
	return result, err
}

// Delete implements catalog.Images.
func (c *Catalog) Delete(ctx context.Context, ref string, check func(catalog.Image) error) (catalog.Image, error) {
	var result catalog.Image
	err := c.s.Update(ctx, func(tx Tx) error {
		img, err := getImage(tx, ref)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(*img); err != nil {
				return err
			}
		}
		if err := tx.Delete(Names, img.Name); err != nil {
			return err
		}
		if err := tx.Delete(Images, img.UID); err != nil {
			return err
		}
		result = *img
		return applyRefDiff(tx, img, nil, time.Now().UTC())
	})
	return result, err
}

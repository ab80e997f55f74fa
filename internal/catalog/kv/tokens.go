package kv

import (
	"context"
	"fmt"
	"sort"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

// PutToken implements catalog.Tokens.
func (c *Catalog) PutToken(ctx context.Context, t catalog.Token) error {
	return c.s.Update(ctx, func(tx Tx) error { return putJSON(tx, Tokens, t.ID, t) })
}

// GetToken implements catalog.Tokens.
func (c *Catalog) GetToken(ctx context.Context, id string) (catalog.Token, error) {
	var t catalog.Token
	err := c.s.View(ctx, func(v View) error {
		b, err := v.Get(Tokens, id)
		if err != nil {
			return err
		}
		if b == nil {
			return fmt.Errorf("token %s: %w", id, errdefs.ErrNotFound)
		}
		t, err = catalog.DecodeToken(id, b)
		return err
	})
	return t, err
}

// ListTokens implements catalog.Tokens, oldest first.
func (c *Catalog) ListTokens(ctx context.Context) ([]catalog.Token, error) {
	var out []catalog.Token
	err := c.s.View(ctx, func(v View) error {
		return v.Scan(Tokens, "", 0, func(k string, b []byte) error {
			t, err := catalog.DecodeToken(k, b)
			if err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// DeleteToken implements catalog.Tokens.
func (c *Catalog) DeleteToken(ctx context.Context, id string) error {
	return c.s.Update(ctx, func(tx Tx) error {
		b, err := tx.Get(Tokens, id)
		if err != nil {
			return err
		}
		if b == nil {
			return fmt.Errorf("token %s: %w", id, errdefs.ErrNotFound)
		}
		return tx.Delete(Tokens, id)
	})
}

// Secret implements catalog.Secrets: the first transaction to create the
// secret wins; every other (on any head) reads that value.
func (c *Catalog) Secret(ctx context.Context, name string, gen func() ([]byte, error)) ([]byte, error) {
	var out []byte
	err := c.s.Update(ctx, func(tx Tx) error {
		v, err := tx.Get(Secrets, name)
		if err != nil {
			return err
		}
		if v != nil {
			out = append([]byte(nil), v...)
			return nil
		}
		if out, err = gen(); err != nil {
			return err
		}
		return tx.Put(Secrets, name, out)
	})
	return out, err
}

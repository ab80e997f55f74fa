// Package etcd is the multi-head catalog backend on etcd v3.
//
// Every multi-key change (name index, image, reference counts) is one
// software transaction (concurrency.STM, serializable snapshot isolation):
// etcd compares the revisions of everything read and written, and the
// transaction retries on contention. So two heads racing on the same name or
// the same content never corrupt the catalog. Keys under the prefix:
//
//	images/<uid>  JSON Image      names/<name>   uid
//	blobs/<dgst>  JSON BlobRef    tokens/<id>    JSON Token
//	secrets/<n>   bytes
package etcd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/names"
)

// Catalog is a catalog.Catalog in etcd.
type Catalog struct {
	cli    *clientv3.Client
	prefix string
}

var _ catalog.Catalog = (*Catalog)(nil)

// Open connects to the etcd endpoints and keeps every key under prefix
// (e.g. "/depot/"). tlsCfg, when not nil, secures the connection (server
// verification and, with a client certificate, client authentication); the
// endpoints are then https:// URLs.
func Open(ctx context.Context, endpoints []string, prefix string, tlsCfg *tls.Config) (*Catalog, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: ctx, TLS: tlsCfg})
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %v: %w", endpoints, err, errdefs.ErrUnavailable)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Get(sctx, prefix+"probe"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd %v: %v: %w", endpoints, err, errdefs.ErrUnavailable)
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Catalog{cli: cli, prefix: prefix}, nil
}

// Client is the underlying etcd client (for elections).
func (c *Catalog) Client() *clientv3.Client { return c.cli }

// Close implements catalog.Catalog.
func (c *Catalog) Close() error { return c.cli.Close() }

func (c *Catalog) k(parts ...string) string { return c.prefix + strings.Join(parts, "/") }

// stm runs fn as one serializable transaction. An error from fn aborts it
// and is returned unchanged.
func (c *Catalog) stm(ctx context.Context, fn func(concurrency.STM) error) error {
	var fnErr error
	_, err := concurrency.NewSTM(c.cli, func(s concurrency.STM) error {
		fnErr = fn(s)
		return fnErr
	}, concurrency.WithAbortContext(ctx))
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	return nil
}

func (c *Catalog) getImage(s concurrency.STM, ref string) (*catalog.Image, error) {
	uid := ref
	if !names.IsUID(ref) {
		uid = s.Get(c.k("names", ref))
		if uid == "" {
			return nil, catalog.NotFound(ref)
		}
	}
	v := s.Get(c.k("images", uid))
	if v == "" {
		return nil, catalog.NotFound(ref)
	}
	var img catalog.Image
	if err := json.Unmarshal([]byte(v), &img); err != nil {
		return nil, fmt.Errorf("image %s: %v: %w", uid, err, errdefs.ErrCorrupt)
	}
	return &img, nil
}

func (c *Catalog) putJSON(s concurrency.STM, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.Put(key, string(b))
	return nil
}

// getRef reads the record of d: the zero record when there is none,
// ErrCorrupt when it does not decode.
func (c *Catalog) getRef(s concurrency.STM, d digest.Digest) (catalog.BlobRef, error) {
	if v := s.Get(c.k("blobs", d.String())); v != "" {
		return catalog.DecodeRef(d, []byte(v))
	}
	return catalog.BlobRef{Digest: d}, nil
}

func (c *Catalog) adjustRefs(s concurrency.STM, before, after *catalog.Image, now time.Time) error {
	return catalog.ApplyRefDiff(before, after, now,
		func(d digest.Digest) (catalog.BlobRef, error) { return c.getRef(s, d) },
		func(r catalog.BlobRef) error { return c.putJSON(s, c.k("blobs", r.Digest.String()), r) })
}

// Create implements catalog.Images.
func (c *Catalog) Create(ctx context.Context, img catalog.Image) (catalog.Image, error) {
	now := time.Now().UTC()
	if err := catalog.PrepareNew(&img, now); err != nil {
		return catalog.Image{}, err
	}
	err := c.stm(ctx, func(s concurrency.STM) error {
		if s.Get(c.k("names", img.Name)) != "" {
			return fmt.Errorf("image name %q is taken: %w", img.Name, errdefs.ErrAlreadyExists)
		}
		if s.Get(c.k("images", img.UID)) != "" {
			return fmt.Errorf("image uid %s: %w", img.UID, errdefs.ErrAlreadyExists)
		}
		s.Put(c.k("names", img.Name), img.UID)
		if err := c.adjustRefs(s, nil, &img, now); err != nil {
			return err
		}
		return c.putJSON(s, c.k("images", img.UID), img)
	})
	if err != nil {
		return catalog.Image{}, err
	}
	return img, nil
}

// Get implements catalog.Images.
func (c *Catalog) Get(ctx context.Context, ref string) (catalog.Image, error) {
	var img *catalog.Image
	err := c.stm(ctx, func(s concurrency.STM) error {
		var err error
		img, err = c.getImage(s, ref)
		return err
	})
	if err != nil {
		return catalog.Image{}, err
	}
	return *img, nil
}

// List implements catalog.Images.
func (c *Catalog) List(ctx context.Context, after string, limit int) ([]catalog.Image, error) {
	from := c.k("names", after)
	if after != "" {
		from += "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(c.k("names", ""))
	resp, err := c.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(int64(limit)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	out := make([]catalog.Image, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		img, err := c.Get(ctx, string(kv.Value))
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // deleted meanwhile
		} else if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// Update implements catalog.Images.
func (c *Catalog) Update(ctx context.Context, ref string, fn func(*catalog.Image) error) (catalog.Image, error) {
	var result catalog.Image
	err := c.stm(ctx, func(s concurrency.STM) error {
		before, err := c.getImage(s, ref)
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
			if s.Get(c.k("names", after.Name)) != "" {
				return fmt.Errorf("image name %q is taken: %w", after.Name, errdefs.ErrAlreadyExists)
			}
			s.Del(c.k("names", before.Name))
			s.Put(c.k("names", after.Name), after.UID)
		}
		if err := c.adjustRefs(s, before, after, time.Now().UTC()); err != nil {
			return err
		}
		result = *after
		return c.putJSON(s, c.k("images", after.UID), after)
	})
	return result, err
}

// Delete implements catalog.Images.
func (c *Catalog) Delete(ctx context.Context, ref string, check func(catalog.Image) error) (catalog.Image, error) {
	var result catalog.Image
	err := c.stm(ctx, func(s concurrency.STM) error {
		img, err := c.getImage(s, ref)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(*img); err != nil {
				return err
			}
		}
		s.Del(c.k("names", img.Name))
		s.Del(c.k("images", img.UID))
		result = *img
		return c.adjustRefs(s, img, nil, time.Now().UTC())
	})
	return result, err
}

// Ref implements catalog.Refs.
func (c *Catalog) Ref(ctx context.Context, d digest.Digest) (catalog.BlobRef, error) {
	resp, err := c.cli.Get(ctx, c.k("blobs", d.String()))
	if err != nil {
		return catalog.BlobRef{}, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	if len(resp.Kvs) == 0 {
		return catalog.BlobRef{}, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	return catalog.DecodeRef(d, resp.Kvs[0].Value)
}

// Touch implements catalog.Refs.
func (c *Catalog) Touch(ctx context.Context, d digest.Digest, now time.Time) error {
	return c.stm(ctx, func(s concurrency.STM) error {
		r, err := c.getRef(s, d)
		if err != nil {
			return err
		}
		if r.Refs > 0 {
			return nil
		}
		if err := r.Touch(now); err != nil {
			return err
		}
		return c.putJSON(s, c.k("blobs", d.String()), r)
	})
}

// Collectable implements catalog.Refs.
func (c *Catalog) Collectable(ctx context.Context, cutoff time.Time) ([]catalog.BlobRef, error) {
	resp, err := c.cli.Get(ctx, c.k("blobs", ""), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	var out []catalog.BlobRef
	var damaged []string
	for _, kv := range resp.Kvs {
		key := strings.TrimPrefix(string(kv.Key), c.k("blobs", ""))
		r, err := catalog.DecodeRef(digest.Digest(key), kv.Value)
		if err != nil {
			damaged = append(damaged, key)
			continue
		}
		if r.Collectable(cutoff) {
			out = append(out, r)
		}
	}
	if len(damaged) > 0 {
		return out, &catalog.CorruptRefsError{Digests: damaged}
	}
	return out, nil
}

// Claim implements catalog.Refs.
func (c *Catalog) Claim(ctx context.Context, d digest.Digest, cutoff, now time.Time) error {
	return c.stm(ctx, func(s concurrency.STM) error {
		r, err := c.getRef(s, d)
		if err != nil {
			return err
		}
		if err := r.Claim(cutoff, now); err != nil {
			return err
		}
		return c.putJSON(s, c.k("blobs", d.String()), r)
	})
}

// Forget implements catalog.Refs.
func (c *Catalog) Forget(ctx context.Context, d digest.Digest) error {
	return c.stm(ctx, func(s concurrency.STM) error {
		r, err := c.getRef(s, d)
		if err != nil {
			return err
		}
		if err := r.CheckForget(); err != nil {
			return err
		}
		s.Del(c.k("blobs", d.String()))
		return nil
	})
}

// PutToken implements catalog.Tokens.
func (c *Catalog) PutToken(ctx context.Context, t catalog.Token) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if _, err := c.cli.Put(ctx, c.k("tokens", t.ID), string(b)); err != nil {
		return fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	return nil
}

// GetToken implements catalog.Tokens.
func (c *Catalog) GetToken(ctx context.Context, id string) (catalog.Token, error) {
	resp, err := c.cli.Get(ctx, c.k("tokens", id))
	if err != nil {
		return catalog.Token{}, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	if len(resp.Kvs) == 0 {
		return catalog.Token{}, fmt.Errorf("token %s: %w", id, errdefs.ErrNotFound)
	}
	return catalog.DecodeToken(id, resp.Kvs[0].Value)
}

// ListTokens implements catalog.Tokens.
func (c *Catalog) ListTokens(ctx context.Context) ([]catalog.Token, error) {
	resp, err := c.cli.Get(ctx, c.k("tokens", ""), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	var out []catalog.Token
	for _, kv := range resp.Kvs {
		t, err := catalog.DecodeToken(strings.TrimPrefix(string(kv.Key), c.k("tokens", "")), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// DeleteToken implements catalog.Tokens.
func (c *Catalog) DeleteToken(ctx context.Context, id string) error {
	resp, err := c.cli.Delete(ctx, c.k("tokens", id))
	if err != nil {
		return fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("token %s: %w", id, errdefs.ErrNotFound)
	}
	return nil
}

// Secret implements catalog.Secrets: the first head to create it wins
// (compare-and-swap on creation), every other head reads that value.
func (c *Catalog) Secret(ctx context.Context, name string, gen func() ([]byte, error)) ([]byte, error) {
	key := c.k("secrets", name)
	resp, err := c.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	if len(resp.Kvs) > 0 {
		return resp.Kvs[0].Value, nil
	}
	v, err := gen()
	if err != nil {
		return nil, err
	}
	tx, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(v))).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return nil, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	if tx.Succeeded {
		return v, nil
	}
	return tx.Responses[0].GetResponseRange().Kvs[0].Value, nil
}

// Package etcd is the multi-head catalog backend on etcd v3. It adapts
// etcd to catalog/kv, which holds every rule of the catalog; this package
// must never hold one of its own.
//
// Every multi-key change (name index, image, reference counts) is one
// software transaction (concurrency.STM, serializable snapshot isolation):
// etcd compares the revisions of everything read and written, and the
// transaction retries on contention. So two heads racing on the same name or
// the same content never corrupt the catalog. Reads that change nothing
// (Get, List, Ref, Collectable, tokens) read one revision, in pages. Keys
// under the prefix:
//
//	images/<uid>  JSON Image      names/<name>   uid
//	blobs/<dgst>  JSON BlobRef    tokens/<id>    JSON Token
//	secrets/<n>   bytes
package etcd

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/kv"
)

// Catalog is a catalog.Catalog in etcd.
type Catalog struct {
	*kv.Catalog
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
	c := &Catalog{cli: cli, prefix: prefix}
	c.Catalog = kv.New(store{c})
	return c, nil
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

// store is kv.Store over etcd: each Update one STM, each View reads at
// the revision of its first read.
type store struct{ c *Catalog }

func (s store) Update(ctx context.Context, fn func(kv.Tx) error) error {
	return s.c.stm(ctx, func(st concurrency.STM) error { return fn(stmTx{s.c, st}) })
}

func (s store) View(ctx context.Context, fn func(kv.View) error) error {
	return fn(&snapshot{ctx: ctx, c: s.c})
}

// stmTx is a kv.Tx: a keyspace is the key prefix <prefix><space>/.
type stmTx struct {
	c *Catalog
	s concurrency.STM
}

func (t stmTx) Get(sp kv.Space, key string) ([]byte, error) {
	if v := t.s.Get(t.c.k(string(sp), key)); v != "" {
		return []byte(v), nil
	}
	return nil, nil
}

func (t stmTx) Put(sp kv.Space, key string, value []byte) error {
	t.s.Put(t.c.k(string(sp), key), string(value))
	return nil
}

func (t stmTx) Delete(sp kv.Space, key string) error {
	t.s.Del(t.c.k(string(sp), key))
	return nil
}

// scanPage bounds the keys one request of a Scan returns (a variable for
// tests).
var scanPage = 500

// snapshot is a kv.View: every read after the first is at the first one's
// revision.
type snapshot struct {
	ctx context.Context
	c   *Catalog
	rev int64
}

func (v *snapshot) get(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if v.rev != 0 {
		opts = append(opts, clientv3.WithRev(v.rev))
	}
	resp, err := v.c.cli.Get(v.ctx, key, opts...)
	if err != nil {
		return nil, fmt.Errorf("etcd: %v: %w", err, errdefs.ErrUnavailable)
	}
	if v.rev == 0 {
		v.rev = resp.Header.Revision
	}
	return resp, nil
}

func (v *snapshot) Get(sp kv.Space, key string) ([]byte, error) {
	resp, err := v.get(v.c.k(string(sp), key))
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	if b := resp.Kvs[0].Value; b != nil {
		return b, nil
	}
	return []byte{}, nil
}

func (v *snapshot) Scan(sp kv.Space, after string, limit int, fn func(key string, value []byte) error) error {
	prefix := v.c.k(string(sp), "")
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix + after
	if after != "" {
		from += "\x00" // the first key after after
	}
	for n := 0; limit == 0 || n < limit; {
		page := scanPage
		if limit > 0 {
			page = min(page, limit-n)
		}
		resp, err := v.get(from, clientv3.WithRange(end), clientv3.WithLimit(int64(page)), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return err
		}
		for _, p := range resp.Kvs {
			if err := fn(strings.TrimPrefix(string(p.Key), prefix), p.Value); err != nil {
				return err
			}
		}
		n += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return nil
}

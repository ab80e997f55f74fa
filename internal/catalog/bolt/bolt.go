// Package bolt is the embedded catalog backend: one bbolt file, no setup.
// It adapts bbolt to catalog/kv, which holds every rule of the catalog;
// this package must never hold one of its own.
//
// Buckets: images (uid → JSON Image), names (name → uid), blobs (digest →
// JSON BlobRef), tokens (id → JSON Token), secrets (name → bytes). Every
// catalog operation is one bbolt transaction, so the name index and the
// reference counts can never disagree with the images.
package bolt

import (
	"context"
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/kv"
)

// bBlobs is the bucket of reference records (tests damage them).
var bBlobs = []byte(kv.Blobs)

// Catalog is a catalog.Catalog in a bbolt file.
type Catalog struct {
	*kv.Catalog
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
		for _, s := range kv.Spaces {
			if _, err := tx.CreateBucketIfNotExists([]byte(s)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	return &Catalog{Catalog: kv.New(store{db}), db: db}, nil
}

// Close implements catalog.Catalog.
func (c *Catalog) Close() error { return c.db.Close() }

// store is kv.Store over the bbolt file: each Update one read-write
// transaction, each View one read-only transaction.
type store struct{ db *bbolt.DB }

func (s store) Update(_ context.Context, fn func(kv.Tx) error) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return fn(txn{tx}) })
}

func (s store) View(_ context.Context, fn func(kv.View) error) error {
	return s.db.View(func(tx *bbolt.Tx) error { return fn(txn{tx}) })
}

// txn is a kv.Tx and a kv.View: a keyspace is a bucket.
type txn struct{ tx *bbolt.Tx }

func (t txn) Get(s kv.Space, key string) ([]byte, error) {
	return t.tx.Bucket([]byte(s)).Get([]byte(key)), nil
}

func (t txn) Put(s kv.Space, key string, value []byte) error {
	return t.tx.Bucket([]byte(s)).Put([]byte(key), value)
}

func (t txn) Delete(s kv.Space, key string) error {
	return t.tx.Bucket([]byte(s)).Delete([]byte(key))
}

func (t txn) Scan(s kv.Space, after string, limit int, fn func(key string, value []byte) error) error {
	cur := t.tx.Bucket([]byte(s)).Cursor()
	var k, v []byte
	if after == "" {
		k, v = cur.First()
	} else {
		k, v = cur.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = cur.Next()
		}
	}
	for n := 0; k != nil && (limit == 0 || n < limit); k, v = cur.Next() {
		if err := fn(string(k), v); err != nil {
			return err
		}
		n++
	}
	return nil
}

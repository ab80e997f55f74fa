package bolt

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bbolt "go.etcd.io/bbolt"

	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/catalogtest"
)

// newCatalog is a fresh catalog in a file of its own.
func newCatalog(t *testing.T) catalog.Catalog {
	c, err := Open(filepath.Join(t.TempDir(), "catalog.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConformance(t *testing.T) {
	catalogtest.Run(t, newCatalog)
}

func TestSecondOpenTimesOut(t *testing.T) {
	p := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := Open(p, 100*time.Millisecond); err == nil {
		t.Fatal("second Open of a locked catalog succeeded")
	}
}

// TestDamagedRecords damages reference records in the real bbolt file.
func TestDamagedRecords(t *testing.T) {
	catalogtest.RunDamaged(t, newCatalog, func(t *testing.T, c catalog.Catalog, d digest.Digest, value []byte) {
		err := c.(*Catalog).db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bBlobs).Put([]byte(d), value) })
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestLayout pins the buckets and records of the bbolt file.
func TestLayout(t *testing.T) {
	catalogtest.RunLayout(t, newCatalog, catalogtest.Raw{
		Read: func(t *testing.T, c catalog.Catalog, space, key string) (v []byte, ok bool) {
			err := c.(*Catalog).db.View(func(tx *bbolt.Tx) error {
				if b := tx.Bucket([]byte(space)).Get([]byte(key)); b != nil {
					v, ok = append([]byte(nil), b...), true
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return v, ok
		},
		Write: func(t *testing.T, c catalog.Catalog, space, key string, value []byte) {
			err := c.(*Catalog).db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte(space)).Put([]byte(key), value) })
			if err != nil {
				t.Fatal(err)
			}
		},
	})
}

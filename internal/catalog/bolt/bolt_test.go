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

func TestConformance(t *testing.T) {
	catalogtest.Run(t, func(t *testing.T) catalog.Catalog {
		c, err := Open(filepath.Join(t.TempDir(), "catalog.db"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	})
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
	catalogtest.RunDamaged(t, func(t *testing.T) catalog.Catalog {
		c, err := Open(filepath.Join(t.TempDir(), "catalog.db"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}, func(t *testing.T, c catalog.Catalog, d digest.Digest, value []byte) {
		err := c.(*Catalog).db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bBlobs).Put([]byte(d), value) })
		if err != nil {
			t.Fatal(err)
		}
	})
}

package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/depot-images/depot/catalog"
	"github.com/depot-images/depot/catalog/catalogtest"
	"github.com/depot-images/depot/testenv"
)

func TestConformance(t *testing.T) {
	ep := testenv.Etcd(t)
	catalogtest.Run(t, func(t *testing.T) catalog.Catalog {
		b := make([]byte, 8)
		rand.Read(b)
		c, err := Open(context.Background(), []string{ep}, "/depot-test-"+hex.EncodeToString(b)+"/")
		if err != nil {
			t.Fatal(err)
		}
		return c
	})
}

// TestTwoHeadsShareOneCatalog: two clients (two heads) on one etcd see each
// other's writes at once and share the signing key.
func TestTwoHeadsShareOneCatalog(t *testing.T) {
	ep := testenv.Etcd(t)
	ctx := context.Background()
	a, err := Open(ctx, []string{ep}, "/shared/")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, _ := Open(ctx, []string{ep}, "/shared/")
	defer b.Close()
	img, err := a.Create(ctx, catalog.Image{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, "x"); err != nil || got.UID != img.UID {
		t.Fatalf("head b: %+v %v", got, err)
	}
	ka, _ := a.Secret(ctx, "k", func() ([]byte, error) { return []byte("from-a"), nil })
	kb, _ := b.Secret(ctx, "k", func() ([]byte, error) { return []byte("from-b"), nil })
	if string(ka) != string(kb) {
		t.Fatalf("heads disagree on the signing key: %q %q", ka, kb)
	}
}

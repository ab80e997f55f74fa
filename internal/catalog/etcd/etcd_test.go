package etcd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/catalogtest"
	"github.com/depot-images/depot/internal/testenv"
)

func TestConformance(t *testing.T) {
	ep := testenv.Etcd(t)
	newCatalog := func(t *testing.T) catalog.Catalog {
		b := make([]byte, 8)
		rand.Read(b)
		c, err := Open(context.Background(), []string{ep}, "/depot-test-"+hex.EncodeToString(b)+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	catalogtest.Run(t, newCatalog)
	// Damaged records, written to the real etcd with the etcd client.
	catalogtest.RunDamaged(t, newCatalog, func(t *testing.T, c catalog.Catalog, d digest.Digest, value []byte) {
		ec := c.(*Catalog)
		if _, err := ec.Client().Put(context.Background(), ec.k("blobs", d.String()), string(value)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestLayout pins the keys and records under the prefix, read and written
// with the etcd client.
func TestLayout(t *testing.T) {
	ep := testenv.Etcd(t)
	catalogtest.RunLayout(t, func(t *testing.T) catalog.Catalog {
		b := make([]byte, 8)
		rand.Read(b)
		c, err := Open(context.Background(), []string{ep}, "/depot-test-"+hex.EncodeToString(b)+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}, catalogtest.Raw{
		Read: func(t *testing.T, c catalog.Catalog, space, key string) ([]byte, bool) {
			ec := c.(*Catalog)
			resp, err := ec.Client().Get(context.Background(), ec.k(space, key))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) == 0 {
				return nil, false
			}
			return resp.Kvs[0].Value, true
		},
		Write: func(t *testing.T, c catalog.Catalog, space, key string, value []byte) {
			ec := c.(*Catalog)
			if _, err := ec.Client().Put(context.Background(), ec.k(space, key), string(value)); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// TestTwoHeadsShareOneCatalog: two clients (two heads) on one etcd see each
// other's writes at once and share the signing key.
func TestTwoHeadsShareOneCatalog(t *testing.T) {
	ep := testenv.Etcd(t)
	ctx := context.Background()
	a, err := Open(ctx, []string{ep}, "/shared/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, _ := Open(ctx, []string{ep}, "/shared/", nil)
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

// TestTLS runs the conformance suite against an etcd that serves clients
// over TLS only and requires a client certificate, then checks that a
// client without the certificate, or trusting another CA, is refused.
func TestTLS(t *testing.T) {
	p := testenv.NewPKI(t)
	ep := testenv.EtcdTLS(t, p)
	catalogtest.Run(t, func(t *testing.T) catalog.Catalog {
		b := make([]byte, 8)
		rand.Read(b)
		c, err := Open(context.Background(), []string{ep}, "/depot-test-"+hex.EncodeToString(b)+"/", p.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		return c
	})
	ctx := context.Background()
	noCert := p.ClientTLS()
	noCert.Certificates = nil
	otherCA := p.ClientTLS()
	otherCA.RootCAs = x509.NewCertPool()
	for name, cfg := range map[string]*tls.Config{"no client certificate": noCert, "untrusted server": otherCA, "plain text": nil} {
		url := ep
		if cfg == nil {
			url = "http" + strings.TrimPrefix(ep, "https")
		}
		if c, err := Open(ctx, []string{url}, "/x/", cfg); !errors.Is(err, errdefs.ErrUnavailable) {
			if err == nil {
				c.Close()
			}
			t.Errorf("%s: Open = %v, want ErrUnavailable", name, err)
		}
	}
}

// TestSmallScanPages runs the suite with scans of two keys a request, so
// that every List, Collectable and ListTokens reads several pages of one
// revision.
func TestSmallScanPages(t *testing.T) {
	defer func(n int) { scanPage = n }(scanPage)
	scanPage = 2
	TestConformance(t)
}

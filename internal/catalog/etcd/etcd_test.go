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
	"time"

	"github.com/opencontainers/go-digest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/catalogtest"
	"github.com/depot-images/depot/internal/testenv"
)

// catalogsAt makes fresh catalogs on the etcd at ep, each under a prefix
// of its own.
func catalogsAt(ep string) func(t *testing.T) catalog.Catalog {
	return func(t *testing.T) catalog.Catalog {
		b := make([]byte, 8)
		rand.Read(b)
		c, err := Open(context.Background(), []string{ep}, "/depot-test-"+hex.EncodeToString(b)+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

func TestConformance(t *testing.T) {
	newCatalog := catalogsAt(testenv.Etcd(t))
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
	catalogtest.RunLayout(t, catalogsAt(testenv.Etcd(t)), catalogtest.Raw{
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

// leaders polls until exactly one of ls holds the role, and returns it.
func leader(t *testing.T, ls ...*Leadership) *Leadership {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var held []*Leadership
		for _, l := range ls {
			if l.IsLeader() {
				held = append(held, l)
			}
		}
		if len(held) == 1 {
			return held[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no single leader within 30 s")
	return nil
}

// TestElection: of two heads campaigning on a real etcd, one leads; when
// every lease is lost (an etcd that forgot them), both heads campaign again
// on new leases and one leads; when the leader stops, its Run returns and
// the other takes over.
func TestElection(t *testing.T) {
	ep := testenv.Etcd(t)
	ctx := context.Background()
	heads := make([]*Catalog, 2)
	for i := range heads {
		c, err := Open(ctx, []string{ep}, "/election-test/", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		heads[i] = c
	}
	cli := heads[0].Client()
	a, b := heads[0].Election("gc", "a", 2), heads[1].Election("gc", "b", 2)
	ctxA, stopA := context.WithCancel(ctx)
	ctxB, stopB := context.WithCancel(ctx)
	doneA, doneB := make(chan struct{}), make(chan struct{})
	var g errgroup.Group
	g.Go(func() error { defer close(doneA); return a.Run(ctxA) })
	g.Go(func() error { defer close(doneB); return b.Run(ctxB) })
	defer func() {
		stopA()
		stopB()
		if err := g.Wait(); err != nil {
			t.Errorf("Run = %v", err)
		}
	}()

	leader(t, a, b)
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	revoked := map[int64]bool{}
	for _, l := range leases.Leases {
		if _, err := cli.Revoke(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
		revoked[int64(l.ID)] = true
	}
	// Both campaign again, on leases of their own.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := cli.Get(ctx, heads[0].k("election", "gc")+"/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		fresh := 0
		for _, kv := range resp.Kvs {
			if kv.Lease != 0 && !revoked[kv.Lease] {
				fresh++
			}
		}
		if fresh == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 heads campaigned again within 30 s of losing their leases", fresh)
		}
		time.Sleep(20 * time.Millisecond)
	}
	first := leader(t, a, b)
	stop, done, other := stopA, doneA, b
	if first == b {
		stop, done, other = stopB, doneB, a
	}
	stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of its context ending")
	}
	if leader(t, a, b) != other {
		t.Fatal("the stopped head still leads")
	}
}

// TestElectionRetriesUntilContextEnds: a campaign that cannot even open a
// session (the client is closed) is retried, not given up, and Run returns
// as soon as its context ends.
func TestElectionRetriesUntilContextEnds(t *testing.T) {
	c, err := Open(context.Background(), []string{testenv.Etcd(t)}, "/election-test/", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	l := c.Election("gc", "a", 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Run gave up (%v) while its context lasted", err)
	case <-time.After(2500 * time.Millisecond): // two retries, a second apart
	}
	if l.IsLeader() {
		t.Error("a head that cannot reach etcd leads")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s of its context ending")
	}
}

// Package servertest runs a real depot server, the server package on a
// fresh bbolt catalog and local blob store in a test's temporary directory,
// behind httptest, for the tests of packages that talk to one (the cache,
// the workspace). Nothing in it is a fake: requests go through the same
// handler, auth and storage as under `depot serve`.
package servertest

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/catalog/bolt"
	"github.com/depot-images/depot/internal/server"
)

// Options adjust a head before it starts.
type Options struct {
	// Config changes the server's configuration. The head starts from
	// the defaults with garbage collection off (GCInterval -1); tests
	// call Server.CollectGarbage themselves.
	Config func(*server.Config)
	// Wrap, if set, wraps the server's handler: to count requests or to
	// drop connections.
	Wrap func(http.Handler) http.Handler
}

// Head is a running depot server.
type Head struct {
	URL    string
	Server *server.Server
	Auth   *auth.Authority
	Blobs  *local.Store
	Dir    string // the data directory: catalog and blobs
}

// Start starts a head that stops when the test ends.
func Start(t testing.TB, o Options) *Head {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	cat, err := bolt.Open(filepath.Join(dir, "catalog.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	blobs, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(ctx, cat)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{Catalog: cat, Blobs: blobs, Auth: a, GCInterval: -1}
	if o.Config != nil {
		o.Config(&cfg)
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	if o.Wrap != nil {
		h = o.Wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return &Head{URL: hs.URL, Server: s, Auth: a, Blobs: blobs, Dir: dir}
}

// Client mints a token for subject with role and returns a client that
// uses it.
func (h *Head) Client(t testing.TB, subject string, role auth.Role) *client.Client {
	t.Helper()
	tok, _, err := h.Auth.Mint(context.Background(), subject, role, "servertest", 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(h.URL, tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Push uploads data as the content of image name through c, creating the
// image first if it does not exist, and returns the content's digest.
func Push(t testing.TB, c *client.Client, name string, data []byte) digest.Digest {
	t.Helper()
	ctx := context.Background()
	if _, err := c.GetImage(ctx, name); errors.Is(err, errdefs.ErrNotFound) {
		if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	info, err := c.PushContent(ctx, name, bytes.NewReader(data), int64(len(data)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(info.Chksum)
}

package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/catalog/bolt"
	"github.com/depot-images/depot/internal/server"
)

// Example pushes an image's content to a depot head, reads it back by
// name, and shows a typed error: what `depot image push` and `curl` do,
// from Go.
func Example() {
	ctx := context.Background()
	url, token, stop := startHead()
	defer stop()

	c, err := client.New(url, token)
	if err != nil {
		panic(err)
	}
	if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "NewImage"}); err != nil {
		panic(err)
	}
	content := []byte("a tiny raw disk")
	// The client hashes as it streams and the server verifies end to end.
	info, err := c.PushContent(ctx, "NewImage", bytes.NewReader(content), int64(len(content)), client.PushOptions{Message: "first"})
	if err != nil {
		panic(err)
	}
	fmt.Println(info.Size, info.Fmt, info.Refcnt)

	rc, err := c.OpenContent(ctx, "NewImage")
	if err != nil {
		panic(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	fmt.Println(string(got))

	// Errors are the errdefs vocabulary, whatever crossed the wire.
	_, err = c.GetImage(ctx, "NoSuchImage")
	fmt.Println(errors.Is(err, errdefs.ErrNotFound))
	// Output:
	// 15 raw 1
	// a tiny raw disk
	// true
}

// startHead runs an in-process depot head (bbolt catalog, local blobs) on
// loopback and returns its URL and an admin token.
func startHead() (string, string, func()) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "depot-example")
	if err != nil {
		panic(err)
	}
	cat, err := bolt.Open(filepath.Join(dir, "catalog.db"), time.Second)
	if err != nil {
		panic(err)
	}
	blobs, err := local.Open(dir)
	if err != nil {
		panic(err)
	}
	a, err := auth.New(ctx, cat)
	if err != nil {
		panic(err)
	}
	s, err := server.New(server.Config{Catalog: cat, Blobs: blobs, Auth: a, GCInterval: -1})
	if err != nil {
		panic(err)
	}
	hs := httptest.NewServer(s.Handler())
	tok, _, err := a.Mint(ctx, "example", auth.RoleAdmin, "example", 0)
	if err != nil {
		panic(err)
	}
	return hs.URL, tok, func() { hs.Close(); cat.Close(); os.RemoveAll(dir) }
}

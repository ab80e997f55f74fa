package cache_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/depot-images/depot/cache"
)

// Example keeps a verified local copy of an image served over plain HTTP
// with a checksum file beside it: the first Ensure fetches and verifies,
// the second answers from the cache without the body.
func Example() {
	dir, err := os.MkdirTemp("", "depot-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	site := filepath.Join(dir, "site")
	os.Mkdir(site, 0o755)
	disk := []byte("a tiny raw disk")
	sum := sha256.Sum256(disk)
	os.WriteFile(filepath.Join(site, "disk.img"), disk, 0o644)
	os.WriteFile(filepath.Join(site, "disk.img.sha256"), []byte(hex.EncodeToString(sum[:])+"  disk.img\n"), 0o644)
	srv := httptest.NewServer(http.FileServer(http.Dir(site)))
	defer srv.Close()

	c, err := cache.Open(filepath.Join(dir, "cache"), cache.Options{})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for range 2 {
		img, err := c.Ensure(ctx, srv.URL+"/disk.img", cache.EnsureOptions{})
		if err != nil {
			panic(err)
		}
		b, _ := os.ReadFile(img.Path) // exactly the verified bytes
		fmt.Println(img.Digest.Encoded()[:12], img.Size, img.Format, img.Fetched, string(b))
	}
	// Output:
	// 3684f3fa6d91 15 raw true a tiny raw disk
	// 3684f3fa6d91 15 raw false a tiny raw disk
}

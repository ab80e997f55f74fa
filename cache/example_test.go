package cache_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/cache"
)

// Ensure fetches an image once, verifies it against its pinned digest, and
// answers from the cache afterwards.
func Example() {
	disk := bytes.Repeat([]byte("depot"), 1<<16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "disk.img", time.Time{}, bytes.NewReader(disk))
	}))
	defer srv.Close()
	dir, err := os.MkdirTemp("", "depot-cache")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	c, err := cache.Open(dir, cache.Options{})
	if err != nil {
		log.Fatal(err)
	}
	o := cache.EnsureOptions{Checksum: digest.FromBytes(disk)}
	for range 2 {
		img, err := c.Ensure(context.Background(), srv.URL+"/disk.img", o)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(img.Digest == o.Checksum, img.Size, img.Fetched)
	}
	// Output:
	// true 327680 true
	// true 327680 false
}

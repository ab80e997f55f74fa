package cache

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// populate fills a cache with n small entries fetched over HTTP with
// pinned checksums, and returns the references.
func populate(b *testing.B, n int) (*Cache, []string) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("entry " + strings.TrimPrefix(r.URL.Path, "/e/")))
	}))
	b.Cleanup(s.Close)
	c, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	refs := make([]string, n)
	for i := range n {
		d := digest.FromString("entry " + strconv.Itoa(i) + ".img")
		refs[i] = s.URL + "/e/" + strconv.Itoa(i) + ".img@" + d.String()
		if _, err := c.Ensure(ctx, refs[i], EnsureOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	return c, refs
}

// BenchmarkEnsurePinned is P2's pinned case and P5: a warm pinned ensure
// (no network) with 10 and 10,000 entries in the cache.
func BenchmarkEnsurePinned(b *testing.B) {
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			c, refs := populate(b, n)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				img, err := c.Ensure(ctx, refs[i%len(refs)], EnsureOptions{})
				if err != nil || img.Fetched {
					b.Fatal(err)
				}
			}
		})
	}
}

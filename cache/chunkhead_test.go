package cache

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/chunks"
)

// serveIndex lets the head's real GET /api/v1/blob/sha256:<hex>/chunks
// answer, except where a test makes the head hostile or old: with noIndex
// it answers 404 as a server from before chunk indexes would, and with
// lieIndex it serves the real blob's index (chunks.Build of the committed
// blob) after the lie has changed it.
func (h *head) serveIndex(t *testing.T, w http.ResponseWriter, r *http.Request, next http.Handler) {
	ds := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/v1/blob/"), "/chunks")
	d := digest.Digest(ds)
	if h.noIndex.Load() {
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
		return
	}
	if lie, _ := h.lieIndex.Load().(func(*chunks.Index)); r.Method != http.MethodGet || d.Validate() != nil || lie == nil {
		next.ServeHTTP(w, r)
		return
	}
	f, err := os.Open(h.blobs.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		next.ServeHTTP(w, r)
		return
	} else if err != nil {
		t.Errorf("index stand-in: %v", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	x, err := chunks.Build(r.Context(), f, chunks.DefaultParams, d)
	if err != nil {
		t.Errorf("index stand-in: %v", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if lie, ok := h.lieIndex.Load().(func(*chunks.Index)); ok && lie != nil {
		lie(x)
	}
	enc, err := x.Encode()
	if err != nil {
		t.Errorf("index stand-in: the lie does not encode: %v", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.depot.chunks.v1")
	w.Header().Set("X-Depot-Chunks-Digest", chunks.DigestOf(enc).String())
	w.Write(enc)
}

// countingWriter counts the body bytes a handler writes.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// quiet waits until no blob GET is being answered (a cancelled request's
// handler may still be writing), so that bodyBytes is final.
func (h *head) quiet(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.inflight.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("blob GETs still in flight after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

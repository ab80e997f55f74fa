package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
)

// fetch: one transfer per digest across processes, and the retry policy
// around it (what is resumed, what is never retried, stalls), against real
// HTTP servers and real depot heads.

func TestConcurrentEnsureTransfersOnce(t *testing.T) {
	h := newHead(t)
	d := h.push(t, "shared", randBytes(4<<20))
	dir := t.TempDir()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _ := Open(dir, Options{Depot: h.admin}) // separate handles, as separate processes have
			img, err := c.Ensure(ctx, "shared@"+d.String(), EnsureOptions{})
			if err != nil || img.Digest != d {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := h.blobGets.Load(); n != 1 {
		t.Fatalf("%d blob transfers for 8 concurrent ensures, want 1", n)
	}
}

// TestTransferRetriesAfterOneCut: a single interruption is resumed inside
// the same Ensure, by Range, without failing the caller.
func TestTransferRetriesAfterOneCut(t *testing.T) {
	dir := t.TempDir()
	data := randBytes(8 << 20)
	os.WriteFile(filepath.Join(dir, "big.img"), data, 0o644)
	var cuts atomic.Int32
	fs := http.FileServer(http.Dir(dir))
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cuts.Add(1) == 1 {
			w.Header().Set("Content-Length", "8388608")
			w.Header().Set("Accept-Ranges", "bytes")
			w.WriteHeader(200)
			w.Write(data[:2<<20])
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
			return
		}
		if r.Header.Get("Range") != "bytes=2097152-" {
			t.Errorf("the retry asked for %q, want the rest from 2 MiB", r.Header.Get("Range"))
		}
		fs.ServeHTTP(w, r)
	}))
	defer s.Close()
	c, _ := Open(t.TempDir(), Options{})
	img, err := c.Ensure(ctx, s.URL+"/big.img", EnsureOptions{Checksum: digest.FromBytes(data)})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("one cut: %v", err)
	}
}

// stallClient is the cache's HTTP client with a short stall timeout.
func stallClient(stall time.Duration) *http.Client {
	return client.NewHTTPClient(client.Timeouts{Stall: stall})
}

// stallAfter serves data with a Content-Length, sends the first n bytes and
// then goes silent until the test ends.
func stallAfter(t *testing.T, data []byte, n int) string {
	return rawServer(t, func(c net.Conn, r *http.Request) {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(data))
		c.Write(data[:n])
		io.Copy(io.Discard, c) // silent until the client or the test closes
	})
}

func TestStall(t *testing.T) {
	const stall = time.Second
	data := randBytes(2 << 20)
	d := digest.FromBytes(data)
	for _, tc := range []struct {
		name string
		url  string
	}{
		{"mid-body", stallAfter(t, data, 1<<20) + "/disk.img"},
		{"before headers", rawServer(t, func(c net.Conn, r *http.Request) { io.Copy(io.Discard, c) }) + "/disk.img"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := Open(t.TempDir(), Options{HTTPClient: stallClient(stall)})
			start := time.Now()
			_, err := c.Ensure(ctx, tc.url, EnsureOptions{Checksum: d})
			took := time.Since(start)
			if !client.IsStall(err) || !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("Ensure = %v, want a StallError (ErrUnavailable)", err)
			}
			if took < stall || took > 3*stall {
				t.Errorf("a stall of %s failed after %s", stall, took)
			}
		})
	}
}

// TestSlowButMovingNotCut: a body that trickles (a byte every quarter of
// the stall timeout) for longer than the stall timeout completes.
func TestSlowButMovingNotCut(t *testing.T) {
	const stall = 400 * time.Millisecond
	data := randBytes(12)
	url := rawServer(t, func(c net.Conn, r *http.Request) {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(data))
		for i := range data {
			time.Sleep(stall / 4) // the fault under test is the pace itself
			if _, err := c.Write(data[i : i+1]); err != nil {
				return
			}
		}
	})
	c, _ := Open(t.TempDir(), Options{HTTPClient: stallClient(stall)})
	start := time.Now()
	img, err := c.Ensure(ctx, url+"/disk.img", EnsureOptions{Checksum: digest.FromBytes(data)})
	if err != nil || img.Digest != digest.FromBytes(data) {
		t.Fatalf("slow but moving: %+v %v", img, err)
	}
	if took := time.Since(start); took < 2*stall {
		t.Fatalf("the trickle took %s, not longer than the stall timeout: the test proves nothing", took)
	}
}

// TestStallFailsOverToNextHead: of two depot heads holding the same
// content, the first stalls mid-body; the cache moves to the second and
// resumes by Range, and the result is verified.
func TestStallFailsOverToNextHead(t *testing.T) {
	const stall = time.Second
	a, b := newHead(t), newHead(t)
	data := randBytes(8 << 20)
	d := a.push(t, "img", data)
	b.push(t, "img", data)
	a.hostile.Store(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/api/v1/blob/") {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Header().Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		w.Write(data[:3<<20])
		w.(http.Flusher).Flush()
		<-r.Context().Done() // silent until the client gives up
		return true
	})
	var ranges []string
	var mu sync.Mutex
	b.hostile.Store(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/api/v1/blob/") {
			mu.Lock()
			ranges = append(ranges, r.Header.Get("Range"))
			mu.Unlock()
		}
		return false
	})
	// Each head has its own token store: read anonymously, by digest.
	dc, err := client.New(a.url+","+b.url, "", client.WithTimeouts(client.Timeouts{Stall: stall}))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := Open(t.TempDir(), Options{Depot: dc})
	img, err := c.Ensure(ctx, "img@"+d.String(), EnsureOptions{})
	if err != nil || img.Digest != d || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("Ensure = %+v, %v; want the content from the second head", img, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ranges) != 1 || !strings.HasPrefix(ranges[0], "bytes=") || strings.HasPrefix(ranges[0], "bytes=0-") {
		t.Fatalf("the second head got ranges %q, want one resume past the stalled head's bytes", ranges)
	}
}

package cache

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/format"
)

// The transfer engine: sequential and parallel downloads, resume from a
// verified prefix, and the bounds of the parallel scheduler, against real
// HTTP servers (httptest, raw TCP) and a real depot head (servertest).

func TestResumeAfterInterruption(t *testing.T) {
	dir := t.TempDir()
	data := randBytes(8 << 20)
	os.WriteFile(filepath.Join(dir, "big.img"), data, 0o644)
	var cut atomic.Bool
	cut.Store(true)
	var ranged atomic.Int64
	fs := http.FileServer(http.Dir(dir))
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		if cut.Load() && strings.HasSuffix(r.URL.Path, "big.img") {
			// Send 3 MiB, then drop the connection.
			w.Header().Set("Content-Length", "8388608")
			w.WriteHeader(200)
			w.Write(data[:3<<20])
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
			return
		}
		fs.ServeHTTP(w, r)
	}))
	defer s.Close()
	c, _ := Open(t.TempDir(), Options{})
	o := EnsureOptions{Checksum: digest.FromBytes(data)}
	if _, err := c.Ensure(ctx, s.URL+"/big.img", o); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("interrupted = %v, want ErrUnavailable", err)
	}
	part := filepath.Join(c.Dir(), "ingest", digest.FromBytes(data).Encoded()+".part")
	if fi, err := os.Stat(part); err != nil || fi.Size() == 0 {
		t.Fatalf("no partial kept: %v", err)
	}
	cut.Store(false)
	ranged.Store(0) // count only the resume, not the retries while cut
	img, err := c.Ensure(ctx, s.URL+"/big.img", o)
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("resume: %v", err)
	}
	if ranged.Load() != 1 {
		t.Errorf("resume made %d ranged requests, want 1", ranged.Load())
	}
	if _, err := os.Stat(part); !os.IsNotExist(err) {
		t.Error("partial file left after commit")
	}
}

func TestParallelRangedDownload(t *testing.T) {
	h := newHead(t)
	data := randBytes(100 << 20) // > parallelMin: 7 segments of 16 MiB
	d := h.push(t, "big", data)
	c, _ := Open(t.TempDir(), Options{Depot: h.admin, Connections: 4})
	var last int64
	img, err := c.Ensure(ctx, "big@"+d.String(), EnsureOptions{Progress: func(done, total int64) {
		if done < last || total != int64(len(data)) {
			t.Errorf("progress went %d → %d of %d", last, done, total)
		}
		last = done
	}})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("parallel: %v", err)
	}
	// One probe request plus one request per segment.
	if n := h.blobGets.Load(); n != 1+7 {
		t.Errorf("%d blob requests, want 8", n)
	}
	if last != int64(len(data)) {
		t.Errorf("progress ended at %d", last)
	}
}

func TestParallelResumeAfterSegmentFailure(t *testing.T) {
	dir := t.TempDir()
	data := randBytes(100 << 20)
	os.WriteFile(filepath.Join(dir, "big.img"), data, 0o644)
	var fail atomic.Bool
	fail.Store(true)
	fs := http.FileServer(http.Dir(dir))
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The segment at 48 MiB fails mid-way until the test lifts the fault
		// (outlasting the cache's own retries).
		var start int64 = -1
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &start)
		if fail.Load() && start >= 48<<20 && start < 64<<20 {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/104857600", start, 104857600-1))
			w.Header().Set("Content-Length", strconv.Itoa(104857600-int(start)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[start : start+1<<10])
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			conn.Close()
			return
		}
		fs.ServeHTTP(w, r)
	}))
	defer s.Close()
	c, _ := Open(t.TempDir(), Options{Connections: 4})
	o := EnsureOptions{Checksum: digest.FromBytes(data)}
	if _, err := c.Ensure(ctx, s.URL+"/big.img", o); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("failed segment = %v, want ErrUnavailable", err)
	}
	// What is kept is a verified-in-order prefix of at least the 3 good
	// segments: either recorded as such (parallel) or the whole part file
	// (the retries, under 64 MiB left, ran sequentially).
	st, ok, _ := readJSON[ingestState](filepath.Join(c.Dir(), "ingest", digest.FromBytes(data).Encoded()+".json"))
	part, _ := os.ReadFile(filepath.Join(c.Dir(), "ingest", digest.FromBytes(data).Encoded()+".part"))
	kept := st.Prefix
	if st.Prefix == -1 {
		kept = int64(len(part))
	}
	if !ok || kept < 48<<20 || !bytes.Equal(part[:kept], data[:kept]) {
		t.Fatalf("state after failure: %+v, part %d bytes (want a valid prefix of at least 48 MiB)", st, len(part))
	}
	fail.Store(false)
	img, err := c.Ensure(ctx, s.URL+"/big.img", o)
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("resume: %v", err)
	}
}

// TestParallelSchedulesLazily: the parallel path allocates per segment in
// flight, not per segment of the declared size (a source may declare any
// size, and the free-space check is the only thing in front of this).
func TestParallelSchedulesLazily(t *testing.T) {
	url := lyingServer(t, 64<<40) + "/disk.img"
	c, _ := Open(t.TempDir(), Options{Connections: 4})
	src, err := c.sourceFor(mustParse(t, url), EnsureOptions{Checksum: digest.FromString("x")})
	if err != nil {
		t.Fatal(err)
	}
	p := newTestPartial(t, c, digest.FromString("x"))
	n := allocated(func() { err = c.parallel(ctx, p, src, 64<<40, "", 4, EnsureOptions{}) })
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("parallel = %v, want the first segment's ErrUnavailable", err)
	}
	if n > allocBound {
		t.Errorf("parallel allocated %d MiB for a declared 64 TiB", n>>20)
	}
}

// newTestPartial is an empty ingest of d, as transfer starts one.
func newTestPartial(t *testing.T, c *Cache, d digest.Digest) *partial {
	t.Helper()
	p := &partial{c: c, d: d, path: filepath.Join(c.dir, "ingest", d.Encoded()+".part"),
		statePath: filepath.Join(c.dir, "ingest", d.Encoded()+".json"), h: blob.NewDualHasher(), sniff: &format.Sniffer{}}
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.f = f
	t.Cleanup(func() { f.Close(); p.h.Close() })
	return p
}

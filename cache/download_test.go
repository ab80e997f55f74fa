package cache

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
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
	p, err := c.openPartial(d, "", "", make([]byte, 1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

// partialServer serves data at /big.img (ranges, ETag via http.ServeContent)
// and records each request's Range and If-Range.
func partialServer(t *testing.T, data []byte) (url string, reqs func() []string) {
	var mu sync.Mutex
	var seen []string
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Range")+"|"+r.Header.Get("If-Range"))
		mu.Unlock()
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "big.img", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(s.Close)
	return s.URL + "/big.img", func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// leavePartial writes what an interrupted run leaves in ingest/ for d.
func leavePartial(t *testing.T, c *Cache, d digest.Digest, part []byte, st ingestState) {
	t.Helper()
	base := filepath.Join(c.Dir(), "ingest", d.Encoded())
	if err := os.WriteFile(base+".part", part, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(base+".json", st, false); err != nil {
		t.Fatal(err)
	}
}

// TestPartialCompleteCommitsWithoutRequest: a run killed between the last
// byte and the rename left the whole content; the next Ensure commits it
// without asking the source for anything.
func TestPartialCompleteCommitsWithoutRequest(t *testing.T) {
	data := randBytes(3 << 20)
	d := digest.FromBytes(data)
	url, reqs := partialServer(t, data)
	c, _ := Open(t.TempDir(), Options{})
	leavePartial(t, c, d, data, ingestState{Source: url, Prefix: -1})
	img, err := c.Ensure(ctx, url, EnsureOptions{Checksum: d})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("Ensure = %+v, %v", img, err)
	}
	if r := reqs(); len(r) != 0 {
		t.Errorf("requests %q, want none", r)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), "ingest", d.Encoded()+".part")); !os.IsNotExist(err) {
		t.Error("partial file left after commit")
	}
}

// TestPartialKeepsOnlyTheInOrderPrefix: a parallel run wrote segments out
// of order and recorded a prefix; the bytes past it are not trusted (here
// they are garbage) and the resume asks for the rest from the prefix.
func TestPartialKeepsOnlyTheInOrderPrefix(t *testing.T) {
	data := randBytes(3 << 20)
	d := digest.FromBytes(data)
	url, reqs := partialServer(t, data)
	c, _ := Open(t.TempDir(), Options{})
	part := append(bytes.Clone(data[:1<<20]), randBytes(1<<20)...)
	leavePartial(t, c, d, part, ingestState{Source: url, Validator: `"v1"`, Prefix: 1 << 20})
	img, err := c.Ensure(ctx, url, EnsureOptions{Checksum: d})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("Ensure = %+v, %v", img, err)
	}
	if r := reqs(); len(r) != 1 || r[0] != `bytes=1048576-|"v1"` {
		t.Errorf("requests %q, want one resume from 1 MiB under the recorded validator", r)
	}
}

// TestPartialFromAnotherOrigin: a partial another origin left is still
// content of d (its prefix is kept) but its validator is not sent here.
func TestPartialFromAnotherOrigin(t *testing.T) {
	data := randBytes(3 << 20)
	d := digest.FromBytes(data)
	url, reqs := partialServer(t, data)
	c, _ := Open(t.TempDir(), Options{})
	leavePartial(t, c, d, data[:1<<20], ingestState{Source: "https://elsewhere.example/big.img", Validator: `"other"`, Prefix: -1})
	img, err := c.Ensure(ctx, url, EnsureOptions{Checksum: d})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("Ensure = %+v, %v", img, err)
	}
	if r := reqs(); len(r) != 1 || r[0] != "bytes=1048576-|" {
		t.Errorf("requests %q, want one resume from 1 MiB without a validator", r)
	}
}

// TestPartialNotAPrefixRestarts: a partial whose bytes are not content of
// d (nothing checks a part file until the end) fails verification once and
// is discarded; the next Ensure fetches from zero.
func TestPartialNotAPrefixRestarts(t *testing.T) {
	data := randBytes(3 << 20)
	d := digest.FromBytes(data)
	url, reqs := partialServer(t, data)
	c, _ := Open(t.TempDir(), Options{})
	leavePartial(t, c, d, randBytes(1<<20), ingestState{Source: url, Prefix: -1})
	if _, err := c.Ensure(ctx, url, EnsureOptions{Checksum: d}); !errors.Is(err, errdefs.ErrVerification) {
		t.Fatalf("Ensure over a foreign partial = %v, want ErrVerification", err)
	}
	if r := reqs(); len(r) != 1 {
		t.Errorf("requests %q: a verification failure is not retried", r)
	}
	img, err := c.Ensure(ctx, url, EnsureOptions{Checksum: d})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("Ensure after the discard = %+v, %v", img, err)
	}
	if r := reqs(); len(r) != 2 || r[1] != "|" {
		t.Errorf("requests %q, want a second, whole-body request", r)
	}
}

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

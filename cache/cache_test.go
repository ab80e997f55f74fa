package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/server"
	"github.com/depot-images/depot/internal/server/servertest"
	"github.com/depot-images/depot/internal/testenv"
)

var ctx = context.Background()

// head is a real depot server (the server package behind httptest) whose
// blob GETs are counted.
type head struct {
	url      string
	admin    *client.Client
	srv      *server.Server
	blobGets atomic.Int64
	infoGets atomic.Int64
	down     atomic.Bool
	// bodyBytes counts the body bytes of blob GETs (ranges included),
	// indexGets the chunk index GETs.
	bodyBytes atomic.Int64
	// indexBytes counts the body bytes of chunk index GETs.
	indexBytes atomic.Int64
	indexGets  atomic.Int64
	inflight   atomic.Int64 // requests being handled
	blobs      *local.Store
	// noIndex makes the chunk index endpoint answer 404 (an older
	// server); lieIndex, when set, edits every index served.
	noIndex  atomic.Bool
	lieIndex atomic.Value // func(*chunks.Index)
	// hostile, when set, sees every request first and answers it when it
	// returns true (func(http.ResponseWriter, *http.Request) bool).
	hostile atomic.Value
}

func newHead(t *testing.T) *head {
	t.Helper()
	h := &head{}
	hs := servertest.Start(t, servertest.Options{
		Config: func(c *server.Config) { c.GCGrace, c.KeepRevisions, c.AllowAnonymousRead = -time.Second, 2, true },
		Wrap: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if h.down.Load() {
					hj, _ := w.(http.Hijacker)
					conn, _, _ := hj.Hijack()
					conn.Close()
					return
				}
				if f, ok := h.hostile.Load().(func(http.ResponseWriter, *http.Request) bool); ok && f(w, r) {
					return
				}
				if strings.HasPrefix(r.URL.Path, "/api/v1/blob/") && strings.HasSuffix(r.URL.Path, "/chunks") {
					h.indexGets.Add(1)
					h.serveIndex(t, &countingWriter{ResponseWriter: w, n: &h.indexBytes}, r, next)
					return
				}
				if strings.HasPrefix(r.URL.Path, "/api/v1/blob/") && r.Method == http.MethodGet {
					h.blobGets.Add(1)
					h.inflight.Add(1)
					defer h.inflight.Add(-1)
					w = &countingWriter{ResponseWriter: w, n: &h.bodyBytes}
				}
				// A resolve is one GET of the image object (metadata, no body).
				if p := strings.TrimPrefix(r.URL.Path, "/api/v1/image/"); p != r.URL.Path && !strings.Contains(p, "/") && r.Method == http.MethodGet {
					h.infoGets.Add(1)
				}
				next.ServeHTTP(w, r)
			})
		},
	})
	h.url, h.srv, h.blobs = hs.URL, hs.Server, hs.Blobs
	h.admin = hs.Client(t, "admin", auth.RoleAdmin)
	return h
}

func (h *head) push(t *testing.T, name string, data []byte) digest.Digest {
	t.Helper()
	return servertest.Push(t, h.admin, name, data)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func openCache(t *testing.T, h *head) *Cache {
	t.Helper()
	c, err := Open(t.TempDir(), Options{Depot: h.admin})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPinnedDigestNeedsNoNetwork(t *testing.T) {
	h := newHead(t)
	data := randBytes(1 << 20)
	d := h.push(t, "img", data)
	c := openCache(t, h)
	img, err := c.Ensure(ctx, "img@"+d.String(), EnsureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !img.Fetched || img.Digest != d || !bytes.Equal(mustRead(t, img.Path), data) {
		t.Fatalf("first ensure: %+v", img)
	}
	fi, _ := os.Stat(img.Path)
	if fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("cached blob is writable: %v", fi.Mode())
	}
	h.down.Store(true) // any request now fails
	before := h.blobGets.Load() + h.infoGets.Load()
	img2, err := c.Ensure(ctx, "img@"+d.String(), EnsureOptions{Policy: Always})
	if err != nil || img2.Fetched || img2.Path != img.Path {
		t.Fatalf("pinned warm ensure: %+v %v", img2, err)
	}
	if h.blobGets.Load()+h.infoGets.Load() != before {
		t.Fatal("pinned warm ensure touched the network")
	}
}

// TestMovedNameSeed002 is the failure of seed 002, caught at the image layer.
func TestMovedNameSeed002(t *testing.T) {
	h := newHead(t)
	v1, v2, v3, v4 := randBytes(4096), randBytes(4096), randBytes(4096), randBytes(4096)
	d1 := h.push(t, "win11", v1)
	c := openCache(t, h)
	if img, err := c.Ensure(ctx, "win11", EnsureOptions{Policy: Always}); err != nil || img.Digest != d1 {
		t.Fatalf("ensure v1: %+v %v", img, err)
	}
	d2 := h.push(t, "win11", v2) // the tag moves
	// IfNotPresent keeps the local copy; Always fetches the new digest.
	if img, _ := c.Ensure(ctx, "win11", EnsureOptions{Policy: IfNotPresent}); img.Digest != d1 {
		t.Errorf("IfNotPresent gave %s, want the cached %s", img.Digest, d1)
	}
	gets := h.blobGets.Load()
	img, err := c.Ensure(ctx, "win11", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || !img.Fetched || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("Always after move: %+v %v", img, err)
	}
	if h.blobGets.Load() != gets+1 {
		t.Errorf("Always after move made %d blob GETs, want 1", h.blobGets.Load()-gets)
	}
	// Unchanged: Always resolves with one small request and fetches nothing.
	gets, infos := h.blobGets.Load(), h.infoGets.Load()
	if img, _ := c.Ensure(ctx, "win11", EnsureOptions{Policy: Always}); img.Fetched || img.Digest != d2 {
		t.Errorf("unchanged Always refetched: %+v", img)
	}
	if h.blobGets.Load() != gets || h.infoGets.Load() != infos+1 {
		t.Errorf("unchanged Always: %d blob GETs, %d info GETs", h.blobGets.Load()-gets, h.infoGets.Load()-infos)
	}
	// A fresh cache asking for the old pinned digest gets it by digest
	// while the server retains it.
	c2 := openCache(t, h)
	img, err = c2.Ensure(ctx, "win11@"+d1.String(), EnsureOptions{})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), v1) {
		t.Fatalf("pinned old digest while retained: %v", err)
	}
	// Two more pushes push d1 out of the retention (keep 2); GC removes it.
	h.push(t, "win11", v3)
	d4 := h.push(t, "win11", v4)
	if _, err := h.srv.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	c3 := openCache(t, h)
	_, err = c3.Ensure(ctx, "win11@"+d1.String(), EnsureOptions{})
	var du *errdefs.DigestUnavailableError
	if !errors.As(err, &du) || du.Want != d1 || du.Have != d4 {
		t.Fatalf("gone digest: %v, want DigestUnavailable wanted %s have %s", err, d1, d4)
	}
	if !strings.Contains(err.Error(), d1.String()) || !strings.Contains(err.Error(), d4.String()) {
		t.Errorf("message does not name both digests: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(c3.Dir(), "blobs", "sha256")); len(ents) != 0 {
		t.Errorf("a failed ensure left %d blobs", len(ents))
	}
}

func TestPolicies(t *testing.T) {
	h := newHead(t)
	d := h.push(t, "p", randBytes(1000))
	c := openCache(t, h)
	if _, err := c.Ensure(ctx, "p", EnsureOptions{Policy: Never}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Never on empty cache = %v", err)
	}
	c.Ensure(ctx, "p", EnsureOptions{})
	h.down.Store(true)
	if img, err := c.Ensure(ctx, "p", EnsureOptions{Policy: Never}); err != nil || img.Digest != d {
		t.Fatalf("Never warm = %+v %v", img, err)
	}
	if _, err := c.Ensure(ctx, "p", EnsureOptions{Policy: Always}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Always offline = %v, want ErrUnavailable", err)
	}
	img, err := c.Ensure(ctx, "p", EnsureOptions{Policy: Always, OfflineOK: true})
	if err != nil || !img.Offline || img.Digest != d {
		t.Fatalf("Always --offline-ok = %+v %v", img, err)
	}
}

func TestCorruptSourceCommitsNothing(t *testing.T) {
	data := randBytes(50000)
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".sha256") {
			w.Write([]byte(digest.FromBytes(data).Encoded() + "  disk.img\n"))
			return
		}
		bad := bytes.Clone(data)
		bad[100] ^= 1
		w.Write(bad)
	}))
	defer evil.Close()
	c, _ := Open(t.TempDir(), Options{})
	_, err := c.Ensure(ctx, evil.URL+"/disk.img", EnsureOptions{})
	var ve *errdefs.VerificationError
	if !errors.As(err, &ve) || ve.Want != digest.FromBytes(data) || ve.Got == ve.Want {
		t.Fatalf("err = %v, want VerificationError naming both digests", err)
	}
	for _, d := range []string{"blobs/sha256", "ingest", "index/pointers"} {
		if ents, _ := os.ReadDir(filepath.Join(c.Dir(), d)); len(ents) != 0 {
			t.Errorf("%s holds %d entries after a failed verification", d, len(ents))
		}
	}
}

// fileServer serves dir with Range support and can flip files under it.
func fileServer(t *testing.T, dir string) (*httptest.Server, *atomic.Int64) {
	var gets atomic.Int64
	fs := http.FileServer(http.Dir(dir))
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, ".sha256") && !strings.HasSuffix(r.URL.Path, "SUMS") && !strings.HasSuffix(r.URL.Path, "CHECKSUM") {
			gets.Add(1)
		}
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s, &gets
}

func TestHTTPChecksumFiles(t *testing.T) {
	dir := t.TempDir()
	s, gets := fileServer(t, dir)
	a, b := randBytes(10000), randBytes(10000)
	os.WriteFile(filepath.Join(dir, "a.qcow2"), a, 0o644)
	os.WriteFile(filepath.Join(dir, "a.qcow2.sha256"), []byte(digest.FromBytes(a).Encoded()+"  a.qcow2\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.img"), b, 0o644)
	// SHA256SUMS lists a decoy whose name contains b.img as a substring.
	os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(digest.FromBytes(a).Encoded()+" *xb.img\n"+digest.FromBytes(b).Encoded()+" *b.img\n"), 0o644)
	c, _ := Open(t.TempDir(), Options{})
	for name, want := range map[string][]byte{"a.qcow2": a, "b.img": b} {
		img, err := c.Ensure(ctx, s.URL+"/"+name, EnsureOptions{Policy: Always})
		if err != nil || !bytes.Equal(mustRead(t, img.Path), want) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Seed 003: the upstream image and its checksum change → the next
	// Always ensure fetches the new image; unchanged → no body request.
	n := gets.Load()
	if img, _ := c.Ensure(ctx, s.URL+"/a.qcow2", EnsureOptions{Policy: Always}); img.Fetched || gets.Load() != n {
		t.Fatalf("unchanged checksum refetched the body")
	}
	a2 := randBytes(10000)
	os.WriteFile(filepath.Join(dir, "a.qcow2"), a2, 0o644)
	os.WriteFile(filepath.Join(dir, "a.qcow2.sha256"), []byte(digest.FromBytes(a2).Encoded()+"  a.qcow2\n"), 0o644)
	img, err := c.Ensure(ctx, s.URL+"/a.qcow2", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != digest.FromBytes(a2) || !img.Fetched {
		t.Fatalf("changed upstream: %+v %v", img, err)
	}
	// --checksum pins without any checksum file; a missing file is reported.
	os.WriteFile(filepath.Join(dir, "c.raw"), a, 0o644)
	if _, err := c.Ensure(ctx, s.URL+"/c.raw", EnsureOptions{}); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "--checksum") {
		t.Fatalf("no checksum file: %v", err)
	}
	if img, err := c.Ensure(ctx, s.URL+"/c.raw", EnsureOptions{Checksum: digest.FromBytes(a)}); err != nil || img.Digest != digest.FromBytes(a) {
		t.Fatalf("--checksum: %v", err)
	}
}

func TestFingerprintChangeRehashes(t *testing.T) {
	h := newHead(t)
	data := randBytes(100000)
	d := h.push(t, "fp", data)
	c := openCache(t, h)
	img, _ := c.Ensure(ctx, "fp@"+d.String(), EnsureOptions{})
	// Modify the blob in place (as `qemu-img amend` would).
	os.Chmod(img.Path, 0o644)
	bad := bytes.Clone(data)
	bad[0] ^= 0xff
	os.WriteFile(img.Path, bad, 0o644)
	img2, err := c.Ensure(ctx, "fp@"+d.String(), EnsureOptions{})
	if err != nil || !img2.Fetched || !bytes.Equal(mustRead(t, img2.Path), data) {
		t.Fatalf("modified blob was not detected and refetched: %+v %v", img2, err)
	}
	if q, _ := os.ReadDir(filepath.Join(c.Dir(), "quarantine")); len(q) != 1 {
		t.Errorf("quarantine holds %d files, want 1", len(q))
	}
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	testenv.Need(t, "qemu-img")
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v %s", args, err, out)
	}
}

package cache

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/testenv"
)

// The hostile-source suite: real HTTP servers (httptest, or raw TCP where
// net/http would not misbehave) that redirect, lie about sizes and stall,
// and a real registry. Nothing a source says may make the cache downgrade
// to plain HTTP, allocate in proportion to a declared size, read past a
// declared end, or wait forever.

// rawServer accepts TCP connections, reads one request from each and hands
// both to handle. Every goroutine and connection is gone when the test ends.
func rawServer(t *testing.T, handle func(c net.Conn, r *http.Request)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					select {
					case <-done:
						return
					default:
					}
					handle(c, req)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		close(done)
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "http://" + l.Addr().String()
}

func TestHostileRedirectDowngrade(t *testing.T) {
	data := randBytes(64 << 10)
	d := digest.FromBytes(data)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/disk.img":
			w.Write(data)
		case "/disk.img.sha256":
			fmt.Fprintf(w, "%s  disk.img\n", d.Encoded())
		default:
			http.NotFound(w, r)
		}
	}))
	defer plain.Close()
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/down/disk.img", "/down/disk.img.sha256":
			http.Redirect(w, r, plain.URL+strings.TrimPrefix(r.URL.Path, "/down"), http.StatusFound)
		case "/sumdown/disk.img":
			w.Write(data)
		case "/sumdown/disk.img.sha256":
			http.Redirect(w, r, plain.URL+"/disk.img.sha256", http.StatusFound)
		case "/ftp/disk.img":
			http.Redirect(w, r, "ftp://"+strings.TrimPrefix(plain.URL, "http://")+"/disk.img", http.StatusFound)
		case "/ok/disk.img":
			http.Redirect(w, r, "/final/disk.img", http.StatusFound)
		case "/final/disk.img":
			w.Write(data)
		default:
			http.NotFound(w, r)
		}
	}))
	defer secure.Close()
	tc := secure.Client().Transport.(*http.Transport).TLSClientConfig
	hc := client.NewHTTPClient(client.Timeouts{TLSConfig: tc})
	defer hc.CloseIdleConnections()
	for _, tc := range []struct {
		name, url string
		pin       bool
	}{
		{"body https to http", "/down/disk.img", true},
		{"checksum file https to http", "/sumdown/disk.img", false},
		{"body to ftp", "/ftp/disk.img", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := Open(t.TempDir(), Options{HTTPClient: hc})
			o := EnsureOptions{}
			if tc.pin {
				o.Checksum = d
			}
			_, err := c.Ensure(ctx, secure.URL+tc.url, o)
			var re *client.RedirectError
			if !errors.As(err, &re) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Ensure = %v, want a RedirectError (ErrInvalidArgument)", err)
			}
		})
	}
	// https to https is followed.
	c, _ := Open(t.TempDir(), Options{HTTPClient: hc})
	if img, err := c.Ensure(ctx, secure.URL+"/ok/disk.img", EnsureOptions{Checksum: d}); err != nil || img.Digest != d {
		t.Fatalf("https to https: %+v %v", img, err)
	}
}

// lyingServer declares size bytes (Content-Length, or Content-Range for a
// range), honours ranges on paper, and closes the connection after the
// headers.
func lyingServer(t *testing.T, size int64) string {
	return rawServer(t, func(c net.Conn, r *http.Request) {
		var a, b int64 = 0, size - 1
		status := "200 OK"
		extra := ""
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err == nil || a > 0 {
			status = "206 Partial Content"
			extra = fmt.Sprintf("Content-Range: bytes %d-%d/%d\r\n", a, b, size)
		}
		fmt.Fprintf(c, "HTTP/1.1 %s\r\nAccept-Ranges: bytes\r\nContent-Length: %d\r\n%s\r\n", status, b-a+1, extra)
		c.Write(make([]byte, 4096))
		c.Close()
	})
}

// allocated runs f and reports the bytes allocated meanwhile.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

const allocBound = 64 << 20

func TestHostileDeclaredSize(t *testing.T) {
	for _, size := range []int64{64 << 40, 1 << 50} {
		url := lyingServer(t, size) + "/disk.img"
		pin := digest.FromString("never served")
		t.Run(fmt.Sprintf("%d TiB over the free space", size>>40), func(t *testing.T) {
			c, _ := Open(t.TempDir(), Options{Connections: 4})
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			var err error
			n := allocated(func() { _, err = c.Ensure(cctx, url, EnsureOptions{Checksum: pin}) })
			if !errors.Is(err, errdefs.ErrNoSpace) {
				t.Errorf("Ensure = %v, want ErrNoSpace before any body", err)
			}
			if n > allocBound {
				t.Errorf("Ensure allocated %d MiB for a declared %d TiB", n>>20, size>>40)
			}
		})
		t.Run(fmt.Sprintf("%d TiB over --max-download-size", size>>40), func(t *testing.T) {
			c, _ := Open(t.TempDir(), Options{Connections: 4, MaxDownloadSize: 1 << 30})
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			var err error
			n := allocated(func() { _, err = c.Ensure(cctx, url, EnsureOptions{Checksum: pin}) })
			if !errors.Is(err, errdefs.ErrTooLarge) {
				t.Errorf("Ensure = %v, want ErrTooLarge", err)
			}
			if n > allocBound {
				t.Errorf("Ensure allocated %d MiB for a declared %d TiB", n>>20, size>>40)
			}
		})
	}
}

func TestHostileOCIHugeLayer(t *testing.T) {
	addr := testenv.Registry(t)
	data := randBytes(1 << 20)
	repo := plainRepo(t, addr, "vm/huge")
	layer := ocispec.Descriptor{MediaType: "application/vnd.depot.disk.v1", Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := repo.Push(ctx, layer, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{64 << 40, 1 << 50} {
		layer.Size = size
		tag := fmt.Sprintf("t%d", size>>40)
		m, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, "application/vnd.depot.image.v1", oras.PackManifestOptions{Layers: []ocispec.Descriptor{layer}})
		if err != nil {
			t.Fatal(err)
		}
		if err := repo.Tag(ctx, m, tag); err != nil {
			t.Fatal(err)
		}
		for _, max := range []int64{0, 1 << 30} {
			c, _ := Open(t.TempDir(), Options{Connections: 4, MaxDownloadSize: max})
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			var err error
			n := allocated(func() { _, err = c.Ensure(cctx, "oci://"+addr+"/vm/huge:"+tag, EnsureOptions{}) })
			cancel()
			want := errdefs.ErrNoSpace
			if max > 0 {
				want = errdefs.ErrTooLarge
			}
			if !errors.Is(err, want) {
				t.Errorf("layer of %d TiB, max %d: Ensure = %v, want %v", size>>40, max, err, want)
			}
			if n > allocBound {
				t.Errorf("layer of %d TiB: Ensure allocated %d MiB", size>>40, n>>20)
			}
		}
	}
}

func plainRepo(t *testing.T, addr, name string) *remote.Repository {
	t.Helper()
	repo, err := remote.NewRepository(addr + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	return repo
}

func TestHostileOCILayers(t *testing.T) {
	addr := testenv.Registry(t)
	data := randBytes(1 << 20)
	repo := plainRepo(t, addr, "vm/odd")
	for _, tc := range []struct {
		tag, mediaType string
		urls           []string
		want           string
	}{
		{"targz", ocispec.MediaTypeImageLayerGzip, nil, ocispec.MediaTypeImageLayerGzip},
		{"zstd", ocispec.MediaTypeImageLayerZstd, nil, ocispec.MediaTypeImageLayerZstd},
		{"foreign", "application/vnd.depot.disk.v1", []string{"https://elsewhere.example/disk.img"}, "https://elsewhere.example/disk.img"},
	} {
		t.Run(tc.tag, func(t *testing.T) {
			layer := ocispec.Descriptor{MediaType: tc.mediaType, Digest: digest.FromBytes(data), Size: int64(len(data)), URLs: tc.urls}
			if err := repo.Push(ctx, layer, bytes.NewReader(data)); err != nil && !strings.Contains(err.Error(), "exists") {
				t.Fatal(err)
			}
			m, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, "application/vnd.depot.image.v1", oras.PackManifestOptions{Layers: []ocispec.Descriptor{layer}})
			if err != nil {
				t.Fatal(err)
			}
			if err := repo.Tag(ctx, m, tc.tag); err != nil {
				t.Fatal(err)
			}
			c, _ := Open(t.TempDir(), Options{})
			_, err = c.Ensure(ctx, "oci://"+addr+"/vm/odd:"+tc.tag, EnsureOptions{})
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Ensure = %v, want ErrInvalidArgument naming %q", err, tc.want)
			}
		})
	}
}

// TestHostileBodyLonger: a depot head that declares the image's size, then
// answers the blob without a Content-Length and never stops sending. The
// cache stops one byte past the declared size.
func TestHostileBodyLonger(t *testing.T) {
	h := newHead(t)
	data := randBytes(4 << 20)
	h.push(t, "img", data)
	var sent atomic.Int64
	h.hostile.Store(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/api/v1/blob/") {
			return false
		}
		conn, _, _ := w.(http.Hijacker).Hijack()
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
		n, _ := conn.Write(data)
		sent.Add(int64(n))
		junk := make([]byte, 1<<20)
		for sent.Load() < 256<<20 { // the old code read all of it
			n, err := conn.Write(junk)
			sent.Add(int64(n))
			if err != nil {
				return true
			}
		}
		return true
	})
	c := openCache(t, h)
	_, err := c.Ensure(ctx, "img", EnsureOptions{})
	if !errors.Is(err, errdefs.ErrVerification) || !strings.Contains(err.Error(), "past its declared") {
		t.Fatalf("Ensure = %v, want a verification error for a body past its size", err)
	}
	// What the server got out before the cache closed: the socket buffers,
	// a few MiB, never the 256 MiB on offer.
	if s := sent.Load(); s > int64(len(data))+32<<20 {
		t.Errorf("the server sent %d MiB before the cache stopped reading", s>>20)
	}
}

// TestHostileUnsizedBodyBounded: a plain URL without a Content-Length that
// never ends is cut at --max-download-size.
func TestHostileUnsizedBodyBounded(t *testing.T) {
	var sent atomic.Int64
	url := rawServer(t, func(c net.Conn, r *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
		junk := make([]byte, 1<<20)
		for sent.Load() < 256<<20 {
			n, err := c.Write(junk)
			sent.Add(int64(n))
			if err != nil {
				break
			}
		}
		c.Close()
	})
	c, _ := Open(t.TempDir(), Options{MaxDownloadSize: 8 << 20})
	_, err := c.Ensure(ctx, url+"/disk.img", EnsureOptions{Checksum: digest.FromString("x")})
	if !errors.Is(err, errdefs.ErrTooLarge) {
		t.Fatalf("Ensure = %v, want ErrTooLarge", err)
	}
	if s := sent.Load(); s > 40<<20 {
		t.Errorf("the server sent %d MiB past a bound of 8 MiB", s>>20)
	}
}

func TestHostileBareDigestInSHA256SUMS(t *testing.T) {
	data := randBytes(4096)
	other := digest.FromString("another file")
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/a/disk.img", "/b/disk.img":
			w.Write(data)
		case "/a/SHA256SUMS": // a bare line: which file is it about?
			fmt.Fprintln(w, other.Encoded())
		case "/b/disk.img.sha256": // the file's own sidecar may be bare
			fmt.Fprintln(w, digest.FromBytes(data).Encoded())
		default:
			http.NotFound(w, r)
		}
	}))
	defer s.Close()
	c, _ := Open(t.TempDir(), Options{})
	if _, err := c.Ensure(ctx, s.URL+"/a/disk.img", EnsureOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("bare digest in SHA256SUMS: Ensure = %v, want ErrNotFound (no checksum for the file)", err)
	}
	if img, err := c.Ensure(ctx, s.URL+"/b/disk.img", EnsureOptions{}); err != nil || img.Digest != digest.FromBytes(data) {
		t.Errorf("bare digest in disk.img.sha256: %+v %v", img, err)
	}
}

func mustParse(t *testing.T, s string) ref.Ref {
	t.Helper()
	r, err := ref.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

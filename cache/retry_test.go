package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// The retry policy around a transfer (retry.go): what is resumed, what is
// never retried, stalls, against real HTTP servers and real depot heads.

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

// countingServer is a real HTTP server that counts the requests for
// /disk.img and their Range headers.
func countingServer(t *testing.T, handle http.HandlerFunc) (url string, ranges func() []string) {
	var mu sync.Mutex
	var seen []string
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/disk.img" {
			mu.Lock()
			seen = append(seen, r.Header.Get("Range"))
			mu.Unlock()
		}
		handle(w, r)
	}))
	t.Cleanup(s.Close)
	return s.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// cut answers a request for data (from its Range) with n bytes, then drops
// the connection.
func cut(w http.ResponseWriter, r *http.Request, data []byte, n int) {
	var start int
	fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &start)
	w.Header().Set("Accept-Ranges", "bytes")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)-start))
	if start > 0 {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(data)-1, len(data)))
		w.WriteHeader(http.StatusPartialContent)
	}
	w.Write(data[start : start+n])
	conn, _, _ := w.(http.Hijacker).Hijack()
	conn.Close()
}

// TestRetryPolicyAttempts: an interrupted transfer is tried four times in
// all, each attempt resuming by Range where the last one stopped; every
// other failure is final after one attempt.
func TestRetryPolicyAttempts(t *testing.T) {
	data := randBytes(8 << 20)
	d := digest.FromBytes(data)

	t.Run("cut every time", func(t *testing.T) {
		url, ranges := countingServer(t, func(w http.ResponseWriter, r *http.Request) { cut(w, r, data, 1<<20) })
		c, _ := Open(t.TempDir(), Options{})
		if _, err := c.Ensure(ctx, url+"/disk.img", EnsureOptions{Checksum: d}); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("Ensure = %v, want ErrUnavailable", err)
		}
		want := []string{"", "bytes=1048576-", "bytes=2097152-", "bytes=3145728-"}
		if got := ranges(); !slices.Equal(got, want) {
			t.Errorf("requests %q, want %q", got, want)
		}
	})

	for _, tc := range []struct {
		name   string
		opts   Options
		handle http.HandlerFunc
		want   error
		// declare, when set, is the size the source declares on
		// resolving (as a depot head does).
		declare int64
	}{
		{"content is not the digest", Options{}, func(w http.ResponseWriter, r *http.Request) { w.Write(randBytes(len(data))) }, errdefs.ErrVerification, 0},
		{"over --max-download-size", Options{MaxDownloadSize: 1 << 20}, func(w http.ResponseWriter, r *http.Request) { w.Write(data) }, errdefs.ErrTooLarge, 0},
		{"declared size over the free space", Options{}, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.FormatInt(64<<40, 10))
			w.Write(data[:1<<10])
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}, errdefs.ErrNoSpace, 0},
		{"body longer than declared", Options{}, func(w http.ResponseWriter, r *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			defer conn.Close()
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
			conn.Write(data)
			conn.Write(data[:1<<20])
		}, errdefs.ErrVerification, int64(len(data))},
		{"redirect refused", Options{}, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "ftp://example.invalid/disk.img", http.StatusFound)
		}, errdefs.ErrInvalidArgument, 0},
		{"not found", Options{}, func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, errdefs.ErrDigestUnavailable, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, ranges := countingServer(t, tc.handle)
			c, _ := Open(t.TempDir(), tc.opts)
			o := EnsureOptions{Checksum: d}
			if tc.declare > 0 {
				c.opts.Sources = func(r ref.Ref, o EnsureOptions) (source.Source, error) {
					return sized{&source.HTTP{Client: c.opts.HTTPClient, URL: r.URL, Checksum: d}, tc.declare}, nil
				}
			}
			if _, err := c.Ensure(ctx, url+"/disk.img", o); !errors.Is(err, tc.want) {
				t.Fatalf("Ensure = %v, want %v", err, tc.want)
			}
			if n := len(ranges()); n != 1 {
				t.Errorf("%d requests, want 1: this failure is not retried", n)
			}
		})
	}

	t.Run("unsafe content", func(t *testing.T) {
		dir := t.TempDir()
		img := filepath.Join(dir, "disk.img")
		qemuImg(t, "create", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw", img, "64M")
		b := mustRead(t, img)
		url, ranges := countingServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write(b) })
		c, _ := Open(t.TempDir(), Options{})
		if _, err := c.Ensure(ctx, url+"/disk.img", EnsureOptions{Checksum: digest.FromBytes(b)}); !errors.Is(err, errdefs.ErrUnsafeContent) {
			t.Fatalf("Ensure = %v, want ErrUnsafeContent", err)
		}
		if n := len(ranges()); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		url, ranges := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Write(data[:1<<20])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		})
		c, _ := Open(t.TempDir(), Options{})
		// The caller gives up once the first MiB is in.
		o := EnsureOptions{Checksum: d, Progress: func(int64, int64) { cancel() }}
		if _, err := c.Ensure(cctx, url+"/disk.img", o); !errors.Is(err, context.Canceled) {
			t.Fatalf("Ensure = %v, want context.Canceled", err)
		}
		if n := len(ranges()); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
	})

	t.Run("stall on the only origin", func(t *testing.T) {
		var n atomic.Int32
		url := rawServer(t, func(c net.Conn, r *http.Request) {
			n.Add(1)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(data))
			c.Write(data[:1<<20])
			io.Copy(io.Discard, c)
		})
		c, _ := Open(t.TempDir(), Options{HTTPClient: stallClient(300 * time.Millisecond)})
		if _, err := c.Ensure(ctx, url+"/disk.img", EnsureOptions{Checksum: d}); !client.IsStall(err) {
			t.Fatalf("Ensure = %v, want a StallError", err)
		}
		if n.Load() != 1 {
			t.Errorf("%d requests, want 1: waiting out the same silent peer again helps nobody", n.Load())
		}
	})
}

// sized is a source that declares the size of what it resolves to.
type sized struct {
	*source.HTTP
	size int64
}

func (s sized) Resolve(ctx context.Context) (source.Descriptor, error) {
	d, err := s.HTTP.Resolve(ctx)
	d.Size = s.size
	return d, err
}

// twoHeads is a source with a second head to resume on.
type twoHeads struct{ source.Source }

func (twoHeads) Heads() int { return 2 }

// TestRetryable: the classification behind TestRetryPolicyAttempts, for
// errors no real source gives today: a final class wins over
// ErrUnavailable when an error says both.
func TestRetryable(t *testing.T) {
	one := source.Source(&source.HTTP{URL: "http://example.invalid/disk.img"})
	two := twoHeads{one}
	stall := fmt.Errorf("GET: %w", &client.StallError{URL: "http://example.invalid/disk.img", Timeout: time.Second})
	done, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		src  source.Source
		err  error
		want bool
	}{
		{"unavailable", ctx, one, fmt.Errorf("cut: %w", errdefs.ErrUnavailable), true},
		{"stall, one head", ctx, one, stall, false},
		{"stall, two heads", ctx, two, stall, true},
		{"unavailable after the caller gave up", done, two, fmt.Errorf("cut: %w", errdefs.ErrUnavailable), false},
		{"not found", ctx, two, errdefs.ErrNotFound, false},
		{"redirect refused", ctx, two, &client.RedirectError{From: "https://a", To: "http://b", Reason: "downgrade"}, false},
		{"unavailable and no space", ctx, two, fmt.Errorf("%w: %w", errdefs.ErrUnavailable, errdefs.ErrNoSpace), false},
		{"unavailable and verification", ctx, two, fmt.Errorf("%w: %w", errdefs.ErrUnavailable, &errdefs.VerificationError{}), false},
		{"unavailable and unsafe", ctx, two, fmt.Errorf("%w: %w", errdefs.ErrUnavailable, &errdefs.UnsafeContentError{}), false},
		{"unavailable and too large", ctx, two, fmt.Errorf("%w: %w", errdefs.ErrUnavailable, errdefs.ErrTooLarge), false},
	} {
		if got := retryable(tc.ctx, tc.src, tc.err); got != tc.want {
			t.Errorf("%s: retryable = %v, want %v", tc.name, got, tc.want)
		}
	}
}

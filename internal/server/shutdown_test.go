package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/bolt"
)

// Every test of the package ends with no goroutine of its own left.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// gcProbe is the real catalog with a collector that is slow to notice it
// should stop: its Collectable keeps using the catalog a while after its
// context ends (until the test says Run has returned, or 300 ms), and
// counts the calls in progress.
type gcProbe struct {
	catalog.Catalog
	entered     chan struct{}
	runReturned chan struct{}
	once        sync.Once
	busy        atomic.Int32
}

func (p *gcProbe) Collectable(ctx context.Context, cutoff time.Time) ([]catalog.BlobRef, error) {
	p.busy.Add(1)
	defer p.busy.Add(-1)
	p.once.Do(func() { close(p.entered) })
	<-ctx.Done()
	select {
	case <-p.runReturned:
	case <-time.After(300 * time.Millisecond):
	}
	return p.Catalog.Collectable(context.WithoutCancel(ctx), cutoff)
}

// runHead starts s.Run on a loopback listener; stop ends it, and the
// returned channel gives Run's result.
func runHead(t *testing.T, s *Server) (addr string, stop context.CancelFunc, done <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(runCtx, ln, &http.Server{}) }()
	return ln.Addr().String(), stop, runErr
}

func probeHead(t *testing.T, gcInterval time.Duration) (*Server, *gcProbe, catalog.Catalog, string, string) {
	t.Helper()
	dir := t.TempDir()
	bc, err := bolt.Open(filepath.Join(dir, "catalog.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bc.Close() })
	probe := &gcProbe{Catalog: bc, entered: make(chan struct{}), runReturned: make(chan struct{})}
	blobs, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(ctx, probe)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, _ := a.Mint(ctx, "w", auth.RoleWriter, "test", 0)
	s, err := New(Config{Catalog: probe, Blobs: blobs, Auth: a, GCInterval: gcInterval})
	if err != nil {
		t.Fatal(err)
	}
	return s, probe, bc, dir, tok
}

// TestRunJoinsGC: Run returns only after the garbage collection it
// started has stopped using the catalog, so the catalog can be closed
// after it (the old Run returned with the collector still running).
func TestRunJoinsGC(t *testing.T) {
	s, probe, _, _, _ := probeHead(t, time.Hour)
	_, stop, runErr := runHead(t, s)
	<-probe.entered // a collection is running
	stop()
	err := <-runErr
	busy := probe.busy.Load()
	close(probe.runReturned)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if busy != 0 {
		t.Fatalf("Run returned while %d garbage collection call(s) still used the catalog", busy)
	}
}

// TestRunDrainsUploads: when its context ends, Run stops accepting, lets
// an upload in flight finish and store its content, then returns.
func TestRunDrainsUploads(t *testing.T) {
	s, _, bc, dir, tok := probeHead(t, -1)
	addr, stop, runErr := runHead(t, s)
	c, _ := client.New("http://"+addr, tok)
	if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "inflight"}); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /api/v1/image/inflight/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 10\r\n\r\nhello", tok)
	poll(t, "the upload to start", func() bool { files, _ := ingestFilesIn(dir); return files == 1 })
	stop()
	poll(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	io.WriteString(conn, "world")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, _ := io.ReadAll(conn)
	if !strings.HasPrefix(string(reply), "HTTP/1.1 200") {
		t.Fatalf("the upload in flight at shutdown: %.300s", reply)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	img, err := bc.Get(ctx, "inflight")
	if err != nil || img.Content == nil || img.Content.Size != 10 {
		t.Fatalf("the drained upload was not stored: %+v %v", img.Content, err)
	}
}

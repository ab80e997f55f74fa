package server

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/testenv"
)

// TestFullDiskAnswersAtTheFillPoint: the blob store is a real 16 MiB
// tmpfs and a client starts a 512 MiB upload over a raw connection. The
// server must answer 507 once the disk is full, within a few MiB of the
// fill point, instead of reading and hashing the rest of the body first.
func TestFullDiskAnswersAtTheFillPoint(t *testing.T) {
	const fillMiB, declared = 16, 512 << 20
	mnt := t.TempDir()
	testenv.Tmpfs(t, mnt, fillMiB)
	blobs, err := local.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.Blobs = blobs })
	if _, err := e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "big"}); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(e.url)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A small send buffer, so the count below is close to what the server
	// took, not what the kernel queued for it.
	if err := conn.(*net.TCPConn).SetWriteBuffer(128 << 10); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PUT /api/v1/image/big/content HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", u.Host, e.tokens["writer"], declared)

	// The body goes out in 64 KiB pieces until the response arrives or the
	// server stops reading; sent counts what the connection took.
	var sent atomic.Int64
	stop := make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		piece := make([]byte, 64<<10)
		for i := range piece {
			piece[i] = byte(i * 7)
		}
		for sent.Load() < declared {
			select {
			case <-stop:
				return
			default:
			}
			n, err := conn.Write(piece)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	atSend := sent.Load()
	close(stop)
	conn.Close() // unblocks a Write the server no longer reads
	<-wrote
	if err != nil {
		t.Fatalf("no response to the upload (sent %d bytes): %v", atSend, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInsufficientStorage {
		t.Fatalf("status %d after %d MiB, want 507", resp.StatusCode, atSend>>20)
	}
	t.Logf("507 after the client sent %.1f MiB into a %d MiB disk", float64(atSend)/(1<<20), fillMiB)
	if limit := int64(fillMiB+8) << 20; atSend > limit {
		t.Errorf("the client sent %d MiB before the 507; want at most %d MiB (the disk filled at %d MiB)", atSend>>20, limit>>20, fillMiB)
	}
	if ents, _ := os.ReadDir(filepath.Join(mnt, "blobs", "sha256")); len(ents) != 0 {
		t.Errorf("%d blobs visible after ENOSPC", len(ents))
	}
}

package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
)

// TestOpenBlobZstdHostile: a compressed range reads as exactly the bytes
// asked for, or fails with a typed error: a frame that decodes to more or
// fewer bytes, garbage, a frame asking for a 1 GiB window, or another
// Content-Type is ErrCorrupt; a connection cut mid-frame is
// ErrUnavailable; a server without the endpoint is ErrNotFound.
func TestOpenBlobZstdHostile(t *testing.T) {
	plain := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB
	enc, _ := zstd.NewWriter(nil)
	frame := func(b []byte) []byte { return enc.EncodeAll(b, nil) }
	bigWindow := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa0, 0x01, 0x00, 0x00, 'x'} // window 2^30, one raw block
	for _, tc := range []struct {
		name string
		send func(w http.ResponseWriter)
		want error // nil: the range reads back exactly
	}{
		{"exact", func(w http.ResponseWriter) { w.Write(frame(plain)) }, nil},
		{"more", func(w http.ResponseWriter) { w.Write(frame(append(bytes.Clone(plain), 'x'))) }, errdefs.ErrCorrupt},
		{"fewer", func(w http.ResponseWriter) { w.Write(frame(plain[1:])) }, errdefs.ErrCorrupt},
		{"two frames", func(w http.ResponseWriter) { w.Write(append(frame(plain), frame([]byte("y"))...)) }, errdefs.ErrCorrupt},
		{"garbage", func(w http.ResponseWriter) { w.Write(bytes.Repeat([]byte{0xfd}, 4096)) }, errdefs.ErrCorrupt},
		{"window", func(w http.ResponseWriter) { w.Write(bigWindow) }, errdefs.ErrCorrupt},
		{"cut", func(w http.ResponseWriter) {
			f := frame(plain)
			w.Header().Set("Content-Length", "999999")
			w.Write(f[:len(f)/2])
		}, errdefs.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Query().Get("offset") != "100" || r.URL.Query().Get("length") != "262144" {
					http.Error(w, "bad query", http.StatusTeapot)
					return
				}
				w.Header().Set("Content-Type", "application/zstd")
				tc.send(w)
			}))
			defer srv.Close()
			c, err := client.New(srv.URL, "")
			if err != nil {
				t.Fatal(err)
			}
			rc, err := c.OpenBlobZstd(context.Background(), digest.FromString("x"), 100, int64(len(plain)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			switch {
			case tc.want == nil && (err != nil || !bytes.Equal(got, plain)):
				t.Fatalf("read %d bytes, %v; want the range", len(got), err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("read %d bytes, %v; want %v", len(got), err, tc.want)
			case tc.want == nil && rc.WireBytes() == 0:
				t.Fatal("WireBytes counts nothing")
			}
		})
	}
	t.Run("content type", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(plain)
		}))
		defer srv.Close()
		c, _ := client.New(srv.URL, "")
		if _, err := c.OpenBlobZstd(context.Background(), digest.FromString("x"), 0, 10); !errors.Is(err, errdefs.ErrCorrupt) {
			t.Fatalf("%v; want ErrCorrupt", err)
		}
	})
	t.Run("no endpoint", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		defer srv.Close()
		c, _ := client.New(srv.URL, "")
		if _, err := c.OpenBlobZstd(context.Background(), digest.FromString("x"), 0, 10); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%v; want ErrNotFound", err)
		}
	})
}

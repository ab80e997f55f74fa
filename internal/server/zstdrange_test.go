package server

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
)

// compressible returns n bytes that zstd roughly halves: half random,
// half text.
func compressible(t *testing.T, n int) []byte {
	t.Helper()
	b := randData(t, n)
	for i := 0; i < n; i += 8192 {
		copy(b[i:min(i+4096, n)], bytes.Repeat([]byte("depot chunk text "), 256))
	}
	return b
}

func pushData(t *testing.T, e *env, name string, data []byte) digest.Digest {
	t.Helper()
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: name})
	if _, err := e.writer.PushContent(ctx, name, bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(data)
}

// TestZstdRange: GET …/blob/<digest>/zstd?offset&length answers exactly
// those bytes as one zstd frame, smaller than the range for compressible
// content, with immutable caching, on the local store and on MinIO; the
// metrics count what was sent and what compression saved.
func TestZstdRange(t *testing.T) {
	chunkStores(t, func(t *testing.T, e *env) {
		data := compressible(t, 3<<20)
		d := pushData(t, e, "z", data)
		dec, _ := zstd.NewReader(nil)
		defer dec.Close()
		sentBefore, savedBefore := e.metric("depot_content_zstd_bytes_total"), e.metric("depot_content_zstd_saved_bytes_total")
		var sent, plain int
		for _, rg := range [][2]int{{0, 1}, {0, len(data)}, {12345, 1 << 20}, {len(data) - 7, 7}} {
			path := fmt.Sprintf("/api/v1/blob/%s/zstd?offset=%d&length=%d", d, rg[0], rg[1])
			resp, env, body := e.raw("GET", path, "reader", nil, nil)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != api.MediaTypeZstd ||
				!strings.Contains(resp.Header.Get("Cache-Control"), "immutable") || resp.Header.Get("ETag") == "" {
				t.Fatalf("%s: %d %v %+v", path, resp.StatusCode, resp.Header, env)
			}
			got, err := dec.DecodeAll(body, nil)
			if err != nil || !bytes.Equal(got, data[rg[0]:rg[0]+rg[1]]) {
				t.Fatalf("%s: %d bytes decode to %d bytes (%v), not the range", path, len(body), len(got), err)
			}
			if rg[1] >= 1<<20 && len(body) > rg[1]*3/4 {
				t.Errorf("%s: %d bytes for %d compressible ones", path, len(body), rg[1])
			}
			sent += len(body)
			plain += rg[1]
		}
		// A HEAD answers the headers alone.
		if resp, _, body := e.raw("HEAD", fmt.Sprintf("/api/v1/blob/%s/zstd?offset=0&length=10", d), "reader", nil, nil); resp.StatusCode != http.StatusOK || len(body) != 0 {
			t.Fatalf("HEAD: %d, %d bytes", resp.StatusCode, len(body))
		}
		e.waitHandled("GET /api/v1/blob/{digest}/zstd", 5)
		if s, sv := e.metric("depot_content_zstd_bytes_total")-sentBefore, e.metric("depot_content_zstd_saved_bytes_total")-savedBefore; s != float64(sent) || sv < float64(plain-sent) {
			t.Errorf("metrics: sent %v saved %v; the answers had %d bytes for %d", s, sv, sent, plain)
		}
	})
}

// TestZstdRangeRefuses: the query is parsed strictly (decimal, no sign, no
// leading zero, offset and length once each and nothing else), a range
// must lie within the blob and be at most api.MaxZstdRange, readers only,
// and a head that redirects downloads serves none.
func TestZstdRangeRefuses(t *testing.T) {
	e := newEnv(t, nil)
	data := randData(t, 1<<20)
	d := pushData(t, e, "z", data)
	for _, q := range []string{
		"offset=-1&length=5", "offset=%2B1&length=5", "offset=01&length=5", "offset=0&length=0",
		fmt.Sprintf("offset=0&length=%d", api.MaxZstdRange+1), "offset=0", "length=5",
		"offset=0&length=5&x=1", "offset=0&offset=1&length=5", "offset=1e3&length=5",
		fmt.Sprintf("offset=%d&length=1", len(data)), fmt.Sprintf("offset=%d&length=2", len(data)-1),
		"offset=99999999999999999999&length=1", "offset=9223372036854775807&length=1", "offset=0x10&length=5",
	} {
		resp, env, _ := e.raw("GET", "/api/v1/blob/"+d.String()+"/zstd?"+q, "reader", nil, nil)
		if resp.StatusCode != http.StatusBadRequest || env.Code != "invalid_argument" {
			t.Errorf("?%s: %d %+v; want 400 invalid_argument", q, resp.StatusCode, env)
		}
	}
	if resp, _, _ := e.raw("GET", "/api/v1/blob/"+digest.FromString("x").String()+"/zstd?offset=0&length=1", "reader", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown blob: %d", resp.StatusCode)
	}
	if resp, _, _ := e.raw("GET", "/api/v1/blob/"+d.String()+"/zstd?offset=0&length=1", "", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous: %d", resp.StatusCode)
	}
	r := newEnv(t, func(c *Config) { c.Blobs = minioStore(t); c.RedirectContent = time.Minute })
	d = pushData(t, r, "z", data)
	if resp, env, _ := r.raw("GET", "/api/v1/blob/"+d.String()+"/zstd?offset=0&length=1", "reader", nil, nil); resp.StatusCode != http.StatusNotFound || !strings.Contains(env.Error, "redirects") {
		t.Errorf("with RedirectContent: %d %+v; want 404 saying why", resp.StatusCode, env)
	}
}

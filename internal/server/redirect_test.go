package server

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob/s3"
	"github.com/depot-images/depot/internal/testenv"
)

func TestRedirectNeedsPresigner(t *testing.T) {
	e := newEnv(t, nil)
	_, err := New(Config{Catalog: e.srv.cfg.Catalog, Blobs: e.blobs, Auth: e.srv.cfg.Auth, RedirectContent: time.Minute})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("New with redirect on a local store = %v, want ErrInvalidArgument", err)
	}
}

// TestRedirectContent: with RedirectContent, a content or blob GET answers
// 307 to a presigned MinIO URL that serves the right bytes (with Range) and
// no depot token; the redirect names digest, ETag and format; If-None-Match
// and HEAD are answered by the head itself.
func TestRedirectContent(t *testing.T) {
	m := testenv.MinIO(t)
	st, err := s3.Open(ctx, s3.Config{Endpoint: m.Endpoint, Bucket: "depot", CreateBucket: true,
		Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.Blobs = st; c.RedirectContent = time.Minute })
	data := qcow2Image(t)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "r"})
	if _, err := e.writer.PushContent(ctx, "r", bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(data)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path string, hdr map[string]string) *http.Response {
		req, _ := http.NewRequest(method, e.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+e.tokens["reader"])
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for _, path := range []string{"/api/v1/image/r/content", "/api/v1/blob/" + d.String()} {
		resp := do("GET", path, nil)
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusTemporaryRedirect || loc == "" {
			t.Fatalf("GET %s: %s, Location %q; want 307 to the object store", path, resp.Status, loc)
		}
		if resp.Header.Get(api.HeaderDigest) != d.String() || resp.Header.Get("ETag") != api.ETag(d) || resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: redirect headers %v", path, resp.Header)
		}
		// The presigned URL works with no depot credentials, and ranged.
		req, _ := http.NewRequest("GET", loc, nil)
		req.Header.Set("Range", "bytes=10-99")
		r2, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r2.Body)
		r2.Body.Close()
		if r2.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[10:100]) {
			t.Fatalf("presigned ranged GET: %s, %d bytes", r2.Status, len(body))
		}
	}
	if resp := do("GET", "/api/v1/image/r/content", nil); resp.Header.Get(api.HeaderFormat) != "qcow2" {
		t.Errorf("redirect format header = %q, want qcow2", resp.Header.Get(api.HeaderFormat))
	}
	if resp := do("GET", "/api/v1/image/r/content", map[string]string{"If-None-Match": api.ETag(d)}); resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match on a redirecting head: %s, want 304", resp.Status)
	}
	if resp := do("HEAD", "/api/v1/image/r/content", nil); resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(data)) {
		t.Errorf("HEAD: %s, length %d; want 200 and %d", resp.Status, resp.ContentLength, len(data))
	}
	if resp := do("GET", "/api/v1/blob/"+digest.FromString("absent").String(), nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET of an absent blob: %s, want 404", resp.Status)
	}
	// The depot client follows the redirect, drops its token for the other
	// origin, and still learns the digest from the redirect.
	c, err := e.reader.OpenContent(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if !bytes.Equal(got, data) || c.Digest != d || c.Format != "qcow2" {
		t.Fatalf("client through redirect: %d bytes, digest %s, format %q", len(got), c.Digest, c.Format)
	}
}

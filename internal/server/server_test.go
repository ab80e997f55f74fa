package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/catalog/bolt"

	"github.com/depot-images/depot/internal/testenv"
)

type env struct {
	t                           *testing.T
	srv                         *Server
	url                         string
	dir                         string
	blobs                       *local.Store
	reader, writer, admin, anon *client.Client
	tokens                      map[string]string // role → token
}

func newEnv(t *testing.T, tweak func(*Config)) *env {
	t.Helper()
	dir := t.TempDir()
	cat, err := bolt.Open(filepath.Join(dir, "catalog.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Close() })
	blobs, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(context.Background(), cat)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Catalog: cat, Blobs: blobs, Auth: a, GCInterval: -1}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	e := &env{t: t, srv: s, url: hs.URL, dir: dir, blobs: blobs, tokens: map[string]string{}}
	for _, r := range []auth.Role{auth.RoleReader, auth.RoleWriter, auth.RoleAdmin} {
		tok, _, err := a.Mint(context.Background(), r.String()+"-user", r, "test", 0)
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[r.String()] = tok
	}
	mk := func(tok string) *client.Client {
		c, err := client.New(hs.URL, tok)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	e.reader, e.writer, e.admin, e.anon = mk(e.tokens["reader"]), mk(e.tokens["writer"]), mk(e.tokens["admin"]), mk("")
	return e
}

// raw does one HTTP request and decodes the envelope (when JSON).
func (e *env) raw(method, path, role string, body []byte, hdr map[string]string) (*http.Response, api.Envelope, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if tok := e.tokens[role]; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var env api.Envelope
	if method != "HEAD" && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(data, &env); err != nil {
			e.t.Fatalf("%s %s: response is not an envelope: %q", method, path, data)
		}
	}
	return resp, env, data
}

// waitHandled polls the server's request counter until route has answered
// n requests: the handler has returned, whatever it did.
func (e *env) waitHandled(route string, n int) {
	e.t.Helper()
	prefix := `depot_http_requests_total{route="` + route + `"`
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		resp, err := http.Get(e.url + "/metrics")
		if err != nil {
			e.t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		total := 0.0
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, prefix) {
				f, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				total += f
			}
		}
		if total >= float64(n) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s answered %v requests, want %d", route, total, n)
		}
	}
}

func (e *env) blobCount() int {
	n := 0
	ents, _ := os.ReadDir(filepath.Join(e.dir, "blobs", "sha256"))
	for range ents {
		n++
	}
	return n
}

func randData(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

var ctx = context.Background()

func qcow2Image(t *testing.T) []byte {
	t.Helper()
	testenv.Need(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "x.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", p, "1G").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	b, _ := os.ReadFile(p)
	return b
}

// TestSeed004Flow follows the curl examples of seed 004.
func TestSeed004Flow(t *testing.T) {
	e := newEnv(t, nil)
	resp, env, _ := e.raw("POST", "/api/v1/images", "writer", []byte(`{"name":"NewImage"}`), nil)
	var uid string
	json.Unmarshal(env.Data, &uid)
	if resp.StatusCode != 201 || !env.Success || len(uid) != 32 {
		t.Fatalf("create: %d %+v", resp.StatusCode, env)
	}
	resp, env, _ = e.raw("GET", "/api/v1/image/NewImage", "reader", nil, nil)
	var img api.Image
	json.Unmarshal(env.Data, &img)
	if resp.StatusCode != 200 || img.UID != uid || img.Name != "NewImage" || img.Content != nil || img.Parent != nil {
		t.Fatalf("get by name: %d %s", resp.StatusCode, env.Data)
	}
	data := qcow2Image(t)
	resp, env, _ = e.raw("PUT", "/api/v1/image/NewImage/content", "writer", data, map[string]string{api.HeaderDigest: digest.FromBytes(data).String()})
	if resp.StatusCode != 200 {
		t.Fatalf("put: %d %+v", resp.StatusCode, env)
	}
	for _, ref := range []string{"NewImage", uid} {
		_, env, _ = e.raw("GET", "/api/v1/image/"+ref+"/content/info", "reader", nil, nil)
		var info api.ContentInfo
		json.Unmarshal(env.Data, &info)
		if info.Chksum != digest.FromBytes(data).String() || info.Refcnt != 1 || info.Fmt != "qcow2" || info.Size != int64(len(data)) || info.MTime == 0 {
			t.Fatalf("info via %s = %s", ref, env.Data)
		}
	}
	_, env, _ = e.raw("GET", "/api/v1/image/NewImage/content/stat", "reader", nil, nil)
	var st api.ContentStat
	json.Unmarshal(env.Data, &st)
	if st.Size != int64(len(data)) || st.MTime == 0 {
		t.Fatalf("stat = %s", env.Data)
	}
	resp, _, body := e.raw("GET", "/api/v1/image/"+uid+"/content", "reader", nil, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("content GET: %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp.Header.Get("ETag") != api.ETag(digest.FromBytes(data)) || resp.Header.Get(api.HeaderDigest) != digest.FromBytes(data).String() ||
		resp.Header.Get("Last-Modified") == "" {
		t.Errorf("content headers: %v", resp.Header)
	}
}

func TestRangeConditionalHead(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "r"})
	data := randData(t, 100000)
	if _, err := e.writer.PushContent(ctx, "r", bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	resp, _, body := e.raw("GET", "/api/v1/image/r/content", "reader", nil, map[string]string{"Range": "bytes=1000-1999"})
	if resp.StatusCode != 206 || !bytes.Equal(body, data[1000:2000]) {
		t.Fatalf("range: %d %d bytes", resp.StatusCode, len(body))
	}
	etag := api.ETag(digest.FromBytes(data))
	resp, _, body = e.raw("GET", "/api/v1/image/r/content", "reader", nil, map[string]string{"If-None-Match": etag})
	if resp.StatusCode != 304 || len(body) != 0 {
		t.Fatalf("If-None-Match: %d", resp.StatusCode)
	}
	resp, _, body = e.raw("HEAD", "/api/v1/image/r/content", "reader", nil, nil)
	if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != int64(len(data)) || resp.Header.Get("ETag") != etag {
		t.Fatalf("HEAD: %d len=%d etag=%s", resp.StatusCode, resp.ContentLength, resp.Header.Get("ETag"))
	}
	// The blob URL serves the same bytes, immutable.
	resp, _, body = e.raw("GET", "/api/v1/blob/"+digest.FromBytes(data).String(), "reader", nil, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") {
		t.Fatalf("blob GET: %d %q", resp.StatusCode, resp.Header.Get("Cache-Control"))
	}
}

func TestIfMatch(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "m"})
	a, b := []byte("version a"), []byte("version b")
	if _, err := e.writer.PushContent(ctx, "m", bytes.NewReader(a), -1, client.PushOptions{IfMatch: digest.FromBytes(a)}); !errors.Is(err, errdefs.ErrPrecondition) {
		t.Fatalf("If-Match on empty image = %v, want ErrPrecondition", err)
	}
	e.writer.PushContent(ctx, "m", bytes.NewReader(a), -1, client.PushOptions{})
	_, err := e.writer.PushContent(ctx, "m", bytes.NewReader(b), -1, client.PushOptions{IfMatch: digest.FromString("stale")})
	var pe *errdefs.PreconditionError
	if !errors.As(err, &pe) || pe.Have != digest.FromBytes(a) {
		t.Fatalf("stale base = %v, want PreconditionError naming %s", err, digest.FromBytes(a))
	}
	info, err := e.writer.PushContent(ctx, "m", bytes.NewReader(b), -1, client.PushOptions{IfMatch: digest.FromBytes(a)})
	if err != nil || info.Chksum != digest.FromBytes(b).String() {
		t.Fatalf("matching base: %+v %v", info, err)
	}
}

func TestTrailerDigestVerifiesEndToEnd(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "t"})
	data := randData(t, 3<<20)
	info, err := e.writer.PushContent(ctx, "t", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
	if err != nil || info.Chksum != digest.FromBytes(data).String() || info.Size != int64(len(data)) {
		t.Fatalf("push: %+v %v", info, err)
	}
	// A wrong trailer digest stores nothing.
	before := e.blobCount()
	req, _ := http.NewRequest("PUT", e.url+"/api/v1/image/t/content", io.MultiReader(bytes.NewReader([]byte("other"))))
	req.Header.Set("Authorization", "Bearer "+e.tokens["writer"])
	req.ContentLength = -1
	req.Trailer = http.Header{api.HeaderDigest: {digest.FromString("not it").String()}}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || e.blobCount() != before {
		t.Fatalf("bad trailer: status %d, blobs %d → %d", resp.StatusCode, before, e.blobCount())
	}
	img, _ := e.reader.GetImage(ctx, "t")
	if img.Content.Chksum != digest.FromBytes(data).String() || len(img.History) != 1 {
		t.Fatalf("image changed by refused upload: %+v", img.Content)
	}
}

func TestFrozen(t *testing.T) {
	e := newEnv(t, nil)
	frozen := true
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "f"})
	e.writer.PushContent(ctx, "f", strings.NewReader("x"), 1, client.PushOptions{})
	e.writer.UpdateImage(ctx, "f", api.PatchImageRequest{Frozen: &frozen})
	if _, err := e.writer.PushContent(ctx, "f", strings.NewReader("y"), 1, client.PushOptions{}); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "frozen=false") {
		t.Errorf("push to frozen = %v", err)
	}
	if err := e.admin.DeleteContent(ctx, "f"); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("content delete of frozen = %v", err)
	}
	if err := e.admin.DeleteImage(ctx, "f"); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("delete of frozen = %v", err)
	}
	frozen = false
	if _, err := e.writer.UpdateImage(ctx, "f", api.PatchImageRequest{Frozen: &frozen}); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.DeleteImage(ctx, "f"); err != nil {
		t.Errorf("delete after unfreeze = %v", err)
	}
}

func TestCloneSharesBlob(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "src"})
	e.writer.PushContent(ctx, "src", strings.NewReader("shared bytes"), -1, client.PushOptions{})
	n := e.blobCount()
	uid, err := e.writer.CloneImage(ctx, "src", api.CloneRequest{Name: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := e.reader.ContentInfo(ctx, uid)
	if info.Refcnt != 2 || e.blobCount() != n {
		t.Fatalf("clone: refcnt %d, blobs %d → %d", info.Refcnt, n, e.blobCount())
	}
	img, _ := e.reader.GetImage(ctx, "copy")
	src, _ := e.reader.GetImage(ctx, "src")
	if img.Parent == nil || *img.Parent != src.UID {
		t.Errorf("clone parent = %v, want %s", img.Parent, src.UID)
	}
	if err := e.admin.DeleteImage(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if info, _ := e.reader.ContentInfo(ctx, "copy"); info.Refcnt != 1 {
		t.Errorf("refcnt after deleting the source = %d, want 1", info.Refcnt)
	}
}

func TestRetentionAndGC(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GCGrace = time.Hour })
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "g"})
	var ds []digest.Digest
	for i := range 5 {
		v := []byte(strings.Repeat("rev", i+1))
		e.writer.PushContent(ctx, "g", bytes.NewReader(v), -1, client.PushOptions{Message: "rev"})
		ds = append(ds, digest.FromBytes(v))
	}
	revs, _ := e.reader.History(ctx, "g")
	if len(revs) != 3 || revs[0].Chksum != ds[4].String() || !revs[0].Current || revs[2].Chksum != ds[2].String() || revs[0].Message != "rev" {
		t.Fatalf("history = %+v", revs)
	}
	// Within the grace period nothing is deleted, and old revisions are
	// still fetchable by digest.
	res, err := e.srv.CollectGarbage(ctx)
	if err != nil || res.Deleted != 0 {
		t.Fatalf("GC in grace: %+v %v", res, err)
	}
	if r, _, _ := e.raw("GET", "/api/v1/blob/"+ds[0].String(), "reader", nil, nil); r.StatusCode != 200 {
		t.Fatalf("trimmed revision within grace: %d", r.StatusCode)
	}
	e.srv.cfg.GCGrace = -time.Second // everything unreferenced is past grace
	res, err = e.srv.CollectGarbage(ctx)
	if err != nil || res.Deleted != 2 {
		t.Fatalf("GC after grace: %+v %v", res, err)
	}
	if r, _, _ := e.raw("GET", "/api/v1/blob/"+ds[0].String(), "reader", nil, nil); r.StatusCode != 404 {
		t.Errorf("collected blob still served: %d", r.StatusCode)
	}
	for _, d := range ds[2:] {
		if r, _, _ := e.raw("GET", "/api/v1/blob/"+d.String(), "reader", nil, nil); r.StatusCode != 200 {
			t.Errorf("retained revision %s: %d", d, r.StatusCode)
		}
	}
	// Deleting the image releases the rest.
	e.admin.DeleteImage(ctx, "g")
	res, _ = e.srv.CollectGarbage(ctx)
	if res.Deleted != 3 || e.blobCount() != 0 {
		t.Fatalf("GC after delete: %+v, %d blobs left", res, e.blobCount())
	}
}

// TestUploadWaitsForAClaimedBlob is the race between a collector on another
// head and an upload of the very bytes it is collecting. The collector has
// claimed the blob (the record says so; the bytes are still there). An
// upload of the same bytes must not keep those bytes and reference them: it
// waits until the collector has deleted them and forgotten the record, then
// commits them afresh. Without a collector to finish, it gives up with 503.
func TestUploadWaitsForAClaimedBlob(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GCGrace = time.Hour })
	cat := e.srv.cfg.Catalog
	data := []byte("the same bytes twice")
	d := digest.FromBytes(data)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "old"})
	if _, err := e.writer.PushContent(ctx, "old", bytes.NewReader(data), -1, client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	e.admin.DeleteImage(ctx, "old")
	// Another head's collector, past the grace period, claims the blob.
	later := time.Now().Add(2 * time.Hour)
	if err := cat.Claim(ctx, d, later, later); err != nil {
		t.Fatal(err)
	}
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "new"})
	done := make(chan error, 1)
	go func() {
		_, err := e.writer.PushContent(ctx, "new", bytes.NewReader(data), -1, client.PushOptions{})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the upload finished while the blob was claimed: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	// The collector deletes the bytes and forgets the record.
	if err := e.blobs.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := cat.Forget(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("upload after the collection: %v", err)
	}
	if got := readAll(t, e.reader, "new"); !bytes.Equal(got, data) {
		t.Fatalf("content of new = %q: the upload kept bytes the collector deleted", got)
	}
	if info, _ := e.reader.ContentInfo(ctx, "new"); info.Refcnt != 1 {
		t.Errorf("refcnt = %d, want 1", info.Refcnt)
	}

	// A claim nobody finishes: the upload gives up, stores nothing new.
	e.srv.claimWait = 200 * time.Millisecond
	other := []byte("claimed forever")
	od := digest.FromBytes(other)
	if err := cat.Touch(ctx, od, time.Now().Add(-3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := cat.Claim(ctx, od, time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	_, err := e.writer.PushContent(ctx, "new", bytes.NewReader(other), -1, client.PushOptions{})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "garbage-collected") {
		t.Fatalf("upload of a blob claimed forever = %v, want 503 naming the collection", err)
	}
	if _, err := e.blobs.Stat(ctx, od); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the refused upload left a blob: %v", err)
	}
	if got := readAll(t, e.reader, "new"); !bytes.Equal(got, data) {
		t.Error("the refused upload changed the content")
	}
}

// TestGCFinishesAbandonedClaims: a collector that died between its claim
// and Forget leaves a claim. A fresh claim is left to its owner; one older
// than the grace period is finished: bytes deleted, record forgotten.
func TestGCFinishesAbandonedClaims(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GCGrace = time.Hour })
	cat := e.srv.cfg.Catalog
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "x"})
	info, err := e.writer.PushContent(ctx, "x", strings.NewReader("abandoned"), -1, client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := digest.Digest(info.Chksum)
	e.admin.DeleteImage(ctx, "x")
	now := time.Now()
	// Unreferenced for 3 h (past the 1 h grace), and claimed just now.
	cat.Touch(ctx, d, now.Add(-3*time.Hour))
	if err := cat.Claim(ctx, d, now.Add(-time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if res, err := e.srv.CollectGarbage(ctx); err != nil || res.Deleted != 0 || e.blobCount() != 1 {
		t.Fatalf("pass with a fresh claim: %+v, %v, %d blobs", res, err, e.blobCount())
	}
	e.srv.cfg.GCGrace = 0 // now the claim is older than the grace period
	if res, err := e.srv.CollectGarbage(ctx); err != nil || res.Deleted != 1 || e.blobCount() != 0 {
		t.Fatalf("pass with an abandoned claim: %+v, %v, %d blobs", res, err, e.blobCount())
	}
	if _, err := cat.Ref(ctx, d); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("record after the finished collection: %v", err)
	}
}

func TestGCAdoptsUnknownBlobs(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GCGrace = time.Hour })
	// A blob committed with no catalog record (a crash between commit and
	// the catalog update) is adopted first, not deleted at once.
	w, _ := e.blobs.Writer(ctx, blob.WriteOptions{})
	w.Write([]byte("orphan"))
	w.Commit(ctx, -1, "")
	res, _ := e.srv.CollectGarbage(ctx)
	if res.Adopted != 1 || res.Deleted != 0 || e.blobCount() != 1 {
		t.Fatalf("first pass: %+v", res)
	}
	e.srv.cfg.GCGrace = -time.Second
	res, _ = e.srv.CollectGarbage(ctx)
	if res.Deleted != 1 || e.blobCount() != 0 {
		t.Fatalf("second pass: %+v", res)
	}
}

func TestListPagingAndPatch(t *testing.T) {
	e := newEnv(t, nil)
	for _, n := range []string{"c", "a", "b"} {
		if _, err := e.writer.CreateImage(ctx, api.CreateImageRequest{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	resp, env, _ := e.raw("GET", "/api/v1/images?limit=2", "reader", nil, nil)
	var page []api.Image
	json.Unmarshal(env.Data, &page)
	if resp.StatusCode != 200 || len(page) != 2 || page[0].Name != "a" || env.Next != "b" {
		t.Fatalf("page 1: %s next=%q", env.Data, env.Next)
	}
	all, err := e.reader.ListImages(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("ListImages: %d %v", len(all), err)
	}
	name, desc, parent := "renamed", "hello", "a"
	img, err := e.writer.UpdateImage(ctx, "c", api.PatchImageRequest{Name: &name, Description: &desc, Parent: &parent})
	if err != nil || img.Name != "renamed" || img.Description != "hello" || img.Parent == nil || *img.Parent != all[0].UID || img.LastModifiedBy != "writer-user" {
		t.Fatalf("patch: %+v %v", img, err)
	}
	self := "renamed"
	if _, err := e.writer.UpdateImage(ctx, "renamed", api.PatchImageRequest{Parent: &self}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("self parent = %v", err)
	}
}

// TestBadInputs is R5: every bad input gets a 4xx, a clear message, and
// nothing is stored.
func TestBadInputs(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "ok"})
	good := []byte("good content")
	e.writer.PushContent(ctx, "ok", bytes.NewReader(good), -1, client.PushOptions{})
	big := `{"name":"x","description":"` + strings.Repeat("a", 70<<10) + `"}`
	cases := []struct {
		name, method, path string
		body               string
		hdr                map[string]string
		status             int
		msg                string
	}{
		{"traversal name", "POST", "/api/v1/images", `{"name":"../../etc"}`, nil, 400, "image name"},
		{"slash name", "POST", "/api/v1/images", `{"name":"a/b"}`, nil, 400, "image name"},
		{"uid-shaped name", "POST", "/api/v1/images", `{"name":"0123456789abcdef0123456789abcdef"}`, nil, 400, "looks like a UID"},
		{"missing name", "POST", "/api/v1/images", `{"description":"x"}`, nil, 400, "name"},
		{"bad json", "POST", "/api/v1/images", `{"name":`, nil, 400, "JSON"},
		{"trailing data", "POST", "/api/v1/images", `{"name":"a"} {"name":"b"}`, nil, 400, "after the JSON"},
		{"empty body", "POST", "/api/v1/images", ``, nil, 400, "empty"},
		{"oversized json", "POST", "/api/v1/images", big, nil, 413, "over"},
		{"unknown field", "POST", "/api/v1/images", `{"name":"x","color":"red"}`, nil, 400, "unknown field"},
		{"wrong field type", "PATCH", "/api/v1/image/ok", `{"frozen":"yes"}`, nil, 400, "frozen"},
		{"wrong field type name", "POST", "/api/v1/images", `{"name":42}`, nil, 400, "name"},
		{"missing parent", "POST", "/api/v1/images", `{"name":"x","parent":"ghost"}`, nil, 400, "parent"},
		{"traversal ref", "GET", "/api/v1/image/..%2F..%2Fetc/content", ``, nil, 400, "neither a UID"},
		{"wrong declared digest", "PUT", "/api/v1/image/ok/content", "new content", map[string]string{api.HeaderDigest: digest.FromString("x").String()}, 422, "verification failed"},
		{"malformed digest", "PUT", "/api/v1/image/ok/content", "new content", map[string]string{api.HeaderDigest: "sha256:zz"}, 400, "digest"},
		{"md5 digest", "PUT", "/api/v1/image/ok/content", "new content", map[string]string{api.HeaderDigest: "md5:d41d8cd98f00b204e9800998ecf8427e"}, 400, "sha256"},
		{"bad If-Match", "PUT", "/api/v1/image/ok/content", "new content", map[string]string{"If-Match": "nope"}, 400, "If-Match"},
		{"bad size hint", "PUT", "/api/v1/image/ok/content", "new content", map[string]string{"X-Depot-Size": "-5"}, 400, "X-Depot-Size"},
		{"bad Range", "GET", "/api/v1/image/ok/content", ``, map[string]string{"Range": "bytes=99999-100000"}, 416, ""},
		{"bad blob digest", "GET", "/api/v1/blob/sha256:xyz", ``, nil, 400, "digest"},
		{"unknown blob", "GET", "/api/v1/blob/" + digest.FromString("nope").String(), ``, nil, 404, "not found"},
		{"bad limit", "GET", "/api/v1/images?limit=0", ``, nil, 400, "limit"},
		{"unknown endpoint", "GET", "/api/v1/nothing", ``, nil, 404, "no such endpoint"},
		{"bad role", "POST", "/api/v1/tokens", `{"subject":"x","role":"root"}`, nil, 400, "role"},
		{"bad ttl", "POST", "/api/v1/tokens", `{"subject":"x","role":"reader","ttl":"forever"}`, nil, 400, "ttl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			beforeBlobs := e.blobCount()
			beforeImgs, _ := e.reader.ListImages(ctx)
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			resp, env, _ := e.raw(tc.method, tc.path, "admin", body, tc.hdr)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, env.Error, tc.status)
			}
			if tc.msg != "" && (env.Success || !strings.Contains(env.Error, tc.msg)) {
				t.Errorf("error %q does not mention %q", env.Error, tc.msg)
			}
			if e.blobCount() != beforeBlobs {
				t.Errorf("blobs %d → %d", beforeBlobs, e.blobCount())
			}
			after, _ := e.reader.ListImages(ctx)
			if len(after) != len(beforeImgs) {
				t.Errorf("images %d → %d", len(beforeImgs), len(after))
			}
			img, _ := e.reader.GetImage(ctx, "ok")
			if img.Content.Chksum != digest.FromBytes(good).String() || len(img.History) != 1 {
				t.Errorf("content of ok changed: %+v", img.Content)
			}
		})
	}
}

func TestTruncatedUploadStoresNothing(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "tr"})
	before := e.blobCount()
	// Declare 1 MiB, send half, then close the connection.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", e.url+"/api/v1/image/tr/content", pr)
	req.ContentLength = 1 << 20
	req.Header.Set("Authorization", "Bearer "+e.tokens["writer"])
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	pw.Write(make([]byte, 512<<10))
	pw.CloseWithError(errors.New("client died"))
	<-done
	e.waitHandled(`PUT /api/v1/image/{ref}/content`, 1) // the handler has seen the cut and returned
	if e.blobCount() != before {
		t.Fatalf("truncated upload committed a blob")
	}
	img, _ := e.reader.GetImage(ctx, "tr")
	if img.Content != nil || len(img.History) != 0 {
		t.Fatalf("truncated upload set content: %+v", img.Content)
	}
	ents, _ := os.ReadDir(filepath.Join(e.dir, "ingest"))
	if len(ents) != 0 {
		t.Errorf("ingest/ keeps %d partial files", len(ents))
	}
}

// TestAuthMatrix is R6: anon/reader/writer/admin × every endpoint.
func TestAuthMatrix(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "base"})
	e.writer.PushContent(ctx, "base", strings.NewReader("content"), -1, client.PushOptions{})
	d := digest.FromString("content").String()
	n := 0
	fresh := func() string { // a new image per mutating request, so each runs against the same state
		n++
		name := "img" + strings.Repeat("x", n)
		e.writer.CreateImage(ctx, api.CreateImageRequest{Name: name})
		e.writer.PushContent(ctx, name, strings.NewReader("content"), -1, client.PushOptions{})
		return name
	}
	type ep struct {
		method, path, body string
		need               auth.Role
	}
	eps := []func() ep{
		func() ep {
			return ep{"POST", "/api/v1/images", `{"name":"new` + strings.Repeat("y", n) + `"}`, auth.RoleWriter}
		},
		func() ep { return ep{"GET", "/api/v1/images", ``, auth.RoleReader} },
		func() ep { return ep{"GET", "/api/v1/image/base", ``, auth.RoleReader} },
		func() ep { return ep{"PATCH", "/api/v1/image/" + fresh(), `{"description":"d"}`, auth.RoleWriter} },
		func() ep { return ep{"DELETE", "/api/v1/image/" + fresh(), ``, auth.RoleAdmin} },
		func() ep {
			return ep{"POST", "/api/v1/image/base/clone", `{"name":"c` + strings.Repeat("z", n) + `"}`, auth.RoleWriter}
		},
		func() ep { return ep{"GET", "/api/v1/image/base/history", ``, auth.RoleReader} },
		func() ep { return ep{"GET", "/api/v1/image/base/content", ``, auth.RoleReader} },
		func() ep { return ep{"HEAD", "/api/v1/image/base/content", ``, auth.RoleReader} },
		func() ep { return ep{"PUT", "/api/v1/image/" + fresh() + "/content", `new`, auth.RoleWriter} },
		func() ep { return ep{"DELETE", "/api/v1/image/" + fresh() + "/content", ``, auth.RoleAdmin} },
		func() ep { return ep{"GET", "/api/v1/image/base/content/stat", ``, auth.RoleReader} },
		func() ep { return ep{"GET", "/api/v1/image/base/content/info", ``, auth.RoleReader} },
		func() ep { return ep{"GET", "/api/v1/blob/" + d, ``, auth.RoleReader} },
		func() ep { return ep{"HEAD", "/api/v1/blob/" + d, ``, auth.RoleReader} },
		func() ep { return ep{"POST", "/api/v1/tokens", `{"subject":"s","role":"reader"}`, auth.RoleAdmin} },
		func() ep { return ep{"GET", "/api/v1/tokens", ``, auth.RoleAdmin} },
		func() ep { return ep{"DELETE", "/api/v1/tokens/nonexistent", ``, auth.RoleAdmin} },
		func() ep { return ep{"GET", "/api/v1/server", ``, auth.RoleReader} },
		func() ep { return ep{"GET", "/healthz", ``, auth.RoleNone} },
		func() ep { return ep{"GET", "/metrics", ``, auth.RoleNone} },
	}
	roles := []struct {
		name string
		role auth.Role
	}{{"", auth.RoleNone}, {"reader", auth.RoleReader}, {"writer", auth.RoleWriter}, {"admin", auth.RoleAdmin}}
	for _, mk := range eps {
		for _, r := range roles {
			x := mk()
			var body []byte
			if x.body != "" {
				body = []byte(x.body)
			}
			resp, env, _ := e.raw(x.method, x.path, r.name, body, nil)
			who := r.name
			if who == "" {
				who = "anon"
			}
			switch {
			case r.role >= x.need:
				// Allowed: anything but 401/403 (the nonexistent token is a 404).
				if resp.StatusCode == 401 || resp.StatusCode == 403 {
					t.Errorf("%s %s as %s: %d %s, want allowed", x.method, x.path, who, resp.StatusCode, env.Error)
				}
			case r.role == auth.RoleNone:
				if resp.StatusCode != 401 || (x.method != "HEAD" && env.Code != "unauthorized") || resp.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("%s %s as anon: %d %+v, want 401 envelope", x.method, x.path, resp.StatusCode, env)
				}
			default:
				if resp.StatusCode != 403 || (x.method != "HEAD" && env.Code != "forbidden") {
					t.Errorf("%s %s as %s: %d, want 403", x.method, x.path, who, resp.StatusCode)
				}
			}
		}
	}
	// A bad token is 401 everywhere, and its text is never echoed.
	req, _ := http.NewRequest("GET", e.url+"/api/v1/images", nil)
	req.Header.Set("Authorization", "Bearer sekrit-garbage")
	resp, _ := http.DefaultClient.Do(req)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || strings.Contains(string(b), "sekrit") {
		t.Errorf("bad token: %d %s", resp.StatusCode, b)
	}
}

func TestAnonymousReadFlag(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AllowAnonymousRead = true })
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "pub"})
	if _, err := e.anon.GetImage(ctx, "pub"); err != nil {
		t.Fatalf("anonymous read with the flag: %v", err)
	}
	if _, err := e.anon.CreateImage(ctx, api.CreateImageRequest{Name: "nope"}); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("anonymous write with the read flag = %v, want ErrUnauthorized", err)
	}
}

func TestTokensAPI(t *testing.T) {
	e := newEnv(t, nil)
	tok, err := e.admin.CreateToken(ctx, api.TokenRequest{Subject: "ci", Role: "writer"})
	if err != nil || tok.Token == "" || tok.Role != "writer" {
		t.Fatalf("create token: %+v %v", tok, err)
	}
	c, _ := client.New(e.url, tok.Token)
	if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "byci"}); err != nil {
		t.Fatalf("new writer token: %v", err)
	}
	list, _ := e.admin.ListTokens(ctx)
	for _, l := range list {
		if l.Token != "" {
			t.Error("token list leaks a secret")
		}
	}
	if err := e.admin.DeleteToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListImages(ctx); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Errorf("revoked token = %v", err)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "m"})
	e.writer.PushContent(ctx, "m", strings.NewReader("12345"), -1, client.PushOptions{})
	e.raw("GET", "/api/v1/image/m/content", "reader", nil, nil)
	resp, env, _ := e.raw("GET", "/healthz", "", nil, nil)
	if resp.StatusCode != 200 || !env.Success {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
	_, _, body := e.raw("GET", "/metrics", "", nil, nil)
	for _, want := range []string{"depot_content_received_bytes_total 5", "depot_content_sent_bytes_total 5", `depot_http_requests_total{route="PUT /api/v1/image/{ref}/content",status="200"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestServerInfo: a local blob store gains nothing from a declared digest
// (it ingests the same either way), so clients are not asked to hash first.
// The S3 side is in cmd/depot's cluster test.
func TestServerInfo(t *testing.T) {
	e := newEnv(t, nil)
	si, err := e.reader.ServerInfo(ctx)
	if err != nil || si.PreferDeclaredDigest {
		t.Fatalf("server info = %+v, %v; want prefer_declared_digest false", si, err)
	}
	_, env, _ := e.raw("GET", "/api/v1/server", "reader", nil, nil)
	if string(env.Data) != `{"prefer_declared_digest":false}` {
		t.Errorf("GET /api/v1/server data = %s", env.Data)
	}
}

func TestSquashfsReportsFormat(t *testing.T) {
	testenv.Need(t, "mksquashfs")
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "etc-hostname"), []byte("node1\n"), 0o644)
	p := filepath.Join(t.TempDir(), "root.squashfs")
	if out, err := exec.Command("mksquashfs", src, p, "-quiet", "-noappend").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	data, _ := os.ReadFile(p)
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "sq"})
	if _, err := e.writer.PushContent(ctx, "sq", bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	info, err := e.reader.ContentInfo(ctx, "sq")
	if err != nil || info.Fmt != "squashfs" || info.Chksum != digest.FromBytes(data).String() {
		t.Fatalf("info = %+v, %v", info, err)
	}
	resp, _, _ := e.raw("HEAD", "/api/v1/image/sq/content", "reader", nil, nil)
	if resp.Header.Get(api.HeaderFormat) != "squashfs" {
		t.Errorf("X-Depot-Format = %q", resp.Header.Get(api.HeaderFormat))
	}
}

// readAll is the current content of ref, through the API.
func readAll(t *testing.T, c *client.Client, ref string) []byte {
	t.Helper()
	rc, err := c.OpenContent(ctx, ref)
	if err != nil {
		t.Fatalf("open %s: %v", ref, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", ref, err)
	}
	return b
}

// TestPushRetryMeetsItsOwnCommit: a head commits a push and then dies
// before it can answer (a fault no real process produces on demand, so a
// wrapper around the real handler drops the connection after it ran). The
// client resends the push to the next head, whose If-Match check now sees
// the pushed digest as the current content: that 412 is the push's own
// success, and the client reports it as one. Only one revision is added.
func TestPushRetryMeetsItsOwnCommit(t *testing.T) {
	e := newEnv(t, nil)
	dying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.srv.Handler().ServeHTTP(httptest.NewRecorder(), r) // commits, answer lost
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(dying.Close)
	c, err := client.New(dying.URL+","+e.url, e.tokens["writer"])
	if err != nil {
		t.Fatal(err)
	}
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "m"})
	base, err := e.writer.PushContent(ctx, "m", strings.NewReader("base"), -1, client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "push")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("the new content")
	f.Seek(0, io.SeekStart)
	info, err := c.PushContent(ctx, "m", f, 15, client.PushOptions{IfMatch: digest.Digest(base.Chksum)})
	if err != nil {
		t.Fatalf("push whose first head committed and died: %v", err)
	}
	if want := digest.FromString("the new content").String(); info.Chksum != want {
		t.Fatalf("push reported %s, want %s", info.Chksum, want)
	}
	if revs, _ := e.reader.History(ctx, "m"); len(revs) != 2 {
		t.Errorf("%d revisions, want 2 (base and one push)", len(revs))
	}
	// A real conflict after a resend is still a conflict: other content on
	// a base that has moved (a fresh client, so that it starts at the
	// dying head again).
	c, _ = client.New(dying.URL+","+e.url, e.tokens["writer"])
	_, err = c.PushContent(ctx, "m", io.NewSectionReader(strings.NewReader("other content"), 0, 13), 13, client.PushOptions{IfMatch: digest.Digest(base.Chksum)})
	var pe *errdefs.PreconditionError
	if !errors.As(err, &pe) || pe.Have != digest.Digest(info.Chksum) {
		t.Errorf("push of other content on a moved base after a resend = %v, want a 412 naming %s", err, info.Chksum)
	}
}

// TestPushRefusesAChangedLength: a file that is longer than the size it was
// measured at (it grew while the push started) is refused, with nothing
// stored, rather than pushed cut to the old size.
func TestPushRefusesAChangedLength(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "g"})
	grown := strings.NewReader("fifteen bytes..and five more")
	_, err := e.writer.PushContent(ctx, "g", grown, 15, client.PushOptions{})
	if !errors.Is(err, errdefs.ErrVerification) {
		t.Fatalf("push of a grown file = %v, want a verification error", err)
	}
	if n := e.blobCount(); n != 0 {
		t.Errorf("%d blobs stored", n)
	}
}

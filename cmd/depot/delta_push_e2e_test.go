package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/s3"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/recipe"
	"github.com/depot-images/depot/internal/testenv"
)

// scattered returns v1 with n extents of 16 KiB rewritten, evenly spread.
func scattered(v1 []byte, n int, seed byte) []byte {
	v2 := slices.Clone(v1)
	r := rand.NewChaCha8([32]byte{seed})
	for i := range n {
		off := (2*i + 1) * len(v2) / (2 * n)
		r.Read(v2[off : off+16<<10])
	}
	return v2
}

// secondPassGate is a file to push whose reads stop, once, at stopAt on
// the second pass over it (a delta push reads the file once to chunk and
// hash it, then again for the chunks it sends), until gate closes: the
// head is then certainly assembling.
type secondPassGate struct {
	data    []byte
	stopAt  int64
	armed   atomic.Bool
	stopped atomic.Bool
	reached chan struct{}
	gate    chan struct{}
}

func (g *secondPassGate) ReadAt(p []byte, off int64) (int, error) {
	if g.armed.Load() && off+int64(len(p)) > g.stopAt && g.stopped.CompareAndSwap(false, true) {
		close(g.reached)
		<-g.gate
	}
	if off >= int64(len(g.data)) {
		g.armed.Store(true)
		return 0, io.EOF
	}
	n := copy(p, g.data[off:])
	if n < len(p) {
		g.armed.Store(true)
		return n, io.EOF
	}
	return n, nil
}

func (g *secondPassGate) Read([]byte) (int, error) { panic("the push must read through ReadAt") }

func (g *secondPassGate) Seek(off int64, whence int) (int64, error) { return 0, nil }

// fileIndexOf writes b to a file and returns an index source over it: the
// base as the client has it locally (the server's chunk index endpoint is
// another part of issue 14).
func fileIndexOf(t *testing.T, b []byte) client.IndexSource {
	p := filepath.Join(t.TempDir(), "base")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return client.FileIndex(p)
}

// TestDeltaPushKilledMidAssembly: a real `depot serve` is SIGKILLed while
// it assembles a delta push (the base entries before the gate are already
// written to its private blob write, the body is halfway). The restarted
// head serves the old content, no blob but the complete old one is
// visible, and the same delta push then succeeds. On the local blob store
// and on MinIO.
func TestDeltaPushKilledMidAssembly(t *testing.T) {
	for _, store := range []string{"local", "minio"} {
		t.Run(store, func(t *testing.T) { deltaKilledMidAssembly(t, store) })
	}
}

func deltaKilledMidAssembly(t *testing.T, store string) {
	ctx := context.Background()
	data := t.TempDir()
	var args []string
	var s3st *s3.Store
	if store == "minio" {
		m := testenv.MinIO(t)
		secret := filepath.Join(t.TempDir(), "s3.secret")
		os.WriteFile(secret, []byte(m.SecretKey+"\n"), 0o600)
		args = []string{"--blobs", fmt.Sprintf("s3://depot/delta?endpoint=http://%s&create-bucket=true&part-size=5MiB", m.Endpoint),
			"--s3-access-key", m.AccessKey, "--s3-secret-key-file", secret}
		var err error
		h := startServe(t, data, args...) // creates the bucket
		h.kill9()
		if s3st, err = s3.Open(ctx, s3.Config{Endpoint: m.Endpoint, Bucket: "depot", Prefix: "delta",
			Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")}); err != nil {
			t.Fatal(err)
		}
	}
	h := startServe(t, data, args...)
	tok := adminToken(t, data)
	c, _ := client.New(h.url, tok)
	v1 := randomBytes(48 << 20)
	c.CreateImage(ctx, api.CreateImageRequest{Name: "victim"})
	info, err := c.PushContent(ctx, "victim", bytes.NewReader(v1), int64(len(v1)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d1 := digest.Digest(info.Chksum)
	v2 := scattered(v1, 64, 1)
	g := &secondPassGate{data: v2, stopAt: int64(len(v2)) * 3 / 4, reached: make(chan struct{}), gate: make(chan struct{})}
	done := make(chan error, 1)
	idx := fileIndexOf(t, v1)
	go func() {
		_, err := c.PushContent(ctx, "victim", g, int64(len(v2)), client.PushOptions{IfMatch: d1, DeltaBase: d1, DeltaIndex: idx})
		done <- err
	}()
	select {
	case <-g.reached:
	case err := <-done:
		t.Fatalf("the push ended before its gate: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the push never reached its gate")
	}
	if store == "local" {
		// The head is assembling: its private write holds the bytes so far.
		deadline := time.Now().Add(10 * time.Second)
		for partBytes(data) < int64(len(v2))/2 {
			if time.Now().After(deadline) {
				t.Fatalf("the head's partial write holds %d bytes, want over half of %d", partBytes(data), len(v2))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	h.kill9()
	close(g.gate)
	if err := <-done; err == nil {
		t.Fatal("the push survived the kill")
	}
	h = startServe(t, data, args...)
	c, _ = client.New(h.url, tok)
	if got := readContent(t, c, "victim"); !bytes.Equal(got, v1) {
		t.Fatal("a head killed mid-assembly changed the content")
	}
	var visible []digest.Digest
	if store == "local" {
		ents, _ := os.ReadDir(filepath.Join(data, "blobs", "sha256"))
		for _, e := range ents {
			visible = append(visible, digest.NewDigestFromEncoded(digest.SHA256, e.Name()))
		}
	} else {
		s3st.Walk(ctx, func(i blob.Info) error { visible = append(visible, i.Digest); return nil })
	}
	if len(visible) != 1 || visible[0] != d1 {
		t.Fatalf("visible blobs after the kill: %v, want only %s", visible, d1)
	}
	// The retry is a delta again and lands.
	var st client.PushStats
	f := filepath.Join(t.TempDir(), "v2")
	os.WriteFile(f, v2, 0o644)
	fh, _ := os.Open(f)
	defer fh.Close()
	info, err = c.PushContent(ctx, "victim", fh, int64(len(v2)), client.PushOptions{IfMatch: d1, DeltaBase: d1, DeltaIndex: idx, Stats: &st})
	if err != nil || !st.Delta || info.Chksum != digest.FromBytes(v2).String() {
		t.Fatalf("the retry: %+v %+v %v", info, st, err)
	}
	if !bytes.Equal(readContent(t, c, "victim"), v2) {
		t.Fatal("the retry stored other bytes")
	}
	t.Logf("%s: retry sent %d bytes, reused %d of %d", store, st.BytesSent, st.BytesReused, len(v2))
}

func chunkIndex(t *testing.T, b []byte) *chunks.Index {
	t.Helper()
	x, err := chunks.Build(context.Background(), bytes.NewReader(b), chunks.DefaultParams, "")
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func partBytes(data string) int64 {
	var n int64
	ents, _ := os.ReadDir(filepath.Join(data, "ingest"))
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".part") {
			n += fi.Size()
		}
	}
	return n
}

// TestDeltaPushFailsOverMidAssembly: two heads on one catalog and one blob
// directory; the first is SIGKILLed mid-assembly, and the client sends the
// delta again, rebuilt from the file, to the second, which assembles it
// from the same base.
func TestDeltaPushFailsOverMidAssembly(t *testing.T) {
	heads, tok := sharedHeads(t, 2, etcdCatalog(t, "delta-failover"))
	c, err := client.New(heads[0].url+","+heads[1].url, tok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.CreateImage(ctx, api.CreateImageRequest{Name: "fo"})
	v1 := randomBytes(32 << 20)
	info, err := c.PushContent(ctx, "fo", bytes.NewReader(v1), int64(len(v1)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d1 := digest.Digest(info.Chksum)
	v2 := scattered(v1, 48, 2)
	g := &secondPassGate{data: v2, stopAt: int64(len(v2)) / 2, reached: make(chan struct{}), gate: make(chan struct{})}
	var st client.PushStats
	done := make(chan error, 1)
	go func() {
		var err error
		info, err = c.PushContent(ctx, "fo", g, int64(len(v2)), client.PushOptions{IfMatch: d1, DeltaBase: d1, DeltaIndex: fileIndexOf(t, v1), Stats: &st})
		done <- err
	}()
	<-g.reached
	heads[0].kill9()
	close(g.gate)
	if err := <-done; err != nil {
		t.Fatalf("the delta push did not fail over: %v", err)
	}
	if !st.Delta || info.Chksum != digest.FromBytes(v2).String() {
		t.Fatalf("after failover: %+v %+v", info, st)
	}
	c2, _ := client.New(heads[1].url, tok)
	if !bytes.Equal(readContent(t, c2, "fo"), v2) {
		t.Fatal("the second head serves other bytes")
	}
}

// TestCLIDeltaPush: `depot image push` of a new revision sends a delta
// against the image's content by default (indexing the cached base, here
// pulled first, while the server has no chunk index), reports bytes_sent
// and bytes_reused in --json, and --no-delta sends it whole.
func TestCLIDeltaPush(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	tok := adminToken(t, data)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + tok, "DEPOT_CACHE=" + cacheDir}
	dir := t.TempDir()
	v1 := randomBytes(8 << 20)
	v2 := scattered(v1, 8, 3)
	v3 := scattered(v2, 8, 4)
	for name, b := range map[string][]byte{"v1": v1, "v2": v2, "v3": v3} {
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	type result struct {
		Chksum      string `json:"chksum"`
		BytesSent   int64  `json:"bytes_sent"`
		BytesReused int64  `json:"bytes_reused"`
		Delta       bool   `json:"delta"`
		Fallback    string `json:"delta_fallback"`
	}
	push := func(file string, extra ...string) result {
		t.Helper()
		out, errs, code := run(t, env, append([]string{"image", "push", "img", filepath.Join(dir, file), "--json"}, extra...)...)
		if code != 0 {
			t.Fatalf("push %s: exit %d: %s", file, code, errs)
		}
		var r result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("push --json output %q", out)
		}
		return r
	}
	r := push("v1")
	if r.Delta || r.BytesSent != int64(len(v1)) || r.BytesReused != 0 {
		t.Fatalf("first push: %+v", r)
	}
	if _, errs, code := run(t, env, "pull", "img"); code != 0 {
		t.Fatalf("pull: %s", errs)
	}
	r = push("v2")
	// Exactly the chunks of v2 that v1 lacks, and the recipe.
	x1, x2 := chunkIndex(t, v1), chunkIndex(t, v2)
	have := map[chunks.Chunk]bool{}
	for _, ch := range x1.Chunks {
		have[ch] = true
	}
	// The recipe merges runs of chunks into long entries.
	planned, _, err := recipe.PlanFile(context.Background(), bytes.NewReader(v2), x1, "")
	if err != nil {
		t.Fatal(err)
	}
	want := int64(recipe.HeaderSize + len(planned.Entries)*recipe.EntrySize)
	for _, ch := range x2.Chunks {
		if !have[ch] {
			want += int64(ch.Length)
		}
	}
	if !r.Delta || r.BytesSent != want || r.BytesSent > int64(len(v2))/2 || r.BytesSent+r.BytesReused < int64(len(v2)) || r.Chksum != digest.FromBytes(v2).String() {
		t.Fatalf("delta push: %+v, want %d bytes sent", r, want)
	}
	t.Logf("v2 as a delta: sent %d, reused %d of %d", r.BytesSent, r.BytesReused, len(v2))
	r = push("v3", "--no-delta")
	if r.Delta || r.BytesSent != int64(len(v3)) || r.Fallback != "" {
		t.Fatalf("--no-delta push: %+v", r)
	}
	if _, errs, code := run(t, env, "image", "push", "img", filepath.Join(dir, "v3"), "--no-delta", "--delta-base", digest.FromBytes(v1).String()); code == 0 || !strings.Contains(errs, "--no-delta") {
		t.Fatalf("--no-delta with --delta-base: exit %d: %s", code, errs)
	}
}

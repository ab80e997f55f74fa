package workspace

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/server/servertest"
)

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func noise(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

func chunkIndex(t *testing.T, b []byte) *chunks.Index {
	t.Helper()
	x, err := chunks.Build(ctx, bytes.NewReader(b), chunks.DefaultParams, digest.FromBytes(b))
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// TestCommitSendsADelta: the edit flow of issue 14's pair 4. A squashfs
// root of 24 MiB of files is pushed; a workspace adds 2 MiB of files and
// commits, planning with the cache's index of the base, and sends a delta:
// the bytes the head reads are at most 1.1 times what a delta pull of the
// same pair would fetch (v2's chunks missing from v1's index), the server
// stores exactly the repacked image, and the result says what moved.
func TestCommitSendsADelta(t *testing.T) {
	var wire atomic.Int64
	h := servertest.Start(t, servertest.Options{Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isContentPut(r) {
				r.Body = countingBody{r.Body, &wire}
			}
			next.ServeHTTP(w, r)
		})
	}})
	c := h.Client(t, "admin1", auth.RoleAdmin)
	root := rootfs(t)
	os.MkdirAll(filepath.Join(root, "usr", "lib"), 0o755)
	for i := range 16 {
		os.WriteFile(filepath.Join(root, "usr", "lib", fmt.Sprintf("lib%02d.so", i)), noise(uint64(i), 1536<<10), 0o644)
	}
	v1 := squash(t, root)
	servertest.Push(t, c, "node", v1)
	wire.Store(0)
	m := newManager(t, c)
	st, err := m.Edit(ctx, "node", EditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// ~2 MiB of new files, in the middle of the tree's order.
	os.MkdirAll(filepath.Join(st.Dir, "root", "usr", "lib", "new"), 0o755)
	for i := range 4 {
		os.WriteFile(filepath.Join(st.Dir, "root", "usr", "lib", "new", fmt.Sprintf("pkg%d.so", i)), noise(uint64(100+i), 512<<10), 0o644)
	}
	res, err := m.Commit(ctx, "node", CommitOptions{Message: "add pkg"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.OpenContent(ctx, "node")
	if err != nil {
		t.Fatal(err)
	}
	v2, _ := io.ReadAll(rc)
	rc.Close()
	if digest.FromBytes(v2) != res.Digest {
		t.Fatalf("the server serves %s, the commit says %s", digest.FromBytes(v2), res.Digest)
	}
	x1, x2 := chunkIndex(t, v1), chunkIndex(t, v2)
	have := map[chunks.Chunk]bool{}
	for _, ch := range x1.Chunks {
		have[ch] = true
	}
	var pull int64
	for _, ch := range x2.Chunks {
		if !have[ch] {
			pull += int64(ch.Length)
		}
	}
	sent := wire.Load()
	t.Logf("v1 %d bytes, v2 %d bytes: commit sent %d bytes (result: sent %d, reused %d, delta %v); a delta pull would fetch %d (%.2fx)",
		len(v1), len(v2), sent, res.BytesSent, res.BytesReused, res.Delta, pull, float64(sent)/float64(pull))
	if !res.Delta || res.BytesSent != sent || res.BytesSent+res.BytesReused < res.Size {
		t.Fatalf("commit result %+v, %d bytes on the wire", res, sent)
	}
	if float64(sent) > 1.1*float64(pull) {
		t.Fatalf("the commit sent %d bytes, over 1.1x the %d a delta pull fetches", sent, pull)
	}
	// The workspace re-based onto exactly what the server holds.
	if st, err := m.Show(ctx, "node"); err != nil || st.Base != res.Digest || st.Modified {
		t.Fatalf("after the commit: %+v %v", st, err)
	}
}

// TestCommitTakesTheCachedIndex: a commit onto the workspace's own base
// plans its delta with the index the cache keeps of that base: it asks the
// server for no chunk index (which would cost about 0.07% of the image on
// every commit), and still sends a delta.
func TestCommitTakesTheCachedIndex(t *testing.T) {
	var indexGets atomic.Int64
	var commitStarted atomic.Bool
	h := servertest.Start(t, servertest.Options{Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if commitStarted.Load() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/chunks") {
				indexGets.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	}})
	c := h.Client(t, "admin1", auth.RoleAdmin)
	root := rootfs(t)
	os.MkdirAll(filepath.Join(root, "usr", "lib"), 0o755)
	for i := range 4 {
		os.WriteFile(filepath.Join(root, "usr", "lib", fmt.Sprintf("lib%02d.so", i)), noise(uint64(i), 1<<20), 0o644)
	}
	servertest.Push(t, c, "node", squash(t, root))
	m := newManager(t, c)
	st, err := m.Edit(ctx, "node", EditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(st.Dir, "root", "usr", "lib", "new.so"), noise(99, 256<<10), 0o644)
	commitStarted.Store(true)
	res, err := m.Commit(ctx, "node", CommitOptions{Message: "add"})
	if err != nil || !res.Delta {
		t.Fatalf("commit: %+v %v; want a delta", res, err)
	}
	if n := indexGets.Load(); n != 0 {
		t.Fatalf("the commit asked the server for %d chunk indexes; want none (the cache holds the base's)", n)
	}
	// The committed content, adopted as the new base, has its index too
	// (cut while the commit hashed it): a second commit asks for none either.
	rc, err := c.OpenContent(ctx, "node")
	if err != nil {
		t.Fatal(err)
	}
	v2, _ := io.ReadAll(rc)
	rc.Close()
	if x, err := m.Cache.IndexSource().BaseIndex(ctx, res.Digest); err != nil || !reflect.DeepEqual(x, chunkIndex(t, v2)) {
		t.Fatalf("the cache's index of the committed content: %v", err)
	}
	os.WriteFile(filepath.Join(st.Dir, "root", "usr", "lib", "new2.so"), noise(98, 256<<10), 0o644)
	if res, err := m.Commit(ctx, "node", CommitOptions{Message: "add more"}); err != nil || !res.Delta {
		t.Fatalf("second commit: %+v %v; want a delta", res, err)
	}
	if n := indexGets.Load(); n != 0 {
		t.Fatalf("the commits asked the server for %d chunk indexes; want none", n)
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/s3"
	"github.com/depot-images/depot/internal/testenv"
)

// cluster is the deployment the docs describe: three heads on a
// three-member etcd cluster and one MinIO bucket.
type cluster struct {
	etcd   *testenv.EtcdMembers
	minio  testenv.MinIOServer
	prefix string   // of the catalog and of the blob keys
	args   []string // serve flags every head gets
	heads  []*headProc
	tok    string
}

// startCluster starts etcd and MinIO, then the heads one after another (the
// first mints the admin token). perHead[i], if given, adds flags to head i.
func startCluster(t *testing.T, perHead ...[]string) *cluster {
	t.Helper()
	c := &cluster{etcd: testenv.EtcdCluster(t, 3), minio: testenv.MinIO(t)}
	c.prefix = strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	var hosts []string
	for _, u := range c.etcd.URLs {
		hosts = append(hosts, strings.TrimPrefix(u, "http://"))
	}
	secret := filepath.Join(t.TempDir(), "s3.secret")
	os.WriteFile(secret, []byte(c.minio.SecretKey+"\n"), 0o600)
	c.args = []string{
		"--catalog", "etcd://" + strings.Join(hosts, ",") + "/" + c.prefix,
		"--blobs", fmt.Sprintf("s3://depot/%s?endpoint=http://%s&create-bucket=true&part-size=5MiB", c.prefix, c.minio.Endpoint),
		"--s3-access-key", c.minio.AccessKey, "--s3-secret-key-file", secret,
	}
	for i := range 3 {
		args := append([]string{}, c.args...)
		if i < len(perHead) {
			args = append(args, perHead[i]...)
		}
		data := t.TempDir()
		c.heads = append(c.heads, startServe(t, data, args...))
		if i == 0 {
			c.tok = adminToken(t, data)
		}
	}
	return c
}

func (c *cluster) client(t *testing.T, i int) *client.Client {
	cl, err := client.New(c.heads[i].url, c.tok)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// store opens the cluster's bucket directly, to look behind the heads.
func (c *cluster) store(t *testing.T) *s3.Store {
	s, err := s3.Open(context.Background(), s3.Config{Endpoint: c.minio.Endpoint, Bucket: "depot", Prefix: c.prefix,
		Creds: credentials.NewStaticV4(c.minio.AccessKey, c.minio.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func readContent(t *testing.T, c *client.Client, ref string) []byte {
	t.Helper()
	rc, err := c.OpenContent(context.Background(), ref)
	if err != nil {
		t.Fatalf("open %s: %v", ref, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestClusterS3 runs the cluster checks on three heads, a
// three-member etcd and MinIO. Heads 2 and 3 redirect downloads to presigned
// URLs; head 1 carries the bytes itself.
func TestClusterS3(t *testing.T) {
	redirect := []string{"--redirect-content"}
	cl := startCluster(t, nil, redirect, redirect)
	ctx := context.Background()
	admin3 := cl.client(t, 2)

	// A token minted on head 3 is accepted by head 1.
	tk, err := admin3.CreateToken(ctx, api.TokenRequest{Subject: "ci", Role: "writer"})
	if err != nil {
		t.Fatal(err)
	}
	w1, _ := client.New(cl.heads[0].url, tk.Token)
	data := randomBytes(9 << 20)
	if _, err := w1.CreateImage(ctx, api.CreateImageRequest{Name: "img"}); err != nil {
		t.Fatalf("head 1 rejects a token minted on head 3: %v", err)
	}
	if _, err := w1.PushContent(ctx, "img", bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	// The upload through head 1 is readable at once on heads 2 and 3 (by
	// redirect) and on head 1 (through the head).
	for i := range 3 {
		if got := readContent(t, cl.client(t, i), "img"); !bytes.Equal(got, data) {
			t.Fatalf("head %d serves different bytes", i+1)
		}
	}
	for i, h := range cl.heads {
		redirects, sent := gauge(h.url, "depot_content_redirects_total"), sentBytes(h.url)
		if i == 0 && (redirects != 0 || sent != float64(len(data))) {
			t.Errorf("head 1: %v redirects, %v bytes sent; want 0 and %d", redirects, sent, len(data))
		}
		if i > 0 && (redirects != 1 || sent != 0) {
			t.Errorf("head %d: %v redirects, %v bytes sent; want 1 and 0 (the object store carries them)", i+1, redirects, sent)
		}
	}
	// The node cache through a redirecting head: a parallel ranged download
	// (every segment redirected) and a verified file.
	big := randomBytes(72 << 20)
	w1.CreateImage(ctx, api.CreateImageRequest{Name: "big"})
	bigInfo, err := w1.PushContent(ctx, "big", bytes.NewReader(big), int64(len(big)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"DEPOT_SERVER=" + cl.heads[1].url, "DEPOT_TOKEN=" + cl.tok, "DEPOT_TOKEN_FILE=", "DEPOT_CACHE=" + t.TempDir()}
	out, stderr, code := run(t, env, "ensure", "big", "--connections", "4")
	if code != 0 {
		t.Fatalf("ensure through a redirecting head: exit %d: %s", code, stderr)
	}
	f, _ := os.Open(strings.TrimSpace(out))
	d, _ := digest.FromReader(f)
	f.Close()
	if d.String() != bigInfo.Chksum {
		t.Fatalf("ensure through a redirect got %s, want %s", d, bigInfo.Chksum)
	}
	if r := gauge(cl.heads[1].url, "depot_content_redirects_total"); r < 5 {
		t.Errorf("head 2 redirected %v requests; a 72 MiB parallel ensure should need at least 5", r)
	}

	// An S3 head prefers a declared digest, so `depot image push` hashes the
	// file first and the upload goes straight to the blob key: an object
	// without the Blake3 metadata that the ingest/ copy path (the trailer
	// push of "big" above) writes.
	if si, err := cl.client(t, 2).ServerInfo(ctx); err != nil || !si.PreferDeclaredDigest {
		t.Fatalf("server info of an S3 head = %+v, %v; want prefer_declared_digest", si, err)
	}
	file := randomBytes(12 << 20)
	src := filepath.Join(t.TempDir(), "disk.raw")
	os.WriteFile(src, file, 0o644)
	env3 := []string{"DEPOT_SERVER=" + cl.heads[2].url, "DEPOT_TOKEN=" + cl.tok, "DEPOT_TOKEN_FILE="}
	if _, stderr, code := run(t, env3, "image", "push", "cli-pushed", src); code != 0 {
		t.Fatalf("depot image push through an S3 head: exit %d: %s", code, stderr)
	}
	st := cl.store(t)
	direct, err := st.Stat(ctx, digest.FromBytes(file))
	if err != nil {
		t.Fatal(err)
	}
	copied, err := st.Stat(ctx, digest.Digest(bigInfo.Chksum))
	if err != nil {
		t.Fatal(err)
	}
	if direct.BLAKE3 != "" || copied.BLAKE3 == "" {
		t.Errorf("Blake3 metadata: CLI push %q (want none: a direct upload), trailer push %q (want some: the copy path)", direct.BLAKE3, copied.BLAKE3)
	}
	if got := readContent(t, cl.client(t, 0), "cli-pushed"); !bytes.Equal(got, file) {
		t.Fatal("head 1 serves different bytes for the CLI push")
	}

	// A delete through head 2 is gone on heads 1 and 3.
	if err := cl.client(t, 1).DeleteImage(ctx, "img"); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		if _, err := cl.client(t, i).GetImage(ctx, "img"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("head %d still has the image deleted on head 2: %v", i+1, err)
		}
	}

	// Racing creates of one name through all three heads: one winner.
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := cl.client(t, i%3).CreateImage(ctx, api.CreateImageRequest{Name: "race"})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, errdefs.ErrAlreadyExists):
				conflicts.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 11 {
		t.Fatalf("racing creates: %d wins, %d conflicts; want 1 and 11", wins.Load(), conflicts.Load())
	}

	// One etcd member dies: the heads, given every member, carry on.
	cl.etcd.Kill(0)
	for i := range 3 {
		c := cl.client(t, i)
		name := fmt.Sprintf("after-etcd-kill-%d", i)
		payload := randomBytes(1 << 20)
		if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: name}); err != nil {
			t.Fatalf("head %d with one etcd member down: %v", i+1, err)
		}
		if _, err := c.PushContent(ctx, name, bytes.NewReader(payload), int64(len(payload)), client.PushOptions{}); err != nil {
			t.Fatalf("head %d push with one etcd member down: %v", i+1, err)
		}
		if got := readContent(t, cl.client(t, (i+1)%3), name); !bytes.Equal(got, payload) {
			t.Fatalf("head %d serves different bytes with one etcd member down", (i+1)%3+1)
		}
	}
}

// TestClusterR7: kill -9 one head while 8 clients ensure through all three
// (heads carry the bytes here, so the kill cuts transfers).
func TestClusterR7(t *testing.T) {
	cl := startCluster(t)
	runR7(t, cl.heads, cl.tok)
}

// TestClusterGCKeepsReferencedRevision: garbage collection runs on the
// elected head against the shared bucket; a blob only a retained revision
// references is kept, an unreferenced one is collected.
func TestClusterGCKeepsReferencedRevision(t *testing.T) {
	gc := []string{"--gc-interval", "200ms", "--gc-grace", "0s"}
	cl := startCluster(t, gc, gc, gc)
	ctx := context.Background()
	c := cl.client(t, 0)
	v1, v2, v3 := randomBytes(1<<20), randomBytes(1<<20), randomBytes(1<<20)
	c.CreateImage(ctx, api.CreateImageRequest{Name: "a"})
	for _, v := range [][]byte{v1, v2} {
		if _, err := c.PushContent(ctx, "a", bytes.NewReader(v), int64(len(v)), client.PushOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c.CreateImage(ctx, api.CreateImageRequest{Name: "b"})
	if _, err := c.PushContent(ctx, "b", bytes.NewReader(v3), int64(len(v3)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cl.client(t, 1).DeleteImage(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	st := cl.store(t)
	gone := digest.FromBytes(v3)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := st.Stat(ctx, gone); errors.Is(err, errdefs.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the unreferenced blob was never collected")
		}
		time.Sleep(100 * time.Millisecond)
	}
	leaders := 0
	for _, h := range cl.heads {
		if gauge(h.url, "depot_gc_leader") == 1 {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("%d heads collect garbage, want exactly 1", leaders)
	}
	// v1 is only in a's history: it must survive, and every head serves it.
	for _, v := range [][]byte{v1, v2} {
		d := digest.FromBytes(v)
		if _, err := st.Stat(ctx, d); err != nil {
			t.Fatalf("blob %s, still referenced by a revision, was collected: %v", d, err)
		}
		for i := range 3 {
			rc, err := cl.client(t, i).OpenBlob(ctx, d, 0, -1)
			if err != nil {
				t.Fatalf("head %d: blob %s: %v", i+1, d, err)
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(b, v) {
				t.Fatalf("head %d serves different bytes for %s", i+1, d)
			}
		}
	}
}

// TestClusterKillDuringPut kills a head mid-upload into MinIO, once for a
// push that declares its digest up front (a direct multipart upload to the
// blob's key) and once for one that sends it in a trailer (an upload to an
// ingest/ key). The previous content stays intact on every head, nothing
// partial is visible, and the unfinished multipart upload the kill left is
// found through its marker and aborted by the ingest sweep.
func TestClusterKillDuringPut(t *testing.T) {
	for _, declared := range []bool{false, true} {
		t.Run(map[bool]string{false: "trailer", true: "declared"}[declared], func(t *testing.T) {
			killDuringPut(t, declared)
		})
	}
}

func killDuringPut(t *testing.T, declared bool) {
	cl := startCluster(t)
	ctx := context.Background()
	c := cl.client(t, 0)
	old := randomBytes(1 << 20)
	c.CreateImage(ctx, api.CreateImageRequest{Name: "victim"})
	if _, err := c.PushContent(ctx, "victim", bytes.NewReader(old), int64(len(old)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	data := randomBytes(64 << 20)
	var opts client.PushOptions
	if declared {
		opts.Digest = digest.FromBytes(data)
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := c.PushContent(ctx, "victim", pr, int64(len(data)), opts)
		done <- err
	}()
	pw.Write(data[:24<<20]) // several 5 MiB parts reach MinIO
	time.Sleep(300 * time.Millisecond)
	cl.heads[0].kill9()
	pw.CloseWithError(io.ErrUnexpectedEOF)
	if err := <-done; err == nil {
		t.Fatal("the push survived the kill")
	}
	for i := 1; i < 3; i++ {
		if got := readContent(t, cl.client(t, i), "victim"); !bytes.Equal(got, old) {
			t.Fatalf("head %d: content changed by a killed upload", i+1)
		}
	}
	st := cl.store(t)
	var blobs int
	st.Walk(ctx, func(blob.Info) error { blobs++; return nil })
	if blobs != 1 {
		t.Fatalf("%d blobs visible, want 1 (nothing partial)", blobs)
	}
	mc, _ := minio.New(cl.minio.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(cl.minio.AccessKey, cl.minio.SecretKey, "")})
	// The key each marker stands for: the one its body names (a direct
	// upload), else the ingest key beside it.
	var targets []string
	for o := range mc.ListObjects(ctx, "depot", minio.ListObjectsOptions{Prefix: cl.prefix + "/ingest/", Recursive: true}) {
		k, ok := strings.CutSuffix(o.Key, ".upload")
		if !ok {
			continue
		}
		if o.Size > 0 {
			obj, err := mc.GetObject(ctx, "depot", o.Key, minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(obj)
			obj.Close()
			k, _, _ = strings.Cut(string(body), "\n")
		}
		targets = append(targets, k)
	}
	uploads := func() int {
		n := 0
		for _, k := range targets {
			for range mc.ListIncompleteUploads(ctx, "depot", k, true) {
				n++
			}
		}
		return n
	}
	if len(targets) != 1 || uploads() != 1 {
		t.Fatalf("after the kill: %d markers, %d unfinished uploads; want 1 and 1", len(targets), uploads())
	}
	if wantKey := strings.HasPrefix(targets[0], cl.prefix+"/blobs/sha256/"); wantKey != declared {
		t.Errorf("the upload went to %s; declared digest: %v", targets[0], declared)
	}
	if n, err := st.SweepIngests(ctx, -time.Second); err != nil || n != 1 {
		t.Fatalf("sweep = %d, %v", n, err)
	}
	if uploads() != 0 {
		t.Fatal("the sweep left the unfinished upload")
	}
}

package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/blobtest"
	"github.com/depot-images/depot/internal/testenv"
)

var prefixSeq atomic.Int64

// newStore opens a store on a fresh prefix of one bucket in m.
func newStore(t *testing.T, m testenv.MinIOServer) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{
		Endpoint: m.Endpoint, Bucket: "depot", CreateBucket: true,
		Prefix: fmt.Sprintf("t%d/", prefixSeq.Add(1)),
		Creds:  credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		// Small parts so that a few MiB already make a multipart upload.
		PartSize: 5 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	m := testenv.MinIO(t)
	blobtest.Run(t, func(t *testing.T) blob.Store { return newStore(t, m) })
}

// readBlob is the whole content of blob d in s.
func readBlob(t *testing.T, s *Store, d digest.Digest) []byte {
	t.Helper()
	r, err := s.Open(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func listKeys(t *testing.T, s *Store, prefix string) []string {
	var keys []string
	for o := range s.c.ListObjects(context.Background(), s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

// TestMultipartCopyAndMetadata commits a blob through the multipart copy
// path (the one blobs over 5 GiB take) and checks the bytes, the BLAKE3
// metadata and that no temporary object is left behind.
func TestMultipartCopyAndMetadata(t *testing.T) {
	m := testenv.MinIO(t)
	s := newStore(t, m)
	s.copyPartSize = 8 << 20 // force ComposeObject (two 6 MiB ranges) for this blob
	data := randBytes(t, 12<<20+3)
	// No declared digest: the streamed path, which copies into place.
	info, err := blob.Ingest(context.Background(), s, bytes.NewReader(data), int64(len(data)), "")
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != digest.FromBytes(data) {
		t.Fatalf("digest = %s, want %s", info.Digest, digest.FromBytes(data))
	}
	if got := readBlob(t, s, info.Digest); !bytes.Equal(got, data) {
		t.Fatal("content differs after multipart copy")
	}
	st, err := s.Stat(context.Background(), info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if st.BLAKE3 == "" || st.BLAKE3 != info.BLAKE3 {
		t.Errorf("Stat BLAKE3 = %q, want %q (from object metadata)", st.BLAKE3, info.BLAKE3)
	}
	if keys := listKeys(t, s, s.ingestPrefix()); len(keys) != 0 {
		t.Errorf("temporary objects left: %v", keys)
	}
}

// TestWrongDigestLeavesNothing checks that a failed verification removes the
// temporary object, not just hides it.
func TestWrongDigestLeavesNothing(t *testing.T) {
	m := testenv.MinIO(t)
	s := newStore(t, m)
	data := randBytes(t, 11<<20) // three parts
	_, err := blob.Ingest(context.Background(), s, bytes.NewReader(data), -1, digest.FromString("other"))
	if !errors.Is(err, errdefs.ErrVerification) {
		t.Fatalf("err = %v, want ErrVerification", err)
	}
	if keys := listKeys(t, s, s.cfg.Prefix); len(keys) != 0 {
		t.Errorf("objects left after a failed verification: %v", keys)
	}
}

// TestAbandonedUploadSwept leaves a write unfinished the way a killed head
// does (marker, uploaded parts, no completion) and checks SweepIngests
// aborts the multipart upload and removes the marker. MinIO lists uploads
// only by exact key, which is what the marker is for.
func TestAbandonedUploadSwept(t *testing.T) {
	m := testenv.MinIO(t)
	s := newStore(t, m)
	ctx := context.Background()
	w, err := s.Writer(ctx, blob.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key := w.(*partWriter).key
	if _, err := w.Write(randBytes(t, 11<<20)); err != nil { // two parts go out
		t.Fatal(err)
	}
	// A new client, as after a restart; the old writer is never closed.
	core := minio.Core{Client: newStore(t, m).c}
	part := randBytes(t, 5<<20)
	stale := key + "-2"
	id, err := core.NewMultipartUpload(ctx, s.cfg.Bucket, stale, minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := core.PutObjectPart(ctx, s.cfg.Bucket, stale, id, 1, bytes.NewReader(part), int64(len(part)), minio.PutObjectPartOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.PutObject(ctx, s.cfg.Bucket, stale+uploadMarker, bytes.NewReader(nil), 0, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	uploads := func(k string) int { return uploads(t, s, k) }
	if uploads(stale) != 1 {
		t.Fatal("setup: no unfinished upload to sweep")
	}
	if n, err := s.SweepIngests(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("sweep of fresh ingests = %d, %v; want 0 removed", n, err)
	}
	n, err := s.SweepIngests(ctx, -time.Second)
	if err != nil || n != 2 {
		t.Fatalf("sweep = %d, %v; want 2 markers removed", n, err)
	}
	if uploads(stale) != 0 || uploads(key) != 0 {
		t.Error("an unfinished multipart upload survived the sweep")
	}
	if keys := listKeys(t, s, s.ingestPrefix()); len(keys) != 0 {
		t.Errorf("ingest objects left: %v", keys)
	}
	w.Close()
}

// uploads counts the unfinished multipart uploads to key.
func uploads(t *testing.T, s *Store, key string) int {
	t.Helper()
	n := 0
	for u := range s.c.ListIncompleteUploads(context.Background(), s.cfg.Bucket, key, true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		n++
	}
	return n
}

// TestDirectUpload: a write with a declared digest goes to its final key as
// its own multipart upload. It leaves no ingest/ object and no unfinished
// upload behind, whether it commits or fails verification.
func TestDirectUpload(t *testing.T) {
	m := testenv.MinIO(t)
	s := newStore(t, m)
	ctx := context.Background()
	data := randBytes(t, 11<<20+7) // three parts
	want := digest.FromBytes(data)
	w, err := s.Writer(ctx, blob.WriteOptions{Expected: want, SizeHint: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	if pw, ok := w.(*partWriter); !ok || pw.key != s.blobKey(want) {
		t.Fatalf("writer with a declared digest is %T, not a multipart upload to the blob's key", w)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, want); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("blob visible before Commit: Stat = %v", err)
	}
	info, err := w.Commit(ctx, int64(len(data)), "")
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != want || info.Size != int64(len(data)) {
		t.Fatalf("Commit = %+v", info)
	}
	if got := readBlob(t, s, want); !bytes.Equal(got, data) {
		t.Fatal("content differs after a direct upload")
	}
	if keys := listKeys(t, s, s.ingestPrefix()); len(keys) != 0 {
		t.Errorf("ingest objects left after commit: %v", keys)
	}
	if n := uploads(t, s, s.blobKey(want)); n != 0 {
		t.Errorf("%d unfinished uploads left after commit", n)
	}

	// A wrong declaration: nothing under the declared key, nothing left over.
	other := digest.FromString("other")
	_, err = blob.Ingest(ctx, s, bytes.NewReader(data), int64(len(data)), other)
	if !errors.Is(err, errdefs.ErrVerification) {
		t.Fatalf("err = %v, want ErrVerification", err)
	}
	if _, err := s.Stat(ctx, other); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a blob was stored under the wrong declared digest: Stat = %v", err)
	}
	if n := uploads(t, s, s.blobKey(other)); n != 0 {
		t.Errorf("%d unfinished uploads left after a failed verification", n)
	}
	if keys := listKeys(t, s, s.ingestPrefix()); len(keys) != 0 {
		t.Errorf("ingest objects left after a failed verification: %v", keys)
	}
}

// TestAbandonedDirectUploadSwept: a head killed during a direct upload
// leaves a multipart upload on the blob's own key; the marker names it, and
// a sweep aborts it. A marker with a body this code did not write is only
// removed.
func TestAbandonedDirectUploadSwept(t *testing.T) {
	m := testenv.MinIO(t)
	s := newStore(t, m)
	ctx := context.Background()
	data := randBytes(t, 11<<20)
	want := digest.FromBytes(data)
	w, err := s.Writer(ctx, blob.WriteOptions{Expected: want})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil { // two parts go out, the rest waits
		t.Fatal(err)
	}
	foreign := s.ingestPrefix() + "foreign" + uploadMarker
	if err := s.putMarker(ctx, foreign, []byte("not a marker body")); err != nil {
		t.Fatal(err)
	}
	if uploads(t, s, s.blobKey(want)) != 1 {
		t.Fatal("setup: no unfinished upload on the blob key")
	}
	// A new client, as after a restart; the old writer is never committed.
	s2 := newStore(t, m)
	s2.cfg.Prefix = s.cfg.Prefix
	n, err := s2.SweepIngests(ctx, -time.Second)
	if err != nil || n != 2 {
		t.Fatalf("sweep = %d, %v; want 2 markers removed", n, err)
	}
	if uploads(t, s, s.blobKey(want)) != 0 {
		t.Error("the abandoned direct upload survived the sweep")
	}
	if keys := listKeys(t, s, s.cfg.Prefix); len(keys) != 0 {
		t.Errorf("objects left: %v", keys)
	}
	if _, err := w.Commit(ctx, int64(len(data)), ""); err == nil {
		t.Error("Commit of a swept upload succeeded")
	}
	if _, err := s.Stat(ctx, want); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stat after a swept upload = %v, want ErrNotFound", err)
	}
}

func TestClassify(t *testing.T) {
	full := minio.ErrorResponse{Code: "XMinioStorageFull", Message: "Storage backend has reached its minimum free drive threshold.", StatusCode: http.StatusInsufficientStorage}
	for _, tc := range []struct {
		err  error
		want error
	}{
		{full, errdefs.ErrNoSpace},
		{fmt.Errorf("put part: %w", full), errdefs.ErrNoSpace},
		{minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, errdefs.ErrUnavailable},
		{context.Canceled, context.Canceled},
	} {
		got := classify(tc.err)
		if !errors.Is(got, tc.want) {
			t.Errorf("classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
		if !strings.Contains(got.Error(), tc.err.Error()) {
			t.Errorf("classify(%v) lost the store's message: %v", tc.err, got)
		}
	}
}

// TestSweepSparesLongUpload: a write that runs longer than the sweep's age
// keeps its marker fresh, so the sweep leaves it alone and it commits; for
// both write paths. The marker is refreshed every 200 ms and the sweep
// takes anything older than 1 s: slack enough for a loaded CI machine,
// while the upload (3 s) is well past that age when the last sweeps run.
func TestSweepSparesLongUpload(t *testing.T) {
	m := testenv.MinIO(t)
	for _, declared := range []bool{false, true} {
		t.Run(map[bool]string{false: "streamed", true: "declared"}[declared], func(t *testing.T) {
			s := newStore(t, m)
			s.markerEvery = 200 * time.Millisecond
			const age = time.Second
			ctx := context.Background()
			data := randBytes(t, 12<<20)
			var opts blob.WriteOptions
			if declared {
				opts.Expected = digest.FromBytes(data)
			}
			start := time.Now()
			w, err := s.Writer(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 12 {
				if _, err := w.Write(data[i<<20 : (i+1)<<20]); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				time.Sleep(250 * time.Millisecond)
				if i%3 == 2 {
					if _, err := s.SweepIngests(ctx, age); err != nil {
						t.Fatal(err)
					}
				}
			}
			if time.Since(start) < 2*age {
				t.Fatalf("the upload ran %v, not long enough to outlive a %v sweep", time.Since(start), age)
			}
			info, err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data))
			if err != nil {
				t.Fatalf("a live upload did not survive the sweeps: %v", err)
			}
			if got := readBlob(t, s, info.Digest); !bytes.Equal(got, data) {
				t.Fatal("content differs")
			}
		})
	}
}

// TestPresignGet fetches a blob through its presigned URL with a Range and
// without any credentials.
func TestPresignGet(t *testing.T) {
	m := testenv.MinIO(t)
	s := newStore(t, m)
	data := randBytes(t, 100000)
	info, err := blob.Ingest(context.Background(), s, bytes.NewReader(data), -1, "")
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.PresignGet(context.Background(), info.Digest, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
	req.Header.Set("Range", "bytes=1000-1999")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[1000:2000]) {
		t.Fatalf("presigned ranged GET: %s, %d bytes", resp.Status, len(body))
	}
	missing := digest.FromString("never stored")
	if _, err := s.PresignGet(context.Background(), missing, time.Minute); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("presign of a missing blob = %v, want ErrNotFound", err)
	}
}

func TestOpenMissingBucket(t *testing.T) {
	m := testenv.MinIO(t)
	_, err := Open(context.Background(), Config{Endpoint: m.Endpoint, Bucket: "nope",
		Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "create-bucket") {
		t.Errorf("err = %v, want ErrNotFound naming ?create-bucket", err)
	}
	_, err = Open(context.Background(), Config{Endpoint: m.Endpoint, Bucket: "depot", CreateBucket: true,
		Creds: credentials.NewStaticV4(m.AccessKey, "wrong", "")})
	if err == nil {
		t.Error("Open with a wrong secret succeeded")
	}
}

func TestParseURL(t *testing.T) {
	cfg, err := ParseURL("s3://images/depot/prod?endpoint=http://10.0.0.5:9000&region=eu-1&part-size=64MiB&threads=4&upload-memory=1GiB&public-endpoint=https://s3.example.org&create-bucket=true")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Endpoint: "10.0.0.5:9000", Secure: false, Bucket: "images", Prefix: "depot/prod/", Region: "eu-1",
		PartSize: 64 << 20, Threads: 4, UploadMemory: 1 << 30, PublicEndpoint: "https://s3.example.org", CreateBucket: true}
	if fmt.Sprint(cfg) != fmt.Sprint(want) {
		t.Errorf("ParseURL = %+v\nwant        %+v", cfg, want)
	}
	if cfg, err := ParseURL("s3://b?endpoint=minio.example.org"); err != nil || !cfg.Secure || cfg.Prefix != "" || cfg.Region != DefaultRegion {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
	for _, bad := range []string{
		"s3://", "http://b", "s3://key:secret@b?endpoint=x", "s3://b?endpont=x", "s3://b?endpoint=http://x/y",
		"s3://b?part-size=1MiB", "s3://b/../x", "s3://b/a//c", "s3://b?part-size=6GiB", "s3://b?threads=0", "s3://b?create-bucket=maybe", "s3://b?upload-memory=1MiB",
	} {
		if _, err := ParseURL(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseURL(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

// TestParseURLSizes: part-size= and upload-memory= read sizes as every
// depot size flag does (internal/size: binary units, any case, B or iB
// optional), and refuse anything else instead of reading a prefix of it.
func TestParseURLSizes(t *testing.T) {
	for _, v := range []string{"64M", "64MB", "64mb", "64MiB", "67108864"} {
		cfg, err := ParseURL("s3://b?part-size=" + v + "&upload-memory=" + strings.Replace(v, "64", "128", 1))
		if err != nil || cfg.PartSize != 64<<20 || (cfg.UploadMemory != 128<<20 && v != "67108864") {
			t.Errorf("part-size=%s: %+v, %v", v, cfg, err)
		}
	}
	for _, v := range []string{"64xyz", "64Mi", "-64M", "64M64", "1e8", "100000000000000000000G"} {
		for _, k := range []string{"part-size", "upload-memory"} {
			if _, err := ParseURL("s3://b?" + k + "=" + v); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), k) {
				t.Errorf("%s=%s: %v, want ErrInvalidArgument naming %s", k, v, err, k)
			}
		}
	}
}

// FuzzParseURL: ParseURL never panics, and what it accepts is usable: a
// bucket, an endpoint that is a bare host[:port], a prefix that is empty or
// ends in one slash, and bounded tuning values.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"s3://images/depot?endpoint=http://127.0.0.1:9000", "s3://b/p/q?endpoint=h&part-size=64MiB&threads=4",
		"s3://b?public-endpoint=https://x&create-bucket=1", "s3://b/%2e%2e/?endpoint=x", "s3://@b", "s3:b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		cfg, err := ParseURL(raw)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseURL(%q) error %v is not ErrInvalidArgument", raw, err)
			}
			return
		}
		if cfg.Bucket == "" || cfg.Endpoint == "" || strings.ContainsAny(cfg.Endpoint, "/?#") {
			t.Fatalf("ParseURL(%q) accepted %+v", raw, cfg)
		}
		if cfg.Prefix != "" && (!strings.HasSuffix(cfg.Prefix, "/") || strings.HasPrefix(cfg.Prefix, "/") || strings.HasSuffix(cfg.Prefix, "//")) {
			t.Fatalf("ParseURL(%q) prefix %q", raw, cfg.Prefix)
		}
		if cfg.PartSize != 0 && (cfg.PartSize < 5<<20 || cfg.PartSize > 5<<30) {
			t.Fatalf("ParseURL(%q) part size %d", raw, cfg.PartSize)
		}
	})
}

// TestStoreFull fills a real MinIO whose drive is a 64 MiB tmpfs. Both
// write paths fail with errdefs.ErrNoSpace, leave nothing visible and
// nothing unfinished behind, and give the space back: a small write then
// commits.
func TestStoreFull(t *testing.T) {
	dir := t.TempDir()
	testenv.Tmpfs(t, dir, 64)
	m := testenv.MinIOIn(t, dir)
	s := newStore(t, m)
	ctx := context.Background()
	data := randBytes(t, 96<<20)
	want := digest.FromBytes(data)
	for _, expected := range []digest.Digest{want, ""} {
		_, err := blob.Ingest(ctx, s, bytes.NewReader(data), int64(len(data)), expected)
		if !errors.Is(err, errdefs.ErrNoSpace) {
			t.Fatalf("ingest of 96 MiB into 64 MiB (declared %q) = %v, want ErrNoSpace", expected, err)
		}
		if _, err := s.Stat(ctx, want); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Stat after a failed ingest = %v, want ErrNotFound", err)
		}
		if n := uploads(t, s, s.blobKey(want)); n != 0 {
			t.Errorf("%d unfinished uploads left on the blob key", n)
		}
		if keys := listKeys(t, s, s.cfg.Prefix); len(keys) != 0 {
			t.Errorf("objects left after a failed ingest: %v", keys)
		}
	}
	// MinIO frees an aborted upload's parts in the background, and a
	// full store is not retried (ErrNoSpace is permanent): poll until the
	// space is back, bounded.
	small := randBytes(t, 1<<20)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := blob.Ingest(ctx, s, bytes.NewReader(small), int64(len(small)), digest.FromBytes(small))
		if err == nil {
			break
		}
		if !errors.Is(err, errdefs.ErrNoSpace) || time.Now().After(deadline) {
			t.Fatalf("a small ingest after the failures: %v (space not given back)", err)
		}
	}
}

// TestUploadMemoryBound: the store's upload memory bounds the part buffers
// of all writes together, declared or streamed. With room for one part, a
// second write waits for its first buffer until the first write lets go of
// its own; then both commit. Four writes racing on room for two parts all
// commit.
func TestUploadMemoryBound(t *testing.T) {
	m := testenv.MinIO(t)
	ctx := context.Background()
	s := newStore(t, m)
	s.uploadMem, s.uploadMemSize = semaphore.NewWeighted(5<<20), 5<<20 // one 5 MiB part
	a, b := randBytes(t, 6<<20), randBytes(t, 6<<20)
	wa, err := s.Writer(ctx, blob.WriteOptions{Expected: digest.FromBytes(a)})
	if err != nil {
		t.Fatal(err)
	}
	wa.Write(a[:1<<20])                           // holds the only buffer
	wb, err := s.Writer(ctx, blob.WriteOptions{}) // streamed: the digest is not declared
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := wb.Write(b)
		wrote <- err
	}()
	select {
	case err := <-wrote:
		t.Fatalf("a second write got memory while the first held all of it (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	wa.Write(a[1<<20:])
	if _, err := wa.Commit(ctx, int64(len(a)), ""); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if _, err := wb.Commit(ctx, int64(len(b)), ""); err != nil {
		t.Fatal(err)
	}

	s.uploadMem, s.uploadMemSize = semaphore.NewWeighted(10<<20), 10<<20 // two parts
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randBytes(t, 11<<20+i)
			var declared digest.Digest
			if i%2 == 0 {
				declared = digest.FromBytes(data)
			}
			if _, err := blob.Ingest(ctx, s, bytes.NewReader(data), int64(len(data)), declared); err != nil {
				t.Errorf("write %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	// Everything was given back: the whole budget can be taken again.
	if !s.uploadMem.TryAcquire(10 << 20) {
		t.Error("upload memory was not all released")
	}
}

// flakyParts is a loopback proxy in front of a real MinIO that fails part
// uploads on cue, for the faults a healthy MinIO does not produce on
// demand: a connection cut halfway through a part's body, and a 503. All
// other requests pass through untouched (the Host header is kept, so
// signatures still match).
type flakyParts struct {
	mu       sync.Mutex
	attempts map[string]int    // part number → attempts seen
	first    map[string]string // part number → how its first attempt fails: "cut", "503" or "507"
	always   bool              // fail every attempt of every part with a 503
	url      string
}

func newFlakyParts(t *testing.T, m testenv.MinIOServer) *flakyParts {
	f := &flakyParts{attempts: map[string]int{}, first: map[string]string{}}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: m.Endpoint})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		part := r.URL.Query().Get("partNumber")
		if r.Method != http.MethodPut || part == "" {
			rp.ServeHTTP(w, r)
			return
		}
		f.mu.Lock()
		f.attempts[part]++
		fail := f.first[part]
		if f.attempts[part] > 1 {
			fail = ""
		}
		if f.always {
			fail = "503"
		}
		f.mu.Unlock()
		switch fail {
		case "cut":
			io.CopyN(io.Discard, r.Body, 1<<20)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		case "503":
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusServiceUnavailable)
		case "507":
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusInsufficientStorage)
		default:
			rp.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(hs.Close)
	f.url = hs.URL
	return f
}

// store is a store of 5 MiB parts on s's bucket and prefix, reached
// through f.
func (f *flakyParts) store(t *testing.T, m testenv.MinIOServer, s *Store) *Store {
	t.Helper()
	direct, err := Open(context.Background(), Config{
		Endpoint: strings.TrimPrefix(f.url, "http://"), Bucket: "depot", Prefix: s.cfg.Prefix,
		Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""), PartSize: 5 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	return direct
}

func (f *flakyParts) tries(part string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[part]
}

// TestPartsRetry: a part whose upload is cut off, or answered 503, is sent
// again on its own (with a fresh reader over the same bytes), and the write
// commits exactly the bytes written, on both write paths. A store that keeps
// failing makes the write fail as unavailable after partAttempts tries,
// leaving no object, marker or unfinished upload.
func TestPartsRetry(t *testing.T) {
	m := testenv.MinIO(t)
	for _, declared := range []bool{false, true} {
		t.Run(map[bool]string{false: "streamed", true: "declared"}[declared], func(t *testing.T) {
			f := newFlakyParts(t, m)
			f.first["2"], f.first["3"] = "cut", "503"
			s := newStore(t, m)
			direct := f.store(t, m, s)
			ctx := context.Background()
			data := randBytes(t, 16<<20+3) // four parts
			var want digest.Digest
			if declared {
				want = digest.FromBytes(data)
			}
			info, err := blob.Ingest(ctx, direct, bytes.NewReader(data), int64(len(data)), want)
			if err != nil {
				t.Fatalf("ingest through failing parts: %v", err)
			}
			if info.Digest != digest.FromBytes(data) {
				t.Fatalf("committed %s, want %s", info.Digest, digest.FromBytes(data))
			}
			for part, n := range map[string]int{"1": 1, "2": 2, "3": 2, "4": 1} {
				if got := f.tries(part); got != n {
					t.Errorf("part %s sent %d times, want %d", part, got, n)
				}
			}
			if got := readBlob(t, s, info.Digest); !bytes.Equal(got, data) {
				t.Fatal("stored bytes differ after retried parts")
			}

			// A store that keeps failing.
			f.mu.Lock()
			f.always, f.attempts = true, map[string]int{}
			f.mu.Unlock()
			other := randBytes(t, 6<<20)
			want = ""
			if declared {
				want = digest.FromBytes(other)
			}
			w, err := direct.Writer(ctx, blob.WriteOptions{Expected: want})
			if err != nil {
				t.Fatal(err)
			}
			key := w.(*partWriter).key
			_, err = w.Write(other)
			if err == nil {
				_, err = w.Commit(ctx, int64(len(other)), "")
			}
			w.Close()
			if !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("write to a failing store: err = %v, want ErrUnavailable", err)
			}
			if n := f.tries("1"); n != partAttempts {
				t.Errorf("part 1 sent %d times, want %d", n, partAttempts)
			}
			if n := uploads(t, s, key); n != 0 {
				t.Errorf("%d unfinished uploads left on %s", n, key)
			}
			if keys := listKeys(t, s, s.ingestPrefix()); len(keys) != 0 {
				t.Errorf("ingest objects left: %v", keys)
			}
			if _, err := s.Stat(ctx, digest.FromBytes(other)); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("Stat of the failed write = %v, want ErrNotFound", err)
			}
		})
	}
}

// TestPartsPermanentErrorsNotRetried: a full store (507) is not retried:
// the part is sent once and the write fails as ErrNoSpace at once, leaving
// no unfinished upload.
func TestPartsPermanentErrorsNotRetried(t *testing.T) {
	m := testenv.MinIO(t)
	f := newFlakyParts(t, m)
	f.first["1"] = "507"
	s := newStore(t, m)
	direct := f.store(t, m, s)
	ctx := context.Background()
	data := randBytes(t, 6<<20)
	w, err := direct.Writer(ctx, blob.WriteOptions{Expected: digest.FromBytes(data)})
	if err != nil {
		t.Fatal(err)
	}
	key := w.(*partWriter).key
	_, err = w.Write(data)
	if err == nil {
		_, err = w.Commit(ctx, int64(len(data)), "")
	}
	w.Close()
	if !errors.Is(err, errdefs.ErrNoSpace) {
		t.Fatalf("write to a full store: err = %v, want ErrNoSpace", err)
	}
	if n := f.tries("1"); n != 1 {
		t.Errorf("part 1 sent %d times to a full store, want 1", n)
	}
	if n := uploads(t, s, key); n != 0 {
		t.Errorf("%d unfinished uploads left on %s", n, key)
	}
}

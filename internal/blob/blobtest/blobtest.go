// Package blobtest is the conformance suite every blob.Store backend runs.
//
// It is a plain list of named subtests; a backend's test calls Run with a
// constructor that returns a fresh, empty store. The tests of writing run
// twice: "Streamed" (the digest is only given to Commit) and "Declared"
// (the digest is given to Writer up front, which lets a backend write
// straight to the final location), since a backend may take two paths.
// A backend with the blob.IndexStore capability also runs the
// "IndexStore/…" tests (index.go).
package blobtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/zeebo/blake3"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
)

// Run runs the suite. newStore must return an empty store each call.
func Run(t *testing.T, newStore func(t *testing.T) blob.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, blob.Store)
	}{
		{"RangedReads", testRangedReads},
		{"WrongSizeCommitsNothing", testWrongSize},
		{"DeclaredDigestBindsCommit", testDeclaredBinds},
		{"DeleteAndNotFound", testDelete},
		{"Walk", testWalk},
		{"InvalidDigest", testInvalidDigest},
		{"BLAKE3", testBLAKE3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
	writes := []struct {
		name string
		fn   func(*testing.T, blob.Store, mode)
	}{
		{"IngestOpenRoundTrip", testRoundTrip},
		{"WrongDigestCommitsNothing", testWrongDigest},
		{"CloseDiscards", testCloseDiscards},
		{"CommitExistingIsIdempotent", testIdempotent},
		{"EmptyBlob", testEmpty},
		{"ConcurrentSameContent", testConcurrent},
	}
	for _, m := range []mode{streamed, declared} {
		for _, tc := range writes {
			t.Run(tc.name+"/"+m.String(), func(t *testing.T) { tc.fn(t, newStore(t), m) })
		}
	}
	if _, ok := newStore(t).(blob.IndexStore); ok {
		runIndexTests(t, newStore)
	}
}

// mode is how a write learns its digest.
type mode bool

const (
	streamed mode = false // only Commit is given the digest
	declared mode = true  // Writer is given it up front
)

func (m mode) String() string {
	if m == declared {
		return "Declared"
	}
	return "Streamed"
}

// writer starts a write of content with digest d in mode m.
func writer(t *testing.T, s blob.Store, m mode, d digest.Digest, size int64) blob.Writer {
	t.Helper()
	opts := blob.WriteOptions{}
	if m == declared {
		opts = blob.WriteOptions{Expected: d, SizeHint: size}
	}
	w, err := s.Writer(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// ingest writes data in mode m and commits it with its digest.
func ingest(s blob.Store, m mode, data []byte, want digest.Digest) (blob.Info, error) {
	opts := blob.WriteOptions{}
	if m == declared {
		opts.Expected = want
	}
	w, err := s.Writer(context.Background(), opts)
	if err != nil {
		return blob.Info{}, err
	}
	if _, err := w.Write(data); err != nil {
		w.Close()
		return blob.Info{}, err
	}
	return w.Commit(context.Background(), int64(len(data)), want)
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func put(t *testing.T, s blob.Store, data []byte) blob.Info {
	t.Helper()
	info, err := blob.Ingest(context.Background(), s, bytes.NewReader(data), int64(len(data)), digest.FromBytes(data))
	if err != nil {
		t.Fatalf("ingest: %v", err)
	}
	return info
}

func readAll(t *testing.T, s blob.Store, d digest.Digest) []byte {
	t.Helper()
	r, err := s.Open(context.Background(), d)
	if err != nil {
		t.Fatalf("open %s: %v", d, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func assertAbsent(t *testing.T, s blob.Store, d digest.Digest) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Stat(ctx, d); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stat(%s) = %v, want ErrNotFound", d, err)
	}
	if _, err := s.Open(ctx, d); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Open(%s) = %v, want ErrNotFound", d, err)
	}
	s.Walk(ctx, func(i blob.Info) error {
		if i.Digest == d {
			t.Errorf("Walk lists %s, which was never committed", d)
		}
		return nil
	})
}

func testRoundTrip(t *testing.T, s blob.Store, m mode) {
	data := randBytes(t, 3<<20+17)
	ctx := context.Background()
	w := writer(t, s, m, digest.FromBytes(data), int64(len(data)))
	// Odd chunk sizes exercise both hashing paths.
	for off := 0; off < len(data); {
		n := min(len(data)-off, 1+off%200000)
		if _, err := w.Write(data[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	want := digest.FromBytes(data)
	if w.Digest() != want || w.Size() != int64(len(data)) {
		t.Fatalf("writer reports %s/%d, want %s/%d", w.Digest(), w.Size(), want, len(data))
	}
	info, err := w.Commit(ctx, int64(len(data)), want)
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != want || info.Size != int64(len(data)) {
		t.Fatalf("commit info %+v", info)
	}
	if got := readAll(t, s, want); !bytes.Equal(got, data) {
		t.Fatal("content read back differs")
	}
	st, err := s.Stat(ctx, want)
	if err != nil || st.Size != int64(len(data)) || st.Digest != want {
		t.Fatalf("Stat = %+v, %v", st, err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("Close after Commit = %v, want nil", err)
	}
	if _, err := s.Stat(ctx, want); err != nil {
		t.Error("Close after Commit removed the blob")
	}
}

func testRangedReads(t *testing.T, s blob.Store) {
	data := randBytes(t, 1<<20)
	info := put(t, s, data)
	r, err := s.Open(context.Background(), info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 1000)
	if _, err := r.ReadAt(buf, 500000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[500000:501000]) {
		t.Error("ReadAt returned the wrong bytes")
	}
	if _, err := r.Seek(-10, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	tail, _ := io.ReadAll(r)
	if !bytes.Equal(tail, data[len(data)-10:]) {
		t.Error("Seek from end returned the wrong bytes")
	}
}

func testWrongDigest(t *testing.T, s blob.Store, m mode) {
	data := randBytes(t, 100000)
	wrong := digest.FromBytes([]byte("something else"))
	_, err := ingest(s, m, data, wrong)
	var ve *errdefs.VerificationError
	if !errors.As(err, &ve) || !errors.Is(err, errdefs.ErrVerification) {
		t.Fatalf("err = %v, want VerificationError", err)
	}
	if ve.Want != wrong || ve.Got != digest.FromBytes(data) {
		t.Errorf("error names %s/%s, want %s/%s", ve.Want, ve.Got, wrong, digest.FromBytes(data))
	}
	assertAbsent(t, s, digest.FromBytes(data))
	assertAbsent(t, s, wrong)
}

// testDeclaredBinds: a digest given to Writer binds the write. Commit with
// no digest, or with another one, still refuses content that does not match
// it, and commits nothing; a malformed declared digest is refused at once.
func testDeclaredBinds(t *testing.T, s blob.Store) {
	ctx := context.Background()
	data := randBytes(t, 70000)
	other := digest.FromBytes([]byte("other"))
	for _, commitWith := range []digest.Digest{"", digest.FromBytes(data)} {
		w, err := s.Writer(ctx, blob.WriteOptions{Expected: other})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if _, err := w.Commit(ctx, -1, commitWith); !errors.Is(err, errdefs.ErrVerification) {
			t.Errorf("declared %s, wrote other bytes, Commit(%q) = %v; want ErrVerification", other, commitWith, err)
		}
		assertAbsent(t, s, digest.FromBytes(data))
		assertAbsent(t, s, other)
	}
	w, err := s.Writer(ctx, blob.WriteOptions{Expected: digest.FromBytes(data)})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if _, err := w.Commit(ctx, -1, other); !errors.Is(err, errdefs.ErrVerification) {
		t.Errorf("Commit with a digest other than the declared one = %v; want ErrVerification", err)
	}
	assertAbsent(t, s, digest.FromBytes(data))
	for _, d := range []digest.Digest{"md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:../../x", "sha256:ABC"} {
		if w, err := s.Writer(ctx, blob.WriteOptions{Expected: d}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Writer(Expected: %q) = %v, want ErrInvalidArgument", d, err)
			if w != nil {
				w.Close()
			}
		}
	}
}

func testWrongSize(t *testing.T, s blob.Store) {
	data := randBytes(t, 1000)
	_, err := blob.Ingest(context.Background(), s, bytes.NewReader(data), 1001, "")
	if !errors.Is(err, errdefs.ErrVerification) {
		t.Fatalf("err = %v, want ErrVerification", err)
	}
	assertAbsent(t, s, digest.FromBytes(data))
}

func testCloseDiscards(t *testing.T, s blob.Store, m mode) {
	data := randBytes(t, 5000)
	w := writer(t, s, m, digest.FromBytes(data), int64(len(data)))
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	assertAbsent(t, s, digest.FromBytes(data))
	if _, err := w.Commit(context.Background(), -1, ""); err == nil {
		t.Error("Commit after Close succeeded")
	}
	assertAbsent(t, s, digest.FromBytes(data))
}

func testIdempotent(t *testing.T, s blob.Store, m mode) {
	data := randBytes(t, 4096)
	a := put(t, s, data)
	b, err := ingest(s, m, data, digest.FromBytes(data))
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest != b.Digest || a.Size != b.Size {
		t.Fatalf("second commit %+v differs from first %+v", b, a)
	}
	if !bytes.Equal(readAll(t, s, a.Digest), data) {
		t.Error("content changed by second commit")
	}
}

func testEmpty(t *testing.T, s blob.Store, m mode) {
	info, err := ingest(s, m, nil, digest.FromBytes(nil))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 0 || info.Digest != digest.FromBytes(nil) {
		t.Fatalf("empty blob info %+v", info)
	}
	if got := readAll(t, s, info.Digest); len(got) != 0 {
		t.Errorf("empty blob reads %d bytes", len(got))
	}
}

func testDelete(t *testing.T, s blob.Store) {
	ctx := context.Background()
	info := put(t, s, randBytes(t, 777))
	if err := s.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	assertAbsent(t, s, info.Digest)
	if err := s.Delete(ctx, info.Digest); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
}

func testWalk(t *testing.T, s blob.Store) {
	want := map[digest.Digest]int64{}
	for i := range 5 {
		info := put(t, s, randBytes(t, 100*(i+1)))
		want[info.Digest] = info.Size
	}
	got := map[digest.Digest]int64{}
	if err := s.Walk(context.Background(), func(i blob.Info) error { got[i.Digest] = i.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("Walk saw %d blobs, want %d", len(got), len(want))
	}
	for d, n := range want {
		if got[d] != n {
			t.Errorf("Walk: %s size %d, want %d", d, got[d], n)
		}
	}
	stop := errors.New("stop")
	calls := 0
	err := s.Walk(context.Background(), func(blob.Info) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Walk did not stop on error: err=%v calls=%d", err, calls)
	}
}

func testInvalidDigest(t *testing.T, s blob.Store) {
	ctx := context.Background()
	for _, d := range []digest.Digest{"", "sha256:../../etc/passwd", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:ABC"} {
		if _, err := s.Open(ctx, d); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", d, err)
		}
		if _, err := s.Stat(ctx, d); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidArgument", d, err)
		}
		if err := s.Delete(ctx, d); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidArgument", d, err)
		}
	}
}

func testConcurrent(t *testing.T, s blob.Store, m mode) {
	data := randBytes(t, 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := ingest(s, m, data, digest.FromBytes(data))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if !bytes.Equal(readAll(t, s, digest.FromBytes(data)), data) {
		t.Error("content differs after concurrent ingest")
	}
}

func testBLAKE3(t *testing.T, s blob.Store) {
	data := randBytes(t, 300000)
	info := put(t, s, data)
	sum := blake3.Sum256(data)
	if info.BLAKE3 != hex.EncodeToString(sum[:]) {
		t.Errorf("BLAKE3 = %s, want %x", info.BLAKE3, sum)
	}
}

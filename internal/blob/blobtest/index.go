package blobtest

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
)

// indexTests are the tests of the blob.IndexStore capability, run for a
// backend whose stores have it.
var indexTests = []struct {
	name string
	fn   func(*testing.T, blob.Store, blob.IndexStore)
}{
	{"RoundTrip", testIndexRoundTrip},
	{"NotABlob", testIndexNotABlob},
	{"Limit", testIndexLimit},
	{"InvalidDigest", testIndexInvalidDigest},
	{"ReplaceIsAtomic", testIndexReplace},
}

func runIndexTests(t *testing.T, newStore func(t *testing.T) blob.Store) {
	for _, tc := range indexTests {
		t.Run("IndexStore/"+tc.name, func(t *testing.T) {
			s := newStore(t)
			x, ok := s.(blob.IndexStore)
			if !ok {
				t.Fatalf("%T has blob.IndexStore in one store and not in another", s)
			}
			tc.fn(t, s, x)
		})
	}
}

// testIndexRoundTrip: a missing record is ErrNotFound, a stored one reads
// back, a second Put replaces it, Delete removes it and a second Delete is
// no error.
func testIndexRoundTrip(t *testing.T, s blob.Store, x blob.IndexStore) {
	ctx := context.Background()
	info := put(t, s, randBytes(t, 1000))
	if _, err := x.GetIndex(ctx, info.Digest, 1<<20); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetIndex before PutIndex = %v, want ErrNotFound", err)
	}
	rec := randBytes(t, 70000)
	if err := x.PutIndex(ctx, info.Digest, rec); err != nil {
		t.Fatal(err)
	}
	if got, err := x.GetIndex(ctx, info.Digest, 1<<20); err != nil || !bytes.Equal(got, rec) {
		t.Fatalf("GetIndex = %d bytes, %v; want the %d stored", len(got), err, len(rec))
	}
	rec2 := randBytes(t, 10)
	if err := x.PutIndex(ctx, info.Digest, rec2); err != nil {
		t.Fatal(err)
	}
	if got, err := x.GetIndex(ctx, info.Digest, 1<<20); err != nil || !bytes.Equal(got, rec2) {
		t.Fatalf("GetIndex after a second PutIndex = %d bytes, %v; want the new %d", len(got), err, len(rec2))
	}
	if err := x.DeleteIndex(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := x.GetIndex(ctx, info.Digest, 1<<20); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetIndex after DeleteIndex = %v, want ErrNotFound", err)
	}
	if err := x.DeleteIndex(ctx, info.Digest); err != nil {
		t.Fatalf("DeleteIndex of a missing record = %v, want nil", err)
	}
	if got := readAll(t, s, info.Digest); len(got) != 1000 {
		t.Fatalf("the blob has %d bytes after its index went, want 1000", len(got))
	}
}

// testIndexNotABlob: a record is invisible to Open, Stat and Walk, and
// deleting a blob is the caller's business, not a side effect on records.
func testIndexNotABlob(t *testing.T, s blob.Store, x blob.IndexStore) {
	ctx := context.Background()
	orphan := digest.FromBytes([]byte("no such blob"))
	if err := x.PutIndex(ctx, orphan, []byte("record")); err != nil {
		t.Fatal(err)
	}
	assertAbsent(t, s, orphan)
	n := 0
	if err := s.Walk(ctx, func(blob.Info) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("Walk saw %d blobs (%v) in a store holding only a record", n, err)
	}
	info := put(t, s, randBytes(t, 500))
	if err := x.PutIndex(ctx, info.Digest, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	if got, err := x.GetIndex(ctx, info.Digest, 100); err != nil || string(got) != "kept" {
		t.Fatalf("GetIndex after the blob's Delete = %q, %v; want the record (deleting it is the caller's)", got, err)
	}
}

// testIndexLimit: a record over the reader's limit is refused as corrupt;
// one at the limit is read.
func testIndexLimit(t *testing.T, s blob.Store, x blob.IndexStore) {
	ctx := context.Background()
	d := digest.FromBytes([]byte("limit"))
	rec := randBytes(t, 4096)
	if err := x.PutIndex(ctx, d, rec); err != nil {
		t.Fatal(err)
	}
	if got, err := x.GetIndex(ctx, d, 4096); err != nil || len(got) != 4096 {
		t.Fatalf("GetIndex at the limit = %d bytes, %v", len(got), err)
	}
	if got, err := x.GetIndex(ctx, d, 4095); !errors.Is(err, errdefs.ErrCorrupt) || got != nil {
		t.Fatalf("GetIndex over the limit = %d bytes, %v; want ErrCorrupt", len(got), err)
	}
}

func testIndexInvalidDigest(t *testing.T, s blob.Store, x blob.IndexStore) {
	ctx := context.Background()
	for _, d := range []digest.Digest{"", "sha256:../../etc/passwd", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:ABC"} {
		if err := x.PutIndex(ctx, d, []byte("x")); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("PutIndex(%q) = %v, want ErrInvalidArgument", d, err)
		}
		if _, err := x.GetIndex(ctx, d, 10); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("GetIndex(%q) = %v, want ErrInvalidArgument", d, err)
		}
		if err := x.DeleteIndex(ctx, d); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("DeleteIndex(%q) = %v, want ErrInvalidArgument", d, err)
		}
	}
}

// testIndexReplace: readers racing with a writer that replaces a record
// see one record or the other whole, never a mix or a short one.
func testIndexReplace(t *testing.T, s blob.Store, x blob.IndexStore) {
	ctx := context.Background()
	d := digest.FromBytes([]byte("replace"))
	a, b := bytes.Repeat([]byte{'a'}, 256<<10), bytes.Repeat([]byte{'b'}, 256<<10)
	if err := x.PutIndex(ctx, d, a); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := x.GetIndex(ctx, d, 1<<20)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
					errs <- errors.New("a reader saw a record that is neither the old nor the new")
					return
				}
			}
		}()
	}
	for i := range 20 {
		rec := a
		if i%2 == 0 {
			rec = b
		}
		if err := x.PutIndex(ctx, d, rec); err != nil {
			t.Error(err)
			break
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

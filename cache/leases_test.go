package cache

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/testenv"
)

// blobsPresent counts the committed blobs of c (without List, which itself
// refuses when leases are unreadable).
func blobsPresent(t *testing.T, c *Cache) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(c.Dir(), "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// within runs fn and fails the test if it has not returned in 20 s (an
// unreadable lease must never hang prune).
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s hung", what)
	}
}

// TestUnreadableLeasesStopPruneAndRm: prune and rm at their most aggressive
// over a cache whose leases/ holds something that cannot be read (as root,
// so not a chmod: a damaged file, a directory, a FIFO, leases/ not a
// directory). They delete nothing and say why, with ErrCorrupt.
func TestUnreadableLeasesStopPruneAndRm(t *testing.T) {
	h := newHead(t)
	da := h.push(t, "a", randBytes(3000))
	h.push(t, "b", randBytes(4000))
	damages := map[string]func(t *testing.T, leases string){
		"damaged file": func(t *testing.T, leases string) {
			os.WriteFile(filepath.Join(leases, "0123.json"), []byte(`{"holder":"vm-1","digest":`), 0o600)
		},
		"no digest": func(t *testing.T, leases string) {
			os.WriteFile(filepath.Join(leases, "0123.json"), []byte(`{"holder":"vm-1"}`), 0o600)
		},
		"directory": func(t *testing.T, leases string) {
			os.Mkdir(filepath.Join(leases, "0123.json"), 0o755)
		},
		"fifo": func(t *testing.T, leases string) {
			if err := syscall.Mkfifo(filepath.Join(leases, "0123.json"), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"leases is a file": func(t *testing.T, leases string) {
			os.Remove(leases)
			os.WriteFile(leases, []byte("x"), 0o600)
		},
	}
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			c := openCache(t, h)
			for _, n := range []string{"a", "b"} {
				if _, err := c.Ensure(ctx, n, EnsureOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			damage(t, filepath.Join(c.Dir(), "leases"))
			var err error
			within(t, "prune", func() {
				_, err = c.Prune(ctx, PruneOptions{MaxAge: time.Nanosecond, MaxSize: 1, Orphans: true})
			})
			if !errors.Is(err, errdefs.ErrCorrupt) || !strings.Contains(err.Error(), "prune and rm delete nothing") {
				t.Errorf("prune over unreadable leases: %v; want ErrCorrupt that says nothing was deleted", err)
			}
			if n := blobsPresent(t, c); n != 2 {
				t.Fatalf("prune deleted %d of 2 blobs although it could not read the leases", 2-n)
			}
			within(t, "rm", func() { _, err = c.Remove(ctx, "a@"+da.String(), RemoveOptions{}) })
			if !errors.Is(err, errdefs.ErrCorrupt) {
				t.Errorf("rm over unreadable leases: %v; want ErrCorrupt", err)
			}
			if n := blobsPresent(t, c); n != 2 {
				t.Fatal("rm deleted a blob although it could not read the leases")
			}
			if _, err := c.Leases(); !errors.Is(err, errdefs.ErrCorrupt) {
				t.Errorf("Leases() = %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestEnsureLeasesBeforeTheBlobIsVisible: with EnsureOptions.Lease the
// lease exists before the first byte is fetched (containerd's WithLease),
// so no prune can run between commit and lease. A failed Ensure gives its
// new lease back.
func TestEnsureLeasesBeforeTheBlobIsVisible(t *testing.T) {
	data := randBytes(100000)
	d := digest.FromBytes(data)
	var c *Cache
	var heldAtFetch atomic.Int32 // 1: leased when the body was asked for; 2: not
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && heldAtFetch.Load() == 0 {
			heldAtFetch.Store(2)
			if ls, err := c.Leases(); err == nil && len(ls) == 1 && ls[0].Holder == "vm-1" && ls[0].Digest == d {
				heldAtFetch.Store(1)
			}
		}
		http.ServeContent(w, r, "disk.raw", time.Time{}, strings.NewReader(string(data)))
	}))
	t.Cleanup(srv.Close)
	c, _ = Open(t.TempDir(), Options{})
	img, err := c.Ensure(ctx, srv.URL+"/disk.raw", EnsureOptions{Checksum: d, Lease: "vm-1"})
	if err != nil || !img.Fetched {
		t.Fatalf("ensure: %+v %v", img, err)
	}
	if heldAtFetch.Load() != 1 {
		t.Fatal("the blob was fetched (and would have been committed) before its lease existed")
	}
	if ls, _ := c.Leases(); len(ls) != 1 || ls[0].Digest != d {
		t.Fatalf("leases after ensure: %+v", ls)
	}
	// Content that is not what was pinned: the Ensure fails and leaves no
	// lease on the digest it wanted.
	other := digest.FromString("not served")
	if _, err := c.Ensure(ctx, srv.URL+"/disk.raw", EnsureOptions{Checksum: other, Lease: "vm-1"}); !errors.Is(err, errdefs.ErrVerification) {
		t.Fatalf("ensure of a wrong pin: %v", err)
	}
	if ls, _ := c.Leases(); len(ls) != 1 || ls[0].Digest != d {
		t.Fatalf("a failed ensure left leases: %+v", ls)
	}
}

// TestPruneRacingLeasedEnsure: one goroutine prunes at its most aggressive
// while another ensures a blob with a lease, checks the returned path, and
// releases the lease, over and over. A lease taken while prune runs is
// honoured (prune reads the leases again under the digest lock before it
// deletes), so the path an Ensure returns always exists.
func TestPruneRacingLeasedEnsure(t *testing.T) {
	h := newHead(t)
	d := h.push(t, "img", randBytes(64<<10))
	c := openCache(t, h)
	ref := "img@" + d.String()
	var stop atomic.Bool
	var prunes, deletions atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			rep, err := c.Prune(ctx, PruneOptions{MaxAge: -1, MaxSize: 1})
			if err != nil {
				t.Error(err)
				return
			}
			prunes.Add(1)
			deletions.Add(int64(len(rep.Rules[2].Blobs)))
		}
	}()
	for i := 0; i < 200 && !t.Failed(); i++ {
		img, err := c.Ensure(ctx, ref, EnsureOptions{Lease: "vm-1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(img.Path); err != nil {
			t.Errorf("round %d: Ensure returned %s, which a prune deleted: %v", i, img.Path, err)
		}
		if _, err := c.RemoveLeases("vm-1", d); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d prunes deleted the blob %d times", prunes.Load(), deletions.Load())
	if deletions.Load() == 0 {
		t.Error("prune never deleted the blob: the race was not exercised")
	}
}

// TestRmRefusesLeasedBlob: rm of a leased blob changes nothing and names
// the holders; --force deletes it.
func TestRmRefusesLeasedBlob(t *testing.T) {
	h := newHead(t)
	d := h.push(t, "img", randBytes(5000))
	c := openCache(t, h)
	if _, err := c.Ensure(ctx, "img", EnsureOptions{Lease: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddLease("job-7", d, "img", 0); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"img", "img@" + d.String()} {
		_, err := c.Remove(ctx, ref, RemoveOptions{})
		var le *LeasedError
		if !errors.As(err, &le) || !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "vm-1") || !strings.Contains(err.Error(), "job-7") {
			t.Fatalf("rm %s of a leased blob: %v; want ErrConflict naming vm-1 and job-7", ref, err)
		}
		if blobsPresent(t, c) != 1 {
			t.Fatal("the refused rm deleted the blob")
		}
		if _, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Never}); err != nil {
			t.Fatalf("the refused rm dropped the pointer: %v", err)
		}
	}
	deleted, err := c.Remove(ctx, "img", RemoveOptions{Force: true})
	if err != nil || len(deleted) != 1 || deleted[0] != d || blobsPresent(t, c) != 0 {
		t.Fatalf("rm --force: %v %v", deleted, err)
	}
}

// TestQuarantineMarkSurvivesConcurrentUse: an Ensure has read a blob's
// record (to refresh last_used) when verify finds the blob corrupt and
// quarantines it. The quarantine waits for the digest lock, so the
// Ensure's write-back cannot erase the Quarantined mark.
func TestQuarantineMarkSurvivesConcurrentUse(t *testing.T) {
	h := newHead(t)
	d := h.push(t, "img", randBytes(1<<20))
	c := openCache(t, h)
	ref := "img@" + d.String()
	if _, err := c.Ensure(ctx, ref, EnsureOptions{}); err != nil {
		t.Fatal(err)
	}
	rec, _, _ := readJSON[BlobRecord](c.recordPath(d))
	rec.LastUsed = time.Now().Add(-time.Hour) // the next use writes the record
	writeJSON(c.recordPath(d), rec, false)
	flipByte(t, c.BlobPath(d), 4321) // corrupt, same fingerprint

	read, proceed, busy := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var readOnce, busyOnce sync.Once
	testHookRecordRead = func(digest.Digest) { readOnce.Do(func() { close(read); <-proceed }) }
	testHookLockBusy = func(digest.Digest) { busyOnce.Do(func() { close(busy) }) }
	t.Cleanup(func() { testHookRecordRead, testHookLockBusy = nil, nil })

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := c.Ensure(ctx, ref, EnsureOptions{Policy: Never}); err != nil {
			t.Error(err)
		}
	}()
	<-read // the Ensure holds the record it read
	verified := make(chan struct{})
	go func() {
		defer close(verified)
		res, err := c.Verify(ctx, VerifyOptions{Digests: []digest.Digest{d}})
		if err != nil || len(res) != 1 || res[0].Status != StatusCorrupt {
			t.Errorf("verify: %+v %v", res, err)
		}
	}()
	select {
	case <-busy: // the quarantine waits for the Ensure to finish with the record
	case <-verified: // the quarantine did not wait
	}
	close(proceed)
	wg.Wait()
	<-verified
	rec, _, err := readJSON[BlobRecord](c.recordPath(d))
	if err != nil || rec.Quarantined == "" {
		t.Fatalf("record after quarantine and a concurrent use: %+v %v; the Quarantined mark was lost", rec, err)
	}
}

// TestFullCacheWritingTheIndex: the cache is a real 4 MiB tmpfs, full when
// an Ensure has to write a pointer. The error is ErrNoSpace (exit 11), as
// for every other full disk.
func TestFullCacheWritingTheIndex(t *testing.T) {
	h := newHead(t)
	h.push(t, "img", randBytes(1<<20))
	dir := t.TempDir()
	testenv.Tmpfs(t, dir, 4)
	c, err := Open(dir, Options{Depot: h.admin})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(ctx, "img", EnsureOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	_, err = c.Ensure(ctx, "img", EnsureOptions{Policy: Always}) // resolves, then rewrites the pointer
	if !errors.Is(err, errdefs.ErrNoSpace) {
		t.Fatalf("ensure with a full cache index: %v; want ErrNoSpace", err)
	}
}

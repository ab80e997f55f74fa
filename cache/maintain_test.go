package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// flipByte corrupts one byte in place while keeping the stat fingerprint
// (inode, size, mode, mtime), so only hashing can catch it.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	fi, _ := os.Stat(path)
	os.Chmod(path, 0o644)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x01
	f.WriteAt(b, off)
	f.Close()
	os.Chmod(path, fi.Mode())
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
}

// TestR3FlipOneByte: detected by verify, quarantined, re-fetched by
// verify --repair and by the next ensure.
func TestR3FlipOneByte(t *testing.T) {
	h := newHead(t)
	a, b := randBytes(2<<20), randBytes(2<<20)
	da, db := h.push(t, "a", a), h.push(t, "b", b)
	c := openCache(t, h)
	c.Ensure(ctx, "a", EnsureOptions{})
	c.Ensure(ctx, "b", EnsureOptions{})
	for _, full := range []bool{false, true} {
		if res, err := c.Verify(ctx, VerifyOptions{Full: full}); err != nil || len(res) != 2 || res[0].Status != StatusOK || res[1].Status != StatusOK {
			t.Fatalf("clean verify (full=%v): %+v %v", full, res, err)
		}
	}
	flipByte(t, c.BlobPath(da), 123456)
	flipByte(t, c.BlobPath(db), 7)
	// The default BLAKE3 scrub catches a flip the fingerprint cannot see.
	res, err := c.Verify(ctx, VerifyOptions{Digests: []digest.Digest{da}})
	if err != nil || len(res) != 1 || res[0].Status != StatusCorrupt || !res[0].Bad() || res[0].Detail != "content does not match its digest; quarantined" {
		t.Fatalf("verify after flip (must be caught by the hash, not the fingerprint): %+v %v", res, err)
	}
	if _, err := os.Stat(c.BlobPath(da)); !os.IsNotExist(err) {
		t.Fatal("corrupt blob still in blobs/")
	}
	if q, _ := c.Quarantined(); len(q) != 1 {
		t.Fatalf("quarantine holds %d files", len(q))
	}
	// The pointer was dropped: Never now finds nothing.
	if _, err := c.Ensure(ctx, "a", EnsureOptions{Policy: Never}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("pointer to a corrupt blob survived: %v", err)
	}
	// The next ensure re-fetches it.
	img, err := c.Ensure(ctx, "a", EnsureOptions{})
	if err != nil || !img.Fetched || !bytes.Equal(mustRead(t, img.Path), a) {
		t.Fatalf("ensure after quarantine: %+v %v", img, err)
	}
	// verify --full --repair finds b and fetches it back.
	res, err = c.Verify(ctx, VerifyOptions{Full: true, Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Digest > res[1].Digest {
		t.Fatalf("results: %+v", res)
	}
	for _, r := range res {
		want := StatusOK
		if r.Digest == db {
			want = StatusRepaired
		}
		if r.Status != want {
			t.Errorf("%s: %s (%s), want %s", r.Digest, r.Status, r.Detail, want)
		}
	}
	if !bytes.Equal(mustRead(t, c.BlobPath(db)), b) {
		t.Fatal("repaired blob differs")
	}
}

func TestVerifyMissingAndFingerprint(t *testing.T) {
	h := newHead(t)
	d := h.push(t, "m", randBytes(5000))
	c := openCache(t, h)
	c.Ensure(ctx, "m", EnsureOptions{})
	os.Chtimes(c.BlobPath(d), time.Now(), time.Now().Add(time.Hour)) // fingerprint changes, content does not
	res, _ := c.Verify(ctx, VerifyOptions{})
	if len(res) != 1 || res[0].Status != StatusFingerprint || res[0].Bad() {
		t.Fatalf("touched blob: %+v", res)
	}
	os.Remove(c.BlobPath(d))
	res, _ = c.Verify(ctx, VerifyOptions{Repair: true})
	if len(res) != 1 || res[0].Status != StatusRepaired {
		t.Fatalf("missing blob with --repair: %+v", res)
	}
}

func TestSourcesCheck(t *testing.T) {
	h := newHead(t)
	dir := t.TempDir()
	s, gets := fileServer(t, dir)
	v1 := randBytes(5000)
	os.WriteFile(filepath.Join(dir, "d.img"), v1, 0o644)
	os.WriteFile(filepath.Join(dir, "d.img.sha256"), []byte(digest.FromBytes(v1).Encoded()+"  d.img\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "e.img"), v1, 0o644)
	os.WriteFile(filepath.Join(dir, "e.img.sha256"), []byte(digest.FromBytes(v1).Encoded()+"\n"), 0o644)
	h.push(t, "same", randBytes(100))
	h.push(t, "moves", randBytes(100))
	h.push(t, "gone", randBytes(100))
	c := openCache(t, h)
	for _, r := range []string{s.URL + "/d.img", s.URL + "/e.img", "same", "moves", "gone"} {
		if _, err := c.Ensure(ctx, r, EnsureOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	v2 := randBytes(5000)
	os.WriteFile(filepath.Join(dir, "d.img"), v2, 0o644)
	os.WriteFile(filepath.Join(dir, "d.img.sha256"), []byte(digest.FromBytes(v2).Encoded()+"  d.img\n"), 0o644)
	os.Remove(filepath.Join(dir, "e.img.sha256")) // the checksum file disappears
	newMoves := h.push(t, "moves", randBytes(100))
	h.admin.DeleteImage(ctx, "gone")
	bodies := gets.Load()
	res, err := c.CheckSources(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if gets.Load() != bodies {
		t.Error("the source check downloaded bodies")
	}
	want := map[string]string{s.URL + "/d.img": UpstreamChanged, s.URL + "/e.img": UpstreamGone, "same": UpstreamCurrent, "moves": UpstreamChanged, "gone": UpstreamGone}
	for _, r := range res {
		if want[r.Ref] != r.Status {
			t.Errorf("%s: %s (%s), want %s", r.Ref, r.Status, r.Detail, want[r.Ref])
		}
		delete(want, r.Ref)
	}
	if len(want) != 0 {
		t.Errorf("not checked: %v", want)
	}
	res, _ = c.CheckSources(ctx, true)
	for _, r := range res {
		if r.Ref == "moves" && !r.Refreshed {
			t.Errorf("moves not refreshed: %+v", r)
		}
	}
	if img, _ := c.Ensure(ctx, "moves", EnsureOptions{Policy: Never}); img.Digest != newMoves {
		t.Errorf("after refresh moves = %s, want %s", img.Digest, newMoves)
	}
	ents, _ := c.List(ctx)
	states := map[string][]string{}
	for _, e := range ents {
		for _, p := range e.Pointers {
			states[p.Ref] = e.States
		}
	}
	if st := states["gone"]; len(st) == 0 || st[0] != "orphaned" {
		t.Errorf("gone entry states %v", st)
	}
}

// TestLeasedReaderUndisturbed: a VM-like reader holds a lease and keeps
// reading while verify and prune run; it never breaks and the blob stays.
func TestLeasedReaderUndisturbed(t *testing.T) {
	h := newHead(t)
	data := randBytes(4 << 20)
	d := h.push(t, "vm", data)
	c := openCache(t, h)
	img, err := c.Ensure(ctx, "vm", EnsureOptions{Lease: "vm-42"})
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, err := os.Open(img.Path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		for !stop.Load() {
			f.Seek(0, io.SeekStart)
			got, err := io.ReadAll(f)
			if err != nil || !bytes.Equal(got, data) {
				t.Error("the reader saw an error or different bytes")
				return
			}
			reads.Add(1)
		}
	}()
	for range 3 {
		if _, err := c.Verify(ctx, VerifyOptions{Full: true}); err != nil {
			t.Fatal(err)
		}
		// Every rule at its most aggressive: budget 1 byte, age 0.
		rep, err := c.Prune(ctx, PruneOptions{MaxAge: time.Nanosecond, MaxSize: 1, Orphans: true, PartAge: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.Rules {
			for _, x := range r.Blobs {
				if x == d {
					t.Fatalf("rule %s pruned the leased blob", r.Rule)
				}
			}
		}
		if _, err := os.Stat(img.Path); err != nil {
			t.Fatal("the leased blob was removed")
		}
	}
	stop.Store(true)
	wg.Wait()
	if reads.Load() == 0 {
		t.Fatal("the reader never completed a read")
	}
	// Released and expired leases no longer protect.
	if _, err := c.RemoveLeases("vm-42", ""); err != nil {
		t.Fatal(err)
	}
	c.AddLease("short", d, "vm", time.Nanosecond)
	time.Sleep(time.Millisecond)
	rep, _ := c.Prune(ctx, PruneOptions{MaxAge: -1, MaxSize: 1})
	if rep.LeasesReaped != 1 || len(rep.Rules[2].Blobs) != 1 {
		t.Fatalf("after release: %+v", rep)
	}
}

// TestPruneRules covers each rule on one synthetic cache, including the
// orphan case of seed 000.
func TestPruneRules(t *testing.T) {
	h := newHead(t)
	c := openCache(t, h)
	old := h.push(t, "old-identical", randBytes(1000))
	recent := h.push(t, "recent", randBytes(2000))
	moved := h.push(t, "moved", randBytes(3000))
	orphan := h.push(t, "orphan", randBytes(4000))
	ws := h.push(t, "edited", randBytes(5000))
	for _, n := range []string{"old-identical", "recent", "moved", "orphan", "edited"} {
		if _, err := c.Ensure(ctx, n, EnsureOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	age := func(d digest.Digest, by time.Duration) {
		rec, _, _ := readJSON[BlobRecord](c.recordPath(d))
		rec.LastUsed = time.Now().Add(-by)
		writeJSON(c.recordPath(d), rec, false)
	}
	for _, d := range []digest.Digest{old, moved, orphan, ws} {
		age(d, 2*time.Hour)
	}
	age(recent, time.Minute)
	h.push(t, "moved", randBytes(3000)) // no longer identical to the server
	img, _ := h.admin.GetImage(ctx, "orphan")
	h.admin.DeleteImage(ctx, "orphan")
	edited, _ := h.admin.GetImage(ctx, "edited")
	os.MkdirAll(filepath.Join(c.Dir(), "work", edited.UID), 0o755) // an edit workspace
	os.WriteFile(filepath.Join(c.Dir(), "ingest", digest.FromString("x").Encoded()+".part"), make([]byte, 777), 0o644)
	oldTime := time.Now().Add(-48 * time.Hour)
	os.Chtimes(filepath.Join(c.Dir(), "ingest", digest.FromString("x").Encoded()+".part"), oldTime, oldTime)

	// Dry run: reports, deletes nothing.
	dry, err := c.Prune(ctx, PruneOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Rules[0].Blobs) != 1 || dry.Rules[0].Blobs[0] != old || dry.Rules[0].Bytes != 1000 {
		t.Fatalf("dry identical: %+v", dry.Rules[0])
	}
	if ents, _ := c.List(ctx); len(ents) != 5 {
		t.Fatal("dry run deleted something")
	}
	var order []string
	for _, r := range dry.Rules {
		order = append(order, r.Rule)
	}
	if want := []string{RuleIdentical, RuleOrphans, RuleSize, RulePartials}; !slices.Equal(order, want) || !dry.DryRun {
		t.Errorf("report rules %q (dry run %v), want one result per rule in %q", order, dry.DryRun, want)
	}
	rep, err := c.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byRule := map[string]RuleResult{}
	for _, r := range rep.Rules {
		byRule[r.Rule] = r
	}
	if r := byRule[RuleIdentical]; len(r.Blobs) != 1 || r.Blobs[0] != old {
		t.Errorf("identical: %+v (recent, moved, orphan and workspace entries must stay)", r)
	}
	if len(rep.Orphans) != 1 || rep.Orphans[0].UID != img.UID || rep.Orphans[0].Next == "" || len(byRule[RuleOrphans].Blobs) != 0 {
		t.Errorf("orphans: %+v %+v", rep.Orphans, byRule[RuleOrphans])
	}
	if r := byRule[RulePartials]; len(r.Blobs) != 1 || r.Bytes != 777 {
		t.Errorf("partials: %+v", r)
	}
	if len(rep.Kept) != 1 {
		t.Errorf("kept: %v (want the workspace entry)", rep.Kept)
	}
	if _, err := os.Stat(c.BlobPath(orphan)); err != nil {
		t.Fatal("an orphan was deleted without --orphans")
	}
	// --orphans deletes it; a size budget evicts least recently used first
	// (moved is older than recent), never the workspace entry.
	rep, _ = c.Prune(ctx, PruneOptions{Orphans: true, MaxSize: 2000 + 5000})
	byRule = map[string]RuleResult{}
	for _, r := range rep.Rules {
		byRule[r.Rule] = r
	}
	if r := byRule[RuleOrphans]; len(r.Blobs) != 1 || r.Blobs[0] != orphan {
		t.Errorf("--orphans: %+v", r)
	}
	if r := byRule[RuleSize]; len(r.Blobs) != 1 || r.Blobs[0] != moved || r.Bytes != 3000 {
		t.Errorf("size budget: %+v", r)
	}
	left := map[digest.Digest]bool{}
	ents, _ := c.List(ctx)
	for _, e := range ents {
		left[e.Record.Digest] = true
	}
	if len(left) != 2 || !left[recent] || !left[ws] {
		t.Errorf("left: %v", left)
	}
}

// TestOtherServersEntriesAreNotJudged: an entry fetched from server A is
// neither orphaned nor pruned as identical when the cache talks to server B.
func TestOtherServersEntriesAreNotJudged(t *testing.T) {
	a, b := newHead(t), newHead(t)
	da := a.push(t, "img", randBytes(1000))
	dir := t.TempDir()
	ca, _ := Open(dir, Options{Depot: a.admin})
	if _, err := ca.Ensure(ctx, "img", EnsureOptions{}); err != nil {
		t.Fatal(err)
	}
	rec, _, _ := readJSON[BlobRecord](ca.recordPath(da))
	rec.LastUsed = time.Now().Add(-2 * time.Hour)
	writeJSON(ca.recordPath(da), rec, false)
	cb, _ := Open(dir, Options{Depot: b.admin}) // same cache, other server
	rep, err := cb.Prune(ctx, PruneOptions{Orphans: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Orphans) != 0 || len(rep.Rules[0].Blobs) != 0 || len(rep.Rules[1].Blobs) != 0 {
		t.Fatalf("server B judged server A's entry: %+v", rep)
	}
	res, _ := cb.CheckSources(ctx, false)
	if len(res) != 1 || res[0].Status != UpstreamUnreachable || !strings.Contains(res[0].Detail, "another server") {
		t.Fatalf("sources check: %+v", res)
	}
	if _, err := os.Stat(cb.BlobPath(da)); err != nil {
		t.Fatal("the entry was deleted")
	}
}

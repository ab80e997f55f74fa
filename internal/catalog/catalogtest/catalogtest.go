// Package catalogtest is the conformance suite every catalog.Catalog backend
// runs, unchanged. A backend's test calls Run with a constructor returning a
// fresh, empty catalog.
package catalogtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/names"
)

// Run runs the suite.
func Run(t *testing.T, newCatalog func(t *testing.T) catalog.Catalog) {
	tests := []struct {
		name string
		fn   func(*testing.T, catalog.Catalog)
	}{
		{"CreateAndGetByUIDOrName", testCreateGet},
		{"DuplicateName", testDuplicateName},
		{"InvalidNames", testInvalidNames},
		{"GetMissing", testGetMissing},
		{"ListPaged", testList},
		{"UpdateFields", testUpdate},
		{"Rename", testRename},
		{"UpdateErrorAborts", testUpdateAborts},
		{"UIDIsImmutable", testUIDImmutable},
		{"DeleteFreesNameNewUID", testDeleteRecreate},
		{"DeleteCheckVetoes", testDeleteCheck},
		{"RefCounts", testRefCounts},
		{"GarbageCandidates", testGarbage},
		{"ConcurrentUpdatesLoseNothing", testConcurrentUpdates},
		{"ConcurrentCreateSameName", testConcurrentCreate},
		{"Tokens", testTokens},
		{"SecretGetOrCreate", testSecret},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCatalog(t)
			t.Cleanup(func() { c.Close() })
			tc.fn(t, c)
		})
	}
}

var ctx = context.Background()

func mustCreate(t *testing.T, c catalog.Catalog, img catalog.Image) catalog.Image {
	t.Helper()
	got, err := c.Create(ctx, img)
	if err != nil {
		t.Fatalf("Create(%s): %v", img.Name, err)
	}
	return got
}

func content(s string) *catalog.Content {
	return &catalog.Content{Digest: digest.FromString(s), Size: int64(len(s)), Format: "raw", MTime: time.Now().UTC()}
}

func refs(t *testing.T, c catalog.Catalog, d digest.Digest) int {
	t.Helper()
	r, err := c.Ref(ctx, d)
	if errors.Is(err, errdefs.ErrNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return r.Refs
}

func testCreateGet(t *testing.T, c catalog.Catalog) {
	img := mustCreate(t, c, catalog.Image{Name: "NewImage", Description: "d", Distro: "debian"})
	if !names.IsUID(img.UID) {
		t.Fatalf("assigned UID %q is not 32 hex", img.UID)
	}
	if img.Created.IsZero() || img.LastModified.IsZero() {
		t.Error("timestamps not set")
	}
	for _, ref := range []string{img.UID, "NewImage"} {
		got, err := c.Get(ctx, ref)
		if err != nil {
			t.Fatalf("Get(%s): %v", ref, err)
		}
		if got.UID != img.UID || got.Name != "NewImage" || got.Description != "d" || got.Distro != "debian" {
			t.Errorf("Get(%s) = %+v", ref, got)
		}
	}
}

func testDuplicateName(t *testing.T, c catalog.Catalog) {
	mustCreate(t, c, catalog.Image{Name: "a"})
	if _, err := c.Create(ctx, catalog.Image{Name: "a"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second create = %v, want ErrAlreadyExists", err)
	}
}

func testInvalidNames(t *testing.T, c catalog.Catalog) {
	for _, n := range []string{"", "../etc", "a/b", ".hidden", "-x", "a b", "0123456789abcdef0123456789abcdef", string(make([]byte, 129)), "x\x00y", "név"} {
		if _, err := c.Create(ctx, catalog.Image{Name: n}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Create(%q) = %v, want ErrInvalidArgument", n, err)
		}
	}
	imgs, _ := c.List(ctx, "", 100)
	if len(imgs) != 0 {
		t.Errorf("invalid creates stored %d images", len(imgs))
	}
}

func testGetMissing(t *testing.T, c catalog.Catalog) {
	for _, ref := range []string{"nope", catalog.NewUID()} {
		if _, err := c.Get(ctx, ref); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Get(%s) = %v, want ErrNotFound", ref, err)
		}
		if _, err := c.Update(ctx, ref, func(*catalog.Image) error { return nil }); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Update(%s) = %v, want ErrNotFound", ref, err)
		}
		if _, err := c.Delete(ctx, ref, nil); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Delete(%s) = %v, want ErrNotFound", ref, err)
		}
	}
}

func testList(t *testing.T, c catalog.Catalog) {
	for i := range 25 {
		mustCreate(t, c, catalog.Image{Name: fmt.Sprintf("img%02d", 24-i)})
	}
	var names []string
	after := ""
	for {
		page, err := c.List(ctx, after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 10 {
			t.Fatalf("page of %d > limit 10", len(page))
		}
		for _, img := range page {
			names = append(names, img.Name)
		}
		after = page[len(page)-1].Name
	}
	if len(names) != 25 {
		t.Fatalf("listed %d images, want 25", len(names))
	}
	for i, n := range names {
		if want := fmt.Sprintf("img%02d", i); n != want {
			t.Fatalf("names[%d] = %s, want %s (ordered by name)", i, n, want)
		}
	}
}

func testUpdate(t *testing.T, c catalog.Catalog) {
	img := mustCreate(t, c, catalog.Image{Name: "u"})
	got, err := c.Update(ctx, "u", func(i *catalog.Image) error {
		i.Description = "new"
		i.Frozen = true
		i.LastModifiedBy = "alice"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Description != "new" || !got.Frozen {
		t.Errorf("Update returned %+v", got)
	}
	again, _ := c.Get(ctx, img.UID)
	if again.Description != "new" || !again.Frozen || again.LastModifiedBy != "alice" {
		t.Errorf("Get after Update = %+v", again)
	}
}

func testRename(t *testing.T, c catalog.Catalog) {
	a := mustCreate(t, c, catalog.Image{Name: "a"})
	mustCreate(t, c, catalog.Image{Name: "b"})
	if _, err := c.Update(ctx, "a", func(i *catalog.Image) error { i.Name = "b"; return nil }); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("rename onto taken name = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.Update(ctx, "a", func(i *catalog.Image) error { i.Name = "../x"; return nil }); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("rename to invalid name = %v, want ErrInvalidArgument", err)
	}
	if _, err := c.Update(ctx, "a", func(i *catalog.Image) error { i.Name = "c"; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "c"); err != nil || got.UID != a.UID {
		t.Errorf("Get(c) = %+v, %v", got, err)
	}
	if _, err := c.Get(ctx, "a"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("old name still resolves: %v", err)
	}
	mustCreate(t, c, catalog.Image{Name: "a"}) // the old name is free
}

func testUpdateAborts(t *testing.T, c catalog.Catalog) {
	mustCreate(t, c, catalog.Image{Name: "x", Description: "orig"})
	boom := errors.New("boom")
	_, err := c.Update(ctx, "x", func(i *catalog.Image) error {
		i.Description = "changed"
		i.Content = content("data")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the fn error", err)
	}
	got, _ := c.Get(ctx, "x")
	if got.Description != "orig" || got.Content != nil {
		t.Errorf("aborted update was stored: %+v", got)
	}
	if n := refs(t, c, digest.FromString("data")); n != 0 {
		t.Errorf("aborted update left refcount %d", n)
	}
}

func testUIDImmutable(t *testing.T, c catalog.Catalog) {
	mustCreate(t, c, catalog.Image{Name: "x"})
	_, err := c.Update(ctx, "x", func(i *catalog.Image) error { i.UID = catalog.NewUID(); return nil })
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("UID change = %v, want ErrInvalidArgument", err)
	}
}

func testDeleteRecreate(t *testing.T, c catalog.Catalog) {
	a := mustCreate(t, c, catalog.Image{Name: "A"})
	del, err := c.Delete(ctx, "A", nil)
	if err != nil || del.UID != a.UID {
		t.Fatalf("Delete = %+v, %v", del, err)
	}
	if _, err := c.Get(ctx, a.UID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("deleted UID still resolves: %v", err)
	}
	b := mustCreate(t, c, catalog.Image{Name: "A"})
	if b.UID == a.UID {
		t.Fatal("recreated image reuses the deleted UID")
	}
	if got, _ := c.Get(ctx, "A"); got.UID != b.UID {
		t.Errorf("name resolves to %s, want the new UID %s", got.UID, b.UID)
	}
}

func testDeleteCheck(t *testing.T, c catalog.Catalog) {
	mustCreate(t, c, catalog.Image{Name: "f", Frozen: true})
	_, err := c.Delete(ctx, "f", func(i catalog.Image) error {
		if i.Frozen {
			return errdefs.ErrConflict
		}
		return nil
	})
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("Delete = %v, want the check's error", err)
	}
	if _, err := c.Get(ctx, "f"); err != nil {
		t.Error("vetoed delete removed the image")
	}
}

func testRefCounts(t *testing.T, c catalog.Catalog) {
	c1, c2 := content("one"), content("two")
	a := mustCreate(t, c, catalog.Image{Name: "a", Content: c1, History: []catalog.Content{*c1}})
	if n := refs(t, c, c1.Digest); n != 1 {
		t.Fatalf("refs(one) = %d after create, want 1", n)
	}
	// A clone shares the blob: refcount 2, no copy.
	mustCreate(t, c, catalog.Image{Name: "b", Parent: a.UID, Content: c1, History: []catalog.Content{*c1}})
	if n := refs(t, c, c1.Digest); n != 2 {
		t.Fatalf("refs(one) = %d after clone, want 2", n)
	}
	// New content on a keeps one in its history: still 2.
	c.Update(ctx, "a", func(i *catalog.Image) error {
		i.Content = c2
		i.History = append(i.History, *c2)
		return nil
	})
	if n1, n2 := refs(t, c, c1.Digest), refs(t, c, c2.Digest); n1 != 2 || n2 != 1 {
		t.Fatalf("refs after new content = %d/%d, want 2/1", n1, n2)
	}
	// Trimming the history drops a's reference to one.
	c.Update(ctx, "a", func(i *catalog.Image) error { i.History = i.History[1:]; return nil })
	if n := refs(t, c, c1.Digest); n != 1 {
		t.Fatalf("refs(one) after trim = %d, want 1", n)
	}
	c.Delete(ctx, "b", nil)
	if n := refs(t, c, c1.Digest); n != 0 {
		t.Fatalf("refs(one) after delete = %d, want 0", n)
	}
	c.Delete(ctx, "a", nil)
	if n := refs(t, c, c2.Digest); n != 0 {
		t.Fatalf("refs(two) after delete = %d, want 0", n)
	}
}

func testGarbage(t *testing.T, c catalog.Catalog) {
	t0 := time.Now().UTC()
	kept, dropped, fresh := content("kept"), content("dropped"), content("fresh")
	mustCreate(t, c, catalog.Image{Name: "k", Content: kept})
	mustCreate(t, c, catalog.Image{Name: "d", Content: dropped})
	c.Delete(ctx, "d", nil)
	if err := c.Touch(ctx, fresh.Digest, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := c.Touch(ctx, kept.Digest, t0); err != nil {
		t.Fatal(err)
	}
	cut := t0.Add(time.Minute)
	got, err := c.Collectable(ctx, cut)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Digest != dropped.Digest {
		t.Fatalf("Collectable = %+v, want only %s", got, dropped.Digest)
	}
	if err := c.Claim(ctx, kept.Digest, cut, cut); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Claim(referenced) = %v, want ErrConflict", err)
	}
	if err := c.Claim(ctx, fresh.Digest, cut, cut); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Claim(in grace) = %v, want ErrConflict", err)
	}
	if err := c.Forget(ctx, dropped.Digest); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Forget(not claimed) = %v, want ErrConflict", err)
	}
	if err := c.Claim(ctx, dropped.Digest, cut, cut); err != nil {
		t.Fatal(err)
	}
	// A second claim (another collector) keeps the first one's time.
	if err := c.Claim(ctx, dropped.Digest, cut, cut.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Ref(ctx, dropped.Digest); err != nil || !r.Claimed.Equal(cut) {
		t.Errorf("Ref of a claimed blob = %+v, %v; want Claimed %v", r, err, cut)
	}
	// While claimed, the blob can be neither touched nor referenced: an
	// upload of the same bytes must not count on bytes about to go.
	if err := c.Touch(ctx, dropped.Digest, cut); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Touch(claimed) = %v, want ErrConflict", err)
	}
	if _, err := c.Create(ctx, catalog.Image{Name: "again", Content: dropped}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Create referencing a claimed blob = %v, want ErrConflict", err)
	}
	if _, err := c.Get(ctx, "again"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the refused Create left an image: %v", err)
	}
	// A claim stays collectable, so a collector that died before Forget is
	// followed by one that finishes the job.
	if got, _ := c.Collectable(ctx, cut); len(got) != 1 || got[0].Digest != dropped.Digest || got[0].Claimed.IsZero() {
		t.Errorf("Collectable with a claim = %+v", got)
	}
	if err := c.Forget(ctx, dropped.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ref(ctx, dropped.Digest); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Ref after Forget = %v, want ErrNotFound", err)
	}
	// Forgotten, the digest is free again for an upload.
	if err := c.Touch(ctx, dropped.Digest, t0.Add(3*time.Hour)); err != nil {
		t.Errorf("Touch after Forget = %v", err)
	}
	// Re-referencing a zero-ref blob takes it out of the candidates.
	mustCreate(t, c, catalog.Image{Name: "f", Content: fresh})
	got, _ = c.Collectable(ctx, t0.Add(2*time.Hour))
	if len(got) != 0 {
		t.Errorf("Collectable after re-reference = %+v", got)
	}
}

func testConcurrentUpdates(t *testing.T, c catalog.Catalog) {
	mustCreate(t, c, catalog.Image{Name: "n", Description: "0"})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Update(ctx, "n", func(i *catalog.Image) error {
				var n int
				fmt.Sscan(i.Description, &n)
				i.Description = fmt.Sprint(n + 1)
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got, _ := c.Get(ctx, "n")
	if got.Description != "20" {
		t.Fatalf("after 20 concurrent increments description = %s (lost updates)", got.Description)
	}
}

func testConcurrentCreate(t *testing.T, c catalog.Catalog) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Create(ctx, catalog.Image{Name: "race"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, errdefs.ErrAlreadyExists):
				conflicts++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != 9 {
		t.Fatalf("wins=%d conflicts=%d, want 1/9", wins, conflicts)
	}
}

func testTokens(t *testing.T, c catalog.Catalog) {
	tok := catalog.Token{ID: "t1", Subject: "ci", Role: "reader", Created: time.Now().UTC()}
	if err := c.PutToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetToken(ctx, "t1")
	if err != nil || got.Subject != "ci" || got.Role != "reader" {
		t.Fatalf("GetToken = %+v, %v", got, err)
	}
	c.PutToken(ctx, catalog.Token{ID: "t2", Role: "admin", Created: time.Now().UTC()})
	all, _ := c.ListTokens(ctx)
	if len(all) != 2 {
		t.Fatalf("ListTokens = %d, want 2", len(all))
	}
	if err := c.DeleteToken(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetToken(ctx, "t1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("revoked token = %v, want ErrNotFound", err)
	}
	if err := c.DeleteToken(ctx, "t1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second DeleteToken = %v, want ErrNotFound", err)
	}
}

func testSecret(t *testing.T, c catalog.Catalog) {
	calls := 0
	gen := func() ([]byte, error) { calls++; return []byte(fmt.Sprint("secret", calls)), nil }
	a, err := c.Secret(ctx, "k", gen)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.Secret(ctx, "k", gen)
	if string(a) != string(b) || calls != 1 {
		t.Fatalf("Secret not stable: %q %q calls=%d", a, b, calls)
	}
}

// WriteRaw stores value as the raw bytes of the reference record of d in c,
// below the Catalog API (a bbolt Put, an etcd Put): how a backend's test
// damages a record for RunDamaged.
type WriteRaw func(t *testing.T, c catalog.Catalog, d digest.Digest, value []byte)

// RunDamaged runs the cases that need a damaged record, which only the
// backend itself can write: a record that does not decode must fail every
// operation that depends on it with ErrCorrupt, and must never read as
// zero references.
func RunDamaged(t *testing.T, newCatalog func(t *testing.T) catalog.Catalog, write WriteRaw) {
	damages := map[string]func(d digest.Digest) []byte{
		"NotJSON": func(digest.Digest) []byte { return []byte("\x00garbage{") },
		"OtherDigest": func(digest.Digest) []byte {
			return []byte(`{"digest":"` + digest.FromString("other").String() + `","refs":2}`)
		},
		"NegativeCount": func(d digest.Digest) []byte { return []byte(`{"digest":"` + d.String() + `","refs":-1}`) },
	}
	for name, damage := range damages {
		t.Run("DamagedRefFailsClosed/"+name, func(t *testing.T) {
			c := newCatalog(t)
			t.Cleanup(func() { c.Close() })
			testDamagedRef(t, c, func(d digest.Digest) { write(t, c, d, damage(d)) })
		})
	}
}

func testDamagedRef(t *testing.T, c catalog.Catalog, damage func(digest.Digest)) {
	shared, gone := content("shared"), content("gone")
	mustCreate(t, c, catalog.Image{Name: "a", Content: shared})
	mustCreate(t, c, catalog.Image{Name: "b", Content: shared})
	mustCreate(t, c, catalog.Image{Name: "g", Content: gone})
	if _, err := c.Delete(ctx, "g", nil); err != nil {
		t.Fatal(err)
	}
	damage(shared.Digest)

	if r, err := c.Ref(ctx, shared.Digest); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Errorf("Ref(damaged) = %+v, %v; want ErrCorrupt", r, err)
	}
	// Dropping a reference would have to decrement a count nobody can
	// read: refused, and the image stays.
	if _, err := c.Delete(ctx, "b", nil); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Errorf("Delete of an image whose blob record is damaged = %v, want ErrCorrupt", err)
	}
	if _, err := c.Get(ctx, "b"); err != nil {
		t.Errorf("the refused Delete removed the image: %v", err)
	}
	if _, err := c.Update(ctx, "a", func(i *catalog.Image) error { i.Content = nil; return nil }); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Errorf("Update dropping a damaged reference = %v, want ErrCorrupt", err)
	}
	if _, err := c.Create(ctx, catalog.Image{Name: "c", Content: shared}); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Errorf("Create referencing a damaged record = %v, want ErrCorrupt", err)
	}
	far := time.Now().Add(24 * time.Hour)
	if err := c.Touch(ctx, shared.Digest, far); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Errorf("Touch(damaged) = %v, want ErrCorrupt", err)
	}
	if err := c.Claim(ctx, shared.Digest, far, far); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Errorf("Claim(damaged) = %v, want ErrCorrupt", err)
	}
	if err := c.Forget(ctx, shared.Digest); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Errorf("Forget(damaged) = %v, want ErrCorrupt", err)
	}
	// Collection goes on for intact records and names the damaged one,
	// which is never a candidate.
	got, err := c.Collectable(ctx, far)
	var ce *catalog.CorruptRefsError
	if !errors.As(err, &ce) || !errors.Is(err, errdefs.ErrCorrupt) || len(ce.Digests) != 1 || ce.Digests[0] != shared.Digest.String() {
		t.Errorf("Collectable with a damaged record: err = %v, want a CorruptRefsError naming %s", err, shared.Digest)
	}
	if len(got) != 1 || got[0].Digest != gone.Digest {
		t.Errorf("Collectable with a damaged record = %+v, want only the intact candidate %s", got, gone.Digest)
	}
}

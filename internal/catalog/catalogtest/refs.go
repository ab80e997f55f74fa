package catalogtest

import (
	"errors"
	"testing"
	"time"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

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

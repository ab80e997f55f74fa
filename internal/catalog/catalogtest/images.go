package catalogtest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/names"
)

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

package catalogtest

import (
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

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

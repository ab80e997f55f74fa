package cache

import (
	"errors"
	"testing"

	"github.com/depot-images/depot/errdefs"
)

func FuzzDecodeIndex(f *testing.F) {
	f.Add([]byte(`{"key":"k","digest":"sha256:00","size":1}`))
	f.Add([]byte(`{"digest":"sha256:00","stat":{"size":1,"inode":2}}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := decodeRecord[Pointer](b); err != nil && !errors.Is(err, errdefs.ErrCorrupt) {
			t.Fatal(err)
		}
		if _, err := decodeRecord[BlobRecord](b); err != nil && !errors.Is(err, errdefs.ErrCorrupt) {
			t.Fatal(err)
		}
	})
}

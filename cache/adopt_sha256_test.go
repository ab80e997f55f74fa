package cache

import (
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
)

// TestAdoptRefusesOtherAlgorithms: the cache names blobs by sha256 only
// (blobs/sha256/<hex>), so Adopt refuses a digest of any other algorithm,
// even a well-formed one, and leaves the file where it was. It used to
// accept any algorithm go-digest knows and file a sha512 under blobs/sha256.
func TestAdoptRefusesOtherAlgorithms(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(filepath.Join(dir, "cache"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(70 << 10)
	h := contenthash.NewDualHasher()
	h.Write(data)
	h.Close()
	sum512 := sha512.Sum512(data)
	for _, d := range []digest.Digest{
		digest.NewDigestFromEncoded(digest.SHA512, hex.EncodeToString(sum512[:])),
		digest.NewDigestFromEncoded(digest.SHA384, hex.EncodeToString(sum512[:48])),
		"sha256:" + digest.Digest(h.Digest().Encoded()[:63]),
		"md5:0123456789abcdef0123456789abcdef",
	} {
		path := filepath.Join(dir, "adopt-me")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Adopt(ctx, path, d, h.BLAKE3(), "img@"+d.String()); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("Adopt(%s) = %v, want ErrInvalidArgument", d, err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("Adopt(%s) moved or removed the file: %v", d, err)
		}
		if _, err := os.Stat(c.BlobPath(d)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Adopt(%s) left %s: %v", d, c.BlobPath(d), err)
		}
	}
	// The sha256 of the same bytes is adopted.
	path := filepath.Join(dir, "adopt-me")
	img, err := c.Adopt(ctx, path, h.Digest(), h.BLAKE3(), "img@"+h.Digest().String())
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != h.Digest() || img.Size != int64(len(data)) {
		t.Fatalf("adopted %+v, want %s of %d bytes", img, h.Digest(), len(data))
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the adopted file is still at %s: %v", path, err)
	}
}

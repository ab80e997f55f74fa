package cache

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
)

// Adopt moves the file at path, whose sha256 (d) and BLAKE3 the caller has
// just computed from its bytes, into the cache as a committed blob, without
// copying it. It is how an edit workspace re-bases onto content it has
// uploaded. The file must be on the cache's filesystem.
func (c *Cache) Adopt(ctx context.Context, path string, d digest.Digest, blake3Hex, refStr string) (Image, error) {
	if err := contenthash.Validate(d); err != nil {
		return Image{}, fmt.Errorf("adopt: %w", err)
	}
	unlock, err := c.lockDigest(ctx, d)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if img, ok, err := c.local(d); err != nil || ok {
		os.Remove(path)
		return img, err
	}
	f, err := os.Open(path)
	if err != nil {
		return Image{}, err
	}
	var sniff format.Sniffer
	head := make([]byte, format.HeaderSize)
	n, _ := io.ReadFull(f, head)
	sniff.Write(head[:n])
	if err := f.Sync(); err != nil {
		f.Close()
		return Image{}, c.diskErr(err)
	}
	f.Close()
	if err := os.Chmod(path, 0o444); err != nil {
		return Image{}, err
	}
	dst := c.BlobPath(d)
	if err := os.Rename(path, dst); err != nil {
		return Image{}, fmt.Errorf("adopt %s: %w", d, err)
	}
	return c.publish(BlobRecord{Digest: d, BLAKE3: blake3Hex, Format: sniff.Format(), Source: "local commit", Ref: refStr})
}

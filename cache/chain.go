package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/qcow2"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// Link is one element of a qcow2 backing chain.
type Link struct {
	Path   string        `json:"path"`
	Digest digest.Digest `json:"digest,omitempty"`
	Format string        `json:"fmt"`
	// Backing is the backing file name as written in the image header.
	Backing string `json:"backing,omitempty"`
}

// maxChain bounds backing-chain depth (and breaks cycles).
const maxChain = 16

// ensureChain makes sure every file a qcow2 image makes qemu open is a
// verified blob of this cache: each backing name must resolve, exactly as
// qemu resolves it (relative to the image's own directory), to the blob of
// the digest it names, with a recorded format that matches what that blob
// is (qcow2.Resolve). It fetches missing links by digest when the source
// can. Anything else is an *errdefs.UnsafeContentError, never a path.
func (c *Cache) ensureChain(ctx context.Context, parent ref.Ref, img Image, src source.Source, o EnsureOptions, depth int) ([]Link, error) {
	if depth >= maxChain {
		return nil, fmt.Errorf("qcow2 backing chain of %s is deeper than %d (a cycle?): %w", img.Digest, maxChain, errdefs.ErrCorrupt)
	}
	if img.Format != format.QCOW2 && img.Format != format.Raw { // nothing to read
		return nil, unsafeIn(format.RefuseNamesFiles(img.Format), img.Digest)
	}
	f, err := os.Open(img.Path)
	if err != nil {
		return nil, c.diskErr(err)
	}
	b, err := c.inspect(f, img.Format, img.Digest)
	f.Close()
	if err != nil || b.Digest == "" {
		return nil, err
	}
	if err := o.take(b.Digest); err != nil {
		return nil, err
	}
	base, ok, err := c.localLocked(ctx, b.Digest)
	if err != nil {
		return nil, err
	}
	if !ok {
		if !src.ByDigest() || o.Policy == Never {
			return nil, fmt.Errorf("%s needs backing file %s: %w", img.Digest, b.Digest,
				&errdefs.DigestUnavailableError{Ref: src.String(), Want: b.Digest})
		}
		if base, err = c.fetch(ctx, parent, src, source.Descriptor{Digest: b.Digest, Size: -1}, o); err != nil {
			var du *errdefs.DigestUnavailableError
			if errors.As(err, &du) {
				return nil, fmt.Errorf("%s needs backing file %s: %w", img.Digest, b.Digest,
					&errdefs.DigestUnavailableError{Ref: src.String(), Want: b.Digest})
			}
			return nil, err
		}
	}
	if base.Format != b.Format {
		// qemu would read the base as b.Format; depot verified it as what
		// it is. A qcow2 read as raw (or the reverse) is not the disk the
		// image was made on.
		return nil, &errdefs.UnsafeContentError{Digest: img.Digest, What: "backing file", Name: b.Name,
			Reason: fmt.Sprintf("the image records backing format %s, but blob %s is %s", b.Format, b.Digest, base.Format),
			Fix:    fmt.Sprintf("qemu-img rebase -u -b %s -F %s IMAGE", b.Digest.Encoded(), base.Format)}
	}
	link := Link{Path: base.Path, Digest: b.Digest, Format: base.Format, Backing: b.Name}
	rest, err := c.ensureChain(ctx, parent, base, src, o, depth+1)
	if err != nil {
		return nil, err
	}
	return append([]Link{link}, rest...), nil
}

// inspect applies depot's content rules to a blob read through r (a
// committed one, or one about to be committed): no format whose images
// name other files, and a qcow2 only with a backing reference that
// qcow2.Resolve accepts in this cache's blob directory. It returns that
// reference (zero when there is none). A "raw" format is looked at again,
// since records written before depot knew qcow v1, qed and vmdk
// descriptors called them raw; that costs one 4 KiB read.
func (c *Cache) inspect(r io.ReaderAt, fmtName string, d digest.Digest) (qcow2.Backing, error) {
	if fmtName == format.Raw {
		head := make([]byte, 4096)
		n, err := r.ReadAt(head, 0)
		if err != nil && err != io.EOF {
			return qcow2.Backing{}, c.diskErr(err)
		}
		fmtName = format.Detect(head[:n])
	}
	if err := format.RefuseNamesFiles(fmtName); err != nil {
		return qcow2.Backing{}, unsafeIn(err, d)
	}
	if fmtName != format.QCOW2 {
		return qcow2.Backing{}, nil
	}
	h, err := qcow2.ReadHeader(r)
	if err != nil {
		return qcow2.Backing{}, fmt.Errorf("qcow2 header of %s: %v: %w", d, err, errdefs.ErrCorrupt)
	}
	b, err := qcow2.Resolve(h, filepath.Dir(c.BlobPath(d)))
	return b, unsafeIn(err, d)
}

// unsafeIn names the image in an unsafe-content error.
func unsafeIn(err error, d digest.Digest) error {
	var ue *errdefs.UnsafeContentError
	if errors.As(err, &ue) {
		ue.Digest = d
	}
	return err
}

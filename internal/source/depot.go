package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/chunks"
)

// Depot is an image on a depot server. Resolve reads …/content/info; Open
// fetches /api/v1/blob/<digest>, bypassing every name pointer.
type Depot struct {
	Client *client.Client
	Ref    string // image name or UID
}

var (
	_ Source       = (*Depot)(nil)
	_ Indexer      = (*Depot)(nil)
	_ Compressor   = (*Depot)(nil)
	_ Recorder     = (*Depot)(nil)
	_ DeltaIndexer = (*Depot)(nil)
)

// ChunkIndexDelta implements DeltaIndexer: GET
// /api/v1/blob/<d>/chunks?base=<base>, decoded with base's encoded index
// as the dictionary, then checked as ChunkIndex checks a plain one.
func (d *Depot) ChunkIndexDelta(ctx context.Context, dg, want digest.Digest, size int64, base *chunks.Index) (*chunks.Index, int64, error) {
	baseEnc, err := base.Encode()
	if err != nil {
		return nil, 0, err
	}
	limit := chunks.EncodedSizeBound(chunks.DefaultParams, size)
	enc, wire, err := d.Client.ChunkIndexDelta(ctx, dg, base.Blob, baseEnc, limit)
	if err != nil {
		return nil, wire, err
	}
	x, err := chunks.ReadAtMost(bytes.NewReader(enc), want, limit)
	if err != nil {
		return nil, wire, fmt.Errorf("chunk index of %s from %s: %w", dg, d, err)
	}
	if x.Blob != dg {
		return nil, wire, fmt.Errorf("chunk index from %s names %s, not %s: %w", d, x.Blob, dg, chunks.ErrBadIndex)
	}
	return x, wire, nil
}

// OpenCompressed implements Compressor: GET /api/v1/blob/<d>/zstd.
func (d *Depot) OpenCompressed(ctx context.Context, dg digest.Digest, offset, length int64) (CompressedBody, error) {
	return d.Client.OpenBlobZstd(ctx, dg, offset, length)
}

// Resolve implements Source.
func (d *Depot) Resolve(ctx context.Context) (Descriptor, error) {
	img, err := d.Client.GetImage(ctx, d.Ref)
	if err != nil {
		return Descriptor{}, err
	}
	if img.Content == nil {
		return Descriptor{Identity: img.UID}, fmt.Errorf("image %s (%s) has no content: %w", img.Name, img.UID, errdefs.ErrNotFound)
	}
	return Descriptor{Digest: digest.Digest(img.Content.Chksum), Size: img.Content.Size, Identity: img.UID, Chunks: digest.Digest(img.Content.Chunks)}, nil
}

// Recorded implements Recorder: one GET of the image, whose content and
// history carry each revision's size and chunk index digest.
func (d *Depot) Recorded(ctx context.Context, dg digest.Digest) (Descriptor, error) {
	img, err := d.Client.GetImage(ctx, d.Ref)
	if err != nil {
		return Descriptor{}, err
	}
	if c := img.Content; c != nil && c.Chksum == dg.String() {
		return Descriptor{Digest: dg, Size: c.Size, Identity: img.UID, Chunks: digest.Digest(c.Chunks)}, nil
	}
	for _, r := range img.History {
		if r.Chksum == dg.String() {
			return Descriptor{Digest: dg, Size: r.Size, Identity: img.UID, Chunks: digest.Digest(r.Chunks)}, nil
		}
	}
	return Descriptor{}, fmt.Errorf("no revision of image %s (%s) holds %s: %w", img.Name, img.UID, dg, errdefs.ErrNotFound)
}

// Open implements Source.
func (d *Depot) Open(ctx context.Context, dg digest.Digest, offset, length int64, _ string) (Body, error) {
	c, err := d.Client.OpenBlob(ctx, dg, offset, length)
	if err != nil {
		return Body{}, err
	}
	return Body{ReadCloser: c, Offset: c.Offset, Size: c.Total, Ranges: c.Ranges}, nil
}

// ChunkIndex implements Indexer: GET /api/v1/blob/<d>/chunks, at most
// chunks.EncodedSizeBound(chunks.DefaultParams, size) bytes (with size
// unknown, chunks.MaxEncodedSize), decoded (and verified against want when
// the revision recorded it). An index that names another blob is refused.
func (d *Depot) ChunkIndex(ctx context.Context, dg, want digest.Digest, size int64) (*chunks.Index, error) {
	c, err := d.Client.OpenChunkIndex(ctx, dg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	limit := chunks.EncodedSizeBound(chunks.DefaultParams, size)
	if c.Size > limit {
		return nil, fmt.Errorf("chunk index of %s from %s declares %d bytes, over %d: %w", dg, d, c.Size, limit, chunks.ErrBadIndex)
	}
	x, err := chunks.ReadAtMost(c, want, limit)
	if err != nil {
		if errors.Is(err, errdefs.ErrCorrupt) || errors.Is(err, errdefs.ErrVerification) {
			return nil, fmt.Errorf("chunk index of %s from %s: %w", dg, d, err)
		}
		return nil, fmt.Errorf("chunk index of %s from %s: %v: %w", dg, d, err, errdefs.ErrUnavailable)
	}
	if x.Blob != dg {
		return nil, fmt.Errorf("chunk index from %s names %s, not %s: %w", d, x.Blob, dg, chunks.ErrBadIndex)
	}
	return x, nil
}

// Heads is how many heads the client fails over between.
func (d *Depot) Heads() int { return d.Client.Heads() }

// ByDigest implements Source.
func (d *Depot) ByDigest() bool { return true }

func (d *Depot) String() string { return d.Client.Server() + " image " + d.Ref }

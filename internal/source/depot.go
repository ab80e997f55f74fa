package source

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
)

// Depot is an image on a depot server. Resolve reads …/content/info; Open
// fetches /api/v1/blob/<digest>, bypassing every name pointer.
type Depot struct {
	Client *client.Client
	Ref    string // image name or UID
}

var _ Source = (*Depot)(nil)

// Resolve implements Source.
func (d *Depot) Resolve(ctx context.Context) (Descriptor, error) {
	img, err := d.Client.GetImage(ctx, d.Ref)
	if err != nil {
		return Descriptor{}, err
	}
	if img.Content == nil {
		return Descriptor{Identity: img.UID}, fmt.Errorf("image %s (%s) has no content: %w", img.Name, img.UID, errdefs.ErrNotFound)
	}
	return Descriptor{Digest: digest.Digest(img.Content.Chksum), Size: img.Content.Size, Identity: img.UID}, nil
}

// Open implements Source.
func (d *Depot) Open(ctx context.Context, dg digest.Digest, offset, length int64, _ string) (Body, error) {
	c, err := d.Client.OpenBlob(ctx, dg, offset, length)
	if err != nil {
		return Body{}, err
	}
	return Body{ReadCloser: c, Offset: c.Offset, Size: c.Total, Ranges: c.Ranges}, nil
}

// Heads is how many heads the client fails over between.
func (d *Depot) Heads() int { return d.Client.Heads() }

// ByDigest implements Source.
func (d *Depot) ByDigest() bool { return true }

func (d *Depot) String() string { return d.Client.Server() + " image " + d.Ref }

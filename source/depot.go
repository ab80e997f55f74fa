package source

import (
	"context"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
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
	info, err := d.Client.ContentInfo(ctx, d.Ref)
	if err != nil {
		return Descriptor{}, err
	}
	return Descriptor{Digest: digest.Digest(info.Chksum), Size: info.Size}, nil
}

// Open implements Source.
func (d *Depot) Open(ctx context.Context, dg digest.Digest, offset, length int64, _ string) (Body, error) {
	c, err := d.Client.OpenBlob(ctx, dg, offset, length)
	if err != nil {
		return Body{}, err
	}
	return Body{ReadCloser: c, Offset: c.Offset, Size: c.Total, Ranges: c.Ranges}, nil
}

// ByDigest implements Source.
func (d *Depot) ByDigest() bool { return true }

func (d *Depot) String() string { return d.Client.Server() + " image " + d.Ref }

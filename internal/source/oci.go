package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
)

// OCI is a disk image stored as an OCI artifact (oras-go): a manifest whose
// single layer is the image. Resolve fetches the manifest (small; by tag or
// by digest) and answers the layer's digest; Open fetches the layer blob by
// digest with ranged reads.
type OCI struct {
	r    ref.Ref
	repo *remote.Repository

	mu     sync.Mutex
	layers map[digest.Digest]ocispec.Descriptor
}

var _ Source = (*OCI)(nil)

// LayerMediaTypes are the layer media types depot verifies and uses: the
// layer is the disk image itself, byte for byte (raw or qcow2; the format is
// sniffed from the verified bytes). Compressed or tar layers are not disk
// images and are refused.
var LayerMediaTypes = map[string]bool{
	"application/vnd.depot.disk.v1": true,
	"application/octet-stream":      true,
}

// NewOCI returns the OCI registry source for r. Loopback registries are
// spoken to over plain HTTP; everything else over HTTPS.
func NewOCI(r ref.Ref, hc *http.Client) (Source, error) {
	repo, err := remote.NewRepository(r.Registry + "/" + r.Repository)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", r, err, errdefs.ErrInvalidArgument)
	}
	if hc == nil {
		hc = defaultClient
	}
	repo.Client = &auth.Client{Client: hc, Cache: auth.NewCache()}
	repo.PlainHTTP = isLoopback(r.Registry)
	return &OCI{r: r, repo: repo, layers: map[digest.Digest]ocispec.Descriptor{}}, nil
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// ociErr maps oras-go and transport errors into the vocabulary.
func (o *OCI) ociErr(what string, err error) error {
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		return fmt.Errorf("%s %s: %v: %w", o.r, what, err, errdefs.ErrNotFound)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	var re *client.RedirectError
	var se *client.StallError
	if errors.As(err, &re) || errors.As(err, &se) {
		return fmt.Errorf("%s %s: %w", o.r, what, err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &oe) {
		return fmt.Errorf("%s %s: %v: %w", o.r, what, err, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("%s %s: %w", o.r, what, err)
}

// Resolve implements Source: it reads the manifest and names its layer.
func (o *OCI) Resolve(ctx context.Context) (Descriptor, error) {
	reference := o.r.Tag
	if o.r.Digest != "" {
		reference = o.r.Digest.String()
	}
	mdesc, err := o.repo.Resolve(ctx, reference)
	if err != nil {
		return Descriptor{}, o.ociErr("manifest", err)
	}
	if mdesc.Size > 4<<20 {
		return Descriptor{}, fmt.Errorf("%s: manifest of %d bytes is too large: %w", o.r, mdesc.Size, errdefs.ErrTooLarge)
	}
	raw, err := content.FetchAll(ctx, o.repo, mdesc)
	if err != nil {
		return Descriptor{}, o.ociErr("manifest", err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return Descriptor{}, fmt.Errorf("%s: manifest: %v: %w", o.r, err, errdefs.ErrInvalidArgument)
	}
	if len(m.Layers) != 1 {
		return Descriptor{}, fmt.Errorf("%s: the manifest has %d layers; a disk-image artifact has exactly one: %w", o.r, len(m.Layers), errdefs.ErrInvalidArgument)
	}
	l := m.Layers[0]
	if !LayerMediaTypes[l.MediaType] {
		return Descriptor{}, fmt.Errorf("%s: the layer's media type is %q; depot uses only a raw disk-image layer (%s): %w",
			o.r, l.MediaType, strings.Join(slices.Sorted(maps.Keys(LayerMediaTypes)), ", "), errdefs.ErrInvalidArgument)
	}
	if len(l.URLs) > 0 {
		return Descriptor{}, fmt.Errorf("%s: the layer is a foreign layer (urls: %q); depot fetches layers from the registry only: %w",
			o.r, l.URLs, errdefs.ErrInvalidArgument)
	}
	if l.Size < 0 {
		return Descriptor{}, fmt.Errorf("%s: the layer declares size %d: %w", o.r, l.Size, errdefs.ErrInvalidArgument)
	}
	if l.Digest.Algorithm() != digest.SHA256 {
		return Descriptor{}, fmt.Errorf("%s: layer digest %s is not sha256: %w", o.r, l.Digest, errdefs.ErrInvalidArgument)
	}
	o.mu.Lock()
	o.layers[l.Digest] = l
	o.mu.Unlock()
	return Descriptor{Digest: l.Digest, Size: l.Size, Validator: mdesc.Digest.String()}, nil
}

// Open implements Source: the layer blob by digest, ranged.
func (o *OCI) Open(ctx context.Context, d digest.Digest, offset, length int64, _ string) (Body, error) {
	o.mu.Lock()
	desc, ok := o.layers[d]
	o.mu.Unlock()
	if !ok { // a backing file fetched by digest: ask the registry its size
		var err error
		if desc, err = o.repo.Blobs().Resolve(ctx, d.String()); err != nil {
			return Body{}, o.ociErr("blob "+d.String(), err)
		}
	}
	rc, err := o.repo.Blobs().Fetch(ctx, desc)
	if err != nil {
		return Body{}, o.ociErr("blob "+d.String(), err)
	}
	b := Body{ReadCloser: rc, Size: desc.Size}
	if s, ok := rc.(io.Seeker); ok {
		b.Ranges = true
		if offset > 0 {
			if _, err := s.Seek(offset, io.SeekStart); err == nil {
				b.Offset = offset
			}
		}
	}
	if length >= 0 && b.Offset == offset {
		b.ReadCloser = limitedCloser{io.LimitReader(rc, length), rc}
	}
	return b, nil
}

// ByDigest implements Source.
func (o *OCI) ByDigest() bool { return true }

func (o *OCI) String() string { return "oci://" + o.r.Registry + "/" + o.r.Repository }

type limitedCloser struct {
	io.Reader
	io.Closer
}

package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// Policy says when a mutable reference is re-resolved (Kubernetes semantics).
type Policy string

// Pull policies. A pinned digest makes the policy moot.
const (
	Always       Policy = "Always"       // resolve (one small request); fetch only if the digest changed
	IfNotPresent Policy = "IfNotPresent" // use any valid local copy
	Never        Policy = "Never"        // local only
)

// ParsePolicy accepts the policy names case-insensitively.
func ParsePolicy(s string) (Policy, error) {
	for _, p := range []Policy{Always, IfNotPresent, Never} {
		if strings.EqualFold(string(p), s) {
			return p, nil
		}
	}
	return "", fmt.Errorf("pull policy %q: want Always, IfNotPresent or Never: %w", s, errdefs.ErrInvalidArgument)
}

// EnsureOptions tune one Ensure call.
type EnsureOptions struct {
	Policy Policy // default IfNotPresent
	// Force re-resolves and re-verifies even a valid local copy.
	Force bool
	// OfflineOK lets Always fall back to the last resolved copy when the
	// source is unreachable (Image.Offline says so).
	OfflineOK bool
	// Checksum pins an HTTP reference (like ref@sha256:…).
	Checksum digest.Digest
	// ChecksumURL names the checksum file of an HTTP reference.
	ChecksumURL string
	// Progress, when set, is called as bytes arrive (done, total; total -1
	// when unknown).
	Progress func(done, total int64)
	// NoDelta transfers whole even when seeds and a chunk index are at
	// hand (delta.go).
	NoDelta bool
	// DeltaProgress, when set, is called during a delta transfer with the
	// bytes taken from seeds and fetched so far, of total.
	DeltaProgress func(reused, fetched, total int64)
	// Lease, when set, leases the image and its backing chain to this
	// holder (for LeaseTTL; 0 until removed), so prune and rm leave them
	// alone. Each digest is leased before it is looked up or fetched, so
	// no prune can delete it between its commit and its lease; leases
	// taken for a failed Ensure are given back.
	Lease    string
	LeaseTTL time.Duration

	// hold, set by Ensure from Lease, leases a digest before Ensure looks
	// it up or fetches it.
	hold func(digest.Digest) error
}

// take leases d when the Ensure has a lease (see Lease).
func (o EnsureOptions) take(d digest.Digest) error {
	if o.hold == nil {
		return nil
	}
	return o.hold(d)
}

// Image is a verified local image.
type Image struct {
	Ref    string        `json:"ref"`
	Path   string        `json:"path"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Format string        `json:"fmt"`
	// Chain is the qcow2 backing chain below this image, top first.
	Chain []Link `json:"chain,omitempty"`
	// Fetched is true when bytes were transferred by this call.
	Fetched bool `json:"fetched"`
	// BytesFetched is what this call received from the source (bodies
	// and chunk indexes), BytesReused what a delta transfer took from
	// blobs already in the cache instead (and chunks an interrupted
	// earlier run left in place).
	BytesFetched int64 `json:"bytes_fetched"`
	BytesReused  int64 `json:"bytes_reused"`
	// BytesReceived is what crossed the network for BytesFetched: less
	// when a delta's ranges came compressed (GET …/blob/<digest>/zstd).
	BytesReceived int64 `json:"bytes_received"`
	// Transfer is "delta" or "whole" when this call transferred; Note
	// says why a transfer that could have been a delta was whole.
	Transfer string `json:"transfer,omitempty"`
	Note     string `json:"note,omitempty"`
	// Offline is true when the source was unreachable and the last
	// resolved copy was used (EnsureOptions.OfflineOK).
	Offline bool `json:"offline,omitempty"`
}

// Ensure returns the verified local image for refStr.
func (c *Cache) Ensure(ctx context.Context, refStr string, o EnsureOptions) (img Image, err error) {
	r, err := ref.Parse(refStr)
	if err != nil {
		return Image{}, err
	}
	if o.Policy == "" {
		o.Policy = IfNotPresent
	}
	if o.Checksum != "" {
		if err := contenthash.Validate(o.Checksum); err != nil {
			return Image{}, err
		}
		if r.Kind != ref.HTTP {
			return Image{}, fmt.Errorf("--checksum applies to http(s) references; pin others with @sha256:…: %w", errdefs.ErrInvalidArgument)
		}
	}
	src, err := c.sourceFor(r, o)
	if err != nil {
		return Image{}, err
	}
	if o.Lease != "" {
		if err := validHolder(o.Lease); err != nil {
			return Image{}, err
		}
		ls := &ensureLeases{c: c, holder: o.Lease, ref: refStr, ttl: o.LeaseTTL}
		o.hold = ls.hold
		defer func() { ls.finish(img, err) }()
	}
	img, err = c.ensure(ctx, r, src, o)
	if err != nil {
		return Image{}, err
	}
	img.Ref = refStr
	chain, err := c.ensureChain(ctx, r, img, src, o, 0)
	if err != nil {
		return Image{}, err
	}
	img.Chain = chain
	return img, nil
}

func (c *Cache) ensure(ctx context.Context, r ref.Ref, src source.Source, o EnsureOptions) (Image, error) {
	// A content pin: the digest is the identity. For OCI the pin names a
	// manifest, which the source maps to the disk blob (immutably).
	want := r.Digest
	if r.Kind == ref.HTTP && o.Checksum != "" {
		want = o.Checksum
	}
	if want != "" && r.Kind != ref.OCI {
		if err := o.take(want); err != nil {
			return Image{}, err
		}
		if !o.Force {
			if img, ok, err := c.localLocked(ctx, want); err != nil || ok {
				return img, err // present and valid: no network at all
			}
		}
		if o.Policy == Never {
			return Image{}, fmt.Errorf("%s is not in the cache and the pull policy is Never: %w", want, errdefs.ErrNotFound)
		}
		return c.fetch(ctx, r, src, source.Descriptor{Digest: want, Size: -1}, o)
	}

	key := r.Key(c.server())
	ptr, havePtr, err := readJSON[Pointer](c.pointerPath(key))
	if err != nil {
		c.log.Warn("damaged pointer ignored", "key", key, "err", err)
		havePtr = false
	}
	usePtr := func(offline bool) (Image, bool, error) {
		if !havePtr {
			return Image{}, false, nil
		}
		if err := o.take(ptr.Digest); err != nil {
			return Image{}, false, err
		}
		img, ok, err := c.localLocked(ctx, ptr.Digest)
		img.Offline = offline && ok
		return img, ok, err
	}
	if r.Kind == ref.OCI && r.Digest != "" && !o.Force {
		// A pinned manifest: its layer never changes, so a valid local
		// copy answers with no network, whatever the policy.
		if img, ok, err := usePtr(false); err != nil || ok {
			return img, err
		}
	}
	switch {
	case o.Policy == Never:
		img, ok, err := usePtr(false)
		if err != nil || ok {
			return img, err
		}
		return Image{}, fmt.Errorf("%s is not in the cache and the pull policy is Never: %w", r, errdefs.ErrNotFound)
	case o.Policy == IfNotPresent && !o.Force:
		if img, ok, err := usePtr(false); err != nil || ok {
			return img, err
		}
	}
	desc, err := src.Resolve(ctx)
	if err != nil {
		if r.Kind == ref.OCI && want != "" && errors.Is(err, errdefs.ErrNotFound) {
			return Image{}, fmt.Errorf("%v: %w", err, &errdefs.DigestUnavailableError{Ref: r.String(), Want: want})
		}
		if errors.Is(err, errdefs.ErrUnavailable) && o.OfflineOK {
			if img, ok, lerr := usePtr(true); lerr == nil && ok {
				c.log.Warn("source unreachable; using the last resolved copy", "ref", r.String(), "digest", img.Digest, "resolved_at", ptr.ResolvedAt)
				return img, nil
			}
		}
		return Image{}, err
	}
	if err := o.take(desc.Digest); err != nil {
		return Image{}, err
	}
	var img Image
	if !o.Force {
		var ok bool
		img, ok, err = c.localLocked(ctx, desc.Digest)
		if err != nil {
			return Image{}, err
		}
		if !ok {
			img, err = c.fetch(ctx, r, src, desc, o)
		}
	} else {
		img, err = c.fetch(ctx, r, src, desc, o)
	}
	if err != nil {
		return Image{}, err
	}
	p := Pointer{Key: key, Ref: r.String(), Digest: img.Digest, Size: img.Size, ResolvedAt: time.Now().UTC(), Validator: desc.Validator,
		Source: src.String(), UID: desc.Identity, Upstream: "current", CheckedAt: time.Now().UTC()}
	if err := writeJSON(c.pointerPath(key), p, true); err != nil {
		return Image{}, c.diskErr(fmt.Errorf("cache index: %w", err))
	}
	return img, nil
}

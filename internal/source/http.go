package source

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/checksum"
	"github.com/depot-images/depot/internal/httprange"
)

// HTTP is a plain HTTP(S) file whose digest comes from a pinned checksum, an
// explicit checksum-file URL, or by default a checksum file beside it:
// <url>.sha256, then SHA256SUMS, then CHECKSUM in the same directory.
type HTTP struct {
	Client      *http.Client
	URL         string
	Checksum    digest.Digest // pinned; no checksum file is read
	ChecksumURL string
}

var _ Source = (*HTTP)(nil)

func (h *HTTP) client() *http.Client {
	if h.Client != nil {
		return h.Client
	}
	return defaultClient
}

// defaultClient has depot's timeouts and redirect policy.
var defaultClient = client.NewHTTPClient(client.Timeouts{})

// ChecksumCandidates lists the checksum-file URLs tried, in order.
func (h *HTTP) ChecksumCandidates() []string {
	if h.ChecksumURL != "" {
		return []string{h.ChecksumURL}
	}
	u, err := url.Parse(h.URL)
	if err != nil {
		return nil
	}
	dir := *u
	dir.Path = path.Dir(u.Path) + "/"
	out := []string{h.URL + ".sha256"}
	for _, n := range []string{"SHA256SUMS", "CHECKSUM"} {
		c := dir
		c.Path += n
		out = append(out, c.String())
	}
	return out
}

func urlPath(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Path
}

func (h *HTTP) fileName() string {
	u, err := url.Parse(h.URL)
	if err != nil {
		return ""
	}
	return path.Base(u.Path)
}

// unreachable wraps a transport error: a refused redirect and a stall keep
// their types; anything else is ErrUnavailable.
func unreachable(what string, err error) error {
	var re *client.RedirectError
	if errors.As(err, &re) {
		return fmt.Errorf("%s: %w", what, re)
	}
	var se *client.StallError
	if errors.As(err, &se) {
		return fmt.Errorf("%s: %w", what, se)
	}
	return fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrUnavailable)
}

// Resolve implements Source: it reads the (small) checksum file.
func (h *HTTP) Resolve(ctx context.Context) (Descriptor, error) {
	if h.Checksum != "" {
		return Descriptor{Digest: h.Checksum, Size: -1}, nil
	}
	name := h.fileName()
	var tried []string
	for i, cu := range h.ChecksumCandidates() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, cu, nil)
		if err != nil {
			return Descriptor{}, fmt.Errorf("checksum URL %q: %v: %w", cu, err, errdefs.ErrInvalidArgument)
		}
		resp, err := h.client().Do(req)
		if err != nil {
			return Descriptor{}, unreachable("checksum "+cu, err)
		}
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone {
			resp.Body.Close()
			tried = append(tried, cu+" (missing)")
			continue
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			err := fmt.Errorf("checksum %s: HTTP %d", cu, resp.StatusCode)
			if resp.StatusCode >= 500 {
				return Descriptor{}, fmt.Errorf("%v: %w", err, errdefs.ErrUnavailable)
			}
			return Descriptor{}, fmt.Errorf("%v: %w", err, errdefs.ErrNotFound)
		}
		// Only the file's own sidecar (<url>.sha256, or an explicit
		// --checksum-url of that name) may hold a bare digest: a bare line
		// in a directory's SHA256SUMS says nothing about which file.
		sidecar := (h.ChecksumURL == "" && i == 0) || path.Base(urlPath(cu)) == name+".sha256"
		d, err := checksum.Find(resp.Body, name, sidecar)
		resp.Body.Close()
		if errors.Is(err, errdefs.ErrNotFound) && h.ChecksumURL == "" {
			tried = append(tried, cu+" (no entry for "+name+")")
			continue
		}
		if err != nil {
			return Descriptor{}, fmt.Errorf("checksum %s: %w", cu, err)
		}
		return Descriptor{Digest: d, Size: -1}, nil
	}
	return Descriptor{}, fmt.Errorf("no sha256 checksum for %s (tried %s); pass --checksum sha256:<hex> or --checksum-url: %w",
		h.URL, strings.Join(tried, ", "), errdefs.ErrNotFound)
}

// Open implements Source. The URL serves whatever it serves; the cache
// checks it is d.
func (h *HTTP) Open(ctx context.Context, d digest.Digest, offset, length int64, validator string) (Body, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return Body{}, err
	}
	if rh := httprange.Header(offset, length); rh != "" {
		req.Header.Set("Range", rh)
		if validator != "" {
			req.Header.Set("If-Range", validator)
		}
	}
	resp, err := h.client().Do(req)
	if err != nil {
		return Body{}, unreachable(h.URL, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusPartialContent:
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		return Body{}, fmt.Errorf("%s: HTTP %d: %w", h.URL, resp.StatusCode, errdefs.ErrNotFound)
	case resp.StatusCode >= 500:
		resp.Body.Close()
		return Body{}, fmt.Errorf("%s: HTTP %d: %w", h.URL, resp.StatusCode, errdefs.ErrUnavailable)
	default:
		resp.Body.Close()
		return Body{}, fmt.Errorf("%s: HTTP %d", h.URL, resp.StatusCode)
	}
	b := Body{ReadCloser: resp.Body, Size: resp.ContentLength, Validator: resp.Header.Get("ETag"),
		Ranges: resp.Header.Get("Accept-Ranges") == "bytes" || resp.StatusCode == http.StatusPartialContent}
	if resp.StatusCode == http.StatusPartialContent {
		b.Offset = offset
		b.Size = httprange.Total(resp.Header.Get("Content-Range"))
	}
	return b, nil
}

// ByDigest implements Source: a URL serves one content.
func (h *HTTP) ByDigest() bool { return false }

func (h *HTTP) String() string { return h.URL }

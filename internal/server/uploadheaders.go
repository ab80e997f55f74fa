package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/contenthash"
)

// upload is what a content PUT declares before its first body byte.
type upload struct {
	img  catalog.Image
	size int64 // -1 when not declared
	// want is the digest declared up front, "" when none (a trailer may
	// still declare it).
	want digest.Digest
	// base is the If-Match digest (or "*"), when haveBase.
	base     digest.Digest
	haveBase bool
	msg      string
	// delta, when set, is the delta base (X-Depot-Delta-Base): the body
	// is a recipe against that blob, of deltaBaseSize bytes, and size is
	// the assembled blob's.
	delta         digest.Digest
	deltaBaseSize int64
	prov          *catalog.Provenance // X-Depot-Provenance, nil when absent
}

// parseUpload reads the headers of a content PUT and refuses, before any
// byte of the body, what it can: a size over the limit, an unknown or
// frozen image, a malformed digest declaration, a failed If-Match, an
// over-long message, a malformed provenance record.
func (s *Server) parseUpload(r *http.Request) (upload, error) {
	delta, err := deltaBase(r)
	if err != nil {
		return upload{}, err
	}
	var size int64
	if delta != "" {
		size, err = s.deltaSize(r)
	} else {
		size, err = s.declaredSize(r)
	}
	if err != nil {
		return upload{}, err
	}
	img, err := s.lookup(r)
	if err != nil {
		return upload{}, err
	}
	if img.Frozen {
		return upload{}, frozenErr(img, "content upload")
	}
	want, err := declaredDigest(r)
	if err != nil {
		return upload{}, err
	}
	base, haveBase, err := ifMatch(r)
	if err != nil {
		return upload{}, err
	}
	if haveBase {
		if err := checkBase(&img, base); err != nil { // fail fast, before the body
			return upload{}, err
		}
	}
	msg := r.Header.Get(api.HeaderMessage)
	if len(msg) > maxStringField {
		return upload{}, fmt.Errorf("revision message over %d bytes: %w", maxStringField, errdefs.ErrTooLarge)
	}
	prov, err := parseProvenance(r)
	if err != nil {
		return upload{}, err
	}
	u := upload{img: img, size: size, want: want, base: base, haveBase: haveBase, msg: msg, delta: delta, prov: prov}
	if delta != "" {
		// Any blob the head stores may be a base: a writer may read
		// every blob by digest anyway. One it does not have is refused
		// before the body, and the client sends the whole content.
		bi, err := s.cfg.Blobs.Stat(r.Context(), delta)
		if errors.Is(err, errdefs.ErrNotFound) {
			return upload{}, fmt.Errorf("the delta base %s is not a blob on this server; push the whole content: %w", delta, errdefs.ErrPrecondition)
		}
		if err != nil {
			return upload{}, err
		}
		u.deltaBaseSize = bi.Size
	}
	return u, nil
}

// declaredSize reads the size a PUT declares: Content-Length, or
// X-Depot-Size for a chunked body; -1 when neither. A size over the limit
// is refused here, before any byte of the body is read.
func (s *Server) declaredSize(r *http.Request) (int64, error) {
	size := r.ContentLength // -1 when chunked; then X-Depot-Size may say
	if v := r.Header.Get("X-Depot-Size"); v != "" {
		hint, err := strconv.ParseInt(v, 10, 64)
		if err != nil || hint < 0 || (size >= 0 && hint != size) {
			return 0, fmt.Errorf("X-Depot-Size %q is not the byte count of the body: %w", v, errdefs.ErrInvalidArgument)
		}
		size = hint
	}
	if size > s.cfg.MaxContentSize {
		return 0, fmt.Errorf("the declared size, %d bytes, is over the server's %d-byte limit (--max-content-size): %w", size, s.cfg.MaxContentSize, errdefs.ErrTooLarge)
	}
	return size, nil
}

// ifMatch parses If-Match: one quoted digest, or *. It returns ("", false)
// when absent.
func ifMatch(r *http.Request) (digest.Digest, bool, error) {
	v := strings.TrimSpace(r.Header.Get("If-Match"))
	if v == "" {
		return "", false, nil
	}
	if v == "*" {
		return "*", true, nil
	}
	v = strings.TrimPrefix(v, "W/")
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false, fmt.Errorf("If-Match must be a quoted digest like \"sha256:<hex>\": %w", errdefs.ErrInvalidArgument)
	}
	d := digest.Digest(v[1 : len(v)-1])
	if err := contenthash.Validate(d); err != nil {
		return "", false, err
	}
	return d, true, nil
}

// checkBase enforces If-Match against an image's current content.
func checkBase(img *catalog.Image, base digest.Digest) error {
	var have digest.Digest
	if img.Content != nil {
		have = img.Content.Digest
	}
	if base == "*" {
		if have == "" {
			return &errdefs.PreconditionError{UID: img.UID, Want: "*", Have: ""}
		}
		return nil
	}
	if have != base {
		return &errdefs.PreconditionError{UID: img.UID, Want: base, Have: have}
	}
	return nil
}

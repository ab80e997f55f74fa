// Package api is depot's wire contract: the JSON shapes of the REST API
// (seed 004) and the single table that maps the errdefs vocabulary to HTTP
// status codes and error codes and back. The server and the client both use
// it, so the two directions cannot drift apart.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Prefix is where the API lives.
const Prefix = "/api/v1"

// Headers.
const (
	// HeaderDigest carries a content digest ("sha256:<hex>"): declared by a
	// PUT, reported by GET and HEAD.
	HeaderDigest = "X-Depot-Digest"
	// HeaderMessage is an optional revision message on a content PUT.
	HeaderMessage = "X-Depot-Message"
	// HeaderFormat reports the detected format on content GET and HEAD.
	HeaderFormat = "X-Depot-Format"
	// HeaderProvenance is an optional content PUT header: how the content
	// was made, as one compact JSON Provenance object (ASCII, at most
	// MaxProvenanceBytes), recorded with the revision.
	HeaderProvenance = "X-Depot-Provenance"
)

// Envelope wraps every JSON response.
type Envelope struct {
	Success bool            `json:"success"`
	Data    json.RawMessage `json:"data,omitempty"`
	Error   string          `json:"error,omitempty"`
	// Code is the machine-readable error class (see the table).
	Code string `json:"code,omitempty"`
	// Want and Have name the digests of a typed error, when there are any.
	Want string `json:"want,omitempty"`
	Have string `json:"have,omitempty"`
	// Next is the cursor for the next page of a list, when there is one.
	Next string `json:"next,omitempty"`
}

// Image is the wire form of an image record (the server renders it from
// its catalog; clients never see the catalog).
type Image struct {
	UID            string     `json:"uid"`
	Name           string     `json:"name"`
	Description    string     `json:"description"`
	Frozen         bool       `json:"frozen"`
	Parent         *string    `json:"parent"`
	Distro         *string    `json:"distro"`
	Content        *Content   `json:"content"`
	History        []Revision `json:"history"`
	Created        float64    `json:"created"`
	LastModified   float64    `json:"last_modified"`
	LastModifiedBy string     `json:"last_modified_by,omitempty"`
}

// Content describes an image's current content.
type Content struct {
	Size           int64   `json:"size"`
	MTime          float64 `json:"mtime"`
	Chksum         string  `json:"chksum"`
	Fmt            string  `json:"fmt"`
	BLAKE3         string  `json:"blake3,omitempty"`
	LastModified   float64 `json:"last_modified"`
	LastModifiedBy string  `json:"last_modified_by,omitempty"`
}

// Revision is one entry of an image's content history.
type Revision struct {
	Chksum  string  `json:"chksum"`
	Size    int64   `json:"size"`
	MTime   float64 `json:"mtime"`
	Fmt     string  `json:"fmt"`
	By      string  `json:"by,omitempty"`
	Message string  `json:"message,omitempty"`
	Current bool    `json:"current"`
	// Provenance says how the content was made, when the upload said so
	// (`depot image capture` does).
	Provenance *Provenance `json:"provenance,omitempty"`
}

// ContentStat is the answer of …/content/stat.
type ContentStat struct {
	Size  int64   `json:"size"`
	MTime float64 `json:"mtime"`
}

// ContentInfo is the answer of …/content/info and of a content PUT.
type ContentInfo struct {
	Size   int64   `json:"size"`
	MTime  float64 `json:"mtime"`
	Chksum string  `json:"chksum"`
	Refcnt int     `json:"refcnt"`
	Fmt    string  `json:"fmt"`
}

// CreateImageRequest is the body of POST /images. Only name is required.
type CreateImageRequest struct {
	Name        string  `json:"name"`
	Description *string `json:"description,omitempty"`
	Parent      *string `json:"parent,omitempty"`
	Distro      *string `json:"distro,omitempty"`
	Frozen      *bool   `json:"frozen,omitempty"`
}

// PatchImageRequest is the body of PATCH /image/<UID>. Absent fields are
// left alone; an empty parent or distro clears it.
type PatchImageRequest struct {
	Name        *string `json:"name,omitempty"`
	Description *string `json:"description,omitempty"`
	Parent      *string `json:"parent,omitempty"`
	Distro      *string `json:"distro,omitempty"`
	Frozen      *bool   `json:"frozen,omitempty"`
}

// CloneRequest is the body of POST /image/<UID>/clone.
type CloneRequest struct {
	Name        string  `json:"name"`
	Description *string `json:"description,omitempty"`
}

// ServerInfo is the answer of GET /server: what a client may want to know
// about the server before it uploads.
type ServerInfo struct {
	// PreferDeclaredDigest is true when an upload whose digest is declared
	// up front (the header or the query, not a trailer) is committed more
	// cheaply: with S3 blobs it goes straight to its final key, with no
	// server-side copy. A client that can hash the content before sending
	// it should then do so. Every byte is verified either way.
	PreferDeclaredDigest bool `json:"prefer_declared_digest"`
}

// TokenRequest is the body of POST /tokens.
type TokenRequest struct {
	Subject string `json:"subject"`
	Role    string `json:"role"`
	// TTL is a Go duration ("720h"); empty means no expiry.
	TTL string `json:"ttl,omitempty"`
}

// Token is the answer of POST /tokens (with the secret) and of GET /tokens
// (without).
type Token struct {
	ID        string  `json:"id"`
	Subject   string  `json:"subject"`
	Role      string  `json:"role"`
	Created   float64 `json:"created"`
	CreatedBy string  `json:"created_by,omitempty"`
	Token     string  `json:"token,omitempty"`
}

// UnixFloat renders t like seed 004 does: seconds since the epoch.
func UnixFloat(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// FromUnixFloat is the inverse of UnixFloat.
func FromUnixFloat(f float64) time.Time {
	if f == 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return time.Time{}
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC()
}

// ETag is the entity tag of content with digest d.
func ETag(d digest.Digest) string { return `"` + d.String() + `"` }

// The one table: error class ↔ code ↔ HTTP status.
var table = []struct {
	err    error
	code   string
	status int
}{
	{errdefs.ErrNotFound, "not_found", http.StatusNotFound},
	{errdefs.ErrDigestUnavailable, "digest_unavailable", http.StatusNotFound},
	{errdefs.ErrAlreadyExists, "already_exists", http.StatusConflict},
	{errdefs.ErrConflict, "conflict", http.StatusConflict},
	{errdefs.ErrPrecondition, "precondition_failed", http.StatusPreconditionFailed},
	{errdefs.ErrInvalidArgument, "invalid_argument", http.StatusBadRequest},
	{errdefs.ErrVerification, "verification_failed", http.StatusUnprocessableEntity},
	{errdefs.ErrUnauthorized, "unauthorized", http.StatusUnauthorized},
	{errdefs.ErrForbidden, "forbidden", http.StatusForbidden},
	{errdefs.ErrTooLarge, "too_large", http.StatusRequestEntityTooLarge},
	{errdefs.ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
	{errdefs.ErrNoSpace, "no_space", http.StatusInsufficientStorage},
	{errdefs.ErrCorrupt, "corrupt", http.StatusInternalServerError},
	{errdefs.ErrUnsafeContent, "unsafe_content", http.StatusUnprocessableEntity},
}

// ErrorEnvelope renders err for the wire: its status and envelope. Errors
// outside the vocabulary are 500 "internal".
func ErrorEnvelope(err error) (int, Envelope) {
	env := Envelope{Success: false, Error: err.Error(), Code: "internal"}
	status := http.StatusInternalServerError
	for _, row := range table {
		if errors.Is(err, row.err) {
			env.Code, status = row.code, row.status
			break
		}
	}
	var ve *errdefs.VerificationError
	var pe *errdefs.PreconditionError
	var du *errdefs.DigestUnavailableError
	switch {
	case errors.As(err, &ve):
		env.Want, env.Have = ve.Want.String(), ve.Got.String()
	case errors.As(err, &pe):
		env.Want, env.Have = pe.Want.String(), pe.Have.String()
	case errors.As(err, &du):
		env.Want, env.Have = du.Want.String(), du.Have.String()
	}
	return status, env
}

// ErrorFromEnvelope rebuilds an error from a failed response, so that
// errors.Is and errors.As work on the client side as on the server side.
func ErrorFromEnvelope(status int, env Envelope, what string) error {
	var class error
	for _, row := range table {
		if row.code == env.Code {
			class = row.err
			break
		}
	}
	if class == nil && status != http.StatusInternalServerError { // a bare 500 is no class
		for _, row := range table {
			if row.status == status {
				class = row.err
				break
			}
		}
	}
	msg := env.Error
	if msg == "" {
		msg = http.StatusText(status)
	}
	switch class {
	case errdefs.ErrPrecondition:
		return fmt.Errorf("%s: %w", what, &errdefs.PreconditionError{UID: what, Want: digest.Digest(env.Want), Have: digest.Digest(env.Have)})
	case errdefs.ErrVerification:
		return fmt.Errorf("%s: %w", what, &errdefs.VerificationError{Want: digest.Digest(env.Want), Got: digest.Digest(env.Have)})
	case nil:
		return fmt.Errorf("%s: server error (HTTP %d): %s", what, status, msg)
	}
	// The server's message ends with the class already (it was wrapped with
	// %w there); keep the message and re-attach the class once.
	msg = strings.TrimSuffix(msg, ": "+class.Error())
	return fmt.Errorf("%s: %w", msg, class)
}

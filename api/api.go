// Package api is depot's wire contract: the JSON shapes of the REST API
// (seed 004) and the single table that maps the errdefs vocabulary to HTTP
// status codes and error codes and back. The server and the client both use
// it, so the two directions cannot drift apart.
package api

import (
	"encoding/binary"
	"encoding/hex"
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
	// HeaderDeltaBase names the base blob ("sha256:<hex>") of a delta
	// push: a content PUT whose body (of type DeltaMediaType) is a recipe
	// against that blob plus the bytes it lacks; X-Depot-Size is then the
	// assembled blob's size.
	HeaderDeltaBase = "X-Depot-Delta-Base"
	// HeaderFormat reports the detected format on content GET and HEAD.
	HeaderFormat = "X-Depot-Format"
	// HeaderChunksDigest reports, on GET and HEAD …/blob/<digest>/chunks,
	// the digest of the chunk index served (as its ETag does).
	HeaderChunksDigest = "X-Depot-Chunks-Digest"
	// HeaderProvenance is an optional content PUT header: how the content
	// was made, as one compact JSON Provenance object (ASCII, at most
	// MaxProvenanceBytes), recorded with the revision.
	HeaderProvenance = "X-Depot-Provenance"
)

// DeltaMediaType is the Content-Type of a delta push body (docs/api.md).
const DeltaMediaType = "application/vnd.depot.delta.v1"

// MediaTypeChunks is the Content-Type of a chunk index (GET
// …/blob/<digest>/chunks): internal/chunks' binary encoding, version 1.
const MediaTypeChunks = "application/vnd.depot.chunks.v1"

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
// its catalog; clients never see the catalog). Its shape is seed 004's
// (GET /image/DefaultImage), plus depot's history and created.
type Image struct {
	UID         string     `json:"uid"`
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Frozen      bool       `json:"frozen"`
	Parent      *string    `json:"parent"`
	Distro      *string    `json:"distro"`
	Content     *Content   `json:"content"`
	History     []Revision `json:"history"`
	Created     float64    `json:"created"`
	// LastModified, LastModifiedOn and LastModifiedBy say when, on which
	// head (its --head-name) and by whom the image record last changed.
	// LastModifiedOn is "" for a change made before heads recorded it.
	LastModified   float64 `json:"last_modified"`
	LastModifiedOn string  `json:"last_modified_on"`
	LastModifiedBy string  `json:"last_modified_by"`
}

// Content is an image's current content in seed 004's shape: the file,
// keyed by its format, next to when, on which head and by whom it was
// uploaded:
//
//	{"qcow2": {"size": …, "mtime": …, "chksum": "sha256:…", "filename": "<hex>", "uid": "<32 hex>", "blake3": "…"},
//	 "last_modified": …, "last_modified_on": "head1", "last_modified_by": "ci"}
//
// depot keeps one file per image, so there is exactly one format key. No
// format is named like the three fixed keys. Fields of ContentFile are
// promoted, so c.Chksum and c.Size read the file's.
type Content struct {
	// Fmt is the format the file is keyed by, detected from its bytes
	// (qcow2, squashfs, raw, tar, …: see GET …/content/info).
	Fmt string
	ContentFile
	LastModified   float64
	LastModifiedOn string
	LastModifiedBy string
}

// ContentFile is the entry of Content under its format key.
type ContentFile struct {
	Size   int64   `json:"size"`
	MTime  float64 `json:"mtime"`
	Chksum string  `json:"chksum"`
	// Filename is the file's name in depot's blob store: the hex of its
	// SHA-256 digest, which GET /api/v1/blob/sha256:<filename> serves and
	// a qcow2 overlay names as its backing file.
	Filename string `json:"filename"`
	// UID is the content's stable id: the first 32 hex digits of its
	// SHA-256 (ContentUID), the shape of the seed's UIDs. The same bytes
	// have the same UID on every head and in every image.
	UID string `json:"uid"`
	// BLAKE3 is depot's second digest of the file, when the blob store
	// computed one.
	BLAKE3 string `json:"blake3,omitempty"`
	// Chunks is the digest of the blob's chunk index (GET
	// /api/v1/blob/<chksum>/chunks), when the head recorded one: a node
	// verifies the index against it before a delta pull trusts it.
	Chunks string `json:"chunks,omitempty"`
}

// The fixed keys of a Content object next to its format key.
const (
	keyLastModified   = "last_modified"
	keyLastModifiedOn = "last_modified_on"
	keyLastModifiedBy = "last_modified_by"
)

// ContentUID is the uid of the content with digest d (ContentFile.UID).
func ContentUID(d digest.Digest) string {
	h := d.Encoded()
	if len(h) > 32 {
		h = h[:32]
	}
	return h
}

// MarshalJSON writes c keyed by its format.
func (c Content) MarshalJSON() ([]byte, error) {
	switch c.Fmt {
	case "", keyLastModified, keyLastModifiedOn, keyLastModifiedBy:
		return nil, fmt.Errorf("content format %q cannot be a key of the content object: %w", c.Fmt, errdefs.ErrInvalidArgument)
	}
	return json.Marshal(map[string]any{
		c.Fmt:             c.ContentFile,
		keyLastModified:   c.LastModified,
		keyLastModifiedOn: c.LastModifiedOn,
		keyLastModifiedBy: c.LastModifiedBy,
	})
}

// UnmarshalJSON reads the seed's shape: the three fixed keys and exactly
// one format key whose value is the file's object.
func (c *Content) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	var out Content
	for k, v := range m {
		var err error
		switch k {
		case keyLastModified:
			err = json.Unmarshal(v, &out.LastModified)
		case keyLastModifiedOn:
			err = json.Unmarshal(v, &out.LastModifiedOn)
		case keyLastModifiedBy:
			err = json.Unmarshal(v, &out.LastModifiedBy)
		default:
			if out.Fmt != "" {
				return fmt.Errorf("content has two formats, %q and %q; depot keeps one: %w", out.Fmt, k, errdefs.ErrInvalidArgument)
			}
			out.Fmt = k
			if string(v) == "null" {
				return fmt.Errorf("content format %q has no file: %w", k, errdefs.ErrInvalidArgument)
			}
			err = json.Unmarshal(v, &out.ContentFile)
		}
		if err != nil {
			return fmt.Errorf("content key %q: %w", k, err)
		}
	}
	if out.Fmt == "" {
		return fmt.Errorf("content has no format key: %w", errdefs.ErrInvalidArgument)
	}
	*c = out
	return nil
}

// Revision is one entry of an image's content history.
type Revision struct {
	Chksum  string  `json:"chksum"`
	Size    int64   `json:"size"`
	MTime   float64 `json:"mtime"`
	Fmt     string  `json:"fmt"`
	Chunks  string  `json:"chunks,omitempty"` // digest of the chunk index, when recorded
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
	// Chunks is the digest of the blob's chunk index (GET
	// /blob/<digest>/chunks), in the answer of a content PUT that recorded
	// one. …/content/info leaves it out, keeping seed 004's keys exactly;
	// the image's content and revisions carry it.
	Chunks string `json:"chunks,omitempty"`
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

// MediaTypeZstd is the Content-Type of GET …/blob/<digest>/zstd: one zstd
// frame (RFC 8878) of a byte range of the blob.
const MediaTypeZstd = "application/zstd"

// MaxZstdRange bounds the length of one compressed range request.
const MaxZstdRange = 32 << 20

// Index deltas: GET …/blob/<digest>/chunks?base=<digest> may answer the
// index as a zstd frame whose dictionary is the base blob's own index (the
// one a node already holds), with HeaderChunksBase naming that base. The
// frame's dictionary ID is IndexDictID(base).
const (
	MediaTypeChunksZstd = "application/vnd.depot.chunks.v1+zstd"
	HeaderChunksBase    = "X-Depot-Chunks-Base"
)

// IndexDictID is the zstd dictionary ID of base's index in an index delta:
// the first four bytes of its sha256, with the top bit set (IDs below 2^15
// are reserved by the zstd format for registered dictionaries).
func IndexDictID(base digest.Digest) uint32 {
	var id uint32
	if b, err := hex.DecodeString(base.Encoded()[:min(8, len(base.Encoded()))]); err == nil && len(b) == 4 {
		id = binary.BigEndian.Uint32(b)
	}
	return id | 1<<31
}

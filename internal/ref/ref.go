// Package ref parses the references the node cache accepts:
//
//	NAME                          an image on a depot server (mutable pointer)
//	NAME@sha256:<hex>             that image's content, pinned by digest
//	<32-hex UID>                  an image on a depot server by UID
//	<UID>@sha256:<hex>            pinned, by UID
//	https://host/path/disk.qcow2  a plain HTTP(S) file (checksum from elsewhere)
//	https://…/disk.qcow2@sha256:<hex>   pinned URL (same as --checksum)
//	oci://registry/repo:tag       a disk image as an OCI artifact
//	oci://registry/repo@sha256:<hex>    pinned manifest
//
// A malformed or ambiguous reference is an error (errdefs.ErrInvalidArgument),
// never a guess. Parsing does no I/O and never panics (it is fuzzed).
package ref

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/names"
)

// Kind is where a reference points.
type Kind string

// Kinds.
const (
	Depot Kind = "depot"
	HTTP  Kind = "http"
	OCI   Kind = "oci"
)

// Ref is a parsed reference.
type Ref struct {
	Kind Kind
	// Depot: Name or UID (exactly one is set).
	Name, UID string
	// HTTP: the file URL.
	URL string
	// OCI: registry host[:port], repository path, and tag (when not pinned).
	Registry, Repository, Tag string
	// Digest pins the content (Depot, HTTP) or the manifest (OCI).
	Digest digest.Digest
}

// Pinned reports whether the reference names exact content.
func (r Ref) Pinned() bool { return r.Digest != "" }

// Key is the canonical pointer key of the unpinned reference, used to index
// what the pointer resolved to. For a depot ref it includes the server.
func (r Ref) Key(server string) string {
	switch r.Kind {
	case Depot:
		if r.UID != "" {
			return "depot:" + server + "/uid/" + r.UID
		}
		return "depot:" + server + "/name/" + r.Name
	case HTTP:
		return "http:" + r.URL
	case OCI:
		if r.Digest != "" { // a pinned manifest maps to its layer immutably
			return "oci:" + r.Registry + "/" + r.Repository + "@" + r.Digest.String()
		}
		return "oci:" + r.Registry + "/" + r.Repository + ":" + r.Tag
	}
	return ""
}

// String renders the reference in its accepted form.
func (r Ref) String() string {
	var s string
	switch r.Kind {
	case Depot:
		s = r.Name
		if r.UID != "" {
			s = r.UID
		}
	case HTTP:
		s = r.URL
	case OCI:
		s = "oci://" + r.Registry + "/" + r.Repository
		if r.Tag != "" {
			s += ":" + r.Tag
		}
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// hostRE is what depot takes for a host (an HTTP URL's, or a registry):
// a DNS name or IPv4 address, or a bracketed IPv6 one, and an optional port
// of 1-5 digits.
var hostRE = regexp.MustCompile(`^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$`)

func bad(s, why string) error {
	return fmt.Errorf("reference %q: %s: %w", s, why, errdefs.ErrInvalidArgument)
}

// parseDigest accepts only sha256:<64 lowercase hex>.
func parseDigest(s, whole string) (digest.Digest, error) {
	if contenthash.Validate(digest.Digest(s)) != nil {
		return "", bad(whole, "a pinned digest must be sha256:<64 lowercase hex>")
	}
	return digest.Digest(s), nil
}

// maxLen bounds a reference, in its canonical form.
const maxLen = 4096

// Parse parses a reference.
func Parse(s string) (Ref, error) {
	if s == "" {
		return Ref{}, bad(s, "empty")
	}
	if len(s) > maxLen {
		return Ref{}, bad(s[:64]+"…", "longer than 4096 bytes")
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f {
			return Ref{}, bad(s, "contains whitespace or control characters")
		}
	}
	switch {
	case strings.HasPrefix(s, "oci://"):
		return parseOCI(s)
	case strings.HasPrefix(s, "https://"), strings.HasPrefix(s, "http://"):
		return parseHTTP(s)
	case strings.Contains(s, "://"):
		return Ref{}, bad(s, "unknown scheme; use a name, a UID, http(s):// or oci://")
	}
	return parseDepot(s)
}

func parseDepot(s string) (Ref, error) {
	name, dg, pinned := strings.Cut(s, "@")
	r := Ref{Kind: Depot}
	if pinned {
		d, err := parseDigest(dg, s)
		if err != nil {
			return Ref{}, err
		}
		r.Digest = d
	}
	if names.IsUID(name) {
		r.UID = name
		return r, nil
	}
	if err := names.ValidateName(name); err != nil {
		return Ref{}, bad(s, "not a valid image name or 32-hex UID")
	}
	r.Name = name
	return r, nil
}

func parseHTTP(s string) (Ref, error) {
	raw := s
	r := Ref{Kind: HTTP}
	// A pin is a trailing "@sha256:<hex>" (an '@' inside userinfo would
	// come before the host and is rejected below).
	if i := strings.LastIndex(s, "@sha256:"); i >= 0 {
		d, err := parseDigest(s[i+1:], raw)
		if err != nil {
			return Ref{}, err
		}
		r.Digest, s = d, s[:i]
	}
	u, err := url.Parse(s)
	if err != nil {
		return Ref{}, bad(raw, "not a URL")
	}
	switch {
	case u.Host == "" || !hostRE.MatchString(u.Host):
		return Ref{}, bad(raw, "the URL needs a host")
	case u.User != nil:
		return Ref{}, bad(raw, "credentials in URLs are not accepted (they would be stored and logged)")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return Ref{}, bad(raw, "fragments are not accepted")
	case u.Path == "" || strings.HasSuffix(u.Path, "/"):
		return Ref{}, bad(raw, "the URL must name a file")
	}
	r.URL = u.String()
	// Bound the canonical form, not the input: percent-encoding can triple
	// the length, and every accepted reference must round-trip.
	if len(r.String()) > maxLen {
		return Ref{}, bad(raw[:min(len(raw), 64)]+"…", "longer than 4096 bytes once URL-encoded")
	}
	return r, nil
}

// parseOCI parses oci://registry/repository:tag or …@sha256:<hex> with
// oras-go's reference grammar (the one the OCI source connects with), then
// applies depot's own rules on top: a registry is host[:port] with a port
// of 1-5 digits, a repository is at most 255 bytes, a pin is sha256, and
// the reference names exactly one of a tag and a digest.
func parseOCI(s string) (Ref, error) {
	rest := strings.TrimPrefix(s, "oci://")
	or, err := registry.ParseReference(rest)
	if err != nil {
		why := strings.TrimPrefix(err.Error(), errdef.ErrInvalidReference.Error()+": ")
		return Ref{}, bad(s, why+"; want oci://registry/repository:tag or @sha256:<hex>")
	}
	if !hostRE.MatchString(or.Registry) {
		return Ref{}, bad(s, "want oci://registry/repository:tag or @sha256:<hex>")
	}
	if len(or.Repository) > 255 {
		return Ref{}, bad(s, "invalid repository name (lowercase letters, digits, separators)")
	}
	if or.Reference == "" {
		return Ref{}, bad(s, "name a tag (:tag) or a digest (@sha256:…); there is no implicit :latest")
	}
	// oras drops a tag given beside a digest (its form B); anything it
	// dropped shows as a difference from the canonical form.
	if or.String() != rest {
		return Ref{}, bad(s, "give a tag or a digest, not both (ambiguous)")
	}
	r := Ref{Kind: OCI, Registry: or.Registry, Repository: or.Repository}
	if d, err := or.Digest(); err == nil {
		if r.Digest, err = parseDigest(d.String(), s); err != nil {
			return Ref{}, err
		}
	} else {
		r.Tag = or.Reference
	}
	return r, nil
}

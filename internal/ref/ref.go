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

var (
	repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	hostRE = regexp.MustCompile(`^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$`)
)

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

func parseOCI(s string) (Ref, error) {
	rest := strings.TrimPrefix(s, "oci://")
	r := Ref{Kind: OCI}
	if i := strings.Index(rest, "@"); i >= 0 {
		d, err := parseDigest(rest[i+1:], s)
		if err != nil {
			return Ref{}, err
		}
		r.Digest, rest = d, rest[:i]
	}
	host, path, ok := strings.Cut(rest, "/")
	if !ok || !hostRE.MatchString(host) {
		return Ref{}, bad(s, "want oci://registry/repository:tag or @sha256:<hex>")
	}
	if i := strings.LastIndex(path, ":"); i >= 0 {
		r.Tag, path = path[i+1:], path[:i]
		if !validTag(r.Tag) {
			return Ref{}, bad(s, "invalid tag")
		}
	}
	if !repoRE.MatchString(path) || len(path) > 255 {
		return Ref{}, bad(s, "invalid repository name (lowercase letters, digits, separators)")
	}
	if r.Tag == "" && r.Digest == "" {
		return Ref{}, bad(s, "name a tag (:tag) or a digest (@sha256:…); there is no implicit :latest")
	}
	if r.Tag != "" && r.Digest != "" {
		return Ref{}, bad(s, "give a tag or a digest, not both (ambiguous)")
	}
	r.Registry, r.Repository = host, path
	return r, nil
}

// validTag checks an OCI tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
func validTag(t string) bool {
	if len(t) == 0 || len(t) > 128 {
		return false
	}
	for i := range len(t) {
		c := t[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || (i > 0 && (c == '.' || c == '-'))
		if !ok {
			return false
		}
	}
	return true
}

package server

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
)

// Where an upload may declare its digest. Each is read in the header and
// in the trailer; all that are present must name the same digest.
//
//   - X-Depot-Digest: sha256:<hex> (and ?digest=sha256:<hex>), depot's own;
//   - Repr-Digest and Content-Digest (RFC 9530): a structured-field
//     dictionary such as sha-256=:<base64>:. Only sha-256 is verified;
//     other algorithms beside it are ignored, and a field without sha-256
//     is refused. For a whole-body PUT without a content coding the two
//     fields describe the same bytes, the ones stored.
//
// Digest fields depot does not read (RFC 3230's Digest, Content-MD5) are
// refused rather than ignored: a client that sent one expects it checked.
var (
	rfc9530Fields  = []string{"Repr-Digest", "Content-Digest"}
	unreadDigests  = []string{"Digest", "Content-MD5"}
	maxDigestField = 1024 // bytes of one RFC 9530 field value depot parses
)

// declaredDigest reads the digest a PUT declares up front: the headers and
// the ?digest= query; "" when none.
func declaredDigest(r *http.Request) (digest.Digest, error) {
	for _, f := range unreadDigests {
		if _, ok := r.Header[http.CanonicalHeaderKey(f)]; ok {
			return "", fmt.Errorf("the %s header is not read by depot; declare the digest as Repr-Digest: sha-256=:<base64>: or %s: sha256:<hex>: %w", f, api.HeaderDigest, errdefs.ErrInvalidArgument)
		}
	}
	d, err := digestIn(r.Header, "header")
	if err != nil {
		return "", err
	}
	if q := r.URL.Query().Get("digest"); q != "" {
		qd := digest.Digest(q)
		if err := contenthash.Validate(qd); err != nil {
			return "", err
		}
		if d != "" && d != qd {
			return "", fmt.Errorf("the digest headers and ?digest= disagree: %w", errdefs.ErrInvalidArgument)
		}
		d = qd
	}
	return d, nil
}

// trailerDigest reads a digest sent as a trailer (X-Depot-Digest,
// Repr-Digest or Content-Digest) and checks it against the one declared
// up front (want, "" when none). It returns the digest to verify.
func trailerDigest(tr http.Header, want digest.Digest) (digest.Digest, error) {
	for _, f := range unreadDigests {
		if _, ok := tr[http.CanonicalHeaderKey(f)]; ok {
			return "", fmt.Errorf("the %s trailer is not read by depot; send Repr-Digest or %s: %w", f, api.HeaderDigest, errdefs.ErrInvalidArgument)
		}
	}
	d, err := digestIn(tr, "trailer")
	switch {
	case err != nil:
		return "", err
	case d == "":
		return want, nil
	case want != "" && d != want:
		return "", fmt.Errorf("the digest declared in the header (%s) and the one in the trailer (%s) disagree: %w", want, d, errdefs.ErrInvalidArgument)
	}
	return d, nil
}

// digestIn collects the digests h declares and insists they agree.
func digestIn(h http.Header, where string) (digest.Digest, error) {
	var d digest.Digest
	agree := func(field string, got digest.Digest) error {
		if d != "" && got != d {
			return fmt.Errorf("the digest %ss disagree (%s says %s, another %s): %w", where, field, got, d, errdefs.ErrInvalidArgument)
		}
		d = got
		return nil
	}
	for _, v := range h.Values(api.HeaderDigest) {
		got := digest.Digest(strings.TrimSpace(v))
		if err := contenthash.Validate(got); err != nil {
			return "", err
		}
		if err := agree(api.HeaderDigest, got); err != nil {
			return "", err
		}
	}
	for _, f := range rfc9530Fields {
		vs := h.Values(f)
		if len(vs) == 0 {
			continue
		}
		got, err := parseRFC9530(strings.Join(vs, ","))
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", f, where, err)
		}
		if err := agree(f, got); err != nil {
			return "", err
		}
	}
	return d, nil
}

// parseRFC9530 reads the sha-256 member of an RFC 9530 digest field, a
// structured-field dictionary (RFC 8941) of byte sequences:
// `sha-256=:<base64>:, sha-512=:<base64>:`. Members other than sha-256
// are skipped; parameters are refused; sha-256 must be there, once, and
// decode to 32 bytes.
func parseRFC9530(v string) (digest.Digest, error) {
	bad := func(why string) (digest.Digest, error) {
		return "", fmt.Errorf("%s; want sha-256=:<base64 of the 32-byte sha256>:: %w", why, errdefs.ErrInvalidArgument)
	}
	if len(v) > maxDigestField {
		return bad(fmt.Sprintf("over %d bytes", maxDigestField))
	}
	var found digest.Digest
	for _, m := range strings.Split(v, ",") {
		m = strings.Trim(m, " \t")
		key, val, ok := strings.Cut(m, "=")
		if !ok || !sfKey(key) {
			return bad(fmt.Sprintf("member %q is not key=:<base64>:", m))
		}
		if len(val) < 2 || val[0] != ':' || val[len(val)-1] != ':' || strings.ContainsAny(val, ";") {
			return bad(fmt.Sprintf("the value of %q is not a byte sequence :<base64>: (parameters are not accepted)", key))
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(val[1 : len(val)-1])
		if err != nil {
			return bad(fmt.Sprintf("the value of %q is not base64", key))
		}
		if key != "sha-256" {
			continue // an algorithm depot does not verify, beside sha-256
		}
		if found != "" {
			return bad("sha-256 is given twice")
		}
		if len(raw) != 32 {
			return bad(fmt.Sprintf("sha-256 is %d bytes, not 32", len(raw)))
		}
		found = digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(raw))
	}
	if found == "" {
		return bad("no sha-256 member: depot verifies sha-256 only")
	}
	return found, nil
}

// sfKey reports whether k is a structured-field key (RFC 8941 3.1.2).
func sfKey(k string) bool {
	if k == "" || !(k[0] == '*' || 'a' <= k[0] && k[0] <= 'z') {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("_-.*", c) >= 0) {
			return false
		}
	}
	return true
}

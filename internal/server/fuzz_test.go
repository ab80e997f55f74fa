package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// FuzzDecodeRequests: every refusal is in the vocabulary, and whatever is
// accepted has each top-level key once, spelled exactly as a field of the
// request (no duplicate for encoding/json to resolve by "last one wins",
// no key that matches a field only when case is ignored).
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{`{"name":"x"}`, `{"name":"x","frozen":true,"parent":"y"}`, `{"frozen":"no"}`, `[]`, `{"name":"a"}{}`, ``, `null`,
		`{"name":"a","name":"b"}`, `{"name":"a","NAME":"b"}`, `{"Name":"x"}`, `{"name":"x","di\u017ftro":"d"}`, `{"frozen":true,"frozen":false}`} {
		f.Add([]byte(s))
	}
	fields := func(names ...string) map[string]bool {
		m := map[string]bool{}
		for _, n := range names {
			m[n] = true
		}
		return m
	}
	all := fields("name", "description", "parent", "distro", "frozen")
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, c := range []struct {
			name   string
			fields map[string]bool
			dec    func() error
		}{
			{"create", all, func() error { _, err := decodeCreate(bytes.NewReader(b)); return err }},
			{"patch", all, func() error { _, err := decodePatch(bytes.NewReader(b)); return err }},
			{"clone", fields("name", "description"), func() error { _, err := decodeClone(bytes.NewReader(b)); return err }},
		} {
			err := c.dec()
			if err != nil {
				if !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrTooLarge) {
					t.Fatalf("%s: error outside the vocabulary: %v", c.name, err)
				}
				continue
			}
			keys := topLevelKeys(t, b)
			for i, k := range keys {
				if !c.fields[k] {
					t.Fatalf("%s accepted %q with key %q, not a field name", c.name, b, k)
				}
				for _, other := range keys[:i] {
					if strings.EqualFold(k, other) {
						t.Fatalf("%s accepted %q with keys %q and %q", c.name, b, other, k)
					}
				}
			}
		}
	})
}

// topLevelKeys lists the keys of the JSON object b in order, repeats
// included (b is known to be accepted, so it is one valid object or null).
func topLevelKeys(t *testing.T, b []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil // null
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("accepted %q, which is not one object: %v", b, err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("accepted %q, which is not one object: %v", b, err)
		}
	}
	return keys
}

func FuzzValidRef(f *testing.F) {
	for _, s := range []string{"ok", "../x", "0123456789abcdef0123456789abcdef", "a/b", "%2e%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validRef(s) == nil {
			for _, bad := range []string{"/", "\\", "..", "\x00"} {
				if bytes.Contains([]byte(s), []byte(bad)) && !(bad == ".." && s[0] != '.') {
					t.Fatalf("validRef accepted %q containing %q", s, bad)
				}
			}
		}
	})
}

// FuzzRangeQuery: the compressed-range and index-delta queries are parsed
// strictly. Whatever parseRangeQuery accepts is within its bounds and is
// what the canonical query of those numbers says (the parse is exact: no
// second spelling of a range, so no second cache key); whatever
// parseBaseQuery accepts is a valid digest that the canonical query gives
// back; every refusal is ErrInvalidArgument.
func FuzzRangeQuery(f *testing.F) {
	for _, s := range []string{"offset=0&length=1", "offset=10&length=65536", "length=5&offset=7", "offset=01&length=5", "offset=-1&length=5",
		"offset=0&length=5&x=1", "offset=0&offset=1&length=5", "offset=%2B1&length=5", "a;b", "%zz", "",
		"base=sha256:" + strings.Repeat("a", 64), "base=sha256:" + strings.Repeat("A", 64), "base=x&base=y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		off, n, err := parseRangeQuery(raw)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("%q: refused with %v, not ErrInvalidArgument", raw, err)
			}
		} else {
			if off < 0 || n < 1 || n > api.MaxZstdRange {
				t.Fatalf("%q: accepted %d+%d", raw, off, n)
			}
			canon := fmt.Sprintf("offset=%d&length=%d", off, n)
			if o2, n2, err := parseRangeQuery(canon); err != nil || o2 != off || n2 != n {
				t.Fatalf("%q: %d+%d, but its canonical query %q parses to %d+%d (%v)", raw, off, n, canon, o2, n2, err)
			}
			if q, _ := url.ParseQuery(raw); q.Get("offset") != strconv.FormatInt(off, 10) || q.Get("length") != strconv.FormatInt(n, 10) {
				t.Fatalf("%q: accepted %d+%d, spelled otherwise", raw, off, n)
			}
		}
		base, err := parseBaseQuery(raw)
		switch {
		case err != nil && !errors.Is(err, errdefs.ErrInvalidArgument):
			t.Fatalf("%q: base refused with %v", raw, err)
		case err == nil && base != "":
			if base.Validate() != nil {
				t.Fatalf("%q: accepted base %q", raw, base)
			}
			if b2, err := parseBaseQuery("base=" + base.String()); err != nil || b2 != base {
				t.Fatalf("%q: base %s does not round-trip: %s %v", raw, base, b2, err)
			}
		case err == nil && raw != "":
			t.Fatalf("%q: a non-empty query accepted without a base", raw)
		}
	})
}

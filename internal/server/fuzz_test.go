package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

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

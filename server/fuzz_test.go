package server

import (
	"bytes"
	"errors"
	"testing"

	"github.com/depot-images/depot/errdefs"
)

func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{`{"name":"x"}`, `{"name":"x","frozen":true,"parent":"y"}`, `{"frozen":"no"}`, `[]`, `{"name":"a"}{}`, ``, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for name, dec := range map[string]func() error{
			"create": func() error { _, err := decodeCreate(bytes.NewReader(b)); return err },
			"patch":  func() error { _, err := decodePatch(bytes.NewReader(b)); return err },
			"clone":  func() error { _, err := decodeClone(bytes.NewReader(b)); return err },
		} {
			if err := dec(); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrTooLarge) {
				t.Fatalf("%s: error outside the vocabulary: %v", name, err)
			}
		}
	})
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

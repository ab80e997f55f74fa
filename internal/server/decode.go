package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// decodeJSON reads one JSON object of type T from body, bounded to limit
// bytes, refusing unknown fields, wrong types and trailing data, and
// refusing what encoding/json would quietly resolve: a key given twice (it
// keeps the last) and a key that matches a field only when case is
// ignored ("NAME", "Name"), or two keys that differ only in case. Every
// failure matches ErrInvalidArgument or ErrTooLarge and says what was wrong.
func decodeJSON[T any](body io.Reader, limit int64) (T, error) {
	var v T
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		var mb *http.MaxBytesError
		switch {
		case errors.As(err, &mb):
			return v, fmt.Errorf("request body over %d bytes: %w", limit, errdefs.ErrTooLarge)
		case errors.Is(err, errdefs.ErrInvalidArgument), errors.Is(err, errdefs.ErrTooLarge):
			return v, err
		}
		return v, fmt.Errorf("reading request body: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if int64(len(data)) > limit {
		return v, fmt.Errorf("request body over %d bytes: %w", limit, errdefs.ErrTooLarge)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return v, fmt.Errorf("request body is empty; send a JSON object: %w", errdefs.ErrInvalidArgument)
	}
	if err := checkKeys(data, fieldNames(reflect.TypeFor[T]())); err != nil {
		return v, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			return v, fmt.Errorf("field %q must be %s, not %s: %w", te.Field, te.Type, te.Value, errdefs.ErrInvalidArgument)
		case errors.As(err, &se):
			return v, fmt.Errorf("malformed JSON at byte %d: %v: %w", se.Offset, se, errdefs.ErrInvalidArgument)
		}
		return v, fmt.Errorf("bad JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if dec.More() {
		return v, fmt.Errorf("request body has data after the JSON object: %w", errdefs.ErrInvalidArgument)
	}
	return v, nil
}

// maxStringField bounds free-text fields such as description.
const maxStringField = 4096

func checkText(field string, s *string) error {
	if s != nil && len(*s) > maxStringField {
		return fmt.Errorf("%s is over %d bytes: %w", field, maxStringField, errdefs.ErrTooLarge)
	}
	return nil
}

func decodeCreate(body io.Reader) (api.CreateImageRequest, error) {
	req, err := decodeJSON[api.CreateImageRequest](body, maxJSONBody)
	if err != nil {
		return req, err
	}
	if req.Name == "" {
		return req, fmt.Errorf("\"name\" is required: %w", errdefs.ErrInvalidArgument)
	}
	return req, errors.Join(checkText("description", req.Description), checkText("distro", req.Distro), checkText("parent", req.Parent))
}

func decodePatch(body io.Reader) (api.PatchImageRequest, error) {
	req, err := decodeJSON[api.PatchImageRequest](body, maxJSONBody)
	if err != nil {
		return req, err
	}
	return req, errors.Join(checkText("description", req.Description), checkText("distro", req.Distro), checkText("parent", req.Parent))
}

func decodeClone(body io.Reader) (api.CloneRequest, error) {
	req, err := decodeJSON[api.CloneRequest](body, maxJSONBody)
	if err != nil {
		return req, err
	}
	if req.Name == "" {
		return req, fmt.Errorf("\"name\" is required: %w", errdefs.ErrInvalidArgument)
	}
	return req, checkText("description", req.Description)
}

// bodyOf bounds r's body for JSON decoding. A body declared larger than
// the bound is refused before any of it is read.
func bodyOf(w http.ResponseWriter, r *http.Request) io.Reader {
	if r.ContentLength > maxJSONBody {
		return errReader{fmt.Errorf("request body of %d bytes is over the %d-byte limit for JSON: %w", r.ContentLength, maxJSONBody, errdefs.ErrTooLarge)}
	}
	return http.MaxBytesReader(w, r.Body, maxJSONBody+1)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// fieldNames is the set of JSON names of struct type t's fields (nil for
// other types: then only duplicates are checked).
func fieldNames(t reflect.Type) map[string]bool {
	if t.Kind() != reflect.Struct {
		return nil
	}
	names := map[string]bool{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names[name] = true
	}
	return names
}

// checkKeys walks data (valid or not: syntax errors are left to the
// decoder) and refuses an object that has a key twice, or two keys equal
// under encoding/json's case folding; at the top level, a key must also
// be one of fields exactly (when fields is not nil).
func checkKeys(data []byte, fields map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type obj struct {
		seen     map[string]string // folded key → key as sent
		wantKey  bool
		topLevel bool
	}
	var stack []*obj
	var inArray []bool // parallel to the nesting: true for an array
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil // EOF, or a syntax error the decoder reports
		}
		var top *obj
		if n := len(inArray); n > 0 && !inArray[n-1] {
			top = stack[len(stack)-1]
		}
		if key, isKey := tok.(string); isKey && top != nil && top.wantKey {
			folded := foldKey(key)
			if prev, dup := top.seen[folded]; dup {
				if prev == key {
					return fmt.Errorf("key %s appears twice in one object: %w", quoteInput(key), errdefs.ErrInvalidArgument)
				}
				return fmt.Errorf("keys %s and %s differ only in case: %w", quoteInput(prev), quoteInput(key), errdefs.ErrInvalidArgument)
			}
			top.seen[folded] = key
			if top.topLevel && fields != nil && !fields[key] {
				return fmt.Errorf("unknown field %s (field names are case-sensitive): %w", quoteInput(key), errdefs.ErrInvalidArgument)
			}
			top.wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &obj{seen: map[string]string{}, wantKey: true, topLevel: len(inArray) == 0})
			inArray = append(inArray, false)
			continue
		case json.Delim('['):
			inArray = append(inArray, true)
			continue
		case json.Delim('}'):
			stack = stack[:len(stack)-1]
			inArray = inArray[:len(inArray)-1]
		case json.Delim(']'):
			inArray = inArray[:len(inArray)-1]
		}
		// A value ended: the enclosing object, if any, wants a key next.
		if n := len(inArray); n > 0 && !inArray[n-1] {
			stack[len(stack)-1].wantKey = true
		}
	}
}

// foldKey folds a key as encoding/json matches names: per rune, upper of
// lower (so "NAME", "name" and "naMe" are one key; so are "K" and the
// Kelvin sign "\u212a").
func foldKey(k string) string {
	var b strings.Builder
	for _, r := range k {
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
			b.WriteRune(r)
			continue
		}
		b.WriteRune(unicode.ToUpper(unicode.ToLower(r)))
	}
	return b.String()
}

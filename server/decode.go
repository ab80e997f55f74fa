package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// decodeJSON reads one JSON object of type T from body, bounded to limit
// bytes, refusing unknown fields, wrong types and trailing data. Every
// failure matches ErrInvalidArgument or ErrTooLarge and says what was wrong.
func decodeJSON[T any](body io.Reader, limit int64) (T, error) {
	var v T
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return v, fmt.Errorf("reading request body: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if int64(len(data)) > limit {
		return v, fmt.Errorf("request body over %d bytes: %w", limit, errdefs.ErrTooLarge)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return v, fmt.Errorf("request body is empty; send a JSON object: %w", errdefs.ErrInvalidArgument)
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

// bodyOf bounds r's body for JSON decoding.
func bodyOf(w http.ResponseWriter, r *http.Request) io.Reader {
	return http.MaxBytesReader(w, r.Body, maxJSONBody+1)
}

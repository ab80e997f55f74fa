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
	"github.com/depot-images/depot/internal/catalog"
)

// parseProvenance reads a content PUT's X-Depot-Provenance header: absent
// is nil; present, it must be one value of at most api.MaxProvenanceBytes,
// one JSON object with only the known fields, and pass
// api.ValidateProvenance. Anything else refuses the upload before its body.
func parseProvenance(r *http.Request) (*catalog.Provenance, error) {
	vals := r.Header.Values(api.HeaderProvenance)
	switch {
	case len(vals) == 0:
		return nil, nil
	case len(vals) > 1:
		return nil, fmt.Errorf("%s given %d times: %w", api.HeaderProvenance, len(vals), errdefs.ErrInvalidArgument)
	case len(vals[0]) > api.MaxProvenanceBytes:
		return nil, fmt.Errorf("%s is %d bytes, over %d: %w", api.HeaderProvenance, len(vals[0]), api.MaxProvenanceBytes, errdefs.ErrTooLarge)
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(vals[0])))
	dec.DisallowUnknownFields()
	var p api.Provenance
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%s is not a provenance object: %v: %w", api.HeaderProvenance, err, errdefs.ErrInvalidArgument)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s has data after its object: %w", api.HeaderProvenance, errdefs.ErrInvalidArgument)
	}
	if err := api.ValidateProvenance(p); err != nil {
		return nil, err
	}
	return &catalog.Provenance{Method: p.Method, Host: p.Host, Root: p.Root, Excludes: p.Excludes, Emptied: p.Emptied,
		Format: p.Format, Compress: p.Compress, Time: api.FromUnixFloat(p.Time), ChangedFiles: p.ChangedFiles}, nil
}

// wireProvenance is p's wire form (nil for nil).
func wireProvenance(p *catalog.Provenance) *api.Provenance {
	if p == nil {
		return nil
	}
	return &api.Provenance{Method: p.Method, Host: p.Host, Root: p.Root, Excludes: append([]string{}, p.Excludes...), Emptied: p.Emptied,
		Format: p.Format, Compress: p.Compress, Time: api.UnixFloat(p.Time), ChangedFiles: p.ChangedFiles}
}

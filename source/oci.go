package source

import (
	"fmt"
	"net/http"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/ref"
)

// NewOCI returns the OCI registry source for r.
func NewOCI(r ref.Ref, hc *http.Client) (Source, error) {
	return nil, fmt.Errorf("%s: OCI sources are not built yet: %w", r, errdefs.ErrInvalidArgument)
}

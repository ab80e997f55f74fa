package api_test

import (
	"errors"
	"fmt"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// Example maps an error to its wire envelope and back: the one table that
// makes errors.Is work on both sides of the API.
func Example() {
	err := fmt.Errorf("image %q: %w", "base", errdefs.ErrNotFound)
	status, env := api.ErrorEnvelope(err)
	fmt.Println(status, env.Code)

	back := api.ErrorFromEnvelope(status, env, "GET /api/v1/image/base")
	fmt.Println(errors.Is(back, errdefs.ErrNotFound))
	// Output:
	// 404 not_found
	// true
}

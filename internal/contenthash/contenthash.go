// Package contenthash computes and checks the digests depot names content
// by: sha256 (the name of every blob, pointer and pin) and, beside it, the
// BLAKE3 that later scrubs compare against, both in one pass (DualHasher);
// and Validate, the one rule for what a digest depot accepts looks like.
//
// It is the floor every side shares (the server's blob stores, the node
// cache, edit workspaces, reference parsing, the CLI), so it must never
// import a storage seam, a transport or anything else of depot's but
// errdefs, and never do I/O.
package contenthash

import (
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Validate checks that d is a well-formed sha256 digest (sha256:<64
// lowercase hex>), the only algorithm depot stores or pins. Errors match
// errdefs.ErrInvalidArgument.
func Validate(d digest.Digest) error {
	if i := strings.IndexByte(string(d), ':'); i < 0 || digest.Algorithm(d[:i]) != digest.SHA256 {
		return fmt.Errorf("digest %q: only sha256:<64 hex> digests are supported: %w", string(d), errdefs.ErrInvalidArgument)
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("digest %q: %v; want sha256:<64 hex>: %w", string(d), err, errdefs.ErrInvalidArgument)
	}
	return nil
}

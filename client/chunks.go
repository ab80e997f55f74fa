package client

import (
	"context"

	"github.com/opencontainers/go-digest"
)

// OpenChunkIndex starts a download of the chunk index of blob d (GET
// /blob/<digest>/chunks). The body is untrusted: the caller bounds what it
// reads and decodes it (internal/chunks). A server that has no such
// endpoint, or no such blob, answers ErrNotFound.
func (c *Client) OpenChunkIndex(ctx context.Context, d digest.Digest) (*Content, error) {
	return c.open(ctx, "/blob/"+d.String()+"/chunks", 0, -1, "chunk index of "+d.String())
}

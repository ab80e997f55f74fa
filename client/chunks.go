package client

import (
	"context"
	"fmt"
	"io"
	"net/url"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// OpenChunkIndex starts a download of the chunk index of blob d (GET
// /blob/<digest>/chunks). The body is untrusted: the caller bounds what it
// reads and decodes it (internal/chunks). A server that has no such
// endpoint, or no such blob, answers ErrNotFound.
func (c *Client) OpenChunkIndex(ctx context.Context, d digest.Digest) (*Content, error) {
	return c.open(ctx, "/blob/"+d.String()+"/chunks", 0, -1, "chunk index of "+d.String())
}

// ChunkIndexDelta fetches the encoded chunk index of blob d as a delta
// against base, whose encoded index the caller holds (baseIndex): GET
// /blob/<digest>/chunks?base=<base>. A server that has base's index
// answers a zstd frame with baseIndex as its dictionary; one that has not
// answers the plain index; either way enc is the index's encoding, at most
// limit bytes, and wire what crossed the network. The result is untrusted
// like any index: the caller decodes and verifies it. A frame that does
// not decode with baseIndex (the server's base index differs from the
// caller's), or that names another base, is errdefs.ErrCorrupt: fetch the
// plain index instead.
func (c *Client) ChunkIndexDelta(ctx context.Context, d, base digest.Digest, baseIndex []byte, limit int64) (enc []byte, wire int64, err error) {
	q := url.Values{"base": {base.String()}}
	req, err := c.newRequest(ctx, "GET", "/blob/"+d.String()+"/chunks", q, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.send(req, "chunk index of "+d.String())
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	ct := resp.Header.Get("Content-Type")
	max := limit
	if ct == api.MediaTypeChunksZstd {
		max = MaxZstdWire(limit)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	wire = int64(len(body))
	if err != nil {
		return nil, wire, fmt.Errorf("chunk index of %s: %v: %w", d, err, errdefs.ErrUnavailable)
	}
	if wire > max {
		return nil, wire, fmt.Errorf("chunk index of %s: over %d bytes: %w", d, max, errdefs.ErrCorrupt)
	}
	switch ct {
	case api.MediaTypeChunks:
		return body, wire, nil
	case api.MediaTypeChunksZstd:
	default:
		return nil, wire, fmt.Errorf("chunk index of %s: the server sent %.64q: %w", d, ct, errdefs.ErrCorrupt)
	}
	if got := resp.Header.Get(api.HeaderChunksBase); got != base.String() {
		return nil, wire, fmt.Errorf("chunk index of %s: a delta against %.80q, not %s: %w", d, got, base, errdefs.ErrCorrupt)
	}
	// The frame must say how long the index is (the server's EncodeAll
	// does), within limit, and name base's dictionary: the output is then
	// allocated once, at that size, and decoding cannot run past it (a
	// frame without a content size could make DecodeAll produce and throw
	// away several times limit before refusing).
	var hdr zstd.Header
	if err := hdr.Decode(body); err != nil || !hdr.HasFCS || hdr.FrameContentSize > uint64(limit) || hdr.DictionaryID != api.IndexDictID(base) {
		return nil, wire, fmt.Errorf("chunk index of %s as a delta against %s: a frame header of %d bytes, dictionary %d, that this client does not take (%v): %w",
			d, base, hdr.FrameContentSize, hdr.DictionaryID, err, errdefs.ErrCorrupt)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderDictRaw(api.IndexDictID(base), baseIndex),
		zstd.WithDecoderMaxMemory(uint64(limit)), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, wire, err
	}
	defer dec.Close()
	enc, err = dec.DecodeAll(body, make([]byte, 0, hdr.FrameContentSize))
	if err != nil {
		return nil, wire, fmt.Errorf("chunk index of %s as a delta against %s: %v: %w", d, base, err, errdefs.ErrCorrupt)
	}
	if int64(len(enc)) > limit {
		return nil, wire, fmt.Errorf("chunk index of %s: over %d bytes: %w", d, limit, errdefs.ErrCorrupt)
	}
	return enc, wire, nil
}

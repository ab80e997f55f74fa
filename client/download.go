package client

import (
	"context"
	"io"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/internal/httprange"
)

// Content is an open content or blob download.
type Content struct {
	io.ReadCloser
	Digest digest.Digest
	// Offset is where the body starts: the requested offset when the server
	// honoured the range, else 0.
	Offset int64
	// Size is the length of the body (-1 when unknown).
	Size int64
	// Total is the size of the whole content (-1 when unknown).
	Total int64
	// Ranges reports that the server honours byte ranges.
	Ranges bool
	Format string
}

// OpenContent starts a download of ref's current content.
func (c *Client) OpenContent(ctx context.Context, ref string) (*Content, error) {
	return c.open(ctx, imagePath(ref, "/content"), 0, -1, "content of "+ref)
}

// OpenBlob starts a download of a blob by digest, from offset, length bytes
// (-1 for the rest).
func (c *Client) OpenBlob(ctx context.Context, d digest.Digest, offset, length int64) (*Content, error) {
	return c.open(ctx, "/blob/"+d.String(), offset, length, "blob "+d.String())
}

func (c *Client) open(ctx context.Context, path string, offset, length int64, what string) (*Content, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	if rh := httprange.Header(offset, length); rh != "" {
		req.Header.Set("Range", rh)
	}
	resp, err := c.send(req, what)
	if err != nil {
		return nil, err
	}
	first := resp.Request // the request sent to a head, before any redirect
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	body := &headBody{ReadCloser: resp.Body, c: c, head: c.headOf(first), ctx: ctx}
	out := &Content{ReadCloser: body, Digest: digest.Digest(headerOf(resp, api.HeaderDigest)),
		Size: resp.ContentLength, Format: headerOf(resp, api.HeaderFormat)}
	if resp.StatusCode == http.StatusPartialContent {
		out.Offset = offset
		out.Total = httprange.Total(resp.Header.Get("Content-Range"))
	} else {
		out.Total = resp.ContentLength
	}
	out.Ranges = resp.Header.Get("Accept-Ranges") == "bytes" || resp.StatusCode == http.StatusPartialContent
	return out, nil
}

// headBody is a download from one head. When it breaks off (the head died,
// or stalled: StallError), the next request goes to the next head first, so
// a resume by Range does not return to the head that just failed.
type headBody struct {
	io.ReadCloser
	c    *Client
	head int
	ctx  context.Context
}

func (b *headBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.ctx.Err() == nil && len(b.c.bases) > 1 {
		b.c.cur.CompareAndSwap(int32(b.head), int32((b.head+1)%len(b.c.bases)))
	}
	return n, err
}

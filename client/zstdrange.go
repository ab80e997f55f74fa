package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// CompressedRange is an open GET …/blob/<digest>/zstd: Read yields the
// plain bytes [Offset, Offset+Length) of the blob, decoded from the zstd
// frame the server sent. The frame is untrusted: the decoder's window is
// bounded, and a frame that decodes to more or fewer than Length bytes,
// or does not decode, is an error wrapping errdefs.ErrCorrupt (a broken
// connection stays errdefs.ErrUnavailable). The caller still verifies the
// bytes: this says nothing about which bytes they are.
type CompressedRange struct {
	Offset, Length int64

	body io.ReadCloser
	wire *countReader
	dec  *zstd.Decoder
	left int64
	err  error
}

// maxZstdWindow bounds the decoder's window: what a frame may make the
// client allocate, whatever its header says. The server's encoder uses
// 8 MiB at most.
const maxZstdWindow = 16 << 20

// OpenBlobZstd starts a download of length bytes of blob d from offset,
// compressed (GET /blob/<digest>/zstd). A server without the endpoint
// (older, or one that redirects downloads to an object store) answers
// errdefs.ErrNotFound: fetch a plain range (OpenBlob) instead.
func (c *Client) OpenBlobZstd(ctx context.Context, d digest.Digest, offset, length int64) (*CompressedRange, error) {
	if offset < 0 || length < 1 || length > api.MaxZstdRange {
		return nil, fmt.Errorf("compressed range %d+%d of %s: %w", offset, length, d, errdefs.ErrInvalidArgument)
	}
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}, "length": {strconv.FormatInt(length, 10)}}
	req, err := c.newRequest(ctx, "GET", "/blob/"+d.String()+"/zstd", q, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.send(req, "compressed range of blob "+d.String())
	if err != nil {
		return nil, err
	}
	if ct := resp.Header.Get("Content-Type"); ct != api.MediaTypeZstd {
		resp.Body.Close()
		return nil, fmt.Errorf("compressed range of blob %s: the server sent %.64q, not %s: %w", d, ct, api.MediaTypeZstd, errdefs.ErrCorrupt)
	}
	body := &headBody{ReadCloser: resp.Body, c: c, head: c.headOf(resp.Request), ctx: ctx}
	wire := &countReader{r: body}
	dec, err := zstd.NewReader(wire, zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdWindow+api.MaxZstdRange))
	if err != nil {
		resp.Body.Close()
		return nil, err
	}
	return &CompressedRange{Offset: offset, Length: length, body: body, wire: wire, dec: dec, left: length}, nil
}

// WireBytes is how many bytes of the compressed body were read so far.
func (r *CompressedRange) WireBytes() int64 { return r.wire.n.Load() }

// Read implements io.Reader over the decoded bytes: exactly Length of
// them, then io.EOF.
func (r *CompressedRange) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.left == 0 {
		// The frame must end here: one byte more is a lie about Length.
		var one [1]byte
		n, err := r.dec.Read(one[:])
		switch {
		case n > 0:
			r.err = fmt.Errorf("compressed range %d+%d decodes to more bytes: %w", r.Offset, r.Length, errdefs.ErrCorrupt)
		case err == io.EOF:
			r.err = io.EOF
		default:
			r.err = r.classify(err)
		}
		return 0, r.err
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.dec.Read(p)
	r.left -= int64(n)
	if err == io.EOF && r.left > 0 {
		err = fmt.Errorf("compressed range %d+%d decodes to %d bytes: %w", r.Offset, r.Length, r.Length-r.left, errdefs.ErrCorrupt)
	} else if err != nil && err != io.EOF {
		err = r.classify(err)
	} else if err == io.EOF {
		err = nil // the check above ends it
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

// classify keeps a transport failure as it is and makes anything else the
// decoder says a corrupt frame.
func (r *CompressedRange) classify(err error) error {
	if errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if r.wire.err != nil { // the body broke, and the decoder said so its own way
		return fmt.Errorf("compressed range %d+%d: %v: %w", r.Offset, r.Length, r.wire.err, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("compressed range %d+%d: %v: %w", r.Offset, r.Length, err, errdefs.ErrCorrupt)
}

// Close releases the decoder and the connection.
func (r *CompressedRange) Close() error {
	r.dec.Close()
	return r.body.Close()
}

// countReader counts what it reads and keeps the first error other than
// io.EOF.
type countReader struct {
	r   io.Reader
	n   atomic.Int64
	err error
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

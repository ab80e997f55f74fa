package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// CompressedRange is an open GET …/blob/<digest>/zstd: Read yields the
// plain bytes [Offset, Offset+Length) of the blob, decoded from the zstd
// frame the server sent. The frame is untrusted: the decoder's window is
// bounded, the compressed bytes read are bounded (MaxZstdWire: skippable
// frames, empty blocks or a stream that never ends cannot keep a client
// reading), and a frame that decodes to more or fewer than Length bytes,
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

// maxZstdWindow bounds the decoder's window, whatever a frame's header
// says; a decoder then holds about that much (17 MiB measured) besides its
// output, per range open at once. The server's encoder uses 8 MiB at most.
const maxZstdWindow = 16 << 20

// MaxZstdWire is the most compressed bytes a range of length bytes may
// take: zstd's worst case (stored blocks: 3 bytes of header per 128 KiB)
// with room for the frame header and checksum. Beyond it the frame is
// refused as corrupt.
func MaxZstdWire(length int64) int64 { return length + length/128 + 64<<10 }

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
	first := resp.Request // the request sent to a head, before any redirect
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	body := &headBody{ReadCloser: resp.Body, c: c, head: c.headOf(first), ctx: ctx}
	wire := &countReader{r: body, max: MaxZstdWire(length)}
	dec, err := getDecoder(wire)
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
	if errors.Is(err, errWireCap) {
		return fmt.Errorf("compressed range %d+%d: over %d bytes: %w", r.Offset, r.Length, r.wire.max, errdefs.ErrCorrupt)
	}
	if r.wire.err != nil { // the body broke, and the decoder said so its own way
		return fmt.Errorf("compressed range %d+%d: %v: %w", r.Offset, r.Length, r.wire.err, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("compressed range %d+%d: %v: %w", r.Offset, r.Length, err, errdefs.ErrCorrupt)
}

// Close releases the decoder and the connection.
func (r *CompressedRange) Close() error {
	if r.dec != nil {
		putDecoder(r.dec)
		r.dec = nil
	}
	return r.body.Close()
}

// decoders keeps zstd decoders for reuse: a new one allocates and clears
// its history (up to the window) on its first block, which cost more than
// the decoding of a 100 KiB range. With one goroutine of concurrency a
// decoder has no goroutines of its own, so a dropped one needs no Close.
var decoders sync.Pool

func getDecoder(r io.Reader) (*zstd.Decoder, error) {
	if d, ok := decoders.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err == nil {
			return d, nil
		}
	}
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdWindow+api.MaxZstdRange))
}

func putDecoder(d *zstd.Decoder) {
	if d.Reset(nil) == nil { // drops the reader
		decoders.Put(d)
	}
}

// countReader counts what it reads, refuses to read more than max bytes
// (errWireCap), and keeps the first error other than io.EOF.
type countReader struct {
	r   io.Reader
	max int64
	n   atomic.Int64
	err error
}

// errWireCap says a compressed range went past MaxZstdWire.
var errWireCap = errors.New("more compressed bytes than the range can take")

func (c *countReader) Read(p []byte) (int, error) {
	left := c.max - c.n.Load()
	if left <= 0 {
		return 0, errWireCap
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

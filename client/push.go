package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// PushOptions tune PushContent.
type PushOptions struct {
	// Digest, when known, is declared up front. Otherwise the client hashes
	// the stream as it sends it and declares the digest in a trailer, so
	// the server still verifies end to end without a second pass.
	Digest digest.Digest
	// IfMatch, when set, makes the upload conditional on the image's
	// current content being this digest (412 / ErrPrecondition otherwise).
	IfMatch digest.Digest
	// Message is recorded with the revision.
	Message string

	// DeltaBase, when set and the content is a file (an io.ReaderAt and
	// io.Seeker), makes the push a delta against this blob: only the
	// chunks the base lacks are sent, with a recipe the server assembles
	// the content from (see delta.go). When a delta is not possible the
	// content is sent whole, and Stats says why.
	DeltaBase digest.Digest
	// DeltaIndex gives the base's chunk index; nil means the server's.
	DeltaIndex IndexSource
	// Progress, when set, is called as the body is read: the bytes sent so
	// far, the bytes the server reuses from the base (0 for a whole push)
	// and the body's length (-1 when unknown). A push resent to another
	// head starts over.
	Progress func(sent, reused, total int64)
	// Stats, when not nil, is filled in with what the push moved.
	Stats *PushStats
	// Provenance, when set, is recorded with the revision: how the content
	// was made (X-Depot-Provenance; see api.EncodeProvenance).
	Provenance *api.Provenance

	provenance string // Provenance encoded, set by PushContent
}

type readAtSeeker interface {
	io.ReaderAt
	io.Seeker
}

// PushContent streams r (size bytes, or -1 if unknown) as the new content of
// ref. The server stores nothing unless the bytes hash to the declared digest.
//
// When r can also ReadAt and Seek (a file), a push that a head drops
// mid-body (the head dies, or answers 5xx) is sent again from the start to
// the next head; each attempt reads through a section reader of its own, so
// an attempt the transport has not quite let go of never moves the next
// one's position. If the dropped head had committed the content before it
// went away, the retry can meet its own work: with IfMatch that is a 412
// naming the digest being pushed, which PushContent reports as the success
// it was (without IfMatch the revision is recorded twice).
//
// With opts.DeltaBase the push is a delta when it can be, and otherwise
// whole (see PushOptions.DeltaBase).
func (c *Client) PushContent(ctx context.Context, ref string, r io.Reader, size int64, opts PushOptions) (api.ContentInfo, error) {
	if opts.Provenance != nil {
		var err error
		if opts.provenance, err = api.EncodeProvenance(*opts.Provenance); err != nil {
			return api.ContentInfo{}, err
		}
	}
	var stats PushStats
	if opts.Stats != nil {
		defer func() { *opts.Stats = stats }()
	}
	if opts.DeltaBase != "" {
		ra, ok := r.(readAtSeeker)
		start, err := int64(0), error(nil)
		if ok {
			start, err = ra.Seek(0, io.SeekCurrent)
		}
		if !ok || err != nil {
			stats.Fallback = "the content is not a file"
		} else {
			info, st, sum, err := c.pushDelta(ctx, ref, ra, start, size, opts)
			var nd errNoDelta
			if !errors.As(err, &nd) {
				stats = st
				return info, err
			}
			stats.Fallback = nd.Error()
			if opts.Digest == "" {
				opts.Digest = sum // known now: declared up front
			}
		}
	}
	var sent atomic.Int64
	info, err := c.pushWhole(ctx, ref, r, size, opts, &sent)
	stats.BytesSent = sent.Load()
	return info, err
}

// pushWhole sends the whole content; sent counts the body of the last
// attempt.
func (c *Client) pushWhole(ctx context.Context, ref string, r io.Reader, size int64, opts PushOptions, sent *atomic.Int64) (api.ContentInfo, error) {
	var trailer http.Header
	if opts.Digest == "" {
		trailer = http.Header{api.HeaderDigest: nil}
	}
	body := func(r io.Reader) io.Reader {
		sent.Store(0)
		r = &countBody{r: r, n: sent, reused: 0, total: size, fn: opts.Progress}
		if opts.Digest != "" {
			return r
		}
		return &trailerReader{r: r, h: sha256.New(), trailer: trailer}
	}
	var fresh func() io.Reader // a new reader of the whole content, when r can give one
	var resent atomic.Bool
	if ra, ok := r.(readAtSeeker); ok {
		if start, err := ra.Seek(0, io.SeekCurrent); err == nil {
			// To the end, not to size: a file that changed length since it
			// was measured is then a size mismatch the server refuses, not
			// a silently truncated push.
			n := math.MaxInt64 - start
			fresh = func() io.Reader { return io.NewSectionReader(ra, start, n) }
			r = fresh()
		}
	}
	req, err := c.newRequest(ctx, http.MethodPut, imagePath(ref, "/content"), nil, body(r))
	if err != nil {
		return api.ContentInfo{}, err
	}
	if fresh != nil {
		req.GetBody = func() (io.ReadCloser, error) {
			resent.Store(true)
			return io.NopCloser(body(fresh())), nil
		}
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if opts.Digest != "" {
		req.Header.Set(api.HeaderDigest, opts.Digest.String())
		req.ContentLength = size
	} else {
		req.ContentLength = -1 // trailers need chunked encoding
		req.Trailer = trailer
		if size >= 0 {
			req.Header.Set("X-Depot-Size", strconv.FormatInt(size, 10))
		}
	}
	setPushHeaders(req, opts)
	return c.finishPush(ctx, ref, req, resent.Load, func() digest.Digest {
		// A pass of its own: the attempts' hashes may still be in use.
		if opts.Digest != "" || fresh == nil {
			return opts.Digest
		}
		d, _ := digest.SHA256.FromReader(fresh())
		return d
	})
}

// setPushHeaders sets the headers every push carries.
func setPushHeaders(req *http.Request, opts PushOptions) {
	if opts.IfMatch != "" {
		req.Header.Set("If-Match", api.ETag(opts.IfMatch))
	}
	if opts.Message != "" {
		req.Header.Set(api.HeaderMessage, opts.Message)
	}
	if opts.provenance != "" {
		req.Header.Set(api.HeaderProvenance, opts.provenance)
	}
}

// finishPush sends a push and reads its answer. When the push was resent to
// another head and the answer is a 412 naming the digest being pushed, an
// earlier attempt committed it: that is the success it was.
func (c *Client) finishPush(ctx context.Context, ref string, req *http.Request, resent func() bool, pushed func() digest.Digest) (api.ContentInfo, error) {
	resp, err := c.send(req, "push content to "+ref)
	var pe *errdefs.PreconditionError
	if err != nil && resent() && errors.As(err, &pe) && pe.Have != "" && pe.Have == pushed() {
		return c.ContentInfo(ctx, ref)
	}
	if err != nil {
		return api.ContentInfo{}, err
	}
	defer resp.Body.Close()
	var env api.Envelope
	var info api.ContentInfo
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return info, fmt.Errorf("push content to %s: bad response: %v", ref, err)
	}
	if err := json.Unmarshal(env.Data, &info); err != nil {
		return info, fmt.Errorf("push content to %s: bad response data: %v", ref, err)
	}
	return info, nil
}

// countBody counts the bytes read of a push body and reports them to fn
// (when set).
type countBody struct {
	r             io.Reader
	n             *atomic.Int64
	reused, total int64
	fn            func(sent, reused, total int64)
}

func (p *countBody) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	sent := p.n.Add(int64(n))
	if p.fn != nil {
		p.fn(sent, p.reused, p.total)
	}
	return n, err
}

// WriteTo sends the stream in 1 MiB writes, so the chunked request has
// large chunks (io.Copy would use 32 KiB), which halves the server's work.
func (t *trailerReader) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := io.ReadFull(t.r, buf)
		if n > 0 {
			t.h.Write(buf[:n])
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			t.trailer.Set(api.HeaderDigest, "sha256:"+hex.EncodeToString(t.h.Sum(nil)))
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// trailerReader hashes what it reads and, at EOF, sets the digest trailer.
type trailerReader struct {
	r       io.Reader
	h       hash.Hash
	trailer http.Header
}

func (t *trailerReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		t.trailer.Set(api.HeaderDigest, "sha256:"+hex.EncodeToString(t.h.Sum(nil)))
	}
	return n, err
}

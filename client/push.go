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
	// Provenance, when set, is recorded with the revision: how the content
	// was made (X-Depot-Provenance; see api.EncodeProvenance).
	Provenance *api.Provenance
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
func (c *Client) PushContent(ctx context.Context, ref string, r io.Reader, size int64, opts PushOptions) (api.ContentInfo, error) {
	var prov string
	if opts.Provenance != nil {
		var err error
		if prov, err = api.EncodeProvenance(*opts.Provenance); err != nil {
			return api.ContentInfo{}, err
		}
	}
	var trailer http.Header
	if opts.Digest == "" {
		trailer = http.Header{api.HeaderDigest: nil}
	}
	body := func(r io.Reader) io.Reader {
		if opts.Digest != "" {
			return r
		}
		return &trailerReader{r: r, h: sha256.New(), trailer: trailer}
	}
	var fresh func() io.Reader // a new reader of the whole content, when r can give one
	var resent atomic.Bool
	if ra, ok := r.(interface {
		io.ReaderAt
		io.Seeker
	}); ok {
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
	if opts.IfMatch != "" {
		req.Header.Set("If-Match", api.ETag(opts.IfMatch))
	}
	if opts.Message != "" {
		req.Header.Set(api.HeaderMessage, opts.Message)
	}
	if prov != "" {
		req.Header.Set(api.HeaderProvenance, prov)
	}
	resp, err := c.send(req, "push content to "+ref)
	var pe *errdefs.PreconditionError
	if err != nil && resent.Load() && errors.As(err, &pe) && pe.Have != "" {
		// Did an earlier attempt commit exactly this content? Hash it (a
		// pass of its own: the attempts' hashes may still be in use).
		pushed := opts.Digest
		if pushed == "" {
			pushed, _ = digest.SHA256.FromReader(fresh())
		}
		if pe.Have == pushed {
			return c.ContentInfo(ctx, ref)
		}
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

package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
)

// zstdrange.go: GET …/blob/<digest>/zstd?offset=O&length=N answers the
// bytes [O, O+N) of a blob as one zstd frame. A delta pull fetches the
// chunks it lacks this way, so what crosses the network is compressed (as
// casync's chunk store is), while the blob stays one whole file and its
// ordinary URL keeps serving plain ranges (for HTTP caches, presigned
// redirects and older nodes). The response is immutable: the URL names
// the bytes.
//
// Compression costs the head CPU (zstd's default level, about 300-500 MB/s
// of a core for these images), so at most zstdEncoders ranges are
// compressed at once and each is at most api.MaxZstdRange bytes; a request
// waits for an encoder as long as its client does. A head that redirects
// downloads (RedirectContent) does not serve these: its blob bytes are meant
// to go from the object store, and the node falls back to plain ranges.

// zstdEncoders is how many ranges a head compresses at once.
var zstdEncoders = max(2, runtime.GOMAXPROCS(0))

// encoderPool hands out zstd encoders, at most cap(pool) at once.
type encoderPool chan *zstd.Encoder

func newEncoderPool(n int) encoderPool {
	p := make(encoderPool, n)
	for range n {
		p <- nil // made on first use
	}
	return p
}

// get waits for an encoder, or for ctx.
func (p encoderPool) get(ctx context.Context) (*zstd.Encoder, error) {
	select {
	case e := <-p:
		if e != nil {
			return e, nil
		}
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		if err != nil {
			p <- nil
			return nil, err
		}
		return e, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p encoderPool) put(e *zstd.Encoder) { p <- e }

// parseRangeQuery reads offset and length, and nothing else, from q: plain
// decimal numbers (no sign, no leading zero), 0 <= offset, 1 <= length <=
// api.MaxZstdRange.
func parseRangeQuery(q url.Values) (off, n int64, err error) {
	for k, v := range q {
		if (k != "offset" && k != "length") || len(v) != 1 {
			return 0, 0, fmt.Errorf("compressed range: query takes offset and length once each, got %s: %w", quoteInput(k), errdefs.ErrInvalidArgument)
		}
	}
	num := func(name string) (int64, error) {
		s := q.Get(name)
		if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') || s[0] == '+' || s[0] == '-' {
			return 0, fmt.Errorf("compressed range: %s %s is not a decimal byte count: %w", name, quoteInput(s), errdefs.ErrInvalidArgument)
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("compressed range: %s %s is not a decimal byte count: %w", name, quoteInput(s), errdefs.ErrInvalidArgument)
		}
		return v, nil
	}
	if off, err = num("offset"); err != nil {
		return 0, 0, err
	}
	if n, err = num("length"); err != nil {
		return 0, 0, err
	}
	if n < 1 || n > api.MaxZstdRange {
		return 0, 0, fmt.Errorf("compressed range: length %d is not within 1..%d: %w", n, api.MaxZstdRange, errdefs.ErrInvalidArgument)
	}
	return off, n, nil
}

// getZstd answers GET and HEAD …/blob/<digest>/zstd (see the top of this file).
func (s *Server) getZstd(w http.ResponseWriter, r *http.Request) {
	d := digest.Digest(r.PathValue("digest"))
	if err := contenthash.Validate(d); err != nil {
		s.fail(w, r, err)
		return
	}
	off, n, err := parseRangeQuery(r.URL.Query())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if s.cfg.RedirectContent > 0 {
		s.fail(w, r, fmt.Errorf("this head redirects blob downloads to the object store and compresses no ranges; fetch plain ranges of …/blob/%s: %w", d, errdefs.ErrNotFound))
		return
	}
	info, err := s.cfg.Blobs.Stat(r.Context(), d)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if off > info.Size || n > info.Size-off {
		s.fail(w, r, fmt.Errorf("compressed range: bytes %d+%d are past the end of %s (%d bytes): %w", off, n, d, info.Size, errdefs.ErrInvalidArgument))
		return
	}
	enc, err := s.zstdPool.get(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer s.zstdPool.put(enc)
	f, err := s.cfg.Blobs.Open(r.Context(), d)
	if err != nil {
		s.fail(w, r, referencedMissing(d, err))
		return
	}
	defer f.Close()
	var rd io.Reader = io.NewSectionReader(f, off, n)
	if _, isFile := f.(*os.File); !isFile {
		rd = newBigReader(io.NewSectionReader(f, off, n)) // S3: large reads
	}
	h := w.Header()
	h.Set("Content-Type", api.MediaTypeZstd)
	h.Set("ETag", fmt.Sprintf(`"%s-%d-%d.zst"`, d.Encoded(), off, n))
	h.Set(api.HeaderDigest, d.String())
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	if r.Method == http.MethodHead {
		return // the frame's length is known only once it is made
	}
	rw, _ := w.(*respWriter)
	var before int64
	if rw != nil {
		before = rw.bytes
	}
	enc.Reset(w)
	got, err := io.Copy(enc, rd)
	if err == nil && got != n {
		err = fmt.Errorf("blob %s ended at %d: %w", d, off+got, errdefs.ErrCorrupt)
	}
	if err == nil {
		err = enc.Close()
	}
	if err != nil {
		// The status is sent: cut the connection, so that the client sees a
		// broken body rather than a well-formed frame of fewer bytes.
		s.log.Error("compressed range failed", "digest", d, "offset", off, "length", n, "err", err)
		enc.Reset(nil)
		panic(http.ErrAbortHandler)
	}
	if rw != nil {
		sent := rw.bytes - before
		s.metrics.bytesSent.Add(float64(sent))
		s.metrics.zstdBytes.Add(float64(sent))
		s.metrics.zstdSaved.Add(float64(max(n-sent, 0)))
	}
}

package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

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
// Every wait and size is bounded, since any reader may ask:
//   - compression is CPU (zstd's "better" level, about 60-90 MB/s of a core
//     on the bench images), so at most zstdEncoders ranges are compressed
//     at once, each at most api.MaxZstdRange bytes, and a request waits at
//     most zstdWait for an encoder before it is answered 503 (a node then
//     fetches that run as a plain range);
//   - a range is compressed whole into memory and the encoder is free again
//     before a byte is sent, so a client that reads slowly holds no encoder;
//     the frames being sent take at most zstdSendBytes of memory (else 503),
//     and each write must finish within zstdWriteIdle, so a client that
//     stops reading loses its answer;
//   - the same range asked for again (a fleet updating from the same
//     previous revision asks for identical ranges) is answered from a cache
//     of recent frames (zstdCacheBytes), and concurrent askers share one
//     compression.
//
// A head that redirects downloads (RedirectContent) serves none: its blob
// bytes are meant to come from the object store, and the node falls back to
// plain ranges.

const (
	zstdLevel      = zstd.SpeedBetterCompression
	zstdWait       = 5 * time.Second
	zstdWriteIdle  = 10 * time.Second
	zstdSendBytes  = 512 << 20
	zstdCacheBytes = 128 << 20
	zstdWritePiece = 256 << 10
	// zstdBuild bounds one compression (reading the range from the store
	// included), which runs on after the asker that started it gives up,
	// for the others sharing it.
	zstdBuild = 2 * time.Minute
)

// zstdEncoders is how many ranges a head compresses at once: half its
// cores, so that compression cannot starve uploads, index builds and GC.
var zstdEncoders = max(1, runtime.GOMAXPROCS(0)/2)

// errBusy says a compressed range had to wait too long.
var errBusy = fmt.Errorf("this head is busy compressing ranges; fetch a plain range or ask again: %w", errdefs.ErrUnavailable)

// encoderPool hands out zstd encoders, at most cap(pool) at once.
type encoderPool chan *zstd.Encoder

func newEncoderPool(n int) encoderPool {
	p := make(encoderPool, n)
	for range n {
		p <- nil // made on first use
	}
	return p
}

// get waits at most zstdWait for an encoder (errBusy), or for ctx.
func (p encoderPool) get(ctx context.Context) (*zstd.Encoder, error) {
	t := time.NewTimer(zstdWait)
	defer t.Stop()
	select {
	case e := <-p:
		if e != nil {
			return e, nil
		}
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderConcurrency(1))
		if err != nil {
			p <- nil
			return nil, err
		}
		return e, nil
	case <-t.C:
		return nil, errBusy
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p encoderPool) put(e *zstd.Encoder) { p <- e }

// parseRangeQuery reads offset and length, and nothing else, from a raw
// query: well-formed, plain decimal numbers (no sign, no leading zero),
// 0 <= offset, 1 <= length <= api.MaxZstdRange.
func parseRangeQuery(raw string) (off, n int64, err error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return 0, 0, fmt.Errorf("compressed range: query %s: %w", quoteInput(raw), errdefs.ErrInvalidArgument)
	}
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

// getZstd answers GET and HEAD …/blob/<digest>/zstd (see the top of this
// file).
func (s *Server) getZstd(w http.ResponseWriter, r *http.Request) {
	d := digest.Digest(r.PathValue("digest"))
	if err := contenthash.Validate(d); err != nil {
		s.fail(w, r, err)
		return
	}
	off, n, err := parseRangeQuery(r.URL.RawQuery)
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
	h := w.Header()
	h.Set("Content-Type", api.MediaTypeZstd)
	h.Set("ETag", fmt.Sprintf(`"%s-%d-%d.zst"`, d.Encoded(), off, n))
	h.Set(api.HeaderDigest, d.String())
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	if r.Method == http.MethodHead {
		return // the frame's length is known only once it is made
	}
	frame, err := s.zstdFrame(r.Context(), d, off, n)
	if err == nil {
		err = acquireWithin(r.Context(), s.zstdMem, int64(len(frame)))
	}
	if err != nil {
		for _, k := range []string{"Content-Type", "ETag", api.HeaderDigest, "Cache-Control"} {
			h.Del(k)
		}
		if errors.Is(err, errdefs.ErrUnavailable) {
			h.Set("Retry-After", "1")
		}
		s.fail(w, r, err)
		return
	}
	defer s.zstdMem.Release(int64(len(frame)))
	h.Set("Content-Length", strconv.Itoa(len(frame)))
	rc := http.NewResponseController(w)
	for rest := frame; len(rest) > 0; {
		piece := rest[:min(len(rest), zstdWritePiece)]
		if err := rc.SetWriteDeadline(time.Now().Add(s.zstdIdle)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return
		}
		if _, err := w.Write(piece); err != nil {
			return // the client went, or stopped reading: its connection is closed
		}
		rest = rest[len(piece):]
	}
	rc.SetWriteDeadline(time.Time{})
	s.metrics.bytesSent.Add(float64(len(frame)))
	s.metrics.zstdBytes.Add(float64(len(frame)))
	s.metrics.zstdSaved.Add(float64(max(n-int64(len(frame)), 0)))
}

// acquireWithin acquires n of sem, waiting at most zstdWait (errBusy).
func acquireWithin(ctx context.Context, sem *semaphore.Weighted, n int64) error {
	wctx, cancel := context.WithTimeout(ctx, zstdWait)
	defer cancel()
	if err := sem.Acquire(wctx, n); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errBusy
	}
	return nil
}

// zstdFrame returns the compressed range [off, off+n) of d: a cached frame,
// one another request is making, or a new one.
func (s *Server) zstdFrame(ctx context.Context, d digest.Digest, off, n int64) ([]byte, error) {
	return s.sharedFrame(ctx, fmt.Sprintf("%s/%d/%d", d.Encoded(), off, n), func(bctx context.Context) ([]byte, error) {
		return s.compressRange(bctx, d, off, n)
	})
}

// sharedFrame returns the frame cached under key, or the one build makes:
// once however many ask at once, under a context of its own (bounded by
// zstdBuild) so that an asker who leaves does not fail those who stay. A
// frame built without error is cached.
func (s *Server) sharedFrame(ctx context.Context, key string, build func(context.Context) ([]byte, error)) ([]byte, error) {
	if f, ok := s.zstdCache.get(key); ok {
		return f, nil
	}
	ch := s.zstdBuilds.DoChan(key, func() (any, error) {
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), zstdBuild)
		defer cancel()
		f, err := build(bctx)
		if err == nil {
			s.zstdCache.put(key, f)
		}
		return f, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// compressRange reads [off, off+n) of d from the store and compresses it
// into one frame, holding an encoder only while it does.
func (s *Server) compressRange(ctx context.Context, d digest.Digest, off, n int64) ([]byte, error) {
	enc, err := s.zstdPool.get(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		enc.Reset(nil) // drop the buffer it wrote to
		s.zstdPool.put(enc)
	}()
	f, err := s.cfg.Blobs.Open(ctx, d)
	if err != nil {
		return nil, referencedMissing(d, err)
	}
	defer f.Close()
	var rd io.Reader = io.NewSectionReader(f, off, n)
	if _, isFile := f.(*os.File); !isFile {
		rd = newBigReader(io.NewSectionReader(f, off, n)) // S3: large reads
	}
	var buf bytes.Buffer
	buf.Grow(int(n/2) + 4096)
	enc.Reset(&buf)
	got, err := io.Copy(enc, rd)
	if err == nil && got != n {
		err = fmt.Errorf("blob %s ended at %d: %w", d, off+got, errdefs.ErrCorrupt)
	}
	if err == nil {
		err = enc.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("compressing bytes %d+%d of %s: %w", off, n, d, err)
	}
	return buf.Bytes(), nil
}

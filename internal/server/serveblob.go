package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/contenthash"
)

// serveBlob streams a committed blob with Range, If-None-Match and HEAD
// support (http.ServeContent), preserving sendfile for local stores.
// Callers reach it for blobs the catalog references, so a blob the store
// lacks is corruption, not a 404.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, d digest.Digest, mtime time.Time, fmtName string) {
	if p, ok := s.presigner(r); ok {
		if err := s.redirectBlob(w, r, p, d, fmtName); err != nil {
			s.fail(w, r, referencedMissing(d, err))
		}
		return
	}
	f, err := s.cfg.Blobs.Open(r.Context(), d)
	if err != nil {
		s.fail(w, r, referencedMissing(d, err))
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("ETag", api.ETag(d))
	h.Set(api.HeaderDigest, d.String())
	h.Set("Content-Type", "application/octet-stream")
	if fmtName != "" {
		h.Set(api.HeaderFormat, fmtName)
	}
	// A store other than files (S3) answers each Read with a round trip
	// through its client; read it in large pieces.
	var rs io.ReadSeeker = f
	if _, isFile := f.(*os.File); !isFile {
		rs = newBigReader(f)
	}
	// Handlers get the *respWriter from handle, which already counts bytes
	// (and forwards ReadFrom, so this is still sendfile).
	rw, _ := w.(*respWriter)
	var before int64
	if rw != nil {
		before = rw.bytes
	}
	size, err := rs.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = rs.Seek(0, io.SeekStart)
	}
	if err != nil {
		s.fail(w, r, fmt.Errorf("blob %s: %w", d, err))
		return
	}
	if r = applyRanges(w, r, size); r == nil {
		return
	}
	http.ServeContent(w, r, "", mtime, rs)
	if rw != nil {
		s.metrics.bytesSent.Add(float64(rw.bytes - before))
		if rw.status == http.StatusPartialContent {
			s.metrics.rangeBytes.Add(float64(rw.bytes - before))
		}
	}
}

// bigReader buffers an io.ReadSeeker with 1 MiB reads and drops the buffer
// on Seek.
type bigReader struct {
	rs io.ReadSeeker
	br *bufio.Reader
}

func newBigReader(rs io.ReadSeeker) *bigReader {
	return &bigReader{rs: rs, br: bufio.NewReaderSize(rs, 1<<20)}
}

func (b *bigReader) Read(p []byte) (int, error) { return b.br.Read(p) }

func (b *bigReader) Seek(off int64, whence int) (int64, error) {
	if whence == io.SeekCurrent {
		off -= int64(b.br.Buffered())
	}
	n, err := b.rs.Seek(off, whence)
	b.br.Reset(b.rs)
	return n, err
}

// redirectBlob answers a GET with a 307 to a presigned object-store URL.
// The redirect carries the digest, ETag and format headers, so a client
// knows what the object store's answer must hash to; If-None-Match is
// answered here without a round trip to the store.
// It returns the store's error, having written nothing, when it cannot
// presign.
func (s *Server) redirectBlob(w http.ResponseWriter, r *http.Request, p blob.Presigner, d digest.Digest, fmtName string) error {
	h := w.Header()
	h.Set("ETag", api.ETag(d))
	h.Set(api.HeaderDigest, d.String())
	if fmtName != "" {
		h.Set(api.HeaderFormat, fmtName)
	}
	if etagListMatches(r.Header.Get("If-None-Match"), api.ETag(d)) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	u, err := p.PresignGet(r.Context(), d, s.cfg.RedirectContent)
	if err != nil {
		return err
	}
	// The URL expires: no cache may keep the redirect.
	h.Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusTemporaryRedirect)
	s.metrics.redirects.Inc()
	return nil
}

// presigner returns the store's Presigner when this request is to be
// redirected: a GET, on a head started with RedirectContent.
func (s *Server) presigner(r *http.Request) (blob.Presigner, bool) {
	p, ok := s.cfg.Blobs.(blob.Presigner)
	return p, ok && s.cfg.RedirectContent > 0 && r.Method == http.MethodGet
}

// referencedMissing turns "not found" for a blob the catalog references
// into the corruption it is.
func referencedMissing(d digest.Digest, err error) error {
	if errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("blob %s is referenced but missing from the blob store: %w", d, errdefs.ErrCorrupt)
	}
	return err
}

// etagListMatches reports whether an If-None-Match value names etag (weak
// comparison, as RFC 9110 asks for If-None-Match) or is "*".
func etagListMatches(list, etag string) bool {
	for _, v := range strings.Split(list, ",") {
		v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
		if v == "*" || v == etag {
			return true
		}
	}
	return false
}

func (s *Server) getBlob(w http.ResponseWriter, r *http.Request) {
	d := digest.Digest(r.PathValue("digest"))
	if err := contenthash.Validate(d); err != nil {
		s.fail(w, r, err)
		return
	}
	if p, ok := s.presigner(r); ok {
		// PresignGet checks the blob exists: no Stat of our own first.
		if err := s.redirectBlob(w, r, p, d, ""); err != nil {
			s.fail(w, r, err)
		}
		return
	}
	info, err := s.cfg.Blobs.Stat(r.Context(), d)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	s.serveBlob(w, r, d, info.Committed, "")
}

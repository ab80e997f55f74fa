package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/qcow2"
)

func noContent(img catalog.Image) error {
	return fmt.Errorf("image %s (%s) has no content; upload some with depot image push: %w", img.Name, img.UID, errdefs.ErrNotFound)
}

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

// lookupContent resolves {ref} to an image that has content.
func (s *Server) lookupContent(r *http.Request) (catalog.Image, error) {
	img, err := s.lookup(r)
	if err == nil && img.Content == nil {
		err = noContent(img)
	}
	return img, err
}

func (s *Server) getContent(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookupContent(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	s.serveBlob(w, r, img.Content.Digest, img.Content.MTime, img.Content.Format)
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

// ifMatch parses If-Match: one quoted digest, or *. It returns ("", false)
// when absent.
func ifMatch(r *http.Request) (digest.Digest, bool, error) {
	v := strings.TrimSpace(r.Header.Get("If-Match"))
	if v == "" {
		return "", false, nil
	}
	if v == "*" {
		return "*", true, nil
	}
	v = strings.TrimPrefix(v, "W/")
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false, fmt.Errorf("If-Match must be a quoted digest like \"sha256:<hex>\": %w", errdefs.ErrInvalidArgument)
	}
	d := digest.Digest(v[1 : len(v)-1])
	if err := contenthash.Validate(d); err != nil {
		return "", false, err
	}
	return d, true, nil
}

// checkBase enforces If-Match against an image's current content.
func checkBase(img *catalog.Image, base digest.Digest) error {
	var have digest.Digest
	if img.Content != nil {
		have = img.Content.Digest
	}
	if base == "*" {
		if have == "" {
			return &errdefs.PreconditionError{UID: img.UID, Want: "*", Have: ""}
		}
		return nil
	}
	if have != base {
		return &errdefs.PreconditionError{UID: img.UID, Want: base, Have: have}
	}
	return nil
}

// bodyReader turns failures reading an upload into the vocabulary: a body
// cut short is the client's fault, an over-long one is too large.
type bodyReader struct {
	r io.Reader
}

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return n, fmt.Errorf("content is over the %d-byte limit: %w", mb.Limit, errdefs.ErrTooLarge)
		}
		if errors.Is(err, errdefs.ErrInvalidArgument) { // the body idle timeout
			return n, err
		}
		return n, fmt.Errorf("reading the upload: %v (body cut short?): %w", err, errdefs.ErrInvalidArgument)
	}
	return n, err
}

// declaredSize reads the size a PUT declares: Content-Length, or
// X-Depot-Size for a chunked body; -1 when neither. A size over the limit
// is refused here, before any byte of the body is read.
func (s *Server) declaredSize(r *http.Request) (int64, error) {
	size := r.ContentLength // -1 when chunked; then X-Depot-Size may say
	if v := r.Header.Get("X-Depot-Size"); v != "" {
		hint, err := strconv.ParseInt(v, 10, 64)
		if err != nil || hint < 0 || (size >= 0 && hint != size) {
			return 0, fmt.Errorf("X-Depot-Size %q is not the byte count of the body: %w", v, errdefs.ErrInvalidArgument)
		}
		size = hint
	}
	if size > s.cfg.MaxContentSize {
		return 0, fmt.Errorf("the declared size, %d bytes, is over the server's %d-byte limit (--max-content-size): %w", size, s.cfg.MaxContentSize, errdefs.ErrTooLarge)
	}
	return size, nil
}

func (s *Server) putContent(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	size, err := s.declaredSize(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	img, err := s.lookup(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if img.Frozen {
		s.fail(w, r, frozenErr(img, "content upload"))
		return
	}
	want, err := declaredDigest(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	base, haveBase, err := ifMatch(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if haveBase {
		if err := checkBase(&img, base); err != nil { // fail fast, before the body
			s.fail(w, r, err)
			return
		}
	}
	msg := r.Header.Get(api.HeaderMessage)
	if len(msg) > maxStringField {
		s.fail(w, r, fmt.Errorf("revision message over %d bytes: %w", maxStringField, errdefs.ErrTooLarge))
		return
	}

	// Stream: body → (sniffer, hashers, temp file). Nothing is visible
	// until Commit checks size and digest.
	bw, err := s.cfg.Blobs.Writer(ctx, blob.WriteOptions{Expected: want, SizeHint: size})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var sniff format.Sniffer
	var qhead qcow2.HeaderBuffer
	body := bodyReader{io.TeeReader(http.MaxBytesReader(w, r.Body, s.cfg.MaxContentSize), io.MultiWriter(&sniff, &qhead))}
	n, err := copyFull(bw, body, make([]byte, 1<<20))
	s.metrics.bytesReceived.Add(float64(n))
	if err != nil {
		bw.Close()
		s.fail(w, r, err)
		return
	}
	if err := ctx.Err(); err != nil {
		bw.Close()
		s.fail(w, r, fmt.Errorf("upload aborted: %w", errdefs.ErrInvalidArgument))
		return
	}
	// A streaming client declares the digest in a trailer, readable now
	// that the body is consumed, announced or not. One declared up front
	// as well must agree with it.
	if want, err = trailerDigest(bodyOfRequest(r).Trailer(), want); err != nil {
		bw.Close()
		s.fail(w, r, err)
		return
	}
	if err := checkPortable(sniff.Format(), &qhead); err != nil {
		bw.Close()
		s.fail(w, r, err)
		return
	}
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	// Touch the digest before the bytes become visible: a garbage collector
	// on any head can then no longer claim them, and if one has claimed
	// them already, this waits until it has deleted them, so the commit
	// below writes them afresh instead of keeping bytes about to go.
	if err := s.touchForCommit(ctx, bw.Digest()); err != nil {
		bw.Close()
		s.fail(w, r, err)
		return
	}
	info, err := bw.Commit(ctx, size, want)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	by := principal(r).Subject
	now := time.Now().UTC()
	c := catalog.Content{Digest: info.Digest, Size: info.Size, MTime: now, Format: sniff.Format(), BLAKE3: info.BLAKE3, By: by, Message: msg}
	keep := s.cfg.KeepRevisions
	img, err = s.cfg.Catalog.Update(ctx, img.UID, func(img *catalog.Image) error {
		if img.Frozen {
			return frozenErr(*img, "content upload")
		}
		if haveBase {
			if err := checkBase(img, base); err != nil {
				return err
			}
		}
		cc := c
		img.Content = &cc
		img.History = append(img.History, c)
		if len(img.History) > keep {
			img.History = img.History[len(img.History)-keep:]
		}
		img.LastModified, img.LastModifiedBy = now, by
		return nil
	})
	if err != nil {
		s.fail(w, r, err) // the committed blob stays unreferenced; GC reclaims it
		return
	}
	s.log.Info("content uploaded", "uid", img.UID, "name", img.Name, "digest", info.Digest, "bytes", info.Size, "fmt", c.Format, "by", by)
	s.answerInfo(w, r, img, http.StatusOK)
}

func (s *Server) answerInfo(w http.ResponseWriter, r *http.Request, img catalog.Image, status int) {
	ref, err := s.cfg.Catalog.Ref(r.Context(), img.Content.Digest)
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	c := img.Content
	w.Header().Set("ETag", api.ETag(c.Digest))
	s.ok(w, status, api.ContentInfo{Size: c.Size, MTime: api.UnixFloat(c.MTime), Chksum: c.Digest.String(), Refcnt: ref.Refs, Fmt: c.Format})
}

func (s *Server) deleteContent(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	if err := validRef(ref); err != nil {
		s.fail(w, r, err)
		return
	}
	by := principal(r).Subject
	img, err := s.cfg.Catalog.Update(r.Context(), ref, func(img *catalog.Image) error {
		if img.Frozen {
			return frozenErr(*img, "content delete")
		}
		if img.Content == nil {
			return noContent(*img)
		}
		img.Content, img.History = nil, nil
		img.LastModified, img.LastModifiedBy = time.Now().UTC(), by
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("content deleted", "uid", img.UID, "name", img.Name, "by", by)
	s.ok(w, http.StatusOK, img.UID)
}

// touchForCommit touches d, waiting while a collector holds a claim on it.
func (s *Server) touchForCommit(ctx context.Context, d digest.Digest) error {
	deadline := time.Now().Add(s.claimWait)
	for {
		err := s.cfg.Catalog.Touch(ctx, d, time.Now().UTC())
		if !errors.Is(err, errdefs.ErrConflict) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%v; retry the upload: %w", err, errdefs.ErrUnavailable)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) contentStat(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookupContent(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.ok(w, http.StatusOK, api.ContentStat{Size: img.Content.Size, MTime: api.UnixFloat(img.Content.MTime)})
}

func (s *Server) contentInfo(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookupContent(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.answerInfo(w, r, img, http.StatusOK)
}

// copyFull copies r to w in whole buffers: chunked uploads arrive in small
// pieces (32 KiB from Go clients), and hashing and writing them one by one
// costs nearly twice the CPU of full 1 MiB writes.
func copyFull(w io.Writer, r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return total, nil
		default:
			return total, err
		}
	}
}

package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/contenthash"
)

// chunkindex.go: the chunk index the server keeps beside each blob (issue
// 14), so that a node fetches only the chunks it lacks, as ranges of the
// ordinary blob URL.
//
// An upload computes it in the pass that hashes the content (copyChunked,
// called by receive); after the blob commits it is stored in the blob
// store (blob.IndexStore) and its digest is recorded with the revision
// (catalog.Content.Chunks): blob commit → index write → catalog. Writing
// it is best-effort: a blob without one (uploaded before the feature, or
// whose index write failed or was damaged) gets one computed from the
// blob store on its first GET …/blob/<digest>/chunks, at most
// maxIndexBuilds at a time and once per digest however many ask.
//
// The stored record is the index's encoding followed by the 32-byte sha256
// of that encoding (the digest a revision records), so a head checks every
// record it reads: a damaged one is recomputed, never served.

// maxIndexBuilds bounds the indexes computed on request at once: each reads
// a whole blob (about 1 s of CPU per GiB).
const maxIndexBuilds = 2

// maxIndexRecord bounds a stored record: the largest encoding and its
// digest.
const maxIndexRecord = int64(chunks.MaxEncodedSize + sha256.Size)

// sealIndex is the stored record of an encoded index.
func sealIndex(enc []byte) []byte {
	sum := sha256.Sum256(enc)
	rec := make([]byte, 0, len(enc)+len(sum))
	return append(append(rec, enc...), sum[:]...)
}

// openIndex checks a stored record against the blob it belongs to and
// returns the encoding it seals and its digest. Any damage (a record cut
// short, a flipped bit, an index of other content) is errdefs.ErrCorrupt.
func openIndex(rec []byte, info blob.Info) ([]byte, digest.Digest, error) {
	if len(rec) < sha256.Size {
		return nil, "", fmt.Errorf("stored chunk index of %s is %d bytes: %w", info.Digest, len(rec), errdefs.ErrCorrupt)
	}
	enc, sum := rec[:len(rec)-sha256.Size], rec[len(rec)-sha256.Size:]
	d := chunks.DigestOf(enc)
	x, err := chunks.DecodeVerified(enc, digest.NewDigestFromBytes(digest.SHA256, sum))
	if err != nil {
		return nil, "", fmt.Errorf("stored chunk index of %s: %v: %w", info.Digest, err, errdefs.ErrCorrupt)
	}
	if x.Blob != info.Digest || x.Size != info.Size {
		return nil, "", fmt.Errorf("stored chunk index of %s describes %s (%d bytes): %w", info.Digest, x.Blob, x.Size, errdefs.ErrCorrupt)
	}
	if x.Params != chunks.DefaultParams {
		return nil, "", fmt.Errorf("stored chunk index of %s was cut at %d/%d/%d bytes, not %d/%d/%d: %w", info.Digest,
			x.Params.Min, x.Params.Avg, x.Params.Max, chunks.DefaultParams.Min, chunks.DefaultParams.Avg, chunks.DefaultParams.Max, errStaleIndex)
	}
	return enc, d, nil
}

// errStaleIndex says a stored index is sound but was made with other chunk
// parameters (an older depot's): it is computed again, as a missing one is.
var errStaleIndex = errors.New("stale chunk index")

// indexStore is the blob store's IndexStore, if it has one.
func (s *Server) indexStore() (blob.IndexStore, bool) {
	x, ok := s.cfg.Blobs.(blob.IndexStore)
	return x, ok
}

// pendingIndex is the chunking of an upload whose blob is not committed
// yet: finish it with the blob's digest.
type pendingIndex struct {
	sp  *chunks.Splitter
	err error // why there will be no index (the upload goes on without one)
}

// finish returns the encoded index of the content chunked, named by d.
func (p *pendingIndex) finish(d digest.Digest) ([]byte, error) {
	if p == nil {
		return nil, errors.New("no chunking ran")
	}
	if p.err != nil {
		return nil, p.err
	}
	x, err := p.sp.Finish(d)
	if err != nil {
		return nil, err
	}
	return x.Encode()
}

// Buffers of the ingest pipeline: the copy loop fills one while the
// splitter works through those already written.
const (
	copyBuffer   = 1 << 20
	copyBuffers  = 4
	splitBacklog = copyBuffers - 1
)

// copyChunked copies r to w in whole buffers (see copyFull) and runs a
// chunk Splitter over the same bytes on a goroutine of its own, so that
// chunking (about 1 s of CPU per GiB) overlaps the hashing and writing of
// the next buffers instead of adding to them. Each buffer goes to the
// splitter only after w has taken it, and comes back to the copy loop when
// the splitter is done with it: no copies, and at most copyBuffers buffers
// per upload. The splitter goroutine is joined before copyChunked returns.
// A failure of the splitter costs only the index (pendingIndex.err), never
// the upload. Any upload path (a delta push's assembly too) that feeds a
// blob writer from a reader should come through here.
func copyChunked(w io.Writer, r io.Reader) (int64, *pendingIndex, error) {
	p := &pendingIndex{}
	p.sp, p.err = chunks.NewSplitter(chunks.DefaultParams, nil)
	if p.err != nil {
		n, err := copyFull(w, r, make([]byte, copyBuffer))
		return n, p, err
	}
	full := make(chan []byte, splitBacklog)
	free := make(chan []byte, copyBuffers)
	for range copyBuffers {
		free <- make([]byte, copyBuffer)
	}
	var split errgroup.Group
	split.Go(func() error {
		for b := range full {
			if p.err == nil {
				if _, err := p.sp.Write(b); err != nil {
					p.err = err
				}
			}
			free <- b[:cap(b)]
		}
		return nil
	})
	var total int64
	err := func() error {
		for {
			buf := <-free
			n, err := io.ReadFull(r, buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return werr
				}
				total += int64(n)
				full <- buf[:n]
			}
			switch err {
			case nil:
			case io.EOF, io.ErrUnexpectedEOF:
				return nil
			default:
				return err
			}
		}
	}()
	close(full)
	split.Wait() // p.err is the splitter's: it returns nil
	return total, p, err
}

// storeIndex finishes an upload's index once its blob has committed and
// stores it beside the blob. It returns the index digest to record with
// the revision, or "" when there is none to record: the upload succeeds
// either way, and the index is computed on its first request instead.
func (s *Server) storeIndex(ctx context.Context, info blob.Info, p *pendingIndex) digest.Digest {
	xs, ok := s.indexStore()
	if !ok {
		return ""
	}
	enc, err := p.finish(info.Digest)
	if err != nil {
		s.log.Warn("no chunk index for the upload; it will be computed on request", "digest", info.Digest, "err", err)
		return ""
	}
	if err := xs.PutIndex(ctx, info.Digest, sealIndex(enc)); err != nil {
		s.log.Warn("storing the chunk index failed; it will be computed on request", "digest", info.Digest, "err", err)
		return ""
	}
	return chunks.DigestOf(enc)
}

// chunkIndex returns blob d's encoded index and its digest: the stored one
// when it checks out, else one computed from the blob (and stored). A blob
// the store lacks is errdefs.ErrNotFound.
func (s *Server) chunkIndex(ctx context.Context, d digest.Digest) ([]byte, digest.Digest, error) {
	info, err := s.cfg.Blobs.Stat(ctx, d)
	if err != nil {
		return nil, "", err
	}
	if enc, xd, ok, err := s.storedIndex(ctx, info); ok || err != nil {
		return enc, xd, err
	}
	// Computed once per digest however many ask: whoever comes after the
	// computation finds it stored. It runs under its first caller's
	// context; a caller whose context is fine but who waited on one that
	// was cancelled asks again.
	for attempt := 0; ; attempt++ {
		v, err, _ := s.indexBuilds.Do(d.String(), func() (any, error) {
			if enc, _, ok, err := s.storedIndex(ctx, info); ok || err != nil {
				return enc, err
			}
			return s.buildIndex(ctx, info)
		})
		if err != nil && ctx.Err() == nil && attempt < 3 &&
			(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		enc := v.([]byte)
		return enc, chunks.DigestOf(enc), nil
	}
}

// storedIndex reads and checks the stored index of the blob info
// describes. ok is false, with no error, when there is none or the one
// there is damaged (logged): the caller computes it.
func (s *Server) storedIndex(ctx context.Context, info blob.Info) (enc []byte, xd digest.Digest, ok bool, err error) {
	xs, has := s.indexStore()
	if !has {
		return nil, "", false, nil
	}
	rec, err := xs.GetIndex(ctx, info.Digest, maxIndexRecord)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return nil, "", false, nil
	case errors.Is(err, errdefs.ErrCorrupt): // over the size bound
	case err != nil:
		return nil, "", false, err
	default:
		if enc, xd, err = openIndex(rec, info); err == nil {
			return enc, xd, true, nil
		}
	}
	if errors.Is(err, errStaleIndex) {
		s.log.Info("stored chunk index has other chunk parameters; computing it again", "digest", info.Digest, "err", err)
		return nil, "", false, nil
	}
	s.log.Error("stored chunk index is damaged; computing it again", "digest", info.Digest, "err", err)
	return nil, "", false, nil
}

// buildIndex computes the index of a committed blob from the blob store,
// verifying the blob's sha256 on the way, and stores it unless the blob
// was deleted meanwhile.
func (s *Server) buildIndex(ctx context.Context, info blob.Info) ([]byte, error) {
	// A blob over MaxChunks*Max bytes needs more chunks than an index may
	// hold, whatever its bytes: refuse it before reading it.
	if info.Size > int64(chunks.MaxChunks)*int64(chunks.DefaultParams.Max) {
		return nil, fmt.Errorf("blob %s (%d bytes) is too large for a chunk index: %w", info.Digest, info.Size, errdefs.ErrTooLarge)
	}
	if err := s.indexSem.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	defer s.indexSem.Release(1)
	f, err := s.cfg.Blobs.Open(ctx, info.Digest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rd io.Reader = f
	if _, isFile := f.(*os.File); !isFile {
		rd = newBigReader(f)
	}
	x, err := chunks.Build(ctx, rd, chunks.DefaultParams, info.Digest)
	if err != nil {
		var ve *errdefs.VerificationError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("blob %s does not hash to its name: %w: %w", info.Digest, err, errdefs.ErrCorrupt)
		}
		return nil, fmt.Errorf("chunk index of %s: %w", info.Digest, err)
	}
	enc, err := x.Encode()
	if err != nil {
		return nil, err
	}
	s.metrics.indexBuilds.Inc()
	if xs, ok := s.indexStore(); ok {
		// Under commitMu, so that a collector on this head cannot delete
		// the blob (and its index) between the check and the write and
		// leave an index of nothing.
		s.commitMu.RLock()
		defer s.commitMu.RUnlock()
		if _, err := s.cfg.Blobs.Stat(ctx, info.Digest); err != nil {
			s.log.Info("blob went while its chunk index was computed", "digest", info.Digest, "err", err)
		} else if err := xs.PutIndex(ctx, info.Digest, sealIndex(enc)); err != nil {
			s.log.Warn("storing the computed chunk index failed", "digest", info.Digest, "err", err)
		}
	}
	s.log.Info("chunk index computed", "digest", info.Digest, "bytes", info.Size, "chunks", len(x.Chunks))
	return enc, nil
}

// getChunks answers GET and HEAD …/blob/<digest>/chunks: the blob's chunk
// index, immutable like the blob (its URL names the blob, and the index of
// given bytes never changes). It is served by the head even with
// RedirectContent: it is small, and the ranges of the blob still redirect.
func (s *Server) getChunks(w http.ResponseWriter, r *http.Request) {
	d := digest.Digest(r.PathValue("digest"))
	if err := contenthash.Validate(d); err != nil {
		s.fail(w, r, err)
		return
	}
	base, err := parseBaseQuery(r.URL.RawQuery)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	enc, xd, err := s.chunkIndex(r.Context(), d)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if base != "" && r.Method == http.MethodGet && r.Header.Get("Range") == "" {
		frame, ok, err := s.indexDelta(r.Context(), d, xd, base, enc)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if ok {
			s.serveIndexDelta(w, d, xd, base, frame)
			return
		}
	}
	h := w.Header()
	h.Set("Content-Type", api.MediaTypeChunks)
	h.Set("ETag", api.ETag(xd))
	h.Set(api.HeaderChunksDigest, xd.String())
	h.Set(api.HeaderDigest, d.String())
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	rd := bytes.NewReader(enc)
	if r = applyRanges(w, r, rd.Size()); r == nil {
		return
	}
	http.ServeContent(w, r, "", time.Time{}, rd)
}

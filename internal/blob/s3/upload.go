package s3

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/contenthash"
)

// maxParts is the most parts one S3 multipart upload may have.
const maxParts = 10000

// partWriter is every write's upload: a multipart upload of its own whose
// parts are filled from the store's part buffers and go out as they fill
// (Threads at a time, each retried on its own), bounded together with every
// other write's by the store's upload memory.
//
// With a digest declared up front the upload goes straight to its final key,
// blobs/sha256/<hex>. Commit completes it only once the bytes hashed to the
// declared digest, and aborts it otherwise. S3 shows nothing of an
// unfinished multipart upload, so readers never see part of a blob, and
// there is no server-side copy: a commit costs one request whatever the
// size. Without one it goes to a fresh ingest/<random> key, and Commit
// completes it there, then copies the verified object into place.
//
// The marker ingest/<random>.upload holds "<key>\n<upload id>" while the
// write runs, refreshed so a sweep never takes a live write for an abandoned
// one, and a sweep aborts the upload a killed head left behind.
type partWriter struct {
	s        *Store
	key      string // the upload's key: the blob's, or an ingest/ key
	id       string // the multipart upload ID
	marker   string
	declared digest.Digest // "" when the digest was not declared
	what     string        // names the write in errors
	partSize int
	h        *contenthash.DualHasher
	cur      []byte
	closed   bool
	// completed: the multipart upload was completed (under key).
	completed bool

	cancel context.CancelFunc // stops the marker refresh and part uploads
	ctx    context.Context
	reqCtx context.Context // the caller's: waiting for upload memory ends with it
	// bufs holds this write's buffers that are not in flight (nil for one
	// dropped after a failed part: its memory is still counted). have is
	// how many it holds of the store's upload memory, at most Threads+1.
	bufs chan []byte
	have int
	wg   sync.WaitGroup
	// refresh is the marker-refresh goroutine, joined by Close.
	refresh sync.WaitGroup
	mu      sync.Mutex
	parts   []minio.CompletePart
	upErr   error // first part upload error
	next    int   // next part number
}

// PrefersDeclaredDigest implements blob.DeclaredDigestPreferrer: a declared
// digest saves the server-side copy.
func (s *Store) PrefersDeclaredDigest() bool { return true }

// Writer implements blob.Ingester (see partWriter).
func (s *Store) Writer(ctx context.Context, opts blob.WriteOptions) (blob.Writer, error) {
	tmp := s.ingestPrefix() + randomID()
	key, what := tmp, "ingest "+tmp
	if opts.Expected != "" {
		if err := contenthash.Validate(opts.Expected); err != nil {
			return nil, err
		}
		key, what = s.blobKey(opts.Expected), opts.Expected.String()
	}
	core := minio.Core{Client: s.c}
	id, err := core.NewMultipartUpload(ctx, s.cfg.Bucket, key, minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return nil, fmt.Errorf("start upload of %s: %w", what, classify(err))
	}
	marker := tmp + uploadMarker
	body := []byte(key + "\n" + id)
	if err := s.putMarker(ctx, marker, body); err != nil {
		core.AbortMultipartUpload(context.WithoutCancel(ctx), s.cfg.Bucket, key, id)
		return nil, fmt.Errorf("start upload of %s: %w", what, classify(err))
	}
	partSize := int(s.cfg.PartSize)
	if opts.SizeHint > 0 {
		// Enough room for the expected size in maxParts parts, in whole MiB.
		if need := (opts.SizeHint + maxParts - 1) / maxParts; need > int64(partSize) {
			partSize = int((need + 1<<20 - 1) &^ (1<<20 - 1))
		}
	}
	uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &partWriter{
		s: s, key: key, id: id, marker: marker, declared: opts.Expected, what: what,
		partSize: partSize, h: contenthash.NewDualHasher(), cancel: cancel, ctx: uctx, reqCtx: ctx,
		bufs: make(chan []byte, s.cfg.Threads+1), next: 1,
	}
	w.refresh.Add(1)
	go func() {
		defer w.refresh.Done()
		keepMarker(uctx, s, marker, body, s.markerEvery)
	}()
	return w, nil
}

func (w *partWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("write to closed blob writer")
	}
	n := 0
	for len(p) > 0 {
		if err := w.err(); err != nil {
			return n, err
		}
		if w.cur == nil {
			b, err := w.buf()
			if err != nil {
				return n, err
			}
			w.cur = b
		}
		k := copy(w.cur[len(w.cur):cap(w.cur)], p)
		w.cur = w.cur[:len(w.cur)+k]
		w.h.Write(p[:k])
		p, n = p[k:], n+k
		if len(w.cur) == cap(w.cur) {
			if err := w.ship(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// ship uploads the current buffer as the next part, in the background.
func (w *partWriter) ship() error {
	if w.next > maxParts {
		return fmt.Errorf("%s is over %d parts of %d bytes; raise part-size: %w", w.what, maxParts, w.partSize, errdefs.ErrTooLarge)
	}
	b, num := w.cur, w.next
	w.cur, w.next = nil, w.next+1
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		part, retried, err := w.uploadPart(num, b)
		w.mu.Lock()
		if err != nil && w.upErr == nil {
			w.upErr = fmt.Errorf("upload part %d of %s: %w", num, w.what, err)
		} else if err == nil {
			w.parts = append(w.parts, minio.CompletePart{PartNumber: num, ETag: part.ETag})
		}
		w.mu.Unlock()
		if err != nil || retried {
			// A request the store answered early may still be reading b
			// (net/http closes a body in its own time), so b is left to the
			// garbage collector rather than refilled.
			b = nil
		}
		w.bufs <- b
	}()
	return nil
}

func (w *partWriter) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.upErr
}

func (w *partWriter) Digest() digest.Digest { return w.h.Digest() }
func (w *partWriter) Size() int64           { return w.h.Size() }

// Close ends the write: an unfinished upload is aborted, and the marker and
// any temporary object removed.
func (w *partWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.cancel()
	w.wg.Wait()
	w.refresh.Wait()
	w.h.Close()
	w.release()
	// Best effort on a fresh context: the caller's may be what was cancelled.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !w.completed {
		minio.Core{Client: w.s.c}.AbortMultipartUpload(ctx, w.s.cfg.Bucket, w.key, w.id)
	}
	if w.declared == "" {
		w.s.c.RemoveObject(ctx, w.s.cfg.Bucket, w.key, minio.RemoveObjectOptions{})
	}
	w.s.c.RemoveObject(ctx, w.s.cfg.Bucket, w.marker, minio.RemoveObjectOptions{})
	return nil
}

func (w *partWriter) Commit(ctx context.Context, size int64, expected digest.Digest) (info blob.Info, err error) {
	if w.closed {
		return blob.Info{}, errors.New("commit of closed blob writer")
	}
	defer w.Close()
	// The last part; an empty blob is one empty part.
	if len(w.cur) > 0 || w.next == 1 {
		if w.cur == nil {
			b, err := w.buf()
			if err != nil {
				return blob.Info{}, err
			}
			w.cur = b
		}
		if err := w.ship(); err != nil {
			return blob.Info{}, err
		}
	}
	w.wg.Wait()
	if err := w.err(); err != nil {
		return blob.Info{}, err
	}
	sum, err := w.h.Check(size, w.declared, expected)
	if err != nil {
		return blob.Info{}, err
	}
	info = blob.Info{Digest: sum.Digest, Size: sum.Size, BLAKE3: sum.BLAKE3}
	if err := ctx.Err(); err != nil {
		return blob.Info{}, err
	}
	s := w.s
	if at, ok := s.committedAt(ctx, info); ok {
		// Another write committed the same content meanwhile: keep it.
		info.Committed = at
		return info, nil
	}
	slices.SortFunc(w.parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	up, err := minio.Core{Client: s.c}.CompleteMultipartUpload(ctx, s.cfg.Bucket, w.key, w.id, w.parts, minio.PutObjectOptions{})
	if err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: %w", info.Digest, classify(err))
	}
	w.completed = true
	if w.declared == "" {
		// Verified only now: copy it into place (Close removes the copy's
		// source).
		if up, err = s.copyIntoPlace(ctx, w.key, info); err != nil {
			return blob.Info{}, err
		}
	}
	info.Committed = up.LastModified
	if info.Committed.IsZero() {
		info.Committed = time.Now()
	}
	return info, nil
}

// copyIntoPlace copies the verified object at key to the key of its
// digest, with its BLAKE3 as metadata.
func (s *Store) copyIntoPlace(ctx context.Context, key string, info blob.Info) (minio.UploadInfo, error) {
	dst := minio.CopyDestOptions{
		Bucket: s.cfg.Bucket, Object: s.blobKey(info.Digest),
		UserMetadata: map[string]string{"Blake3": info.BLAKE3}, ReplaceMetadata: true,
		ContentType: "application/octet-stream",
	}
	src := minio.CopySrcOptions{Bucket: s.cfg.Bucket, Object: key}
	var up minio.UploadInfo
	var err error
	if info.Size <= s.copyPartSize {
		up, err = s.c.CopyObject(ctx, dst, src)
	} else {
		dst.PartSize = uint64(s.copyPartSize)
		up, err = s.c.ComposeObject(ctx, dst, src)
	}
	if err != nil {
		return up, mapErr("commit", info.Digest, err)
	}
	return up, nil
}

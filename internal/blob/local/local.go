// Package local is the filesystem blob store, depot's default.
//
// Layout under the root directory:
//
//	blobs/sha256/<hex>   committed blobs, mode 0444, never modified
//	chunks/sha256/<hex>  the record kept beside blob <hex> (blob.IndexStore:
//	                     the server's chunk index), replaced atomically
//	ingest/<random>.part private partial writes, invisible to readers
//
// A write streams into ingest/, is hashed as it is written, then fsynced,
// made read-only and renamed into blobs/, and the directory is fsynced. A
// crash at any instant leaves either no blob or the whole blob. The store is
// safe for several processes (and several heads on a shared filesystem with
// atomic rename) because names are digests and renames are atomic.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/contenthash"
)

// Store is a blob.Store on a local (or shared POSIX) filesystem.
type Store struct {
	root string
	opts Options
}

// Options tune a Store.
type Options struct {
	// BufferedIngest writes uploads through the page cache instead of with
	// O_DIRECT. Direct I/O is used only where the filesystem supports it.
	BufferedIngest bool
}

var (
	_ blob.Store         = (*Store)(nil)
	_ blob.IngestSweeper = (*Store)(nil)
	_ blob.IndexStore    = (*Store)(nil)
)

// Open prepares root for use, creating its directories.
func Open(root string) (*Store, error) { return OpenOptions(root, Options{}) }

// OpenOptions is Open with options.
func OpenOptions(root string, opts Options) (*Store, error) {
	for _, d := range []string{filepath.Join(root, "blobs", "sha256"), filepath.Join(root, "chunks", "sha256"), filepath.Join(root, "ingest")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("blob store %s: %w", root, err)
		}
	}
	return &Store{root: root, opts: opts}, nil
}

// String names the store for logs.
func (s *Store) String() string { return s.root }

// Root is the directory the store lives in.
func (s *Store) Root() string { return s.root }

// Path is where the committed blob dgst lives (whether or not it exists).
// dgst must have been validated.
func (s *Store) Path(dgst digest.Digest) string {
	return filepath.Join(s.root, "blobs", "sha256", dgst.Encoded())
}

// indexPath is where blob dgst's index record lives. dgst must have been
// validated.
func (s *Store) indexPath(dgst digest.Digest) string {
	return filepath.Join(s.root, "chunks", "sha256", dgst.Encoded())
}

// PutIndex implements blob.IndexStore: the record is written to a
// temporary file, fsynced and renamed over any earlier one.
func (s *Store) PutIndex(ctx context.Context, dgst digest.Digest, data []byte) error {
	if err := contenthash.Validate(dgst); err != nil {
		return err
	}
	if err := atomicfile.Write(s.indexPath(dgst), data, 0o444, true); err != nil {
		return fmt.Errorf("index of blob %s: %w", dgst, classify(err))
	}
	return nil
}

// GetIndex implements blob.IndexStore.
func (s *Store) GetIndex(ctx context.Context, dgst digest.Digest, limit int64) ([]byte, error) {
	if err := contenthash.Validate(dgst); err != nil {
		return nil, err
	}
	f, err := os.Open(s.indexPath(dgst))
	if err != nil {
		return nil, indexNotFound(dgst, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("index of blob %s: %w", dgst, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("index of blob %s is over %d bytes: %w", dgst, limit, errdefs.ErrCorrupt)
	}
	return b, nil
}

// DeleteIndex implements blob.IndexStore.
func (s *Store) DeleteIndex(ctx context.Context, dgst digest.Digest) error {
	if err := contenthash.Validate(dgst); err != nil {
		return err
	}
	if err := os.Remove(s.indexPath(dgst)); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("index of blob %s: %w", dgst, err)
	}
	return atomicfile.SyncDir(filepath.Dir(s.indexPath(dgst)))
}

// Open implements blob.Provider. The returned Reader is an *os.File, so the
// HTTP server can send it with sendfile.
func (s *Store) Open(ctx context.Context, dgst digest.Digest) (blob.Reader, error) {
	if err := contenthash.Validate(dgst); err != nil {
		return nil, err
	}
	f, err := os.Open(s.Path(dgst))
	if err != nil {
		return nil, notFound(dgst, err)
	}
	return f, nil
}

// Stat implements blob.Provider.
func (s *Store) Stat(ctx context.Context, dgst digest.Digest) (blob.Info, error) {
	if err := contenthash.Validate(dgst); err != nil {
		return blob.Info{}, err
	}
	fi, err := os.Stat(s.Path(dgst))
	if err != nil {
		return blob.Info{}, notFound(dgst, err)
	}
	return blob.Info{Digest: dgst, Size: fi.Size(), Committed: fi.ModTime()}, nil
}

// Delete implements blob.Manager.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	if err := contenthash.Validate(dgst); err != nil {
		return err
	}
	if err := os.Remove(s.Path(dgst)); err != nil {
		return notFound(dgst, err)
	}
	return atomicfile.SyncDir(filepath.Dir(s.Path(dgst)))
}

// Walk implements blob.Manager. Files whose names are not sha256 hex are
// skipped: they are not blobs.
func (s *Store) Walk(ctx context.Context, fn func(blob.Info) error) error {
	dir := filepath.Join(s.root, "blobs", "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("walk %s: %w", dir, err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if contenthash.Validate(d) != nil || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted while walking
		} else if err != nil {
			return err
		}
		if err := fn(blob.Info{Digest: d, Size: fi.Size(), Committed: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// SweepIngests implements blob.IngestSweeper.
func (s *Store) SweepIngests(ctx context.Context, olderThan time.Duration) (int, error) {
	dir := filepath.Join(s.root, "ingest")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	cutoff := time.Now().Add(-olderThan)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".part") {
			continue
		}
		fi, err := e.Info()
		if err != nil || fi.ModTime().After(cutoff) {
			continue
		}
		if os.Remove(filepath.Join(dir, e.Name())) == nil {
			n++
		}
	}
	return n, nil
}

// Writer implements blob.Ingester. The local store writes every blob the
// same way; a declared digest only adds a check at Commit.
func (s *Store) Writer(ctx context.Context, opts blob.WriteOptions) (blob.Writer, error) {
	if opts.Expected != "" {
		if err := contenthash.Validate(opts.Expected); err != nil {
			return nil, err
		}
	}
	var rnd [12]byte
	rand.Read(rnd[:])
	name := filepath.Join(s.root, "ingest", hex.EncodeToString(rnd[:])+".part")
	f, direct, err := createIngest(name, !s.opts.BufferedIngest)
	if err != nil {
		return nil, fmt.Errorf("start ingest: %w", classify(err))
	}
	w := &writer{s: s, f: f, direct: direct, declared: opts.Expected, h: contenthash.NewDualHasher(), queue: make(chan []byte, 2), free: make(chan []byte, 3), done: make(chan struct{})}
	go w.fileLoop()
	return w, nil
}

// writer fills fixed-size chunks and hands each full one to a file
// goroutine, hashing the bytes as they arrive, so the file write of one chunk
// overlaps the hashing of the next. Memory is bounded by the pool (3 chunks
// of writeChunk bytes).
//
// The part file is opened with O_DIRECT where the filesystem allows it:
// the chunks go from these buffers to the disk without a copy into the page
// cache, which on the machines measured costs as much CPU as sha256 itself
// (see BENCHMARKS.md). Chunks are aligned and a multiple of directAlign
// long; only the last, short one clears O_DIRECT first. Commit still fsyncs.
type writer struct {
	s      *Store
	f      *os.File
	direct bool
	// declared is WriteOptions.Expected: Commit checks it too.
	declared digest.Digest
	h        *contenthash.DualHasher
	cur      []byte // the chunk being filled
	closed   bool

	queue chan []byte   // full chunks for fileLoop, closed by finish
	free  chan []byte   // recycled chunks
	done  chan struct{} // closed when fileLoop returns: at finish, or on its first error
	ioErr error         // set by fileLoop before done closes
}

const writeChunk = 1 << 20

// newChunk returns an empty chunk with room for writeChunk bytes, aligned
// for O_DIRECT.
func newChunk() []byte {
	b := make([]byte, writeChunk+directAlign)
	off := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[off : off : off+writeChunk]
}

// fileLoop writes the queued chunks in order. On the first I/O error it
// records it and stops: done closes at once, so the next Write (or Commit)
// fails with that error instead of the upload being read to its end.
func (w *writer) fileLoop() {
	defer close(w.done)
	var written, flushed int64
	for b := range w.queue {
		if w.direct && len(b)%directAlign != 0 {
			// The short last chunk: O_DIRECT needs aligned lengths.
			if err := clearDirect(w.f); err != nil {
				w.ioErr = err
				return
			}
			w.direct = false
		}
		if _, err := w.f.Write(b); err != nil {
			w.ioErr = err
			return
		}
		written += int64(len(b))
		if !w.direct && written-flushed >= writebackChunk {
			startWriteback(w.f, flushed, written-flushed)
			flushed = written
		}
		select {
		case w.free <- b[:0]:
		default:
		}
	}
}

// failed returns the file goroutine's error once it has stopped on one.
func (w *writer) failed() error {
	select {
	case <-w.done:
		if w.ioErr != nil {
			return fmt.Errorf("ingest write: %w", classify(w.ioErr))
		}
	default:
	}
	return nil
}

// send queues a chunk for the file goroutine, unless it has failed.
func (w *writer) send(b []byte) error {
	if err := w.failed(); err != nil {
		return err
	}
	select {
	case w.queue <- b:
		return nil
	case <-w.done: // the file goroutine stopped on an error
		return fmt.Errorf("ingest write: %w", classify(w.ioErr))
	}
}

// finish writes the last short chunk, stops the file goroutine and returns
// its first error.
func (w *writer) finish() error {
	if w.queue == nil {
		return w.ioErr
	}
	var err error
	if len(w.cur) > 0 {
		err = w.send(w.cur)
		w.cur = nil
	}
	close(w.queue)
	<-w.done
	w.queue = nil
	if w.ioErr != nil {
		return w.ioErr
	}
	return err
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("write to closed blob writer")
	}
	if err := w.failed(); err != nil {
		return 0, err
	}
	n := 0
	for len(p) > 0 {
		if w.cur == nil {
			select {
			case w.cur = <-w.free:
			default:
				w.cur = newChunk()
			}
		}
		k := copy(w.cur[len(w.cur):cap(w.cur)], p)
		w.cur = w.cur[:len(w.cur)+k]
		w.h.Write(p[:k])
		p, n = p[k:], n+k
		if len(w.cur) == cap(w.cur) {
			if err := w.send(w.cur); err != nil {
				return n, err
			}
			w.cur = nil
		}
	}
	return n, nil
}

func (w *writer) Digest() digest.Digest { return w.h.Digest() }
func (w *writer) Size() int64           { return w.h.Size() }

func (w *writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.cur = nil // abandoned: nothing more to write
	w.finish()
	w.h.Close()
	w.f.Close()
	return os.Remove(w.f.Name())
}

func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest) (info blob.Info, err error) {
	if w.closed {
		return blob.Info{}, errors.New("commit of closed blob writer")
	}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if err := w.finish(); err != nil {
		return blob.Info{}, fmt.Errorf("ingest write: %w", classify(err))
	}
	sum, err := w.h.Check(size, w.declared, expected)
	if err != nil {
		return blob.Info{}, err
	}
	info = blob.Info{Digest: sum.Digest, Size: sum.Size, BLAKE3: sum.BLAKE3}
	got := info.Digest
	if err := ctx.Err(); err != nil {
		return blob.Info{}, err
	}
	if err := w.f.Sync(); err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: fsync: %w", got, classify(err))
	}
	if err := w.f.Chmod(0o444); err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: %w", got, err)
	}
	if err := w.f.Close(); err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: %w", got, err)
	}
	target := w.s.Path(got)
	if fi, err := os.Stat(target); err == nil && fi.Size() == info.Size {
		// Already committed (content-addressed): keep the existing file.
		w.closed = true
		w.h.Close()
		os.Remove(w.f.Name())
		info.Committed = fi.ModTime()
		return info, nil
	}
	if err := os.Rename(w.f.Name(), target); err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: %w", got, err)
	}
	w.closed = true
	w.h.Close()
	if err := atomicfile.SyncDir(filepath.Dir(target)); err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: %w", got, err)
	}
	info.Committed = time.Now()
	return info, nil
}

// classify marks a full disk or quota as errdefs.ErrNoSpace, keeping err.
func classify(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrNoSpace)
	}
	return err
}

func indexNotFound(dgst digest.Digest, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("index of blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return fmt.Errorf("index of blob %s: %w", dgst, err)
}

func notFound(dgst digest.Digest, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return fmt.Errorf("blob %s: %w", dgst, err)
}

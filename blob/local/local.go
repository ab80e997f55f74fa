// Package local is the filesystem blob store, depot's default.
//
// Layout under the root directory:
//
//	blobs/sha256/<hex>   committed blobs, mode 0444, never modified
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
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/blob"
	"github.com/depot-images/depot/errdefs"
)

// Store is a blob.Store on a local (or shared POSIX) filesystem.
type Store struct {
	root string
}

var (
	_ blob.Store         = (*Store)(nil)
	_ blob.IngestSweeper = (*Store)(nil)
)

// Open prepares root for use, creating its directories.
func Open(root string) (*Store, error) {
	for _, d := range []string{filepath.Join(root, "blobs", "sha256"), filepath.Join(root, "ingest")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("blob store %s: %w", root, err)
		}
	}
	return &Store{root: root}, nil
}

// Root is the directory the store lives in.
func (s *Store) Root() string { return s.root }

// Path is where the committed blob dgst lives (whether or not it exists).
// dgst must have been validated.
func (s *Store) Path(dgst digest.Digest) string {
	return filepath.Join(s.root, "blobs", "sha256", dgst.Encoded())
}

// Open implements blob.Provider. The returned Reader is an *os.File, so the
// HTTP server can send it with sendfile.
func (s *Store) Open(ctx context.Context, dgst digest.Digest) (blob.Reader, error) {
	if err := blob.Validate(dgst); err != nil {
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
	if err := blob.Validate(dgst); err != nil {
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
	if err := blob.Validate(dgst); err != nil {
		return err
	}
	if err := os.Remove(s.Path(dgst)); err != nil {
		return notFound(dgst, err)
	}
	return syncDir(filepath.Dir(s.Path(dgst)))
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
		if d.Validate() != nil || !e.Type().IsRegular() {
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

// Writer implements blob.Ingester.
func (s *Store) Writer(ctx context.Context) (blob.Writer, error) {
	f, err := os.CreateTemp(filepath.Join(s.root, "ingest"), "*.part")
	if err != nil {
		return nil, fmt.Errorf("start ingest: %w", err)
	}
	return &writer{s: s, f: f, h: blob.NewDualHasher()}, nil
}

type writer struct {
	s      *Store
	f      *os.File
	h      *blob.DualHasher
	closed bool
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("write to closed blob writer")
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	return n, err
}

func (w *writer) Digest() digest.Digest { return w.h.Digest() }
func (w *writer) Size() int64           { return w.h.Size() }

func (w *writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
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
	got := w.h.Digest()
	info = blob.Info{Digest: got, Size: w.h.Size(), BLAKE3: w.h.BLAKE3()}
	if size >= 0 && size != info.Size {
		return blob.Info{}, &errdefs.VerificationError{Want: expected, Got: got, WantSize: size, GotSize: info.Size}
	}
	if expected != "" && expected != got {
		return blob.Info{}, &errdefs.VerificationError{Want: expected, Got: got}
	}
	if err := ctx.Err(); err != nil {
		return blob.Info{}, err
	}
	if err := w.f.Sync(); err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: fsync: %w", got, err)
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
	if err := syncDir(filepath.Dir(target)); err != nil {
		return blob.Info{}, fmt.Errorf("commit %s: %w", got, err)
	}
	info.Committed = time.Now()
	return info, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func notFound(dgst digest.Digest, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", dgst, errdefs.ErrNotFound)
	}
	return fmt.Errorf("blob %s: %w", dgst, err)
}

package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/chunks"
)

// Every committed blob has, or gets, a chunk index at index/chunks/<hex>:
// the content-defined chunks of the blob (chunks.DefaultParams) with their
// BLAKE3. It is made in the pass that hashes a download (the partial's
// Splitter) or a full re-verification; a blob adopted from a workspace, or
// cached before indexes existed, gets one lazily when it is first wanted as
// a seed (seedsFor: at most lazyIndexBlobs per pull). An index is a hint
// about bytes the cache already verified, never a fact: every chunk taken
// from a seed is re-hashed, and every delta ends with the whole-file
// sha256.

// chunkIndexPath is where the chunk index of committed blob d lives.
func (c *Cache) chunkIndexPath(d digest.Digest) string {
	return filepath.Join(c.dir, "index", "chunks", d.Encoded())
}

// storeChunkIndex writes x atomically beside the blob it describes. It is
// best-effort: a missing index is computed again when needed.
func (c *Cache) storeChunkIndex(x *chunks.Index) {
	b, err := x.Encode()
	if err == nil {
		err = atomicfile.Write(c.chunkIndexPath(x.Blob), b, 0o644, false)
	}
	if err != nil {
		c.log.Debug("chunk index not stored", "digest", x.Blob, "err", err)
	}
}

// chunkIndex reads d's stored index. A damaged one, or one naming another
// blob, is removed and reported absent.
func (c *Cache) chunkIndex(d digest.Digest) (*chunks.Index, bool) {
	path := c.chunkIndexPath(d)
	x, err := readIndexFile(path)
	if err != nil {
		if !os.IsNotExist(err) {
			c.log.Warn("damaged chunk index removed", "digest", d, "err", err)
			os.Remove(path)
		}
		return nil, false
	}
	if x.Blob != d {
		c.log.Warn("chunk index names another blob; removed", "digest", d, "names", x.Blob)
		os.Remove(path)
		return nil, false
	}
	return x, true
}

// readIndexFile decodes an encoded index file, at most
// chunks.MaxEncodedSize bytes.
func readIndexFile(path string) (*chunks.Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return chunks.Read(f, "")
}

// buildChunkIndex computes and stores the index of the committed blob at
// path, whose digest is d. chunks.Build hashes the bytes too, so an index
// is only made of content that is d.
func (c *Cache) buildChunkIndex(ctx context.Context, d digest.Digest, path string) (*chunks.Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := chunks.Build(ctx, f, chunks.DefaultParams, d)
	if err != nil {
		return nil, fmt.Errorf("chunk index of %s: %w", d, err)
	}
	c.storeChunkIndex(x)
	return x, nil
}

// indexer feeds a chunks.Splitter in an ingest pass (a download, a
// re-verification), and gives up quietly when the blob cannot have an
// index (over chunks.MaxChunks): then the blob moves whole next time.
type indexer struct {
	s   *chunks.Splitter
	err error
	n   *atomic.Int64 // counts the bytes cut (Cache.stats.chunked)
}

func (c *Cache) newIndexer() *indexer {
	s, err := chunks.NewSplitter(chunks.DefaultParams, nil)
	return &indexer{s: s, err: err, n: &c.stats.chunked}
}

func (x *indexer) Write(b []byte) (int, error) {
	if x.err == nil {
		_, x.err = x.s.Write(b)
		x.n.Add(int64(len(b)))
	}
	return len(b), nil
}

// finish returns the index of everything written, whose sha256 is d.
func (x *indexer) finish(d digest.Digest) (*chunks.Index, error) {
	if x.err != nil {
		return nil, x.err
	}
	return x.s.Finish(d)
}

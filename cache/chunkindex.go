package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/source"
)

// Every committed blob has, or gets, a chunk index at index/chunks/<hex>:
// the content-defined chunks of the blob (chunks.DefaultParams) with their
// BLAKE3. A blob fetched whole from a depot server whose revision recorded
// its index digest takes the server's index, computed at ingest
// (sourceIndex); any other download, and a full re-verification, makes it
// in the pass that hashes the bytes (the partial's Splitter); a blob
// adopted from a workspace, or cached before indexes existed, gets one
// lazily when it is first wanted as a seed (seedsFor: at most
// lazyIndexBlobs per pull). An index is a hint about bytes the cache
// already verified, never a fact: every chunk taken from a seed is
// re-hashed, and every delta ends with the whole-file sha256.

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
	if x.Params != chunks.DefaultParams {
		// An older depot's: as good as none. It is made again when the blob
		// is next wanted as a seed or fully verified.
		c.log.Info("chunk index has other chunk parameters; removed", "digest", d)
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

// sourceIndex returns the chunk index of want.Digest that its source, a
// depot server, computed at ingest, for a whole transfer to store instead
// of cutting the download into chunks itself (FastCDC and a BLAKE3 per
// chunk about doubled the node's CPU time of a whole pull). It is taken only
// when the revision recorded the index's digest (want.Chunks): the index
// must hash to it (chunks.DecodeVerified), name want.Digest and its
// declared size, and use chunks.DefaultParams (wantedIndex, as for a
// delta). A pinned reference resolved nothing: the revision holding the
// digest is looked up (source.Recorder) for its size and index digest. Its
// bytes count as fetched. nil means there is none to take (an http or OCI
// source, a digest no kept revision records, an older server, an index
// refused, or found lying by a delta attempt of the same fetch): the
// transfer then cuts its own, exactly as before. The index never fails a
// pull.
//
// Why taking it unchecked against the bytes is safe: an index is only a
// hint. It is stored once the whole-file sha256 passed and the blob is
// committed, so it never makes a wrong blob visible; a later delta that
// uses it as a seed re-hashes (BLAKE3) every chunk it copies from the blob
// and fetches the ones that do not match (deltaRun.fromSeeds and check),
// and every delta ends with the whole-file sha256. verify --repair follows
// the stored index of the damaged blob: a seed chunk of the quarantined
// copy that fails its re-hash is fetched, a fetched chunk that does not
// match its entry ends the delta (deltaRun.fetchRun: the index lies), and
// the blob is transferred whole, which stores an index of its own. A
// lying index costs reuse, never a wrong byte.
func (c *Cache) sourceIndex(ctx context.Context, src source.Source, want source.Descriptor, xs *xferStats) *chunks.Index {
	if xs.noIndex.Load() {
		return nil
	}
	if x := xs.index.Load(); x != nil {
		return x
	}
	if _, ok := src.(source.Indexer); !ok {
		return nil
	}
	if rec, ok := src.(source.Recorder); ok && want.Chunks == "" && want.Size < 0 {
		// A pinned reference: nothing was resolved. Ask what the revision
		// recorded (one small request, against a whole transfer).
		r, err := rec.Recorded(ctx, want.Digest)
		if err != nil || r.Digest != want.Digest {
			c.log.Debug("no recorded chunk index digest; computing the index locally", "digest", want.Digest, "err", err)
			if ctx.Err() == nil {
				xs.noIndex.Store(true)
			}
			return nil
		}
		want.Size, want.Chunks = r.Size, r.Chunks
	}
	if want.Chunks == "" || want.Size < 0 {
		return nil
	}
	x, _, n, err := c.wantedIndex(ctx, src, want, nil)
	c.addFetched(xs, n)
	if err != nil {
		if ctx.Err() == nil {
			xs.noIndex.Store(true)
		}
		c.log.Info("chunk index not taken from the source; computing it locally", "digest", want.Digest, "why", strings.TrimSuffix(err.Error(), ": "+errNoDelta.Error()))
		return nil
	}
	xs.index.Store(x)
	return x
}

// IndexSource is the chunk index the cache keeps of a blob it holds, as a
// delta push's base index (client.PushOptions.DeltaIndex): read from
// index/chunks/<hex>, no request and no read of the blob. A blob without
// one (or with one of other parameters) is errdefs.ErrNotFound. Like any
// base index it only plans the push: the server re-hashes every chunk it
// takes from its own copy of the base and refuses a recipe that lies.
func (c *Cache) IndexSource() client.IndexSource {
	return client.IndexSourceFunc(func(_ context.Context, base digest.Digest) (*chunks.Index, error) {
		if x, ok := c.chunkIndex(base); ok {
			return x, nil
		}
		return nil, fmt.Errorf("the cache has no chunk index of %s: %w", base, errdefs.ErrNotFound)
	})
}

// AddIndex stores x as the chunk index of the committed blob it names, for
// a caller that cut it from that blob's own bytes (a workspace commit cuts
// the file it adopts in the pass that hashes it), so the blob is a seed and
// a delta push's base without being read again. An index that does not
// validate, of other parameters, or of a blob the cache does not hold is
// ignored.
func (c *Cache) AddIndex(x *chunks.Index) {
	if x == nil || x.Params != chunks.DefaultParams || x.Validate() != nil {
		return
	}
	if fi, err := os.Stat(c.BlobPath(x.Blob)); err != nil || fi.Size() != x.Size {
		return
	}
	c.storeChunkIndex(x)
}

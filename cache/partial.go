package cache

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/source"
)

// ingestState is ingest/<hex>.json, beside the part file it describes.
type ingestState struct {
	Source    string `json:"source"`
	Validator string `json:"validator,omitempty"`
	// Prefix is how many leading bytes of the part file are known written
	// in order. -1 means the file was written strictly sequentially, so its
	// whole length is a valid prefix.
	Prefix int64 `json:"prefix"`
	// Chunks, set during a delta transfer (delta.go), is the digest of
	// the index the transfer follows, kept beside as ingest/<hex>.cix, and
	// Done the chunks of it already in place (a bitmap, bit i for chunk
	// i). Claimed chunks are re-hashed before a resume trusts them.
	Chunks digest.Digest `json:"chunks,omitempty"`
	Done   []byte        `json:"done,omitempty"`
}

// partial is an ingest in progress: the part file ingest/<hex>.part, its
// state ingest/<hex>.json, and the running hashes of its verified-in-order
// prefix. It owns the life of that file: open (and resume), reset, discard
// and commit. The caller holds d's lock throughout.
type partial struct {
	c         *Cache
	d         digest.Digest
	f         *os.File
	path      string
	statePath string
	st        ingestState
	h         *contenthash.DualHasher
	sniff     *format.Sniffer
	index     *indexer // the chunk index, cut in the same pass
	// known, when set, is the index the source computed at ingest (see
	// sourceIndex): the pass cuts nothing, and commit stores it.
	known *chunks.Index
	done  int64  // bytes hashed in order
	ref   string // the reference it is fetched through
}

// openPartial opens d's part file (creating it) for a transfer from
// origin (a source's String) through refStr, and resumes it: only the
// in-order prefix is kept, and it is re-hashed, reading through buf. A
// state left by another origin keeps its bytes (they are still content of
// d: the prefix rule holds) but not its validator, which means nothing
// here. With known (the source's index of d, see sourceIndex) nothing is
// cut into chunks, not even the resumed prefix. The caller closes it.
func (c *Cache) openPartial(d digest.Digest, refStr, origin string, buf []byte, known *chunks.Index) (*partial, error) {
	p := &partial{c: c, d: d, ref: refStr, path: filepath.Join(c.dir, "ingest", d.Encoded()+".part"),
		statePath: filepath.Join(c.dir, "ingest", d.Encoded()+".json"), known: known}
	p.resetHashes()
	st, ok, _ := readJSON[ingestState](p.statePath)
	if !ok {
		st = ingestState{Prefix: 0} // no state: nothing in the part file is known good
	}
	// A delta transfer's chunks are in place out of order: a whole
	// transfer keeps only the in-order prefix (0 after a delta).
	st.Chunks, st.Done = "", nil
	if st.Source != origin {
		st.Source, st.Validator = origin, ""
	}
	p.st = st
	f, err := os.OpenFile(p.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		p.h.Close()
		return nil, c.diskErr(err)
	}
	p.f = f
	if err := p.resume(buf); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// resume keeps only the in-order prefix of the part file and re-hashes
// it; the file offset is left at its end.
func (p *partial) resume(buf []byte) error {
	if p.st.Prefix >= 0 {
		if err := p.f.Truncate(p.st.Prefix); err != nil {
			return p.c.diskErr(err)
		}
	}
	for {
		n, err := p.f.Read(buf)
		p.hash(buf[:n])
		if err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// complete reports whether the prefix already is the whole content: a run
// killed between the last byte and the rename left it.
func (p *partial) complete() bool {
	return p.done > 0 && p.h.Digest() == p.d
}

// hash appends b, written in order, to the verified prefix.
func (p *partial) hash(b []byte) {
	p.h.Write(b)
	p.sniff.Write(b)
	p.index.Write(b)
	p.done += int64(len(b))
}

// reset empties the part file (the source sent the content from its
// start) and the hashes, and rewinds to offset 0.
func (p *partial) reset() error {
	if err := p.f.Truncate(0); err != nil {
		return p.c.diskErr(err)
	}
	p.h.Close()
	p.resetHashes()
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return nil
}

// resetHashes starts the in-order hashes over, at offset 0. With a known
// index the chunker stays off.
func (p *partial) resetHashes() {
	p.h, p.sniff, p.done = contenthash.NewDualHasher(), &format.Sniffer{}, 0
	if p.known != nil {
		p.index = &indexer{err: errIndexKnown}
	} else {
		p.index = p.c.newIndexer()
	}
}

// setPrefix records that the first n bytes of the part file are written in
// order (-1: all of it, written sequentially), with the validator of the
// body being written.
func (p *partial) setPrefix(n int64) error {
	p.st.Prefix = n
	if err := writeJSON(p.statePath, p.st, false); err != nil {
		return p.c.diskErr(err)
	}
	return nil
}

// close releases the file and the hashers; the part file stays for the
// next resume.
func (p *partial) close() {
	p.f.Close()
	p.h.Close()
}

// discard removes the partial (after a verification failure, ENOSPC or a
// body past its bound).
func (p *partial) discard() {
	p.f.Close()
	os.Remove(p.path)
	os.Remove(p.statePath)
	os.Remove(p.indexPath())
}

// indexPath is ingest/<hex>.cix, the index a delta transfer follows.
func (p *partial) indexPath() string {
	return filepath.Join(p.c.dir, "ingest", p.d.Encoded()+".cix")
}

// commit verifies the digest, then fsyncs, makes read-only and renames the
// part file into blobs/, and records it. Content that fails verification,
// or that names host files, is discarded and never becomes a visible blob.
func (p *partial) commit(src source.Source) (Image, error) {
	c, d := p.c, p.d
	got := p.h.Digest()
	if got != d {
		p.discard()
		return Image{}, fmt.Errorf("%s sent content that is not %s: %w", src, d, &errdefs.VerificationError{Want: d, Got: got})
	}
	f := p.f
	if _, err := c.inspect(f, p.sniff.Format(), d); err != nil {
		p.discard()
		return Image{}, err
	}
	if err := f.Sync(); err != nil {
		return Image{}, c.diskErr(err)
	}
	if err := f.Chmod(0o444); err != nil {
		return Image{}, err
	}
	if err := f.Close(); err != nil {
		return Image{}, c.diskErr(err)
	}
	path := c.BlobPath(d)
	if err := os.Rename(p.path, path); err != nil {
		return Image{}, err
	}
	os.Remove(p.statePath)
	os.Remove(p.indexPath())
	if x := p.known; x != nil {
		// The whole-file sha256 passed: the blob is d. The index is the
		// one checked for d and its size (sourceIndex); its size is
		// checked again against what was hashed.
		if x.Blob == d && x.Size == p.done {
			c.storeChunkIndex(x)
		} else {
			c.log.Warn("source's chunk index does not fit the content; not stored", "digest", d, "index_size", x.Size, "size", p.done)
		}
	} else if x, err := p.index.finish(d); err == nil {
		c.storeChunkIndex(x)
	} else {
		c.log.Debug("no chunk index", "digest", d, "err", err)
	}
	img, err := c.publish(BlobRecord{Digest: d, BLAKE3: p.h.BLAKE3(), Format: p.sniff.Format(), Source: src.String(), Ref: p.ref})
	if err != nil {
		return Image{}, err
	}
	c.log.Info("fetched", "digest", d, "bytes", p.done, "from", src.String())
	return img, nil
}

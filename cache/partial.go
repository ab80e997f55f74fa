package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/source"
)

type ingestState struct {
	Source    string `json:"source"`
	Validator string `json:"validator,omitempty"`
	// Prefix is how many leading bytes of the part file are known written
	// in order. -1 means the file was written strictly sequentially, so its
	// whole length is a valid prefix.
	Prefix int64 `json:"prefix"`
}

// partial is an ingest in progress: the part file and the running hashes of
// its verified-in-order prefix.
type partial struct {
	c         *Cache
	d         digest.Digest
	f         *os.File
	path      string
	statePath string
	st        ingestState
	h         *blob.DualHasher
	sniff     *format.Sniffer
	done      int64  // bytes hashed in order
	ref       string // the reference it is fetched through
}

func (p *partial) hash(b []byte) {
	p.h.Write(b)
	p.sniff.Write(b)
	p.done += int64(len(b))
}

func (p *partial) reset() error {
	if err := p.f.Truncate(0); err != nil {
		return p.c.diskErr(err)
	}
	p.h.Close()
	p.h, p.sniff, p.done = blob.NewDualHasher(), &format.Sniffer{}, 0
	return nil
}

// discard removes the partial (after a verification failure or ENOSPC).
func (p *partial) discard() {
	p.f.Close()
	os.Remove(p.path)
	os.Remove(p.statePath)
}

func (p *partial) saveState() error {
	return writeJSON(p.statePath, p.st, false)
}

// commit verifies the digest, then fsyncs, makes read-only and renames the
// part file into blobs/, and records it.
func (c *Cache) commit(p *partial, src source.Source) (Image, error) {
	d := p.d
	got := p.h.Digest()
	if got != d {
		p.discard()
		return Image{}, fmt.Errorf("%s sent content that is not %s: %w", src, d, &errdefs.VerificationError{Want: d, Got: got})
	}
	f := p.f
	// Content that names host files never becomes a visible blob.
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
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return Image{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Image{}, err
	}
	now := time.Now().UTC()
	rec := BlobRecord{Digest: d, Size: p.done, BLAKE3: p.h.BLAKE3(), Format: p.sniff.Format(), VerifiedAt: now, LastUsed: now, Stat: fingerprint(fi), Source: src.String(), Ref: p.ref}
	if err := writeJSON(c.recordPath(d), rec, true); err != nil {
		return Image{}, c.diskErr(err)
	}
	c.log.Info("fetched", "digest", d, "bytes", p.done, "from", src.String())
	return Image{Path: path, Digest: d, Size: p.done, Format: rec.Format}, nil
}

package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
)

// lastUsedResolution is how stale a blob's last_used may be.
const lastUsedResolution = time.Minute

// local returns the committed blob d if it is present and its fingerprint
// matches the verified record. A changed fingerprint, or a blob without a
// record (a crash between rename and record), is re-hashed first. The
// caller holds d's lock (lockDigest): local rewrites d's record.
func (c *Cache) local(d digest.Digest) (Image, bool, error) {
	path := c.BlobPath(d)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Image{}, false, nil
	} else if err != nil {
		return Image{}, false, err
	}
	rec, ok, err := readJSON[BlobRecord](c.recordPath(d))
	if testHookRecordRead != nil {
		testHookRecordRead(d)
	}
	if err != nil || !ok || rec.Stat != fingerprint(fi) || rec.Digest != d {
		rec, err = c.reverify(d, path, rec)
		if err != nil {
			return Image{}, false, err
		}
		if rec.Digest == "" {
			return Image{}, false, nil // it was bad and is gone: fetch again
		}
	}
	// last_used only orders LRU eviction: refresh it at most once a minute,
	// so a warm ensure (the hot path) is a stat and a small read, no write.
	if now := time.Now().UTC(); now.Sub(rec.LastUsed) > lastUsedResolution {
		rec.LastUsed = now
		if err := writeJSON(c.recordPath(d), rec, false); err != nil {
			c.log.Debug("last_used not recorded", "digest", d, "err", err)
		}
	}
	return Image{Path: path, Digest: d, Size: rec.Size, Format: rec.Format}, true, nil
}

// localLocked is local under d's lock, for callers that do not hold it.
func (c *Cache) localLocked(ctx context.Context, d digest.Digest) (Image, bool, error) {
	unlock, err := c.lockDigest(ctx, d)
	if err != nil {
		return Image{}, false, err
	}
	defer unlock()
	return c.local(d)
}

// reverify re-hashes a committed blob. A blob that no longer matches its
// digest is moved to quarantine/ and reported as absent. The caller holds
// d's lock.
func (c *Cache) reverify(d digest.Digest, path string, old BlobRecord) (BlobRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return BlobRecord{}, err
	}
	defer f.Close()
	h := contenthash.NewDualHasher()
	defer h.Close()
	var sniff format.Sniffer
	ix := c.newIndexer()
	if _, err := io.CopyBuffer(io.MultiWriter(h, &sniff, ix), f, make([]byte, 1<<20)); err != nil {
		return BlobRecord{}, err
	}
	if h.Digest() != d {
		c.log.Error("cached blob is corrupt; quarantined", "digest", d, "got", h.Digest())
		c.quarantine(d)
		return BlobRecord{}, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return BlobRecord{}, err
	}
	if x, err := ix.finish(d); err == nil {
		c.storeChunkIndex(x)
	}
	rec := BlobRecord{Digest: d, Size: h.Size(), BLAKE3: h.BLAKE3(), Format: sniff.Format(), VerifiedAt: time.Now().UTC(), Stat: fingerprint(fi), Source: old.Source, Ref: old.Ref, LastUsed: old.LastUsed}
	if err := writeJSON(c.recordPath(d), rec, true); err != nil {
		return BlobRecord{}, c.diskErr(fmt.Errorf("cache index: %w", err))
	}
	return rec, nil
}

// quarantine moves a corrupt blob aside, for forensics, and forgets it. A
// holder that has it open keeps reading the same inode (a rename does not
// disturb open files); the next Ensure fetches a good copy at the path.
// The caller holds d's lock, so the Quarantined mark cannot be lost to a
// concurrent record update.
func (c *Cache) quarantine(d digest.Digest) {
	q := filepath.Join(c.dir, "quarantine", d.Encoded()+"."+time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Rename(c.BlobPath(d), q); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Error("quarantine failed", "digest", d, "err", err)
	}
	rec, ok, _ := readJSON[BlobRecord](c.recordPath(d))
	if !ok {
		rec = BlobRecord{Digest: d}
	}
	rec.Quarantined = q
	writeJSON(c.recordPath(d), rec, true)
}

// publish makes the rename of rec.Digest into blobs/ durable and records
// it: rec, with the committed file's size and stat fingerprint and the
// time, becomes its index record.
func (c *Cache) publish(rec BlobRecord) (Image, error) {
	path := c.BlobPath(rec.Digest)
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return Image{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Image{}, err
	}
	now := time.Now().UTC()
	rec.Size, rec.Stat, rec.VerifiedAt, rec.LastUsed = fi.Size(), fingerprint(fi), now, now
	if err := writeJSON(c.recordPath(rec.Digest), rec, true); err != nil {
		return Image{}, c.diskErr(err)
	}
	return Image{Path: path, Digest: rec.Digest, Size: rec.Size, Format: rec.Format}, nil
}

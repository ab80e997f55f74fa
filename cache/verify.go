package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/zeebo/blake3"
	"golang.org/x/time/rate"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// Verification outcomes.
const (
	StatusOK          = "ok"
	StatusCorrupt     = "corrupt"
	StatusMissing     = "missing"
	StatusFingerprint = "fingerprint-changed" // re-hashed in full: content still right
	StatusRepaired    = "repaired"
)

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// Digests limits the check (nil: every blob).
	Digests []digest.Digest
	// Full re-computes sha256 instead of comparing the BLAKE3 recorded at
	// ingest (about 2x faster here, 6x on CPUs without SHA extensions).
	Full bool
	// Repair re-fetches corrupt and missing blobs from their source.
	Repair bool
	// Workers hash in parallel (default: one per CPU).
	Workers int
	// RateLimit caps the bytes read per second, so a scrub does not starve
	// running VMs (0: no cap).
	RateLimit int64
}

// VerifyResult is the outcome for one blob.
type VerifyResult struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Status string        `json:"status"`
	Leased bool          `json:"leased,omitempty"`
	Refs   []string      `json:"refs,omitempty"`
	Detail string        `json:"detail,omitempty"`
	// BytesFetched and BytesReused are what a repair moved from the
	// source and took from the cache (the blob's own good chunks, by its
	// chunk index, and other cached blobs).
	BytesFetched int64 `json:"bytes_fetched,omitempty"`
	BytesReused  int64 `json:"bytes_reused,omitempty"`
}

// Bad reports whether the result needs attention (exit code non-zero).
func (r VerifyResult) Bad() bool { return r.Status == StatusCorrupt || r.Status == StatusMissing }

// Verify checks committed blobs. A corrupt blob is moved to quarantine/ and
// its pointers are dropped (a holder with the file open keeps reading it; a
// leased blob is reported as such); Repair fetches a good copy. Results are
// in digest order.
func (c *Cache) Verify(ctx context.Context, o VerifyOptions) ([]VerifyResult, error) {
	recs, err := c.records()
	if err != nil {
		return nil, err
	}
	if o.Digests != nil {
		want := map[digest.Digest]bool{}
		for _, d := range o.Digests {
			want[d] = true
		}
		var sel []BlobRecord
		for _, r := range recs {
			if want[r.Digest] {
				sel = append(sel, r)
				delete(want, r.Digest)
			}
		}
		for d := range want {
			return nil, fmt.Errorf("%s is not in the cache: %w", d, errdefs.ErrNotFound)
		}
		recs = sel
	}
	var lim *rate.Limiter
	if o.RateLimit > 0 {
		lim = rate.NewLimiter(rate.Limit(o.RateLimit), max(int(o.RateLimit), 1<<20))
	}
	leased, err := c.leased(time.Now())
	if err != nil {
		// Only reported here (verify deletes nothing), but not guessed.
		c.log.Warn("leases unreadable; verify reports no blob as leased", "err", err)
	}
	refs := c.refsByDigest()
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	results := make([]VerifyResult, len(recs))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for i := range jobs {
				results[i] = c.verifyOne(ctx, recs[i], o, lim, buf)
				results[i].Leased = leased[recs[i].Digest]
				results[i].Refs = refs[recs[i].Digest]
			}
		}()
	}
	for i := range recs {
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i, r := range results {
		if r.Bad() {
			c.dropPointersTo(r.Digest)
			if o.Repair {
				results[i] = c.repair(ctx, recs[i], r)
			}
		}
	}
	return results, nil
}

func (c *Cache) verifyOne(ctx context.Context, rec BlobRecord, o VerifyOptions, lim *rate.Limiter, buf []byte) VerifyResult {
	res := VerifyResult{Digest: rec.Digest, Size: rec.Size, Status: StatusOK}
	path := c.BlobPath(rec.Digest)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) && rec.Quarantined != "" {
		res.Status, res.Detail = StatusCorrupt, "quarantined earlier at "+rec.Quarantined+"; not repaired yet"
		return res
	} else if errors.Is(err, fs.ErrNotExist) {
		res.Status, res.Detail = StatusMissing, "the blob file is gone"
		return res
	} else if err != nil {
		res.Status, res.Detail = StatusMissing, err.Error()
		return res
	}
	if fingerprint(fi) != rec.Stat {
		// Modified in place (e.g. qemu-img amend): only a full re-hash can
		// tell; reverify quarantines it when it is wrong.
		var nrec BlobRecord
		unlock, err := c.lockDigest(ctx, rec.Digest)
		if err == nil {
			nrec, err = c.reverify(rec.Digest, path, rec)
			unlock()
		}
		switch {
		case err != nil:
			res.Status, res.Detail = StatusCorrupt, err.Error()
		case nrec.Digest == "":
			res.Status, res.Detail = StatusCorrupt, "changed on disk since it was verified; quarantined"
		default:
			res.Status, res.Detail = StatusFingerprint, "changed on disk, content still verifies"
		}
		return res
	}
	var h hash.Hash
	want := rec.BLAKE3
	if o.Full || rec.BLAKE3 == "" {
		h, want = sha256.New(), rec.Digest.Encoded()
	} else {
		h = blake3.New()
	}
	f, err := os.Open(path)
	if err != nil {
		res.Status, res.Detail = StatusMissing, err.Error()
		return res
	}
	defer f.Close()
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			if lim != nil {
				if err := lim.WaitN(ctx, n); err != nil {
					res.Status, res.Detail = StatusOK, "not checked: "+err.Error()
					return res
				}
			}
			h.Write(buf[:n])
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			res.Status, res.Detail = StatusCorrupt, "read error: "+rerr.Error()
			return res
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		unlock, err := c.lockDigest(ctx, rec.Digest)
		if err != nil {
			res.Status, res.Detail = StatusCorrupt, "content does not match its digest; not quarantined: "+err.Error()
			return res
		}
		defer unlock()
		c.log.Error("cached blob is corrupt; quarantined", "digest", rec.Digest)
		c.quarantine(rec.Digest)
		res.Status, res.Detail = StatusCorrupt, "content does not match its digest; quarantined"
	}
	return res
}

// repair fetches a good copy of a corrupt or missing blob through the
// reference it came from.
func (c *Cache) repair(ctx context.Context, rec BlobRecord, res VerifyResult) VerifyResult {
	if rec.Ref == "" {
		res.Detail += "; cannot repair: its source is unknown"
		return res
	}
	r, err := ref.Parse(rec.Ref)
	if err != nil {
		res.Detail += "; cannot repair: " + err.Error()
		return res
	}
	o := EnsureOptions{}
	if r.Kind == ref.HTTP {
		r.Digest, o.Checksum = "", rec.Digest
	}
	src, err := c.sourceFor(r, o)
	var img Image
	if err == nil {
		img, err = c.fetch(ctx, r, src, source.Descriptor{Digest: rec.Digest, Size: -1}, o)
	}
	if err != nil {
		res.Detail += "; repair failed: " + err.Error()
		return res
	}
	res.BytesFetched, res.BytesReused = img.BytesFetched, img.BytesReused
	how := "a verified copy was fetched from " + src.String()
	if img.Transfer == "delta" {
		how = fmt.Sprintf("repaired from %s: %d bytes fetched, %d reused, verified", src, img.BytesFetched, img.BytesReused)
	}
	res.Status, res.Detail = StatusRepaired, res.Detail+"; "+how
	return res
}

func (c *Cache) refsByDigest() map[digest.Digest][]string {
	out := map[digest.Digest][]string{}
	ptrs, _ := c.pointers()
	for _, p := range ptrs {
		out[p.Digest] = append(out[p.Digest], p.Ref)
	}
	return out
}

func (c *Cache) dropPointersTo(d digest.Digest) {
	ptrs, _ := c.pointers()
	for _, p := range ptrs {
		if p.Digest == d {
			os.Remove(c.pointerPath(p.Key))
		}
	}
}

package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gofrs/flock"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
)

// Prune rules, reported by name.
const (
	RuleIdentical = "identical-to-server" // seed 000: old, identical to the head node's copy
	RuleOrphans   = "orphans"             // the server no longer knows the UID (--orphans only)
	RuleSize      = "size-budget"         // least recently used first, until under --max-size
	RulePartials  = "abandoned-partials"  // ingest/*.part nobody is writing
)

// PruneOptions select what Prune may delete.
type PruneOptions struct {
	DryRun bool
	// MaxAge is seed 000's age: an entry unused this long that is identical
	// to the server's copy is evicted (default 1h; negative disables).
	MaxAge time.Duration
	// MaxSize is a budget for committed blobs (0: none).
	MaxSize int64
	// Orphans allows deleting entries whose server-side image is gone.
	Orphans bool
	// PartAge is how old an unlocked partial must be to be swept (default 24h).
	PartAge time.Duration
}

// RuleResult is what one rule freed (or would free, on a dry run).
type RuleResult struct {
	Rule  string          `json:"rule"`
	Blobs []digest.Digest `json:"blobs"`
	Bytes int64           `json:"bytes"`
}

// Orphan is an entry whose image is gone from the server.
type Orphan struct {
	Ref    string        `json:"ref"`
	UID    string        `json:"uid"`
	Digest digest.Digest `json:"digest"`
	Reason string        `json:"reason"`
	Next   string        `json:"next"`
}

// PruneReport says what Prune did.
type PruneReport struct {
	DryRun       bool         `json:"dry_run"`
	Rules        []RuleResult `json:"rules"`
	Orphans      []Orphan     `json:"orphans,omitempty"`
	LeasesReaped int          `json:"leases_reaped"`
	Kept         []string     `json:"kept,omitempty"` // why candidates were kept (leased, workspace)
}

// HasWorkspace reports whether an edit workspace is bound to uid (such
// entries are never pruned: they may hold unpushed work).
func (c *Cache) HasWorkspace(uid string) bool {
	if uid == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(c.dir, "work", uid))
	return err == nil
}

// Prune applies the rules in order: reap expired leases, seed 000's rule
// (and orphan detection), orphans (when allowed), the size budget, then
// abandoned partials. Leased blobs and entries with a workspace are never
// deleted. Each blob is deleted under its digest lock after its leases are
// read again, so a lease an Ensure takes while Prune runs is honoured.
// When any lease cannot be read, Prune deletes nothing and returns an
// error matching ErrCorrupt.
func (c *Cache) Prune(ctx context.Context, o PruneOptions) (PruneReport, error) {
	if o.MaxAge == 0 {
		o.MaxAge = time.Hour
	}
	if o.PartAge == 0 {
		o.PartAge = 24 * time.Hour
	}
	now := time.Now().UTC()
	rep := PruneReport{DryRun: o.DryRun}
	if !o.DryRun {
		n, err := c.ReapLeases(now)
		if err != nil {
			return rep, err
		}
		rep.LeasesReaped = n
	}
	leased, err := c.leased(now)
	if err != nil {
		return rep, err
	}
	recs, err := c.records()
	if err != nil {
		return rep, err
	}
	byDigest := map[digest.Digest]BlobRecord{}
	for _, r := range recs {
		byDigest[r.Digest] = r
	}
	ptrs, err := c.pointers()
	if err != nil {
		return rep, err
	}
	named := map[digest.Digest][]Pointer{} // loaded once; deleting a blob drops these
	for _, p := range ptrs {
		named[p.Digest] = append(named[p.Digest], p)
	}
	deleted := map[digest.Digest]bool{}
	protected := map[digest.Digest]bool{} // workspace-bound or orphaned without --orphans
	var delErr error                      // the first failure stops every later deletion
	del := func(res *RuleResult, d digest.Digest) {
		if delErr != nil || deleted[d] || leased[d] || protected[d] {
			return
		}
		deleted[d] = true
		if !o.DryRun {
			kept, err := c.deleteBlob(ctx, d, named[d], now)
			if err != nil {
				delErr = err
				return
			}
			if kept != "" {
				rep.Kept = append(rep.Kept, kept)
				return
			}
		}
		res.Blobs = append(res.Blobs, d)
		res.Bytes += byDigest[d].Size
	}

	identical := RuleResult{Rule: RuleIdentical}
	orphans := RuleResult{Rule: RuleOrphans}
	var orphanDigests []digest.Digest
	for _, p := range ptrs {
		r, err := ref.Parse(p.Ref)
		if err != nil || r.Kind != ref.Depot || p.UID == "" {
			continue
		}
		if !c.ownsPointer(p) {
			continue // fetched from another server: this one cannot judge it
		}
		if c.HasWorkspace(p.UID) {
			protected[p.Digest] = true
			rep.Kept = append(rep.Kept, fmt.Sprintf("%s: bound to a workspace (work/%s)", p.Ref, p.UID))
			continue
		}
		if c.opts.Depot == nil {
			continue
		}
		img, err := c.opts.Depot.GetImage(ctx, p.UID)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			rep.Orphans = append(rep.Orphans, Orphan{Ref: p.Ref, UID: p.UID, Digest: p.Digest,
				Reason: fmt.Sprintf("image %s no longer exists on %s", p.UID, c.server()),
				Next:   fmt.Sprintf("keep it, or delete it with depot rm %s (or depot prune --orphans)", p.Ref)})
			if !o.DryRun {
				p.Upstream, p.CheckedAt = UpstreamGone, now
				writeJSON(c.pointerPath(p.Key), p, false)
			}
			if o.Orphans {
				orphanDigests = append(orphanDigests, p.Digest)
			} else {
				protected[p.Digest] = true
			}
			continue
		case err != nil:
			continue // unreachable: cannot tell "identical", keep
		}
		rec := byDigest[p.Digest]
		if o.MaxAge > 0 && img.Content != nil && img.Content.Chksum == p.Digest.String() && now.Sub(rec.LastUsed) >= o.MaxAge {
			if leased[p.Digest] {
				rep.Kept = append(rep.Kept, p.Ref+": leased")
				continue
			}
			del(&identical, p.Digest)
		}
	}
	for _, d := range orphanDigests {
		del(&orphans, d)
	}

	size := RuleResult{Rule: RuleSize}
	if o.MaxSize > 0 {
		var total int64
		var cands []BlobRecord
		for _, r := range recs {
			if deleted[r.Digest] {
				continue
			}
			if _, err := os.Stat(c.BlobPath(r.Digest)); err != nil {
				continue // quarantined or missing: takes no space in blobs/
			}
			total += r.Size
			if !leased[r.Digest] && !protected[r.Digest] {
				cands = append(cands, r)
			}
		}
		sort.Slice(cands, func(i, j int) bool { return cands[i].LastUsed.Before(cands[j].LastUsed) })
		for _, r := range cands {
			if total <= o.MaxSize {
				break
			}
			del(&size, r.Digest)
			total -= r.Size
		}
	}

	if delErr != nil {
		rep.Rules = []RuleResult{identical, orphans, size}
		return rep, delErr
	}
	parts := RuleResult{Rule: RulePartials}
	if err := c.sweepPartials(&parts, now.Add(-o.PartAge), o.DryRun); err != nil {
		return rep, err
	}
	rep.Rules = []RuleResult{identical, orphans, size, parts}
	return rep, nil
}

// sweepPartials removes partial downloads untouched since cutoff whose lock
// nobody holds.
func (c *Cache) sweepPartials(res *RuleResult, cutoff time.Time, dryRun bool) error {
	dir := filepath.Join(c.dir, "ingest")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		hexName, ok := strings.CutSuffix(e.Name(), ".part")
		if !ok {
			continue
		}
		fi, err := e.Info()
		if err != nil || fi.ModTime().After(cutoff) {
			continue
		}
		lock := flock.New(filepath.Join(c.dir, "locks", hexName+".lock"))
		if got, err := lock.TryLock(); err != nil || !got {
			continue // a transfer is running
		}
		res.Blobs = append(res.Blobs, digest.NewDigestFromEncoded(digest.SHA256, hexName))
		res.Bytes += fi.Size()
		if !dryRun {
			os.Remove(filepath.Join(dir, e.Name()))
			os.Remove(filepath.Join(dir, hexName+".json"))
		}
		lock.Unlock()
	}
	return nil
}

// deleteBlob removes a blob, its record and the pointers naming it, under
// d's lock, unless a lease on it has appeared since Prune read the leases:
// then it deletes nothing and says why in kept.
func (c *Cache) deleteBlob(ctx context.Context, d digest.Digest, named []Pointer, now time.Time) (kept string, err error) {
	unlock, err := c.lockDigest(ctx, d)
	if err != nil {
		return "", err
	}
	defer unlock()
	hs, err := c.holders(d, now)
	if err != nil {
		return "", err
	}
	if len(hs) > 0 {
		return fmt.Sprintf("%s: leased by %s", d, strings.Join(hs, ", ")), nil
	}
	for _, p := range named {
		os.Remove(c.pointerPath(p.Key))
	}
	os.Remove(c.recordPath(d))
	os.Remove(c.BlobPath(d))
	c.log.Info("pruned", "digest", d)
	return "", nil
}

// ownsPointer reports whether a depot pointer was resolved against the
// server this cache is configured with (keys carry the server URL).
func (c *Cache) ownsPointer(p Pointer) bool {
	return !strings.HasPrefix(p.Key, "depot:") || strings.HasPrefix(p.Key, "depot:"+c.server()+"/")
}

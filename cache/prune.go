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
	pr := &pruneRun{c: c, ctx: ctx, o: o, now: time.Now().UTC(), rep: PruneReport{DryRun: o.DryRun},
		deleted: map[digest.Digest]bool{}, protected: map[digest.Digest]bool{}}
	if err := pr.load(); err != nil {
		return pr.rep, err
	}
	identical := pr.identicalToServer()
	orphans := pr.orphans()
	size := pr.sizeBudget()
	if pr.err != nil {
		pr.rep.Rules = []RuleResult{identical, orphans, size}
		return pr.rep, pr.err
	}
	parts, err := pr.abandonedPartials()
	if err != nil {
		return pr.rep, err
	}
	pr.rep.Rules = []RuleResult{identical, orphans, size, parts}
	return pr.rep, nil
}

// pruneRun is one Prune: what it read before the rules run, what they
// have deleted and protected so far, and the report.
type pruneRun struct {
	c   *Cache
	ctx context.Context
	o   PruneOptions
	now time.Time
	rep PruneReport

	leased   map[digest.Digest]bool
	recs     []BlobRecord
	byDigest map[digest.Digest]BlobRecord
	ptrs     []Pointer
	named    map[digest.Digest][]Pointer // loaded once; deleting a blob drops these

	deleted   map[digest.Digest]bool
	protected map[digest.Digest]bool // workspace-bound or orphaned without --orphans
	orphaned  []digest.Digest        // for the orphans rule (--orphans)
	err       error                  // the first deletion failure stops every later deletion
}

// load reaps expired leases (unless a dry run) and reads the leases,
// records and pointers the rules judge by.
func (pr *pruneRun) load() error {
	c := pr.c
	if !pr.o.DryRun {
		n, err := c.ReapLeases(pr.now)
		if err != nil {
			return err
		}
		pr.rep.LeasesReaped = n
	}
	var err error
	if pr.leased, err = c.leased(pr.now); err != nil {
		return err
	}
	if pr.recs, err = c.records(); err != nil {
		return err
	}
	pr.byDigest = map[digest.Digest]BlobRecord{}
	for _, r := range pr.recs {
		pr.byDigest[r.Digest] = r
	}
	if pr.ptrs, err = c.pointers(); err != nil {
		return err
	}
	pr.named = map[digest.Digest][]Pointer{}
	for _, p := range pr.ptrs {
		pr.named[p.Digest] = append(pr.named[p.Digest], p)
	}
	return nil
}

// del deletes d for the rule res (or, on a dry run, says it would), unless
// it is gone already, leased or protected, or a deletion failed before.
func (pr *pruneRun) del(res *RuleResult, d digest.Digest) {
	if pr.err != nil || pr.deleted[d] || pr.leased[d] || pr.protected[d] {
		return
	}
	pr.deleted[d] = true
	if !pr.o.DryRun {
		kept, err := pr.c.deleteBlob(pr.ctx, d, pr.named[d], pr.now)
		if err != nil {
			pr.err = err
			return
		}
		if kept != "" {
			pr.rep.Kept = append(pr.rep.Kept, kept)
			return
		}
	}
	res.Blobs = append(res.Blobs, d)
	res.Bytes += pr.byDigest[d].Size
}

// identicalToServer is seed 000's rule: a depot entry unused for MaxAge
// whose content is what the server holds for its UID goes (it can be
// fetched again). On the way it protects entries bound to a workspace and
// finds orphans (the server no longer knows the UID): they are reported,
// marked gone, and protected unless --orphans lets the orphans rule take
// them. Entries from another server, or when the server is unreachable,
// are kept.
func (pr *pruneRun) identicalToServer() RuleResult {
	c, o, now := pr.c, pr.o, pr.now
	identical := RuleResult{Rule: RuleIdentical}
	for _, p := range pr.ptrs {
		r, err := ref.Parse(p.Ref)
		if err != nil || r.Kind != ref.Depot || p.UID == "" {
			continue
		}
		if !c.ownsPointer(p) {
			continue // fetched from another server: this one cannot judge it
		}
		if c.HasWorkspace(p.UID) {
			pr.protected[p.Digest] = true
			pr.rep.Kept = append(pr.rep.Kept, fmt.Sprintf("%s: bound to a workspace (work/%s)", p.Ref, p.UID))
			continue
		}
		if c.opts.Depot == nil {
			continue
		}
		img, err := c.opts.Depot.GetImage(pr.ctx, p.UID)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			pr.rep.Orphans = append(pr.rep.Orphans, Orphan{Ref: p.Ref, UID: p.UID, Digest: p.Digest,
				Reason: fmt.Sprintf("image %s no longer exists on %s", p.UID, c.server()),
				Next:   fmt.Sprintf("keep it, or delete it with depot rm %s (or depot prune --orphans)", p.Ref)})
			if !o.DryRun {
				p.Upstream, p.CheckedAt = UpstreamGone, now
				writeJSON(c.pointerPath(p.Key), p, false)
			}
			if o.Orphans {
				pr.orphaned = append(pr.orphaned, p.Digest)
			} else {
				pr.protected[p.Digest] = true
			}
			continue
		case err != nil:
			continue // unreachable: cannot tell "identical", keep
		}
		rec := pr.byDigest[p.Digest]
		if o.MaxAge > 0 && img.Content != nil && img.Content.Chksum == p.Digest.String() && now.Sub(rec.LastUsed) >= o.MaxAge {
			if pr.leased[p.Digest] {
				pr.rep.Kept = append(pr.rep.Kept, p.Ref+": leased")
				continue
			}
			pr.del(&identical, p.Digest)
		}
	}
	return identical
}

// orphans deletes the orphans identicalToServer found, when --orphans
// allows it.
func (pr *pruneRun) orphans() RuleResult {
	res := RuleResult{Rule: RuleOrphans}
	for _, d := range pr.orphaned {
		pr.del(&res, d)
	}
	return res
}

// sizeBudget deletes the least recently used blobs, of those no other
// rule deleted or protected, until the committed blobs fit MaxSize.
func (pr *pruneRun) sizeBudget() RuleResult {
	res := RuleResult{Rule: RuleSize}
	if pr.o.MaxSize <= 0 {
		return res
	}
	var total int64
	var cands []BlobRecord
	for _, r := range pr.recs {
		if pr.deleted[r.Digest] {
			continue
		}
		if _, err := os.Stat(pr.c.BlobPath(r.Digest)); err != nil {
			continue // quarantined or missing: takes no space in blobs/
		}
		total += r.Size
		if !pr.leased[r.Digest] && !pr.protected[r.Digest] {
			cands = append(cands, r)
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].LastUsed.Before(cands[j].LastUsed) })
	for _, r := range cands {
		if total <= pr.o.MaxSize {
			break
		}
		pr.del(&res, r.Digest)
		total -= r.Size
	}
	return res
}

// abandonedPartials sweeps partial downloads older than PartAge that no
// transfer holds.
func (pr *pruneRun) abandonedPartials() (RuleResult, error) {
	res := RuleResult{Rule: RulePartials}
	err := pr.c.sweepPartials(&res, pr.now.Add(-pr.o.PartAge), pr.o.DryRun)
	return res, err
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
			os.Remove(filepath.Join(dir, hexName+".cix"))
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
	os.Remove(c.chunkIndexPath(d))
	os.Remove(c.BlobPath(d))
	c.log.Info("pruned", "digest", d)
	return "", nil
}

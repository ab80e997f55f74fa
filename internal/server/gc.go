package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/catalog"
)

// GCResult reports one garbage-collection pass.
type GCResult struct {
	Deleted      int
	BytesDeleted int64
	Adopted      int // blobs the catalog did not know, now in their grace period
	IngestsSwept int
}

// CollectGarbage deletes blobs that no image has referenced for longer than
// the grace period. Each one is claimed in the catalog first (atomically
// checking it is still unreferenced; from then on no upload can touch or
// reference it), then its bytes are deleted, then its record is forgotten.
// An upload of the same bytes on any head waits for the record to go and
// then commits them afresh. A collector that dies after claiming leaves a
// claim, which a pass finishes once it is older than the grace period.
//
// commitMu is held only around each claim, delete and forget, never across
// the walk, so commits keep landing while a pass walks a large store.
//
// A blob whose reference record does not decode is never deleted: the pass
// collects the others and then returns an error matching ErrCorrupt that
// names the damaged records.
func (s *Server) CollectGarbage(ctx context.Context) (GCResult, error) {
	var res GCResult
	now := time.Now().UTC()
	cutoff := now.Add(-max(s.cfg.GCGrace, 0))

	// Adopt blobs the catalog has never heard of (a crash between commit
	// and Touch): their grace period starts now. No lock: an upload
	// touches before it commits, so a blob it is committing is never
	// without a record here, and Touch leaves a referenced record alone.
	err := s.cfg.Blobs.Walk(ctx, func(info blob.Info) error {
		_, err := s.cfg.Catalog.Ref(ctx, info.Digest)
		switch {
		case errors.Is(err, errdefs.ErrNotFound):
			res.Adopted++
			return s.cfg.Catalog.Touch(ctx, info.Digest, now)
		case errors.Is(err, errdefs.ErrCorrupt):
			return nil // kept; Collectable names it below
		}
		return err
	})
	if err != nil {
		return res, err
	}
	cands, err := s.cfg.Catalog.Collectable(ctx, cutoff)
	var damaged *catalog.CorruptRefsError
	if errors.As(err, &damaged) {
		s.log.Error("garbage collection keeps blobs whose reference records are damaged", "records", damaged.Digests)
	} else if err != nil {
		return res, err
	}
	for _, c := range cands {
		if !c.Claimed.IsZero() && !c.Claimed.Before(cutoff) {
			continue // claimed just now by another pass, which finishes it
		}
		if err := s.collect(ctx, c, cutoff, now, &res); err != nil {
			return res, err
		}
	}
	if sw, ok := s.cfg.Blobs.(blob.IngestSweeper); ok {
		n, err := sw.SweepIngests(ctx, s.cfg.IngestTTL)
		if err != nil {
			return res, err
		}
		res.IngestsSwept = n
	}
	s.metrics.gcBlobs.Add(float64(res.Deleted))
	s.metrics.gcBytes.Add(float64(res.BytesDeleted))
	if damaged != nil {
		return res, fmt.Errorf("garbage collection: %w", damaged)
	}
	return res, nil
}

// collect claims, deletes and forgets one candidate, holding commitMu so
// that no commit on this head runs between the claim and the forget.
func (s *Server) collect(ctx context.Context, c catalog.BlobRef, cutoff, now time.Time, res *GCResult) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if err := s.cfg.Catalog.Claim(ctx, c.Digest, cutoff, now); errors.Is(err, errdefs.ErrConflict) || errors.Is(err, errdefs.ErrCorrupt) {
		return nil // referenced or touched again meanwhile, or damaged since: kept
	} else if err != nil {
		return err
	}
	info, _ := s.cfg.Blobs.Stat(ctx, c.Digest)
	// The index first: a collector that dies between the two leaves a
	// claimed blob without an index (the next pass deletes it), never an
	// index of nothing.
	if xs, ok := s.indexStore(); ok {
		if err := xs.DeleteIndex(ctx, c.Digest); err != nil {
			return err
		}
	}
	if err := s.cfg.Blobs.Delete(ctx, c.Digest); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	if err := s.cfg.Catalog.Forget(ctx, c.Digest); err != nil {
		return err
	}
	res.Deleted++
	res.BytesDeleted += info.Size
	s.log.Info("blob collected", "digest", c.Digest, "bytes", info.Size, "unreferenced_since", c.ZeroSince)
	return nil
}

func (s *Server) gcLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.GCInterval)
	defer t.Stop()
	for {
		if s.isGCLeader() { // with several heads, only the elected one collects
			if _, err := s.CollectGarbage(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("garbage collection", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

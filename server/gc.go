package server

import (
	"context"
	"errors"
	"time"

	"github.com/depot-images/depot/blob"
	"github.com/depot-images/depot/errdefs"
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
func (s *Server) CollectGarbage(ctx context.Context) (GCResult, error) {
	var res GCResult
	now := time.Now().UTC()
	cutoff := now.Add(-max(s.cfg.GCGrace, 0))

	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	err := s.cfg.Blobs.Walk(ctx, func(info blob.Info) error {
		if _, err := s.cfg.Catalog.Ref(ctx, info.Digest); errors.Is(err, errdefs.ErrNotFound) {
			res.Adopted++
			return s.cfg.Catalog.Touch(ctx, info.Digest, now)
		} else if err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	cands, err := s.cfg.Catalog.Collectable(ctx, cutoff)
	if err != nil {
		return res, err
	}
	for _, c := range cands {
		if !c.Claimed.IsZero() && !c.Claimed.Before(cutoff) {
			continue // claimed just now by another pass, which finishes it
		}
		if err := s.cfg.Catalog.Claim(ctx, c.Digest, cutoff, now); errors.Is(err, errdefs.ErrConflict) {
			continue // referenced or touched again meanwhile
		} else if err != nil {
			return res, err
		}
		info, _ := s.cfg.Blobs.Stat(ctx, c.Digest)
		if err := s.cfg.Blobs.Delete(ctx, c.Digest); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return res, err
		}
		if err := s.cfg.Catalog.Forget(ctx, c.Digest); err != nil {
			return res, err
		}
		res.Deleted++
		res.BytesDeleted += info.Size
		s.log.Info("blob collected", "digest", c.Digest, "bytes", info.Size, "unreferenced_since", c.ZeroSince)
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
	return res, nil
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

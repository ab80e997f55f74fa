package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

// commitUpload makes the received blob visible (its size and digest
// checked by Commit), stores its chunk index beside it, and records it as the image's new content, checking
// frozen and If-Match again inside the catalog's transaction. The caller
// holds commitMu for reading. If the catalog refuses, the committed blob
// stays unreferenced and GC reclaims it.
func (s *Server) commitUpload(r *http.Request, u upload, got received) (catalog.Image, catalog.Content, error) {
	ctx := r.Context()
	// Touch the digest before the bytes become visible: a garbage collector
	// on any head can then no longer claim them, and if one has claimed
	// them already, this waits until it has deleted them, so the commit
	// below writes them afresh instead of keeping bytes about to go.
	if err := s.touchForCommit(ctx, got.w.Digest()); err != nil {
		got.w.Close()
		return catalog.Image{}, catalog.Content{}, err
	}
	info, err := got.w.Commit(ctx, u.size, got.want)
	if err != nil {
		return catalog.Image{}, catalog.Content{}, err
	}
	by := principal(r).Subject
	now := time.Now().UTC()
	index := s.storeIndex(ctx, info, got.index)
	c := catalog.Content{Digest: info.Digest, Size: info.Size, MTime: now, Format: got.format, BLAKE3: info.BLAKE3, Chunks: index, By: by, Message: u.msg, On: s.cfg.HeadName, Provenance: u.prov}
	keep := s.cfg.KeepRevisions
	img, err := s.cfg.Catalog.Update(ctx, u.img.UID, func(img *catalog.Image) error {
		if img.Frozen {
			return frozenErr(*img, "content upload")
		}
		if u.haveBase {
			if err := checkBase(img, u.base); err != nil {
				return err
			}
		}
		cc := c
		img.Content = &cc
		img.History = append(img.History, c)
		if len(img.History) > keep {
			img.History = img.History[len(img.History)-keep:]
		}
		img.LastModified, img.LastModifiedBy, img.LastModifiedOn = now, by, s.cfg.HeadName
		return nil
	})
	if err != nil {
		return catalog.Image{}, catalog.Content{}, err
	}
	return img, c, nil
}

// touchForCommit touches d, waiting while a collector holds a claim on it.
func (s *Server) touchForCommit(ctx context.Context, d digest.Digest) error {
	deadline := time.Now().Add(s.claimWait)
	for {
		err := s.cfg.Catalog.Touch(ctx, d, time.Now().UTC())
		if !errors.Is(err, errdefs.ErrConflict) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%v; retry the upload: %w", err, errdefs.ErrUnavailable)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

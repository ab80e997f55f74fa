package server

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

// content.go: the handlers of an image's content other than the upload
// (upload.go): download, stat, info, delete.

func noContent(img catalog.Image) error {
	return fmt.Errorf("image %s (%s) has no content; upload some with depot image push: %w", img.Name, img.UID, errdefs.ErrNotFound)
}

// lookupContent resolves {ref} to an image that has content.
func (s *Server) lookupContent(r *http.Request) (catalog.Image, error) {
	img, err := s.lookup(r)
	if err == nil && img.Content == nil {
		err = noContent(img)
	}
	return img, err
}

func (s *Server) getContent(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookupContent(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	s.serveBlob(w, r, img.Content.Digest, img.Content.MTime, img.Content.Format)
}

// answerInfo answers …/content/info (exactly seed 004's keys) and, with
// upload set, a content PUT, whose answer adds the chunk index digest the
// upload recorded.
func (s *Server) answerInfo(w http.ResponseWriter, r *http.Request, img catalog.Image, status int, upload bool) {
	ref, err := s.cfg.Catalog.Ref(r.Context(), img.Content.Digest)
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	c := img.Content
	w.Header().Set("ETag", api.ETag(c.Digest))
	info := api.ContentInfo{Size: c.Size, MTime: api.UnixFloat(c.MTime), Chksum: c.Digest.String(), Refcnt: ref.Refs, Fmt: c.Format}
	if upload {
		info.Chunks = c.Chunks.String()
	}
	s.ok(w, status, info)
}

func (s *Server) deleteContent(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	if err := validRef(ref); err != nil {
		s.fail(w, r, err)
		return
	}
	by := principal(r).Subject
	img, err := s.cfg.Catalog.Update(r.Context(), ref, func(img *catalog.Image) error {
		if img.Frozen {
			return frozenErr(*img, "content delete")
		}
		if img.Content == nil {
			return noContent(*img)
		}
		img.Content, img.History = nil, nil
		img.LastModified, img.LastModifiedBy, img.LastModifiedOn = time.Now().UTC(), by, s.cfg.HeadName
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("content deleted", "uid", img.UID, "name", img.Name, "by", by)
	s.ok(w, http.StatusOK, img.UID)
}

func (s *Server) contentStat(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookupContent(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.ok(w, http.StatusOK, api.ContentStat{Size: img.Content.Size, MTime: api.UnixFloat(img.Content.MTime)})
}

func (s *Server) contentInfo(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookupContent(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.answerInfo(w, r, img, http.StatusOK, false)
}

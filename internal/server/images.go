package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/names"
)

// validRef checks an image reference from a URL: a UID or a valid name.
func validRef(ref string) error {
	if names.IsUID(ref) {
		return nil
	}
	if err := names.ValidateName(ref); err != nil {
		return fmt.Errorf("%q is neither a UID nor a valid image name: %w", ref, errdefs.ErrInvalidArgument)
	}
	return nil
}

// lookup resolves the {ref} path value.
func (s *Server) lookup(r *http.Request) (catalog.Image, error) {
	ref := r.PathValue("ref")
	if err := validRef(ref); err != nil {
		return catalog.Image{}, err
	}
	return s.cfg.Catalog.Get(r.Context(), ref)
}

// resolveParent turns a parent UID or name into a UID; "" clears it.
func (s *Server) resolveParent(r *http.Request, parent string) (string, error) {
	if parent == "" {
		return "", nil
	}
	if err := validRef(parent); err != nil {
		return "", err
	}
	p, err := s.cfg.Catalog.Get(r.Context(), parent)
	if errors.Is(err, errdefs.ErrNotFound) {
		return "", fmt.Errorf("parent image %q does not exist: %w", parent, errdefs.ErrInvalidArgument)
	}
	return p.UID, err
}

func (s *Server) createImage(w http.ResponseWriter, r *http.Request) {
	req, err := decodeCreate(bodyOf(w, r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	img := catalog.Image{Name: req.Name, LastModifiedBy: principal(r).Subject, LastModifiedOn: s.cfg.HeadName}
	if err := names.ValidateName(req.Name); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Description != nil {
		img.Description = *req.Description
	}
	if req.Distro != nil {
		img.Distro = *req.Distro
	}
	if req.Frozen != nil {
		img.Frozen = *req.Frozen
	}
	if req.Parent != nil {
		if img.Parent, err = s.resolveParent(r, *req.Parent); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	s.create(w, r, img, "image created", "by", img.LastModifiedBy)
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.fail(w, r, fmt.Errorf("limit must be 1-1000: %w", errdefs.ErrInvalidArgument))
			return
		}
		limit = n
	}
	after := q.Get("after")
	imgs, err := s.cfg.Catalog.List(r.Context(), after, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]api.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, wireImage(img))
	}
	next := ""
	if len(imgs) == limit {
		next = imgs[len(imgs)-1].Name
	}
	s.okNext(w, http.StatusOK, out, next)
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookup(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.ok(w, http.StatusOK, wireImage(img))
}

func (s *Server) patchImage(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	if err := validRef(ref); err != nil {
		s.fail(w, r, err)
		return
	}
	req, err := decodePatch(bodyOf(w, r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	parent := ""
	if req.Parent != nil {
		if parent, err = s.resolveParent(r, *req.Parent); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	by := principal(r).Subject
	img, err := s.cfg.Catalog.Update(r.Context(), ref, func(img *catalog.Image) error {
		if req.Name != nil {
			img.Name = *req.Name
		}
		if req.Description != nil {
			img.Description = *req.Description
		}
		if req.Distro != nil {
			img.Distro = *req.Distro
		}
		if req.Frozen != nil {
			img.Frozen = *req.Frozen
		}
		if req.Parent != nil {
			if parent == img.UID {
				return fmt.Errorf("an image cannot be its own parent: %w", errdefs.ErrInvalidArgument)
			}
			img.Parent = parent
		}
		img.LastModified, img.LastModifiedBy, img.LastModifiedOn = time.Now().UTC(), by, s.cfg.HeadName
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("image updated", "uid", img.UID, "name", img.Name, "by", by)
	s.ok(w, http.StatusOK, wireImage(img))
}

func frozenErr(img catalog.Image, what string) error {
	return fmt.Errorf("image %s (%s) is frozen; %s refused. Unfreeze it first: depot image update %s frozen=false: %w",
		img.Name, img.UID, what, img.Name, errdefs.ErrConflict)
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	if err := validRef(ref); err != nil {
		s.fail(w, r, err)
		return
	}
	img, err := s.cfg.Catalog.Delete(r.Context(), ref, func(img catalog.Image) error {
		if img.Frozen {
			return frozenErr(img, "delete")
		}
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("image deleted", "uid", img.UID, "name", img.Name, "by", principal(r).Subject)
	s.ok(w, http.StatusOK, img.UID)
}

func (s *Server) cloneImage(w http.ResponseWriter, r *http.Request) {
	src, err := s.lookup(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req, err := decodeClone(bodyOf(w, r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	now := time.Now().UTC()
	img := catalog.Image{
		Name: req.Name, Description: src.Description, Distro: src.Distro, Parent: src.UID,
		Content: src.Content, LastModified: now, LastModifiedBy: principal(r).Subject, LastModifiedOn: s.cfg.HeadName,
	}
	if req.Description != nil {
		img.Description = *req.Description
	}
	if src.Content != nil {
		img.History = []catalog.Content{*src.Content}
	}
	s.create(w, r, img, "image cloned", "from", src.UID)
}

// create records a new image and answers 201 with its UID and Location.
func (s *Server) create(w http.ResponseWriter, r *http.Request, img catalog.Image, msg string, attrs ...any) {
	img, err := s.cfg.Catalog.Create(r.Context(), img)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info(msg, append([]any{"uid", img.UID, "name", img.Name}, attrs...)...)
	w.Header().Set("Location", api.Prefix+"/image/"+img.UID)
	s.ok(w, http.StatusCreated, img.UID)
}

func (s *Server) history(w http.ResponseWriter, r *http.Request) {
	img, err := s.lookup(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.ok(w, http.StatusOK, wireImage(img).History)
}

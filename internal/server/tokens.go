package server

import (
	"fmt"
	"net/http"
	"time"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/catalog"
)

func tokenOut(t catalog.Token) api.Token {
	return api.Token{ID: t.ID, Subject: t.Subject, Role: t.Role, Created: api.UnixFloat(t.Created), CreatedBy: t.CreatedBy}
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	req, err := decodeJSON[api.TokenRequest](bodyOf(w, r), maxJSONBody)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	role, err := auth.ParseRole(req.Role)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Subject == "" || len(req.Subject) > 128 {
		s.fail(w, r, fmt.Errorf("\"subject\" must be 1-128 bytes naming who uses the token: %w", errdefs.ErrInvalidArgument))
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl <= 0 {
			s.fail(w, r, fmt.Errorf("ttl %q: want a positive duration like 720h: %w", req.TTL, errdefs.ErrInvalidArgument))
			return
		}
	}
	by := principal(r).Subject
	secret, rec, err := s.cfg.Auth.Mint(r.Context(), req.Subject, role, by, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("token created", "id", rec.ID, "subject", rec.Subject, "role", rec.Role, "by", by)
	out := tokenOut(rec)
	out.Token = secret
	s.ok(w, http.StatusCreated, out)
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := s.cfg.Catalog.ListTokens(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]api.Token, 0, len(toks))
	for _, t := range toks {
		out = append(out, tokenOut(t))
	}
	s.ok(w, http.StatusOK, out)
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.cfg.Catalog.DeleteToken(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("token revoked", "id", id, "by", principal(r).Subject)
	s.ok(w, http.StatusOK, id)
}

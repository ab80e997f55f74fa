// Package auth issues and checks depot's bearer tokens.
//
// A token is an HS256 JWT (golang-jwt) whose ID names a record in the
// catalog. The record is authoritative for the role and its absence means the
// token was revoked. The signing key is a catalog secret, so every head that
// shares a catalog accepts every head's tokens. This package never logs or
// stores a token's text.
package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

// Role orders what a token may do. Each role includes the ones below it.
type Role int

// Roles.
const (
	RoleNone   Role = iota
	RoleReader      // GET and HEAD
	RoleWriter      // create and modify images and content
	RoleAdmin       // delete images and content, manage tokens
)

func (r Role) String() string {
	switch r {
	case RoleReader:
		return "reader"
	case RoleWriter:
		return "writer"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// ParseRole parses "reader", "writer" or "admin".
func ParseRole(s string) (Role, error) {
	switch s {
	case "reader":
		return RoleReader, nil
	case "writer":
		return RoleWriter, nil
	case "admin":
		return RoleAdmin, nil
	}
	return RoleNone, fmt.Errorf("role %q: want reader, writer or admin: %w", s, errdefs.ErrInvalidArgument)
}

// Principal is who a verified request acts as.
type Principal struct {
	Subject string
	Role    Role
	TokenID string
}

// SecretName is the catalog secret that holds the signing key.
const SecretName = "token-signing-key"

// Store is what the authority needs from the catalog.
type Store interface {
	catalog.Tokens
	catalog.Secrets
}

// Authority mints and verifies tokens.
type Authority struct {
	key   []byte
	store Store
	// Now is the clock tokens are minted and checked by; nil is
	// time.Now. Tests inject one to cross an expiry without sleeping.
	Now func() time.Time
}

func (a *Authority) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// New loads (or on first use creates) the signing key from the catalog.
func New(ctx context.Context, store Store) (*Authority, error) {
	key, err := store.Secret(ctx, SecretName, func() ([]byte, error) {
		k := make([]byte, 32)
		_, err := rand.Read(k)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("token signing key: %w", err)
	}
	return &Authority{key: key, store: store}, nil
}

type claims struct {
	jwt.RegisteredClaims
	Role string `json:"role"`
}

// Mint issues a token for subject with role. ttl 0 means no expiry.
func (a *Authority) Mint(ctx context.Context, subject string, role Role, createdBy string, ttl time.Duration) (string, catalog.Token, error) {
	if role == RoleNone {
		return "", catalog.Token{}, fmt.Errorf("a token needs a role: %w", errdefs.ErrInvalidArgument)
	}
	idb := make([]byte, 16)
	if _, err := rand.Read(idb); err != nil {
		return "", catalog.Token{}, err
	}
	now := a.now().UTC()
	rec := catalog.Token{ID: hex.EncodeToString(idb), Subject: subject, Role: role.String(), Created: now, CreatedBy: createdBy}
	c := claims{
		RegisteredClaims: jwt.RegisteredClaims{ID: rec.ID, Subject: subject, IssuedAt: jwt.NewNumericDate(now), Issuer: "depot"},
		Role:             role.String(),
	}
	if ttl > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(a.key)
	if err != nil {
		return "", catalog.Token{}, err
	}
	if err := a.store.PutToken(ctx, rec); err != nil {
		return "", catalog.Token{}, fmt.Errorf("record token: %w", err)
	}
	return signed, rec, nil
}

// Verify checks a raw bearer token. Any failure is ErrUnauthorized with a
// reason that never includes the token itself.
func (a *Authority) Verify(ctx context.Context, raw string) (Principal, error) {
	var c claims
	_, err := jwt.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) { return a.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), jwt.WithIssuer("depot"), jwt.WithTimeFunc(a.now))
	if err != nil {
		reason := "invalid token"
		if errors.Is(err, jwt.ErrTokenExpired) {
			reason = "token expired"
		}
		return Principal{}, fmt.Errorf("%s: %w", reason, errdefs.ErrUnauthorized)
	}
	rec, err := a.store.GetToken(ctx, c.ID)
	if errors.Is(err, errdefs.ErrNotFound) {
		return Principal{}, fmt.Errorf("token revoked: %w", errdefs.ErrUnauthorized)
	} else if err != nil {
		return Principal{}, err
	}
	role, err := ParseRole(rec.Role)
	if err != nil {
		return Principal{}, fmt.Errorf("token record: %w", errdefs.ErrUnauthorized)
	}
	return Principal{Subject: rec.Subject, Role: role, TokenID: rec.ID}, nil
}

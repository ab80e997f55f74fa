package auth

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog/bolt"
)

func newAuthority(t *testing.T) (*Authority, *bolt.Catalog) {
	c, err := bolt.Open(filepath.Join(t.TempDir(), "c.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a, err := New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return a, c
}

func TestMintVerifyRevoke(t *testing.T) {
	ctx := context.Background()
	a, c := newAuthority(t)
	tok, rec, err := a.Mint(ctx, "ci", RoleWriter, "admin", 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Verify(ctx, tok)
	if err != nil || p.Role != RoleWriter || p.Subject != "ci" {
		t.Fatalf("Verify = %+v, %v", p, err)
	}
	// A second authority on the same catalog (another head) accepts it.
	b, _ := New(ctx, c)
	if _, err := b.Verify(ctx, tok); err != nil {
		t.Fatalf("second authority rejects token: %v", err)
	}
	c.DeleteToken(ctx, rec.ID)
	if _, err := a.Verify(ctx, tok); !errors.Is(err, errdefs.ErrUnauthorized) {
		t.Fatalf("revoked token: %v", err)
	}
}

func TestRejects(t *testing.T) {
	ctx := context.Background()
	a, _ := newAuthority(t)
	other, _ := newAuthority(t)
	foreign, _, _ := other.Mint(ctx, "x", RoleAdmin, "", 0)
	// An injected clock crosses the expiry (JWT times have second
	// resolution) without sleeping.
	clock := time.Now()
	a.Now = func() time.Time { return clock }
	expired, _, _ := a.Mint(ctx, "x", RoleAdmin, "", time.Minute)
	if _, err := a.Verify(ctx, expired); err != nil {
		t.Fatalf("a token within its TTL: %v", err)
	}
	clock = clock.Add(time.Minute + time.Second)
	good, _, _ := a.Mint(ctx, "x", RoleAdmin, "", 0)
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + parts[1] + "x." + parts[2]
	for name, tok := range map[string]string{"foreign key": foreign, "expired": expired, "garbage": "abc", "empty": "", "tampered": tampered,
		"alg none": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + "."} {
		_, err := a.Verify(ctx, tok)
		if !errors.Is(err, errdefs.ErrUnauthorized) {
			t.Errorf("%s: Verify = %v, want ErrUnauthorized", name, err)
		}
		if tok != "" && err != nil && strings.Contains(err.Error(), tok) {
			t.Errorf("%s: error message contains the token", name)
		}
	}
	if _, err := a.Verify(ctx, good); err != nil {
		t.Fatal(err)
	}
}

func TestParseRole(t *testing.T) {
	for _, r := range []Role{RoleReader, RoleWriter, RoleAdmin} {
		got, err := ParseRole(r.String())
		if err != nil || got != r {
			t.Errorf("ParseRole(%s) = %v, %v", r, got, err)
		}
	}
	if _, err := ParseRole("root"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Error("ParseRole(root) accepted")
	}
}

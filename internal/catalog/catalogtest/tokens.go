package catalogtest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

func testTokens(t *testing.T, c catalog.Catalog) {
	tok := catalog.Token{ID: "t1", Subject: "ci", Role: "reader", Created: time.Now().UTC()}
	if err := c.PutToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetToken(ctx, "t1")
	if err != nil || got.Subject != "ci" || got.Role != "reader" {
		t.Fatalf("GetToken = %+v, %v", got, err)
	}
	c.PutToken(ctx, catalog.Token{ID: "t2", Role: "admin", Created: time.Now().UTC()})
	all, _ := c.ListTokens(ctx)
	if len(all) != 2 {
		t.Fatalf("ListTokens = %d, want 2", len(all))
	}
	if err := c.DeleteToken(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetToken(ctx, "t1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("revoked token = %v, want ErrNotFound", err)
	}
	if err := c.DeleteToken(ctx, "t1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second DeleteToken = %v, want ErrNotFound", err)
	}
}

func testSecret(t *testing.T, c catalog.Catalog) {
	calls := 0
	gen := func() ([]byte, error) { calls++; return []byte(fmt.Sprint("secret", calls)), nil }
	a, err := c.Secret(ctx, "k", gen)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.Secret(ctx, "k", gen)
	if string(a) != string(b) || calls != 1 {
		t.Fatalf("Secret not stable: %q %q calls=%d", a, b, calls)
	}
}

// Package catalogtest is the conformance suite every catalog.Catalog backend
// runs, unchanged. A backend's test calls Run with a constructor returning a
// fresh, empty catalog.
package catalogtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/catalog"
)

// Run runs the suite.
func Run(t *testing.T, newCatalog func(t *testing.T) catalog.Catalog) {
	tests := []struct {
		name string
		fn   func(*testing.T, catalog.Catalog)
	}{
		{"CreateAndGetByUIDOrName", testCreateGet},
		{"DuplicateName", testDuplicateName},
		{"InvalidNames", testInvalidNames},
		{"GetMissing", testGetMissing},
		{"ListPaged", testList},
		{"UpdateFields", testUpdate},
		{"Rename", testRename},
		{"UpdateErrorAborts", testUpdateAborts},
		{"UIDIsImmutable", testUIDImmutable},
		{"DeleteFreesNameNewUID", testDeleteRecreate},
		{"DeleteCheckVetoes", testDeleteCheck},
		{"RefCounts", testRefCounts},
		{"GarbageCandidates", testGarbage},
		{"ConcurrentUpdatesLoseNothing", testConcurrentUpdates},
		{"ConcurrentCreateSameName", testConcurrentCreate},
		{"Tokens", testTokens},
		{"SecretGetOrCreate", testSecret},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCatalog(t)
			t.Cleanup(func() { c.Close() })
			tc.fn(t, c)
		})
	}
}

var ctx = context.Background()

func mustCreate(t *testing.T, c catalog.Catalog, img catalog.Image) catalog.Image {
	t.Helper()
	got, err := c.Create(ctx, img)
	if err != nil {
		t.Fatalf("Create(%s): %v", img.Name, err)
	}
	return got
}

func content(s string) *catalog.Content {
	return &catalog.Content{Digest: digest.FromString(s), Size: int64(len(s)), Format: "raw", MTime: time.Now().UTC()}
}

func refs(t *testing.T, c catalog.Catalog, d digest.Digest) int {
	t.Helper()
	r, err := c.Ref(ctx, d)
	if errors.Is(err, errdefs.ErrNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return r.Refs
}

func testConcurrentUpdates(t *testing.T, c catalog.Catalog) {
	mustCreate(t, c, catalog.Image{Name: "n", Description: "0"})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Update(ctx, "n", func(i *catalog.Image) error {
				var n int
				fmt.Sscan(i.Description, &n)
				i.Description = fmt.Sprint(n + 1)
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got, _ := c.Get(ctx, "n")
	if got.Description != "20" {
		t.Fatalf("after 20 concurrent increments description = %s (lost updates)", got.Description)
	}
}

func testConcurrentCreate(t *testing.T, c catalog.Catalog) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Create(ctx, catalog.Image{Name: "race"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, errdefs.ErrAlreadyExists):
				conflicts++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != 9 {
		t.Fatalf("wins=%d conflicts=%d, want 1/9", wins, conflicts)
	}
}

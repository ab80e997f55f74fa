package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/cli"
)

// TestCLISizeFlags: every size flag reads one grammar (binary units, any
// case, B or iB optional). `depot prune --max-size 200gb` is a 200 GiB
// budget, so a cache of a few small blobs loses nothing (it used to read
// 200 bytes and evict them all); a value that is not a size, one that
// overflows, a negative one, and an empty budget are exit 2 naming the flag.
func TestCLISizeFlags(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	c, _ := client.New(h.url, adminToken(t, data))
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_TOKEN_FILE=", "DEPOT_CACHE=" + cacheDir}
	var ds []digest.Digest
	for _, name := range []string{"small-a", "small-b", "small-c"} {
		_, d := pushRandom(t, c, name, 64<<10)
		ds = append(ds, d)
		if _, errs, code := run(t, env, "pull", name); code != 0 {
			t.Fatalf("pull %s: %d %s", name, code, errs)
		}
	}
	for _, v := range []string{"200gb", "200GB", "200G", "200GiB", "200gib", "1mb"} {
		out, errs, code := run(t, env, "prune", "--max-size", v, "--max-age", "-1s")
		if code != 0 || strings.Contains(out, "size-budget") && !strings.Contains(out, "freed 0 B (0)") {
			t.Fatalf("prune --max-size %s: exit %d\n%s%s", v, code, out, errs)
		}
		for _, d := range ds {
			if _, err := os.Stat(filepath.Join(cacheDir, "blobs", "sha256", d.Encoded())); err != nil {
				t.Fatalf("prune --max-size %s evicted %s from a cache of 192 KiB:\n%s", v, d, out)
			}
		}
	}
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"prune", "--max-size", "5xyz"}, "--max-size"},
		{[]string{"prune", "--max-size", "10000000000T"}, "--max-size"},
		{[]string{"prune", "--max-size", "-5G"}, "--max-size"},
		{[]string{"prune", "--max-size", "0"}, "--max-size"},
		{[]string{"prune", "--max-size", "0G"}, "--max-size"},
		{[]string{"verify", "--rate", "fast"}, "--rate"},
		{[]string{"agent", "--scrub-rate", "200 MB/s", "--cycles", "1"}, "--scrub-rate"},
		{[]string{"serve", "--max-content-size", "1.5"}, "--max-content-size"},
		{[]string{"serve", "--blobs", "s3://b?endpoint=127.0.0.1:1&part-size=64xyz"}, "part-size"},
	} {
		_, errs, code := run(t, env, c.args...)
		if code != cli.ExitUsage || !strings.Contains(errs, c.flag) {
			t.Errorf("depot %v: exit %d %q, want %d naming %s", c.args, code, errs, cli.ExitUsage, c.flag)
		}
	}
	if _, errs, _ := run(t, env, "prune", "--max-size", "0"); !strings.Contains(errs, "leave --max-size out") {
		t.Errorf("prune --max-size 0 gives no hint: %q", errs)
	}
	// A real budget still evicts: 1 KiB keeps none of three 64 KiB blobs.
	if out, errs, code := run(t, env, "prune", "--max-size", "1K", "--max-age", "-1s"); code != 0 || !strings.Contains(out, "size-budget") {
		t.Fatalf("prune --max-size 1K: %d %s %s", code, out, errs)
	}
	for _, d := range ds {
		if _, err := os.Stat(filepath.Join(cacheDir, "blobs", "sha256", d.Encoded())); !os.IsNotExist(err) {
			t.Errorf("prune --max-size 1K kept %s", d)
		}
	}
	// verify --rate takes a size now (it took only an integer).
	if _, errs, code := run(t, env, "verify", "--rate", "200M"); code != 0 {
		t.Errorf("verify --rate 200M: %d %s", code, errs)
	}
}

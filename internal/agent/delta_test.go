package agent

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/server/servertest"
)

// TestScrubRepairCountsReuse: the scrub finds one rotten byte in a cached
// blob from a real depot head and repairs it by its chunk index; the
// metrics count the reused bytes (all but one chunk) and the fetched ones
// (that chunk).
func TestScrubRepairCountsReuse(t *testing.T) {
	h := servertest.Start(t, servertest.Options{})
	dc := h.Client(t, "admin", auth.RoleAdmin)
	data := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{9}).Read(data)
	servertest.Push(t, dc, "img", data)
	c, err := cache.Open(t.TempDir(), cache.Options{Depot: dc})
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.Ensure(context.Background(), "img", cache.EnsureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(img.Path, 0o644)
	f, _ := os.OpenFile(img.Path, os.O_WRONLY, 0)
	f.WriteAt([]byte{^data[2<<20]}, 2<<20)
	f.Close()
	before := c.TransferStats()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var g errgroup.Group
	g.Go(func() error {
		return Run(ctx, c, Options{ScrubEvery: time.Hour, RevalidateEvery: time.Hour, PruneEvery: time.Hour, Metrics: ln})
	})
	var body string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if body = scrape(t, addr); regexp.MustCompile(`depot_cache_agent_runs_total\{result="ok",task="prune"\} 1`).MatchString(body) {
			break
		}
	}
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(c.BlobPath(img.Digest)); !bytes.Equal(got, data) {
		t.Fatal("the scrub did not repair the blob")
	}
	metric := func(kind string) int64 {
		m := regexp.MustCompile(`depot_cache_delta_bytes_total\{kind="` + kind + `"\} (\S+)`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no %s delta metric in\n%s", kind, body)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return int64(v)
	}
	reused, fetched := metric("reused")-before.Reused, metric("fetched")-before.Fetched
	t.Logf("repair: reused %d, fetched %d of %d", reused, fetched, len(data))
	if reused+fetched != int64(len(data)) || fetched <= 0 || fetched > 256<<10 {
		t.Fatalf("reused %d + fetched %d; want one chunk (at most 256 KiB) fetched, the rest of %d reused", reused, fetched, len(data))
	}
}

package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/errdefs"
)

func openCache(t *testing.T) *cache.Cache {
	t.Helper()
	c, err := cache.Open(t.TempDir(), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRunServesMetrics runs the agent on a real (empty) cache with metrics
// on a real port: every task is counted under its name, and the metrics
// server is gone when Run returns.
func TestRunServesMetrics(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var g errgroup.Group
	g.Go(func() error {
		return Run(ctx, openCache(t), Options{ScrubEvery: time.Hour, RevalidateEvery: time.Hour, PruneEvery: time.Hour, Metrics: ln})
	})
	want := []string{
		`depot_cache_agent_runs_total{result="ok",task="scrub"} 1`,
		`depot_cache_agent_runs_total{result="ok",task="revalidate"} 1`,
		`depot_cache_agent_runs_total{result="ok",task="prune"} 1`,
	}
	var body string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if body = scrape(t, addr); strings.Contains(body, want[2]) {
			break
		}
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("metrics lack %s:\n%s", w, body)
		}
	}
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("the metrics server still answers after Run returned")
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRunRefusesIntervals: an interval that is not positive is refused
// before anything runs, and the metrics listener is closed.
func TestRunRefusesIntervals(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), openCache(t), Options{ScrubEvery: time.Hour, RevalidateEvery: 0, PruneEvery: time.Hour, Metrics: ln})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Run: %v, want ErrInvalidArgument", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener not closed: Accept %v", err)
	}
}

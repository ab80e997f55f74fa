package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/cli"
)

// stallable serves disk.img and its .sha256 sidecar until stalled, then
// answers nothing (no headers) until the client goes away.
type stallable struct {
	data    []byte
	stalled atomic.Bool
	// declare, when set, is the Content-Length claimed for disk.img (the
	// connection is then closed after the headers).
	declare atomic.Int64
}

func (s *stallable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.stalled.Load() {
		<-r.Context().Done()
		return
	}
	switch r.URL.Path {
	case "/disk.img":
		if n := s.declare.Load(); n > 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		w.Write(s.data)
	case "/disk.img.sha256":
		fmt.Fprintf(w, "%s  disk.img\n", digest.FromBytes(s.data).Encoded())
	default:
		http.NotFound(w, r)
	}
}

// TestCLIHostileSources: the stall timeout (flag), --max-download-size and
// a declared size over the free space, as exit codes of the real binary.
func TestCLIHostileSources(t *testing.T) {
	src := &stallable{data: randomBytes(1 << 20)}
	s := httptest.NewServer(src)
	defer s.Close()
	env := []string{"DEPOT_CACHE=" + t.TempDir()}
	url := s.URL + "/disk.img"

	src.stalled.Store(true)
	start := time.Now()
	_, errs, code := run(t, env, "pull", url, "--stall-timeout", "1s")
	if code != cli.ExitUnavailable || !strings.Contains(errs, "no bytes") {
		t.Errorf("stalled source: exit %d %q; want %d naming the stall", code, errs, cli.ExitUnavailable)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a stall timeout of 1s took %s to fail", took)
	}
	src.stalled.Store(false)

	src.declare.Store(64 << 40)
	if _, errs, code := run(t, env, "pull", url); code != cli.ExitNoSpace {
		t.Errorf("64 TiB declared: exit %d %q; want %d", code, errs, cli.ExitNoSpace)
	}
	src.declare.Store(2 << 20)
	if _, errs, code := run(t, env, "pull", url, "--max-download-size", "1M"); code != cli.ExitTooLarge {
		t.Errorf("over --max-download-size: exit %d %q; want %d", code, errs, cli.ExitTooLarge)
	}
	src.declare.Store(0)
	if _, errs, code := run(t, env, "pull", url, "--max-download-size", "2M"); code != 0 {
		t.Errorf("under --max-download-size: exit %d %q", code, errs)
	}
	if _, errs, code := run(t, append(env, "DEPOT_STALL_TIMEOUT=soon"), "pull", url); code != cli.ExitUsage {
		t.Errorf("a bad DEPOT_STALL_TIMEOUT: exit %d %q; want %d", code, errs, cli.ExitUsage)
	}
}

// TestAgentStalledSourceDoesNotStopOthers: an entry whose source stalls
// (accepts, then never answers) costs the agent one stall timeout; the
// revalidation, scrub and prune all finish.
func TestAgentStalledSourceDoesNotStopOthers(t *testing.T) {
	src := &stallable{data: randomBytes(1 << 20)}
	s := httptest.NewServer(src)
	defer s.Close()
	cacheDir := t.TempDir()
	env := []string{"DEPOT_CACHE=" + cacheDir, "DEPOT_STALL_TIMEOUT=1s"}
	if _, errs, code := run(t, env, "pull", s.URL+"/disk.img"); code != 0 {
		t.Fatalf("pull: %d %s", code, errs)
	}
	src.stalled.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, depotBin, "agent", "--cycles", "1", "--scrub-interval", "1h", "--revalidate-interval", "1h", "--prune-interval", "1h")
	cmd.Env = append(os.Environ(), env...)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("the agent hung on a stalled source (killed after %s):\n%s", time.Since(start), logs.String())
	}
	if err != nil {
		t.Fatalf("agent: %v\n%s", err, logs.String())
	}
	for _, done := range []string{"scrub done", "revalidation done", "prune done"} {
		if !strings.Contains(logs.String(), done) {
			t.Errorf("the agent did not log %q:\n%s", done, logs.String())
		}
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("one cycle with a 1s stall timeout took %s", took)
	}
}

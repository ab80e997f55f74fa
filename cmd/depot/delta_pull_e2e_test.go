package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
)

// chunkProxy is a reverse proxy in front of a real depot serve that counts
// the body bytes of blob GETs (not of their chunk indexes, which the
// head's real GET /api/v1/blob/<d>/chunks answers through it).
// A rate > 0 throttles blob bodies to about that many bytes per second
// (a slow link, so that a kill lands mid-transfer).
func chunkProxy(t *testing.T, upstream string, rate int64) (string, *atomic.Int64) {
	t.Helper()
	u, _ := url.Parse(upstream)
	rp := httputil.NewSingleHostReverseProxy(u)
	var body atomic.Int64
	rp.ModifyResponse = func(resp *http.Response) error {
		p := resp.Request.URL.Path
		if resp.Request.Method == http.MethodGet && strings.HasPrefix(p, "/api/v1/blob/") && !strings.HasSuffix(p, "/chunks") {
			resp.Body = &countingBody{ReadCloser: resp.Body, n: &body, rate: rate}
		}
		return nil
	}
	s := httptest.NewServer(rp)
	t.Cleanup(s.Close)
	return s.URL, &body
}

type countingBody struct {
	io.ReadCloser
	n    *atomic.Int64
	rate int64
}

func (c *countingBody) Read(b []byte) (int, error) {
	if c.rate > 0 && len(b) > 64<<10 {
		b = b[:64<<10]
	}
	n, err := c.ReadCloser.Read(b)
	c.n.Add(int64(n))
	if c.rate > 0 {
		time.Sleep(time.Duration(int64(n) * int64(time.Second) / c.rate))
	}
	return n, err
}

// deltaImages pushes v1 (size bytes) and v2 (v1 with its second half new)
// as the image big and returns them.
func deltaImages(t *testing.T, c *client.Client, size int) (v1, v2 []byte, d1, d2 digest.Digest) {
	t.Helper()
	r := mrand.NewChaCha8([32]byte{1})
	v1 = make([]byte, size)
	r.Read(v1)
	v2 = bytes.Clone(v1)
	r.Read(v2[size/2:])
	ctx := context.Background()
	c.CreateImage(ctx, api.CreateImageRequest{Name: "big"})
	for _, v := range [][]byte{v1, v2} {
		info, err := c.PushContent(ctx, "big", bytes.NewReader(v), int64(len(v)), client.PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d1 == "" {
			d1 = digest.Digest(info.Chksum)
		} else {
			d2 = digest.Digest(info.Chksum)
		}
	}
	return v1, v2, d1, d2
}

type pullResult struct {
	Digest       digest.Digest `json:"digest"`
	Path         string        `json:"path"`
	BytesFetched int64         `json:"bytes_fetched"`
	BytesReused  int64         `json:"bytes_reused"`
	Transfer     string        `json:"transfer"`
	Note         string        `json:"note"`
}

func pullJSON(t *testing.T, env []string, args ...string) pullResult {
	t.Helper()
	out, errs, code := run(t, env, append([]string{"pull", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("pull %v: exit %d: %s", args, code, errs)
	}
	var res pullResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("pull --json: %v: %q", err, out)
	}
	return res
}

// TestDeltaPullCLI: against a real depot serve, a pull of v2 into a cache
// holding v1 fetches about the new half (counted at the proxy) and
// reports bytes_fetched/bytes_reused; --dry-run predicts it within 5%
// without fetching the body; --no-delta moves the whole blob; verify
// --repair moves only a rotten chunk.
func TestDeltaPullCLI(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	tok := adminToken(t, data)
	c, _ := client.New(h.url, tok)
	const size = 32 << 20
	_, v2, d1, d2 := deltaImages(t, c, size)
	purl, body := chunkProxy(t, h.url, 0)
	env := []string{"DEPOT_SERVER=" + purl, "DEPOT_TOKEN=" + tok, "DEPOT_CACHE=" + t.TempDir()}
	// v1, whole: nothing to seed from; it takes the head's chunk index.
	first := pullJSON(t, env, "big@"+d1.String())
	if ix := indexLen(t, c, d1); first.Transfer != "whole" || first.BytesFetched != size+ix {
		t.Fatalf("first pull: %+v; want %d body and %d index bytes", first, size, ix)
	}

	before := body.Load()
	out, errs, code := run(t, env, "pull", "--dry-run", "--json", "big")
	var plan struct {
		Transfer     string `json:"transfer"`
		BytesFetched int64  `json:"bytes_fetched"`
		BytesReused  int64  `json:"bytes_reused"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &plan) != nil || plan.Transfer != "delta" {
		t.Fatalf("pull --dry-run: %d %q %s", code, out, errs)
	}
	if body.Load() != before {
		t.Fatal("--dry-run fetched body bytes")
	}
	res := pullJSON(t, env, "big")
	moved := body.Load() - before
	got, _ := os.ReadFile(res.Path)
	if res.Digest != d2 || !bytes.Equal(got, v2) || res.Transfer != "delta" {
		t.Fatalf("delta pull: %+v", res)
	}
	t.Logf("dry run: fetch %d reuse %d; pull: fetched %d (proxy saw %d body bytes) reused %d of %d",
		plan.BytesFetched, plan.BytesReused, res.BytesFetched, moved, res.BytesReused, size)
	if d := plan.BytesFetched - res.BytesFetched; d*20 > res.BytesFetched || -d*20 > res.BytesFetched {
		t.Errorf("--dry-run said %d, the pull fetched %d: over 5%% apart", plan.BytesFetched, res.BytesFetched)
	}
	if moved > size/2+size/16 || res.BytesReused < size/2-size/16 || res.BytesFetched < moved {
		t.Errorf("delta pull moved %d body bytes (%+v); want about the new half of %d", moved, res, size)
	}

	// --no-delta: the whole blob (and the head's index, not a delta).
	run(t, env, "rm", "big@"+d2.String())
	before = body.Load()
	whole := pullJSON(t, env, "--no-delta", "big@"+d2.String())
	if whole.Transfer != "whole" || whole.BytesFetched != size+indexLen(t, c, d2) || body.Load()-before != size {
		t.Fatalf("--no-delta: %+v, proxy saw %d", whole, body.Load()-before)
	}

	// verify --repair: one rotten byte costs one chunk.
	os.Chmod(whole.Path, 0o644)
	f, _ := os.OpenFile(whole.Path, os.O_WRONLY, 0)
	f.WriteAt([]byte{^v2[size-100]}, size-100)
	f.Close()
	before = body.Load()
	out, errs, code = run(t, env, "verify", "--repair", "--json")
	var vr []struct {
		Status       string `json:"status"`
		BytesFetched int64  `json:"bytes_fetched"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &vr) != nil {
		t.Fatalf("verify --repair: %d %q %s", code, out, errs)
	}
	got, _ = os.ReadFile(whole.Path)
	t.Logf("verify --repair: %s; proxy saw %d body bytes", out, body.Load()-before)
	if !bytes.Equal(got, v2) || body.Load()-before > 256<<10 || body.Load() == before {
		t.Fatalf("repair moved %d bytes; want one chunk (at most 256 KiB)", body.Load()-before)
	}
}

// indexLen is the length of the head's chunk index of d.
func indexLen(t *testing.T, c *client.Client, d digest.Digest) int64 {
	t.Helper()
	body, err := c.OpenChunkIndex(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	n, err := io.Copy(io.Discard, body)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDeltaPullKilledAtRandomPoints is R1 for delta pulls: kill -9 at a
// chunk already landed and at random points; nothing partial is ever
// visible, every rerun gives the exact content, and a rerun after chunks
// landed fetches less than a whole delta.
func TestDeltaPullKilledAtRandomPoints(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	tok := adminToken(t, data)
	c, _ := client.New(h.url, tok)
	const size = 64 << 20
	_, v2, d1, d2 := deltaImages(t, c, size)
	purl, _ := chunkProxy(t, h.url, 32<<20)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + purl, "DEPOT_TOKEN=" + tok, "DEPOT_CACHE=" + cacheDir}
	pullJSON(t, env, "big@"+d1.String())
	start := time.Now()
	full := pullJSON(t, env, "big@"+d2.String())
	elapsed := time.Since(start)
	if full.Transfer != "delta" {
		t.Fatalf("calibration pull: %+v", full)
	}
	run(t, env, "rm", "big@"+d2.String())
	state := filepath.Join(cacheDir, "ingest", d2.Encoded()+".json")
	rng := mrand.New(mrand.NewPCG(1, uint64(time.Now().UnixNano())))
	resumedLess := false
	for i := range 8 {
		conns := []string{"--connections=1", "--connections=4"}[i%2]
		cmd := exec.Command(depotBin, "pull", "big@"+d2.String(), conns)
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if i == 0 { // at a saved state with fetched chunks in place
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
				var st struct {
					Chunks string `json:"chunks"`
					Done   []byte `json:"done"`
				}
				if b, err := os.ReadFile(state); err == nil && json.Unmarshal(b, &st) == nil && st.Chunks != "" && len(st.Done) > 8 &&
					slices.ContainsFunc(st.Done[len(st.Done)/2+4:], func(b byte) bool { return b != 0 }) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no delta state was saved")
				}
			}
		} else {
			time.Sleep(time.Duration(rng.Int64N(int64(elapsed))))
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		checkCacheInvariants(t, cacheDir)
		res := pullJSON(t, env, "big@"+d2.String())
		got, _ := os.ReadFile(res.Path)
		if !bytes.Equal(got, v2) {
			t.Fatalf("kill %d: the pulled file differs from the content", i)
		}
		if res.Fetched() && res.BytesFetched < full.BytesFetched*9/10 {
			resumedLess = true
		}
		t.Logf("kill %d (%s): rerun %s fetched %d, reused %d (a whole delta fetches %d)", i, conns, res.Transfer, res.BytesFetched, res.BytesReused, full.BytesFetched)
		checkCacheInvariants(t, cacheDir)
		run(t, env, "rm", "big@"+d2.String())
	}
	if !resumedLess {
		t.Fatal("no rerun reused the chunks its killed run had landed")
	}
}

func (r pullResult) Fetched() bool { return r.Transfer != "" }

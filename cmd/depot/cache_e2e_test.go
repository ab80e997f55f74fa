package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/cli"
	"github.com/depot-images/depot/internal/testenv"
)

// pushRandom creates image name with n random bytes and returns them.
func pushRandom(t *testing.T, c *client.Client, name string, n int) ([]byte, digest.Digest) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	c.CreateImage(context.Background(), api.CreateImageRequest{Name: name})
	info, err := c.PushContent(context.Background(), name, bytes.NewReader(data), int64(n), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return data, digest.Digest(info.Chksum)
}

// checkCacheInvariants: every visible blob is complete and every pointer
// names a visible blob.
func checkCacheInvariants(t *testing.T, dir string) {
	t.Helper()
	blobs := filepath.Join(dir, "blobs", "sha256")
	ents, _ := os.ReadDir(blobs)
	for _, e := range ents {
		f, err := os.Open(filepath.Join(blobs, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		d, _ := digest.FromReader(f)
		f.Close()
		if d.Encoded() != e.Name() {
			t.Fatalf("visible blob %s is partial or corrupt (hashes to %s)", e.Name(), d)
		}
	}
	ptrs, _ := os.ReadDir(filepath.Join(dir, "index", "pointers"))
	for _, p := range ptrs {
		b, _ := os.ReadFile(filepath.Join(dir, "index", "pointers", p.Name()))
		var v struct{ Digest digest.Digest }
		if json.Unmarshal(b, &v) != nil {
			t.Fatalf("pointer %s is not valid JSON: %q", p.Name(), b)
		}
		if _, err := os.Stat(filepath.Join(blobs, v.Digest.Encoded())); err != nil {
			t.Fatalf("pointer %s names %s, which is not committed", p.Name(), v.Digest)
		}
	}
}

func blobGets(t *testing.T, url string) int {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, `depot_http_requests_total{route="GET /api/v1/blob/{digest}"`) {
			f := strings.Fields(line)
			v, _ := strconv.Atoi(f[len(f)-1])
			n += v
		}
	}
	return n
}

// TestPullKilledAtRandomPoints is R1.
func TestPullKilledAtRandomPoints(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	c, _ := client.New(h.url, adminToken(t, data))
	content, d := pushRandom(t, c, "big", 128<<20)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + cacheDir}
	// Calibrate: how long does one full pull take?
	start := time.Now()
	if _, errs, code := run(t, env, "pull", "big@"+d.String()); code != 0 {
		t.Fatalf("pull: %d %s", code, errs)
	}
	full := time.Since(start)
	run(t, env, "rm", "big@"+d.String())
	rng := mrand.New(mrand.NewPCG(1, uint64(time.Now().UnixNano())))
	for i := range 20 {
		// Alternate single-stream and parallel transfers.
		conns := []string{"--connections=1", "--connections=4"}[i%2]
		cmd := exec.Command(depotBin, "pull", "big@"+d.String(), conns)
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(full))))
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		checkCacheInvariants(t, cacheDir)
		out, errs, code := run(t, env, "ensure", "big@"+d.String())
		if code != 0 {
			t.Fatalf("kill %d: re-run failed: %d %s", i, code, errs)
		}
		got, _ := os.ReadFile(strings.TrimSpace(out))
		if !bytes.Equal(got, content) {
			t.Fatalf("kill %d: ensured file differs from the content", i)
		}
		checkCacheInvariants(t, cacheDir)
		run(t, env, "rm", "big@"+d.String())
	}
}

// TestConcurrentProcessesOneTransfer is R2.
func TestConcurrentProcessesOneTransfer(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	c, _ := client.New(h.url, adminToken(t, data))
	_, d := pushRandom(t, c, "shared", 32<<20)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + cacheDir}
	before := blobGets(t, h.url)
	var wg sync.WaitGroup
	paths := make([]string, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, errs, code := run(t, env, "ensure", "shared@"+d.String())
			if code != 0 {
				t.Errorf("process %d: %d %s", i, code, errs)
			}
			paths[i] = strings.TrimSpace(out)
		}()
	}
	wg.Wait()
	if n := blobGets(t, h.url) - before; n != 1 {
		t.Fatalf("16 processes made %d blob transfers, want 1", n)
	}
	for _, p := range paths[1:] {
		if p != paths[0] {
			t.Fatalf("processes got different paths: %q vs %q", p, paths[0])
		}
	}
	checkCacheInvariants(t, cacheDir)
}

// TestFullServerDiskDuringPush: the server's data directory is a real
// 16 MiB tmpfs. A 24 MiB push fails with HTTP 507 / exit 11, leaves no blob,
// no partial and no revision, and the space is given back: a small push
// then works.
func TestFullServerDiskDuringPush(t *testing.T) {
	data := t.TempDir()
	testenv.Tmpfs(t, data, 16)
	h := startServe(t, data)
	tok := adminToken(t, data)
	c, _ := client.New(h.url, tok)
	first, firstD := pushRandom(t, c, "img", 1<<20)
	src := filepath.Join(t.TempDir(), "big")
	os.WriteFile(src, randomBytes(24<<20), 0o644)
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + tok, "DEPOT_TOKEN_FILE="}
	_, errs, code := run(t, env, "image", "push", "img", src)
	if code != cli.ExitNoSpace || !strings.Contains(errs, "no space left") {
		t.Fatalf("push to a full server disk: exit %d, %q; want exit %d", code, errs, cli.ExitNoSpace)
	}
	if ents, _ := os.ReadDir(filepath.Join(data, "ingest")); len(ents) != 0 {
		t.Errorf("partial uploads left after ENOSPC: %d", len(ents))
	}
	if ents, _ := os.ReadDir(filepath.Join(data, "blobs", "sha256")); len(ents) != 1 {
		t.Errorf("%d blobs after a failed push, want 1", len(ents))
	}
	img, err := c.GetImage(context.Background(), "img")
	if err != nil || img.Content.Chksum != firstD.String() || len(img.History) != 1 {
		t.Fatalf("image after a failed push: %+v, %v", img, err)
	}
	if got := readContent(t, c, "img"); !bytes.Equal(got, first) {
		t.Fatal("content changed by a failed push")
	}
	pushRandom(t, c, "img", 2<<20) // the space was given back
}

// TestFullDiskDuringPull is R8, on a real 16 MiB tmpfs.
func TestFullDiskDuringPull(t *testing.T) {
	mnt := t.TempDir()
	testenv.Tmpfs(t, mnt, 16)
	data := t.TempDir()
	h := startServe(t, data)
	c, _ := client.New(h.url, adminToken(t, data))
	_, big := pushRandom(t, c, "toobig", 24<<20)
	small, sd := pushRandom(t, c, "small", 1<<20)
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + mnt}
	_, errs, code := run(t, env, "pull", "toobig@"+big.String())
	if code != cli.ExitNoSpace || !strings.Contains(errs, "no space left") {
		t.Fatalf("full disk: exit %d, %q; want exit %d and a clear no-space error", code, errs, cli.ExitNoSpace)
	}
	checkCacheInvariants(t, mnt)
	if ents, _ := os.ReadDir(filepath.Join(mnt, "blobs", "sha256")); len(ents) != 0 {
		t.Fatalf("a blob became visible after ENOSPC")
	}
	// The space was given back: a small pull in the same cache works.
	out, errs, code := run(t, env, "ensure", "small@"+sd.String())
	if code != 0 {
		t.Fatalf("pull after ENOSPC: %d %s", code, errs)
	}
	if got, _ := os.ReadFile(strings.TrimSpace(out)); !bytes.Equal(got, small) {
		t.Fatal("content after ENOSPC differs")
	}
	checkCacheInvariants(t, mnt)
}

func TestCLIDigestUnavailableExitCode(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data, "--keep-revisions", "1", "--gc-grace", "0s", "--gc-interval", "1h")
	c, _ := client.New(h.url, adminToken(t, data))
	_, d1 := pushRandom(t, c, "moving", 1000)
	_, d2 := pushRandom(t, c, "moving", 1000)
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + t.TempDir()}
	// The server retains d1 until GC; restart it to run GC at start.
	h.kill9()
	h = startServe(t, data, "--keep-revisions", "1", "--gc-grace", "0s", "--gc-interval", "1h")
	env[0] = "DEPOT_SERVER=" + h.url
	// The first GC pass runs at start: wait until it has deleted d1.
	c, _ = client.New(h.url, adminToken(t, data))
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		rc, err := c.OpenBlob(context.Background(), d1, 0, -1)
		if errors.Is(err, errdefs.ErrNotFound) {
			break
		}
		if err == nil {
			rc.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("GC at start did not delete %s: %v", d1, err)
		}
	}
	_, errs, code := run(t, env, "pull", "moving@"+d1.String())
	if code != cli.ExitDigestGone || !strings.Contains(errs, d1.String()) || !strings.Contains(errs, d2.String()) {
		t.Fatalf("exit %d %q; want %d naming %s and %s", code, errs, cli.ExitDigestGone, d1, d2)
	}
	out, _, code := run(t, env, "ensure", "moving", "--json")
	var img struct{ Digest, Path string }
	if code != 0 || json.Unmarshal([]byte(out), &img) != nil || img.Digest != d2.String() {
		t.Fatalf("ensure --json: %d %q", code, out)
	}
	out, _, _ = run(t, env, "cache", "ls")
	if !strings.Contains(out, d2.String()[:19]) || !strings.Contains(out, "moving") {
		t.Errorf("cache ls: %q", out)
	}
	if _, _, code := run(t, env, "rm", "moving"); code != 0 {
		t.Fatalf("rm: %d", code)
	}
	if _, errs, code := run(t, env, "ensure", "moving", "--policy", "Never"); code != cli.ExitNotFound {
		t.Fatalf("after rm, Never: %d %s", code, errs)
	}
}

func TestCLIVerifyLeasePruneAgent(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	c, _ := client.New(h.url, adminToken(t, data))
	content, d := pushRandom(t, c, "node-img", 3<<20)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + cacheDir}
	out, errs, code := run(t, env, "lease", "add", "node-img", "--holder", "vm-1")
	if code != 0 || !strings.Contains(out, "leased") {
		t.Fatalf("lease add: %d %s %s", code, out, errs)
	}
	path := filepath.Join(cacheDir, "blobs", "sha256", d.Encoded())
	// Corrupt it in place (same size, mode and mtime).
	fi, _ := os.Stat(path)
	os.Chmod(path, 0o644)
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt([]byte{content[10] ^ 0xff}, 10)
	f.Close()
	os.Chmod(path, fi.Mode())
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
	out, errs, code = run(t, env, "verify")
	if code != cli.ExitCorrupt || !strings.Contains(out, "corrupt") || !strings.Contains(errs, "--repair") {
		t.Fatalf("verify of a corrupt cache: exit %d\n%s\n%s", code, out, errs)
	}
	out, _, code = run(t, env, "verify", "--repair", "--json")
	if code != 0 || !strings.Contains(out, `"repaired"`) {
		t.Fatalf("verify --repair: %d %s", code, out)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
		t.Fatal("repair did not restore the content")
	}
	out, _, _ = run(t, env, "cache", "ls")
	if !strings.Contains(out, "leased") || !strings.Contains(out, "corrupt (quarantined)") {
		t.Errorf("cache ls: %s", out)
	}
	out, _, code = run(t, env, "prune", "--max-size", "1", "--max-age", "1ns")
	if code != 0 || !strings.Contains(out, "size-budget") {
		t.Fatalf("prune: %d %s", code, out)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("prune removed a leased blob")
	}
	if _, _, code := run(t, env, "lease", "rm", "--holder", "vm-1"); code != 0 {
		t.Fatal("lease rm failed")
	}
	// The agent: two cycles with short intervals, metrics on a port.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	maddr := l.Addr().String()
	l.Close()
	cmd := exec.Command(depotBin, "agent", "--cycles", "2", "--scrub-interval", "200ms", "--revalidate-interval", "200ms",
		"--prune-interval", "200ms", "--max-size", "1", "--metrics-addr", maddr)
	cmd.Env = append(os.Environ(), env...)
	var agentErr bytes.Buffer
	cmd.Stderr = &agentErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var metrics string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(metrics, `depot_cache_agent_runs_total{result="ok",task="prune"} 1`) {
		if resp, err := http.Get("http://" + maddr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			metrics = string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent: %v\n%s", err, agentErr.String())
	}
	for _, done := range []string{"scrub done", "revalidation done", "prune done"} {
		if n := strings.Count(agentErr.String(), done); n != 2 {
			t.Errorf("agent logged %q %d times, want 2:\n%s", done, n, agentErr.String())
		}
	}
	if !strings.Contains(metrics, "depot_cache_blobs_total") {
		t.Errorf("agent metrics: %s", metrics)
	}
	// With the lease gone, the agent's prune (budget 1 byte) evicted the blob.
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("the agent's prune kept an unleased blob over budget")
	}
}

// TestKillDuringCommit: a commit killed at any point leaves the server on
// its old content (or, once the upload landed, on exactly the new content)
// and the workspace with its staged changes; the next commit completes.
func TestKillDuringCommit(t *testing.T) {
	testenv.Need(t, "mksquashfs", "unsquashfs", "busybox", "bwrap")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	bb, _ := exec.LookPath("busybox")
	b, _ := os.ReadFile(bb)
	os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	big := make([]byte, 48<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(root, "big"), big, 0o644)
	img := filepath.Join(t.TempDir(), "root.squashfs")
	if out, err := exec.Command("mksquashfs", root, img, "-noappend", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	data := t.TempDir()
	h := startServe(t, data)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + cacheDir}
	if _, errs, code := run(t, env, "image", "push", "node", img); code != 0 {
		t.Fatalf("push: %s", errs)
	}
	c, _ := client.New(h.url, adminToken(t, data))
	info, _ := c.ContentInfo(context.Background(), "node")
	oldDigest := info.Chksum
	if _, errs, code := run(t, env, "edit", "node", "--exec", "echo staged > /etc/staged"); code != 0 {
		t.Fatalf("edit: %s", errs)
	}
	rng := mrand.New(mrand.NewPCG(7, uint64(time.Now().UnixNano())))
	for i := range 6 {
		cmd := exec.Command(depotBin, "commit", "node")
		cmd.Env = append(os.Environ(), env...)
		cmd.Start()
		time.Sleep(time.Duration(rng.Int64N(int64(1500 * time.Millisecond))))
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		info, err := c.ContentInfo(context.Background(), "node")
		if err != nil {
			t.Fatal(err)
		}
		if info.Chksum != oldDigest {
			// The upload landed: it must be complete and carry the change.
			rc, _ := c.OpenContent(context.Background(), "node")
			var buf bytes.Buffer
			buf.ReadFrom(rc)
			rc.Close()
			if digest.FromBytes(buf.Bytes()).String() != info.Chksum {
				t.Fatalf("kill %d: the server serves content that is not its digest", i)
			}
			break
		}
		if got, err := os.ReadFile(filepath.Join(cacheDir, "work", strings.TrimSpace(uidOf(t, c, "node")), "root", "etc", "staged")); err != nil || string(got) != "staged\n" {
			t.Fatalf("kill %d: the staged change is gone: %v", i, err)
		}
	}
	out, errs, code := run(t, env, "commit", "node", "--json")
	if code != 0 {
		t.Fatalf("final commit: %d %s", code, errs)
	}
	var res struct {
		Digest    string
		Unchanged bool
	}
	json.Unmarshal([]byte(out), &res)
	info, _ = c.ContentInfo(context.Background(), "node")
	if info.Chksum == oldDigest || (!res.Unchanged && info.Chksum != res.Digest) {
		t.Fatalf("after the final commit the server has %s (old %s, commit %+v)", info.Chksum, oldDigest, res)
	}
	out, _, _ = run(t, env, "workspace", "show", "node", "--json")
	if !strings.Contains(out, `"state": "current"`) || !strings.Contains(out, `"modified": false`) {
		t.Fatalf("workspace after commit: %s", out)
	}
}

func uidOf(t *testing.T, c *client.Client, name string) string {
	img, err := c.GetImage(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return img.UID
}

// TestCLILeaseGuards: depot rm refuses a leased blob (exit 4, naming the
// holder) unless --force; an unreadable lease stops prune and rm (exit 9)
// until it is removed.
func TestCLILeaseGuards(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	c, _ := client.New(h.url, adminToken(t, data))
	_, d := pushRandom(t, c, "node-img", 1<<20)
	cacheDir := t.TempDir()
	env := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + adminToken(t, data), "DEPOT_CACHE=" + cacheDir}
	if out, errs, code := run(t, env, "lease", "add", "node-img", "--holder", "vm-1"); code != 0 {
		t.Fatalf("lease add: %d %s %s", code, out, errs)
	}
	path := filepath.Join(cacheDir, "blobs", "sha256", d.Encoded())
	if _, errs, code := run(t, env, "rm", "node-img"); code != cli.ExitConflict || !strings.Contains(errs, "vm-1") || !strings.Contains(errs, "--force") {
		t.Fatalf("rm of a leased blob: exit %d %q; want %d naming vm-1 and --force", code, errs, cli.ExitConflict)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("the refused rm deleted the blob")
	}
	bad := filepath.Join(cacheDir, "leases", "damaged.json")
	os.WriteFile(bad, []byte("{not json"), 0o600)
	for _, args := range [][]string{{"prune", "--max-size", "1", "--max-age", "1ns"}, {"rm", "--force", "node-img"}} {
		if _, errs, code := run(t, env, args...); code != cli.ExitCorrupt || !strings.Contains(errs, "damaged.json") {
			t.Errorf("%v with an unreadable lease: exit %d %q; want %d naming the file", args, code, errs, cli.ExitCorrupt)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("%v deleted the blob although it could not read the leases", args)
		}
	}
	os.Remove(bad)
	if _, errs, code := run(t, env, "rm", "--force", "node-img"); code != 0 {
		t.Fatalf("rm --force: exit %d %s", code, errs)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("rm --force kept the blob")
	}
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
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

var depotBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "depot-e2e")
	if err != nil {
		panic(err)
	}
	depotBin = filepath.Join(dir, "depot")
	if out, err := exec.Command("go", "build", "-o", depotBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build depot: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// headProc is a running `depot serve`. url is the contract proxy in front
// of it (contract_e2e_test.go), which checks every request and answer
// against docs/openapi.yaml; direct is the head itself, for tests that
// speak raw HTTP on purpose.
type headProc struct {
	cmd    *exec.Cmd
	url    string
	direct string
	data   string
	log    *syncBuffer
}

// syncBuffer is a log buffer written by the reader goroutine and read by
// the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) WriteString(x string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(x)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var urlRE = regexp.MustCompile(`url=(http://[0-9.:]+)`)

func startServe(t *testing.T, data string, extra ...string) *headProc {
	t.Helper()
	args := append([]string{"serve", "--data", data, "--addr", "127.0.0.1:0", "--log-level", "debug"}, extra...)
	cmd := exec.Command(depotBin, args...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &headProc{cmd: cmd, data: data, log: &syncBuffer{}}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			h.log.WriteString(line + "\n")
			if m := urlRE.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case h.url = <-found:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("depot serve did not start:\n%s", h.log)
	}
	t.Cleanup(func() { h.cmd.Process.Kill(); h.cmd.Wait() })
	h.direct = h.url
	h.url = contractProxy(t, h.direct)
	return h
}

// etcdCatalog starts a single-member etcd and returns a --catalog URL on it
// under prefix.
func etcdCatalog(t *testing.T, prefix string) string {
	return "etcd://" + strings.TrimPrefix(testenv.Etcd(t), "http://") + "/" + prefix
}

// sharedHeads starts n heads on one catalog and one shared blob directory
// (the shared-filesystem deployment), with extra flags on each, and returns
// them with the admin token the first one minted (only the first head finds
// no tokens).
func sharedHeads(t *testing.T, n int, catalog string, extra ...string) ([]*headProc, string) {
	t.Helper()
	shared := t.TempDir()
	var heads []*headProc
	var tok string
	for i := range n {
		data := t.TempDir()
		heads = append(heads, startServe(t, data, append([]string{"--catalog", catalog, "--blobs", shared}, extra...)...))
		if i == 0 {
			tok = adminToken(t, data)
		}
	}
	return heads, tok
}

func (h *headProc) kill9() {
	h.cmd.Process.Signal(syscall.SIGKILL)
	h.cmd.Wait()
}

func adminToken(t *testing.T, data string) string {
	b, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// run runs the real binary and returns stdout, stderr and the exit code.
// It is bounded (5 min), so a command that hangs fails its test instead of
// the whole suite.
func run(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	return runIn(t, "", 5*time.Minute, env, args...)
}

// runIn runs the real binary in directory dir ("": the test's), bounded to
// limit (a serve that should have refused its flags would otherwise run
// forever).
func runIn(t *testing.T, dir string, limit time.Duration, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, depotBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("depot %v did not exit within %s:\n%s", args, limit, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func TestCLIFlowAndExitCodes(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	fi, err := os.Stat(filepath.Join(data, "admin.token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v %v", fi, err)
	}
	admin := adminToken(t, data)
	if strings.Contains(h.log.String(), admin) {
		t.Fatal("the admin token appears in the server log")
	}
	base := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN_FILE=" + filepath.Join(data, "admin.token"), "DEPOT_TOKEN="}
	out, errs, code := run(t, base, "token", "create", "--role", "writer", "--subject", "ci")
	if code != 0 {
		t.Fatalf("token create: %d %s", code, errs)
	}
	writer := strings.TrimSpace(out)
	wenv := []string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=" + writer, "DEPOT_TOKEN_FILE="}

	img := filepath.Join(t.TempDir(), "disk.qcow2")
	testenv.Need(t, "qemu-img")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", img, "1G").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	content, _ := os.ReadFile(img)
	out, errs, code = run(t, wenv, "image", "push", "disk", img, "--json")
	if code != 0 {
		t.Fatalf("push: %d %s", code, errs)
	}
	var info api.ContentInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Chksum != digest.FromBytes(content).String() || info.Fmt != "qcow2" || info.Refcnt != 1 {
		t.Fatalf("push --json: %q %v", out, err)
	}
	// --digest: the client declares a known digest and does not hash. A
	// wrong one stores nothing; a right one (bare hex) lands as usual.
	wrong := digest.FromString("not the disk").Encoded()
	if _, errs, code := run(t, wenv, "image", "push", "disk2", img, "--digest", wrong); code != cli.ExitVerification || !strings.Contains(errs, "sha256:"+wrong) {
		t.Fatalf("push --digest <wrong>: exit %d %q", code, errs)
	}
	if out, _, _ := run(t, wenv, "image", "history", "disk2", "--json"); strings.Contains(out, "sha256:") {
		t.Fatalf("a push with a wrong --digest left a revision: %s", out)
	}
	if _, errs, code := run(t, wenv, "image", "push", "disk2", img, "--digest", "md5:abc"); code != cli.ExitUsage || !strings.Contains(errs, "--digest") {
		t.Fatalf("push --digest md5: exit %d %q", code, errs)
	}
	out, errs, code = run(t, wenv, "image", "push", "disk2", img, "--json", "--digest", digest.FromBytes(content).Encoded())
	if err := json.Unmarshal([]byte(out), &info); code != 0 || err != nil || info.Chksum != digest.FromBytes(content).String() || info.Fmt != "qcow2" {
		t.Fatalf("push --digest: %d %q %q", code, out, errs)
	}
	out, _, code = run(t, wenv, "image", "ls", "--show-uids")
	if code != 0 || !strings.Contains(out, "disk") || !strings.Contains(out, "qcow2") {
		t.Fatalf("ls: %d %s", code, out)
	}
	if _, _, code = run(t, wenv, "image", "update", "disk", "frozen=true", "description=gold"); code != 0 {
		t.Fatalf("update: %d", code)
	}
	out, _, _ = run(t, wenv, "image", "show", "disk", "--json")
	var shown api.Image
	json.Unmarshal([]byte(out), &shown)
	if !shown.Frozen || shown.Description != "gold" {
		t.Fatalf("show after update: %s", out)
	}
	// Exit codes per error class.
	cases := []struct {
		env  []string
		args []string
		code int
		msg  string
	}{
		{wenv, []string{"image", "show", "nope"}, cli.ExitNotFound, "not found"},
		{wenv, []string{"image", "push", "disk", img}, cli.ExitConflict, "frozen=false"},
		{wenv, []string{"image", "rm", "disk"}, cli.ExitAuth, "forbidden"},
		{wenv, []string{"image", "create", "../x"}, cli.ExitUsage, "image name"},
		{wenv, []string{"image", "update", "disk", "color=red"}, cli.ExitUsage, "unknown field"},
		{[]string{"DEPOT_SERVER=" + h.url, "DEPOT_TOKEN=", "DEPOT_TOKEN_FILE="}, []string{"image", "ls"}, cli.ExitAuth, "bearer token"},
		{[]string{"DEPOT_SERVER=http://127.0.0.1:1", "DEPOT_TOKEN=x"}, []string{"image", "ls"}, cli.ExitUnavailable, "connection refused"},
		{wenv, []string{"image", "create", "disk"}, cli.ExitConflict, "taken"},
		{wenv, []string{"image", "push", "other", "/nonexistent"}, cli.ExitUsage, "no such file"},
	}
	for _, c := range cases {
		_, errs, code := run(t, c.env, c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("depot %v: exit %d %q, want %d mentioning %q", c.args, code, errs, c.code, c.msg)
		}
	}
	// Errors under --json are JSON too.
	_, errs, _ = run(t, wenv, "image", "show", "nope", "--json")
	var je map[string]any
	if err := json.Unmarshal([]byte(errs), &je); err != nil || je["exit_code"] != float64(cli.ExitNotFound) {
		t.Errorf("--json error: %q", errs)
	}
	if strings.Contains(h.log.String(), writer) {
		t.Fatal("a token appears in the server log")
	}
}

// TestKillDuringPut is R4: SIGKILL the server in the middle of content
// uploads; after a restart the previous content is intact and served, and
// no partial blob or revision is visible.
func TestKillDuringPut(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data)
	tok := adminToken(t, data)
	ctx := context.Background()
	c, _ := client.New(h.url, tok)
	old := make([]byte, 1<<20)
	rand.Read(old)
	c.CreateImage(ctx, api.CreateImageRequest{Name: "victim"})
	if _, err := c.PushContent(ctx, "victim", bytes.NewReader(old), int64(len(old)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	complete := map[string]bool{digest.FromBytes(old).String(): true}
	const size = 64 << 20
	// Kill points: early, mid-body, and after the whole body was sent (the
	// server is then hashing, committing or updating the catalog).
	for i, sendBytes := range []int{1 << 20, 20 << 20, size} {
		newData := make([]byte, size)
		rand.Read(newData)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := c.PushContent(ctx, "victim", pr, size, client.PushOptions{Digest: digest.FromBytes(newData)})
			done <- err
		}()
		pw.Write(newData[:sendBytes])
		h.kill9()
		pw.CloseWithError(io.ErrUnexpectedEOF)
		<-done

		h = startServe(t, data)
		c, _ = client.New(h.url, tok)
		img, err := c.GetImage(ctx, "victim")
		if err != nil {
			t.Fatal(err)
		}
		// The last point may have landed after the catalog update; then the
		// new content must be complete and verified instead.
		want := old
		if img.Content.Chksum == digest.FromBytes(newData).String() {
			if sendBytes != size {
				t.Fatalf("kill %d: a partial upload became the content", i)
			}
			want = newData
			old = newData
			complete[img.Content.Chksum] = true
		} else if img.Content.Chksum != digest.FromBytes(old).String() {
			t.Fatalf("kill %d: content is %s, neither old nor new", i, img.Content.Chksum)
		}
		rc, err := c.OpenContent(ctx, "victim")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("kill %d: served content differs from the committed content", i)
		}
		// Every visible blob is complete: its name is its hash.
		ents, _ := os.ReadDir(filepath.Join(data, "blobs", "sha256"))
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(data, "blobs", "sha256", e.Name()))
			if digest.FromBytes(b).Encoded() != e.Name() {
				t.Fatalf("kill %d: blob %s is partial or corrupt", i, e.Name())
			}
		}
		for _, r := range img.History {
			if !complete[r.Chksum] {
				t.Fatalf("kill %d: revision %s was never uploaded completely", i, r.Chksum)
			}
		}
	}
}

// TestTwoHeadsOnEtcd: two `depot serve` heads share an etcd catalog and a
// blob directory. An upload through one is served by the other at once, a
// delete through one is gone on the other, a token minted on one works on
// the other, and racing creates of one name give one winner and a clear
// conflict.
func TestTwoHeadsOnEtcd(t *testing.T) {
	heads, tok := sharedHeads(t, 2, etcdCatalog(t, "depot-e2e"))
	h1, h2 := heads[0], heads[1]
	ctx := context.Background()
	c1, _ := client.New(h1.url, tok)
	c2, _ := client.New(h2.url, tok)
	if _, err := c2.ListImages(ctx); err != nil {
		t.Fatalf("head 2 rejects head 1's token: %v", err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	c1.CreateImage(ctx, api.CreateImageRequest{Name: "img"})
	info, err := c1.PushContent(ctx, "img", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c2.OpenContent(ctx, "img")
	if err != nil {
		t.Fatalf("head 2 cannot serve head 1's upload: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) || digest.FromBytes(got).String() != info.Chksum {
		t.Fatal("head 2 served different bytes")
	}
	if err := c2.DeleteImage(ctx, "img"); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.GetImage(ctx, "img"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a delete on head 2 is not gone on head 1: %v", err)
	}
	// Racing creates of one name through both heads.
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := []*client.Client{c1, c2}[i%2]
			_, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "race"})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, errdefs.ErrAlreadyExists) && strings.Contains(err.Error(), "taken"):
				conflicts.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 9 {
		t.Fatalf("racing creates: %d wins, %d conflicts", wins.Load(), conflicts.Load())
	}
}

// TestR7KillOneHeadDuringPulls: three heads on one etcd and one shared blob
// directory (the shared-filesystem deployment); see runR7. TestClusterR7
// runs the same on three etcd members and MinIO.
func TestR7KillOneHeadDuringPulls(t *testing.T) {
	heads, tok := sharedHeads(t, 3, etcdCatalog(t, "depot-r7"))
	runR7(t, heads, tok)
}

// runR7: 8 processes ensure a 128 MiB image (4 pinned, 4 by name with
// policy Always) through DEPOT_SERVER=h1,h2,h3 while h1 is SIGKILLed. Zero
// failed ensures, all verified, and at least one transfer resumed on
// another head (or the kill proved nothing).
func runR7(t *testing.T, heads []*headProc, tok string) {
	h1 := heads[0]
	c, _ := client.New(h1.url, tok)
	content := make([]byte, 128<<20)
	rand.Read(content)
	c.CreateImage(context.Background(), api.CreateImageRequest{Name: "r7"})
	info, err := c.PushContent(context.Background(), "r7", bytes.NewReader(content), int64(len(content)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, h := range heads {
		urls = append(urls, h.url)
	}
	servers := strings.Join(urls, ",")
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	var resumed atomic.Int32
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cacheDir := t.TempDir()
			ref, policy := "r7@"+info.Chksum, "IfNotPresent"
			if i%2 == 1 {
				ref, policy = "r7", "Always"
			}
			env := []string{"DEPOT_SERVER=" + servers, "DEPOT_TOKEN=" + tok, "DEPOT_TOKEN_FILE=", "DEPOT_CACHE=" + cacheDir}
			out, stderr, code := run(t, env, "ensure", ref, "--policy", policy, "--connections", "1")
			if strings.Contains(stderr, "transfer interrupted; resuming") {
				resumed.Add(1)
			}
			if code != 0 {
				errs <- fmt.Sprintf("ensure %d (%s): exit %d: %s", i, ref, code, stderr)
				return
			}
			f, err := os.Open(strings.TrimSpace(out))
			if err != nil {
				errs <- err.Error()
				return
			}
			d, _ := digest.FromReader(f)
			f.Close()
			if d.String() != info.Chksum {
				errs <- fmt.Sprintf("ensure %d: got %s, want %s", i, d, info.Chksum)
			}
		}()
	}
	// Kill h1 once it has sent 64 MiB of the 1 GiB asked of it: transfers
	// are then certainly in flight, however fast or slow the machine is.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && sentBytes(h1.url) < 64<<20 {
		time.Sleep(2 * time.Millisecond)
	}
	h1.kill9()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	// The kill must have cut transfers, or this test proved nothing.
	if resumed.Load() == 0 {
		t.Fatal("no transfer was interrupted by the kill; the test did not exercise failover")
	}
	t.Logf("%d of 8 transfers resumed on another head", resumed.Load())
}

// sentBytes reads depot_content_sent_bytes_total from a head's /metrics.
func sentBytes(url string) float64 {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "depot_content_sent_bytes_total "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// TestGCElection: with two heads on one etcd, exactly one collects garbage;
// when it dies, the other takes over once the leader's lease expires.
func TestGCElection(t *testing.T) {
	heads, _ := sharedHeads(t, 2, etcdCatalog(t, "depot-gc"))
	h1, h2 := heads[0], heads[1]
	leaders := func(hs ...*headProc) []int {
		var out []int
		for i, h := range hs {
			if gauge(h.url, "depot_gc_leader") == 1 {
				out = append(out, i)
			}
		}
		return out
	}
	var l []int
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if l = leaders(h1, h2); len(l) == 1 {
			break
		}
	}
	if len(l) != 1 {
		t.Fatalf("leaders = %v, want exactly one", l)
	}
	// Stable: still exactly one a moment later.
	time.Sleep(500 * time.Millisecond)
	if again := leaders(h1, h2); len(again) != 1 || again[0] != l[0] {
		t.Fatalf("leadership flapped: %v then %v", l, again)
	}
	dead, survivor := h1, h2
	if l[0] == 1 {
		dead, survivor = h2, h1
	}
	dead.kill9()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if gauge(survivor.url, "depot_gc_leader") == 1 {
			return
		}
	}
	t.Fatal("the surviving head never took over garbage collection")
}

// gauge reads a metric without labels from a head's /metrics (-1 if absent).
func gauge(url, name string) float64 {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// TestServeOnEtcdTLS: two heads on an etcd that requires TLS and client
// certificates (etcds://, --etcd-ca/--etcd-cert/--etcd-key) share images and
// tokens. Flags that cannot work are usage errors (exit 2), and a head
// without a client certificate does not start.
func TestServeOnEtcdTLS(t *testing.T) {
	p := testenv.NewPKI(t)
	ep := testenv.EtcdTLS(t, p)
	cat := "etcds://" + strings.TrimPrefix(ep, "https://") + "/depot-tls"
	heads, tok := sharedHeads(t, 2, cat, "--etcd-ca", p.CA, "--etcd-cert", p.ClientCert, "--etcd-key", p.ClientKey)
	h1, h2 := heads[0], heads[1]
	ctx := context.Background()
	c1, _ := client.New(h1.url, tok)
	c2, _ := client.New(h2.url, tok)
	if _, err := c1.CreateImage(ctx, api.CreateImageRequest{Name: "over-tls"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.GetImage(ctx, "over-tls"); err != nil {
		t.Fatalf("head 2 does not see head 1's image: %v", err)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"TLS flags on a plain etcd:// URL", []string{"--catalog", "etcd://127.0.0.1:1/x", "--etcd-ca", p.CA}, 2},
		{"a certificate without its key", []string{"--catalog", cat, "--etcd-ca", p.CA, "--etcd-cert", p.ClientCert}, 2},
		{"a CA file that holds no certificate", []string{"--catalog", cat, "--etcd-ca", p.ClientKey}, 2},
	} {
		_, errs, code := run(t, nil, append([]string{"serve", "--data", t.TempDir(), "--addr", "127.0.0.1:0"}, tc.args...)...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d: %s", tc.name, code, tc.code, errs)
		}
	}
	// The CA is right but etcd wants a client certificate: the head must
	// not start (and say why) rather than serve without a catalog.
	_, errs, code := run(t, nil, "serve", "--data", t.TempDir(), "--addr", "127.0.0.1:0", "--catalog", cat, "--etcd-ca", p.CA)
	if code == 0 || !strings.Contains(errs, "etcd") {
		t.Errorf("serve without a client certificate: exit %d: %s", code, errs)
	}
}

// gatedContent is content to push that stops, once, when a read reaches
// stopAt, until gate closes: the push is then certainly mid-body.
type gatedContent struct {
	data    []byte
	stopAt  int64
	reached chan struct{}
	gate    chan struct{}
	stopped atomic.Bool
}

func (g *gatedContent) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > g.stopAt && g.stopped.CompareAndSwap(false, true) {
		close(g.reached)
		<-g.gate
	}
	if off >= int64(len(g.data)) {
		return 0, io.EOF
	}
	n := copy(p, g.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (g *gatedContent) Read([]byte) (int, error) { panic("the push must read through ReadAt") }

func (g *gatedContent) Seek(off int64, whence int) (int64, error) {
	if off != 0 || whence != io.SeekCurrent {
		panic("unexpected seek")
	}
	return 0, nil
}

// TestPushFailsOverMidBody: a head is SIGKILLed while a push (digest in a
// trailer) is halfway through its body. The client sends it again, from the
// start, to the other head, which verifies and stores it.
func TestPushFailsOverMidBody(t *testing.T) {
	heads, tok := sharedHeads(t, 2, etcdCatalog(t, "push-failover"))
	h1, h2 := heads[0], heads[1]
	c, err := client.New(h1.url+","+h2.url, tok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "fo"}); err != nil {
		t.Fatal(err)
	}
	g := &gatedContent{data: randomBytes(48 << 20), stopAt: 24 << 20, reached: make(chan struct{}), gate: make(chan struct{})}
	done := make(chan error, 1)
	var info api.ContentInfo
	go func() {
		var err error
		info, err = c.PushContent(ctx, "fo", g, int64(len(g.data)), client.PushOptions{})
		done <- err
	}()
	select {
	case <-g.reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the push never reached the middle of its body")
	}
	h1.kill9()
	close(g.gate) // the first attempt's read returns; its write fails
	if err := <-done; err != nil {
		t.Fatalf("push with head 1 killed mid-body: %v", err)
	}
	want := digest.FromBytes(g.data)
	if info.Chksum != want.String() {
		t.Fatalf("pushed %s, want %s", info.Chksum, want)
	}
	c2, _ := client.New(h2.url, tok)
	rc, err := c2.OpenContent(ctx, "fo")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, g.data) {
		t.Fatal("head 2 serves different bytes")
	}
	if revs, _ := c2.History(ctx, "fo"); len(revs) != 1 {
		t.Errorf("%d revisions, want 1", len(revs))
	}
}

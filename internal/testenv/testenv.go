// Package testenv starts the real services depot's integration tests run
// against (etcd, the distribution registry, MinIO) on loopback ports, and stops them when the test ends.
// A missing tool skips the test on a laptop but fails it under CI=true, so
// CI can never silently skip an integration test. It is used by tests only.
package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Need skips (or, under CI, fails) unless every tool is on PATH.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; scripts/test.sh installs it", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Etcd runs a single-member etcd and returns its client URL.
func Etcd(t testing.TB) string {
	t.Helper()
	return EtcdCluster(t, 1).URLs[0]
}

// EtcdMembers is a running etcd cluster.
type EtcdMembers struct {
	URLs []string // client URL of each member
	cmds []*exec.Cmd
}

// Kill stops member i with SIGKILL.
func (e *EtcdMembers) Kill(i int) {
	e.cmds[i].Process.Kill()
	e.cmds[i].Wait()
}

// EtcdCluster runs an n-member etcd cluster on loopback and waits until every
// member reports healthy (which needs a quorum).
func EtcdCluster(t testing.TB, n int) *EtcdMembers {
	t.Helper()
	Need(t, "etcd")
	peers := make([]string, n)
	e := &EtcdMembers{URLs: make([]string, n)}
	var initial []string
	for i := range n {
		e.URLs[i] = fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
		peers[i] = fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peers[i]))
	}
	token := fmt.Sprintf("depot-test-%d", time.Now().UnixNano())
	for i := range n {
		e.cmds = append(e.cmds, startEtcd(t, fmt.Sprintf("m%d", i), e.URLs[i], peers[i], strings.Join(initial, ","), token))
	}
	for _, u := range e.URLs {
		waitHTTP(t, nil, u+"/health", "etcd", 20*time.Second)
	}
	return e
}

// startEtcd starts one etcd member, with extra flags (TLS, say), and kills it
// when the test ends.
func startEtcd(t testing.TB, name, clientURL, peerURL, initial, token string, extra ...string) *exec.Cmd {
	t.Helper()
	args := append([]string{"--name", name, "--data-dir", t.TempDir(),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", initial, "--initial-cluster-state", "new",
		"--initial-cluster-token", token, "--log-level", "error"}, extra...)
	cmd := exec.Command("etcd", args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// goTool finds a tool on PATH or in $(go env GOPATH)/bin, where scripts/test.sh
// installs the Go-built ones.
func goTool(t testing.TB, name string) string {
	t.Helper()
	if bin, err := exec.LookPath(name); err == nil {
		return bin
	}
	if gp, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(gp)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	Need(t, name)
	return ""
}

// waitHTTP polls url until it answers 200 or the deadline passes.
// c nil is http.DefaultClient.
func waitHTTP(t testing.TB, c *http.Client, url, what string, wait time.Duration) {
	t.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not become healthy at %s within %s", what, url, wait)
}

// Registry runs the distribution registry (deletes enabled) and returns its
// host:port.
func Registry(t testing.TB) string {
	t.Helper()
	bin := goTool(t, "registry")
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)), 0o644)
	cmd := exec.Command(bin, "serve", cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitHTTP(t, nil, "http://"+addr+"/v2/", "registry", 5*time.Second)
	return addr
}

// MinIOServer is a running single-node MinIO.
type MinIOServer struct {
	Endpoint             string // host:port, plain http
	AccessKey, SecretKey string
	Dir                  string // its data directory
}

// MinIO runs a MinIO server on a loopback port with fresh credentials and
// an empty data directory, and stops it when the test ends.
func MinIO(t testing.TB) MinIOServer {
	t.Helper()
	return MinIOIn(t, t.TempDir())
}

// MinIOIn is MinIO keeping its data in dir (a small tmpfs, say, to fill).
func MinIOIn(t testing.TB, dir string) MinIOServer {
	t.Helper()
	bin := goTool(t, "minio")
	m := MinIOServer{
		Endpoint:  fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		AccessKey: "depot-test", SecretKey: "depot-test-secret",
		Dir: dir,
	}
	cmd := exec.Command(bin, "server", "--quiet", "--address", m.Endpoint,
		"--console-address", fmt.Sprintf("127.0.0.1:%d", FreePort(t)), m.Dir)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+m.Dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitHTTP(t, nil, "http://"+m.Endpoint+"/minio/health/ready", "minio", 30*time.Second)
	return m
}

// Tmpfs mounts a tmpfs of sizeMiB on dir until the test ends: a real disk
// that fills up. It needs root: without it the test skips, except under CI.
func Tmpfs(t testing.TB, dir string, sizeMiB int) {
	t.Helper()
	opt := fmt.Sprintf("size=%dm", sizeMiB)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opt, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("cannot mount a tmpfs in CI: %v %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
}

package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
)

// rawConn is a TCP connection to the test server on which a test writes
// requests by hand: the ones Go's client would not send.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (e *env) dial(t *testing.T) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// response reads one response within wait, failing the test if none comes.
func (rc *rawConn) response(wait time.Duration) (*http.Response, string) {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		rc.t.Fatalf("no response within %s: %v", wait, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("response body: %v", err)
	}
	return resp, string(body)
}

// closed checks that the server closes the connection within wait.
func (rc *rawConn) closed(wait time.Duration) {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(wait))
	if n, err := rc.br.Read(make([]byte, 1)); err != io.EOF {
		rc.t.Fatalf("connection not closed by the server within %s: read %d, %v", wait, n, err)
	}
}

func (e *env) auth(role string) string {
	if tok := e.tokens[role]; tok != "" {
		return "Authorization: Bearer " + tok + "\r\n"
	}
	return ""
}

// ingestFiles lists ingest/ and counts this process's descriptors open on
// files in it.
func (e *env) ingestFiles() (files, fds int) { return ingestFilesIn(e.dir) }

func ingestFilesIn(root string) (files, fds int) {
	dir := filepath.Join(root, "ingest")
	ents, _ := os.ReadDir(dir)
	fdEnts, _ := os.ReadDir("/proc/self/fd")
	for _, f := range fdEnts {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", f.Name())); err == nil && strings.HasPrefix(l, dir+"/") {
			fds++
		}
	}
	return len(ents), fds
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBodyIdleTimeout: an upload that stops sending is aborted after the
// idle timeout: 400, its part file removed, its descriptor closed. One that
// keeps sending, more slowly than the timeout in total, is not cut.
func TestBodyIdleTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.BodyIdleTimeout = 300 * time.Millisecond })
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "idle"})

	rc := e.dial(t)
	rc.send("PUT /api/v1/image/idle/content HTTP/1.1\r\nHost: x\r\n" + e.auth("writer") + "Content-Length: 1048576\r\n\r\n")
	rc.send(strings.Repeat("x", 100<<10))
	poll(t, "the upload's part file", func() bool { files, fds := e.ingestFiles(); return files == 1 && fds == 1 })
	// Now the client goes silent.
	resp, body := rc.response(10 * time.Second)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "sent nothing") {
		t.Fatalf("stalled upload: %d %s", resp.StatusCode, body)
	}
	rc.closed(5 * time.Second)
	poll(t, "the part file and its descriptor to go", func() bool { files, fds := e.ingestFiles(); return files == 0 && fds == 0 })
	if img, _ := e.reader.GetImage(ctx, "idle"); img.Content != nil || e.blobCount() != 0 {
		t.Fatalf("a stalled upload stored something: %+v", img.Content)
	}

	// Slow but moving: 6 pieces 100 ms apart take twice the timeout.
	rc = e.dial(t)
	rc.send("PUT /api/v1/image/idle/content HTTP/1.1\r\nHost: x\r\n" + e.auth("writer") + "Content-Length: 30\r\n\r\n")
	for range 6 {
		rc.send("slow ")
		time.Sleep(100 * time.Millisecond) // a slow client, not a wait for the server
	}
	if resp, body := rc.response(5 * time.Second); resp.StatusCode != 200 || !strings.Contains(body, digest.FromString(strings.Repeat("slow ", 6)).String()) {
		t.Fatalf("slow upload: %d %s", resp.StatusCode, body)
	}
}

// TestRefusalsAnswerAtOnce: a request refused before its body is read is
// answered at once and its connection closed, without the server waiting
// for (or reading) the body the client announced.
func TestRefusalsAnswerAtOnce(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxContentSize = 1 << 20 })
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "x"})
	cases := []struct {
		name, role, req string
		status          int
		msg             string
	}{
		{"anonymous PUT", "", "PUT /api/v1/image/x/content HTTP/1.1\r\nContent-Length: 100000\r\n", 401, "bearer token"},
		{"reader PUT", "reader", "PUT /api/v1/image/x/content HTTP/1.1\r\nContent-Length: 100000\r\n", 403, "needs writer"},
		{"anonymous POST", "", "POST /api/v1/images HTTP/1.1\r\nContent-Length: 100000\r\n", 401, "bearer token"},
		{"anonymous chunked", "", "PUT /api/v1/image/x/content HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", 401, "bearer token"},
		{"anonymous expect-continue", "", "PUT /api/v1/image/x/content HTTP/1.1\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n", 401, "bearer token"},
		{"Content-Length over the limit", "writer", "PUT /api/v1/image/x/content HTTP/1.1\r\nContent-Length: 2097152\r\n", 413, "over the server's 1048576-byte limit"},
		{"X-Depot-Size over the limit", "writer", "PUT /api/v1/image/x/content HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Depot-Size: 2097152\r\n", 413, "over the server's"},
		{"JSON over the limit", "writer", "POST /api/v1/images HTTP/1.1\r\nContent-Length: 100000\r\n", 413, "over the 65536-byte limit"},
		{"unknown image", "writer", "PUT /api/v1/image/ghost/content HTTP/1.1\r\nContent-Length: 100000\r\n", 404, "ghost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := e.dial(t)
			rc.send(tc.req + "Host: x\r\n" + e.auth(tc.role) + "\r\n") // and no body
			resp, body := rc.response(5 * time.Second)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.msg) {
				t.Fatalf("got %d %s, want %d mentioning %q", resp.StatusCode, body, tc.status, tc.msg)
			}
			rc.closed(5 * time.Second)
		})
	}
	if files, _ := e.ingestFiles(); files != 0 || e.blobCount() != 0 {
		t.Errorf("refused requests left %d part files, %d blobs", files, e.blobCount())
	}
	// A request whose body was read keeps its connection.
	rc := e.dial(t)
	rc.send("PUT /api/v1/image/x/content HTTP/1.1\r\nHost: x\r\n" + e.auth("writer") + "Content-Length: 5\r\n\r\nhello")
	if resp, body := rc.response(5 * time.Second); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("normal upload: %d close=%v %s", resp.StatusCode, resp.Close, body)
	}
	rc.send("GET /api/v1/image/x/content HTTP/1.1\r\nHost: x\r\n" + e.auth("reader") + "\r\n")
	if resp, body := rc.response(5 * time.Second); resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("second request on the connection: %d %q", resp.StatusCode, body)
	}
}

// TestHostileRanges: ranges that would make the server do more than send
// the content once are answered with the whole body or 416.
func TestHostileRanges(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "r"})
	data := randData(t, 100000)
	d := digest.FromBytes(data)
	if _, err := e.writer.PushContent(ctx, "r", bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	many := func(n, step int) string {
		var parts []string
		for i := range n {
			parts = append(parts, fmt.Sprintf("%d-%d", i*step, i*step))
		}
		return "bytes=" + strings.Join(parts, ",")
	}
	cases := []struct {
		name, rng string
		status    int
	}{
		{"empty suffix", "bytes=-0", 416},
		{"empty suffix among others", "bytes=0-9,-0", 416},
		{"many ranges", many(200, 2), 200},
		{"just over the limit", many(maxRanges+1, 100), 200},
		{"the same byte many times", many(100, 0), 200},
		{"overlapping", "bytes=0-499,100-199", 200},
		{"overlapping suffix", "bytes=99000-99999,-10", 200},
		{"adjacent ranges are fine", "bytes=0-9,10-19", 206},
		{"a few ranges are fine", many(maxRanges, 100), 206},
		{"one range", "bytes=10-19", 206},
		{"suffix", "bytes=-10", 206},
		{"past the end", "bytes=200000-", 416},
	}
	for _, path := range []string{"/api/v1/image/r/content", "/api/v1/blob/" + d.String()} {
		for _, tc := range cases {
			t.Run(path[8:13]+"/"+tc.name, func(t *testing.T) {
				resp, _, body := e.raw("GET", path, "reader", nil, map[string]string{"Range": tc.rng})
				if resp.StatusCode != tc.status {
					t.Fatalf("Range %.60s: %d, want %d", tc.rng, resp.StatusCode, tc.status)
				}
				switch tc.status {
				case 200:
					if !bytes.Equal(body, data) {
						t.Fatalf("Range %.60s: 200 with %d bytes, not the content", tc.rng, len(body))
					}
				case 206:
					if len(body) > len(data)/10 {
						t.Fatalf("Range %.60s: 206 of %d bytes", tc.rng, len(body))
					}
				}
			})
		}
	}
}

func reprDigest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha-256=:" + base64.StdEncoding.EncodeToString(s[:]) + ":"
}

// TestDigestTrailers: a digest in a trailer is checked whether or not the
// client announced the trailer, and one that disagrees with the header's
// is refused.
func TestDigestTrailers(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "t"})
	good := "some content"
	gd := digest.FromString(good)
	wrong := digest.FromString("something else")
	chunked := func(trailerHdr, trailer string, extra string) string {
		return "PUT /api/v1/image/t/content HTTP/1.1\r\nHost: x\r\n" + e.auth("writer") + extra + trailerHdr +
			"Transfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n", len(good), good) + trailer + "\r\n"
	}
	cases := []struct {
		name, req string
		status    int
		msg       string
	}{
		{"unannounced wrong trailer", chunked("", api.HeaderDigest+": "+wrong.String()+"\r\n", ""), 422, "verification"},
		{"announced wrong trailer", chunked("Trailer: "+api.HeaderDigest+"\r\n", api.HeaderDigest+": "+wrong.String()+"\r\n", ""), 422, "verification"},
		{"unannounced malformed trailer", chunked("", api.HeaderDigest+": sha256:zz\r\n", ""), 400, "digest"},
		{"header and trailer disagree", chunked("", api.HeaderDigest+": "+wrong.String()+"\r\n", api.HeaderDigest+": "+gd.String()+"\r\n"), 400, "disagree"},
		{"wrong Repr-Digest trailer", chunked("", "Repr-Digest: "+reprDigest([]byte("x"))+"\r\n", ""), 422, "verification"},
		{"legacy Digest trailer", chunked("", "Digest: SHA-256=abc=\r\n", ""), 400, "not read by depot"},
		{"unannounced right trailer", chunked("", api.HeaderDigest+": "+gd.String()+"\r\n", ""), 200, gd.String()},
		{"right Repr-Digest trailer and header", chunked("", "Repr-Digest: "+reprDigest([]byte(good))+"\r\n", api.HeaderDigest+": "+gd.String()+"\r\n"), 200, gd.String()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.blobCount()
			rc := e.dial(t)
			rc.send(tc.req)
			resp, body := rc.response(5 * time.Second)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.msg) {
				t.Fatalf("got %d %s, want %d mentioning %q", resp.StatusCode, body, tc.status, tc.msg)
			}
			if tc.status != 200 && e.blobCount() != before {
				t.Fatalf("a refused upload stored a blob")
			}
		})
	}
}

// TestRFC9530Digests: Repr-Digest and Content-Digest with sha-256 are
// verified like X-Depot-Digest; a digest field depot cannot check is
// refused rather than ignored.
func TestRFC9530Digests(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "d"})
	data := []byte("declared content")
	other := []byte("other")
	s512 := sha512.Sum512(data)
	sha512Only := "sha-512=:" + base64.StdEncoding.EncodeToString(s512[:]) + ":"
	cases := []struct {
		name   string
		hdr    map[string]string
		status int
		msg    string
	}{
		{"Repr-Digest", map[string]string{"Repr-Digest": reprDigest(data)}, 200, ""},
		{"Content-Digest", map[string]string{"Content-Digest": reprDigest(data)}, 200, ""},
		{"sha-512 beside sha-256", map[string]string{"Repr-Digest": sha512Only + ", " + reprDigest(data)}, 200, ""},
		{"wrong Repr-Digest", map[string]string{"Repr-Digest": reprDigest(other)}, 422, "verification"},
		{"wrong Content-Digest", map[string]string{"Content-Digest": reprDigest(other)}, 422, "verification"},
		{"sha-512 only", map[string]string{"Repr-Digest": sha512Only}, 400, "sha-256 only"},
		{"not base64", map[string]string{"Repr-Digest": "sha-256=:!!!:"}, 400, "base64"},
		{"short", map[string]string{"Repr-Digest": "sha-256=:AAAA:"}, 400, "not 32"},
		{"not a byte sequence", map[string]string{"Repr-Digest": "sha-256=abc"}, 400, "byte sequence"},
		{"twice", map[string]string{"Repr-Digest": reprDigest(data) + "," + reprDigest(other)}, 400, "twice"},
		{"legacy Digest", map[string]string{"Digest": "SHA-256=" + base64.StdEncoding.EncodeToString([]byte("x"))}, 400, "not read by depot"},
		{"Content-MD5", map[string]string{"Content-MD5": "abc"}, 400, "not read by depot"},
		{"fields disagree", map[string]string{"Repr-Digest": reprDigest(data), api.HeaderDigest: digest.FromBytes(other).String()}, 400, "disagree"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.blobCount()
			resp, env, _ := e.raw("PUT", "/api/v1/image/d/content", "writer", data, tc.hdr)
			if resp.StatusCode != tc.status || !strings.Contains(env.Error, tc.msg) {
				t.Fatalf("got %d %q, want %d mentioning %q", resp.StatusCode, env.Error, tc.status, tc.msg)
			}
			if tc.status != 200 && e.blobCount() != before {
				t.Fatal("a refused upload stored a blob")
			}
		})
	}
}

// TestStrictJSON: what encoding/json would resolve quietly (the last of
// two equal keys wins; keys match fields whatever their case) is refused.
func TestStrictJSON(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "j"})
	cases := []struct{ name, method, path, body, msg string }{
		{"duplicate key", "POST", "/api/v1/images", `{"name":"a","name":"b"}`, "twice"},
		{"keys differing in case", "POST", "/api/v1/images", `{"name":"a","NAME":"b"}`, "differ only in case"},
		{"long s", "PATCH", "/api/v1/image/j", `{"distro":"a","di\u017ftro":"b"}`, "differ only in case"},
		{"a key in another case", "POST", "/api/v1/images", `{"Name":"a"}`, "unknown field"},
		{"duplicate in patch", "PATCH", "/api/v1/image/j", `{"frozen":true,"frozen":false}`, "twice"},
		{"duplicate in clone", "POST", "/api/v1/image/j/clone", `{"name":"c","description":"x","Description":"y"}`, "differ only in case"},
		{"duplicate in token request", "POST", "/api/v1/tokens", `{"subject":"a","role":"reader","role":"admin"}`, "twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := e.reader.ListImages(ctx)
			resp, env, _ := e.raw(tc.method, tc.path, "admin", []byte(tc.body), nil)
			if resp.StatusCode != 400 || !strings.Contains(env.Error, tc.msg) {
				t.Fatalf("got %d %q, want 400 mentioning %q", resp.StatusCode, env.Error, tc.msg)
			}
			after, _ := e.reader.ListImages(ctx)
			img, _ := e.reader.GetImage(ctx, "j")
			if len(after) != len(before) || img.Frozen {
				t.Fatalf("a refused request changed something")
			}
		})
	}
}

// TestErrorsAreBounded: an error message quotes at most a little of the
// input it refuses and never a path of the server's data directory.
func TestErrorsAreBounded(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "ok"})
	long := strings.Repeat("%", 10<<10)
	longName := strings.Repeat("é!", 5<<10)
	cases := []struct {
		name, method, path, body string
		hdr                      map[string]string
		status                   int
	}{
		{"long ref", "GET", "/api/v1/image/" + strings.Repeat("a%21", 2500), "", nil, 400},
		{"long image name", "POST", "/api/v1/images", `{"name":"` + longName + `"}`, nil, 400},
		{"long unknown field", "POST", "/api/v1/images", `{"` + long + `":1}`, nil, 400},
		{"long duplicate field", "POST", "/api/v1/images", `{"` + long + `":1,"` + long + `":2}`, nil, 400},
		{"long role", "POST", "/api/v1/tokens", `{"subject":"a","role":"` + long + `"}`, nil, 400},
		{"long digest", "PUT", "/api/v1/image/ok/content", "x", map[string]string{api.HeaderDigest: "sha256:" + long}, 400},
		{"long size", "PUT", "/api/v1/image/ok/content", "x", map[string]string{"X-Depot-Size": long}, 400},
		{"long If-Match", "PUT", "/api/v1/image/ok/content", "x", map[string]string{"If-Match": `"sha256:` + long + `"`}, 400},
		{"long parent", "POST", "/api/v1/images", `{"name":"p","parent":"` + long + `"}`, nil, 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			resp, env, raw := e.raw(tc.method, tc.path, "admin", body, tc.hdr)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%.200s), want %d", resp.StatusCode, env.Error, tc.status)
			}
			if len(raw) > 400 {
				t.Fatalf("a %d-byte answer to a long input: %.300s…", len(raw), raw)
			}
		})
	}

	// A storage error (the ingest directory is a file) is a 500 whose
	// message names no path of the server.
	ingest := filepath.Join(e.dir, "ingest")
	if err := os.RemoveAll(ingest); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ingest, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	resp, env, raw := e.raw("PUT", "/api/v1/image/ok/content", "writer", []byte("x"), nil)
	if resp.StatusCode != 500 || strings.Contains(string(raw), e.dir) || strings.Contains(string(raw), "ingest/") || !strings.Contains(env.Error, "<path>") {
		t.Fatalf("storage error: %d %s", resp.StatusCode, raw)
	}
}

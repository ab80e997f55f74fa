package main

import (
	"bufio"
	"encoding/json"
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
)

// exchange writes req on a fresh connection to h and reads one response
// within 5 s. With checkClose, it reports whether the server then closed
// the connection (EOF within 5 s) without the test sending anything more.
func exchange(t *testing.T, h *headProc, checkClose bool, req string, thenSend ...string) (status int, body string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(h.direct, "http://")) // hostile on purpose: not through the contract proxy
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	for _, s := range thenSend {
		io.WriteString(c, s)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response within 5 s: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if !checkClose {
		return resp.StatusCode, string(b), false
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = br.ReadByte()
	return resp.StatusCode, string(b), err == io.EOF
}

// serverFDsUnder counts the descriptors the server process h has open on
// files under dir.
func serverFDsUnder(t *testing.T, h *headProc, dir string) int {
	fdDir := fmt.Sprintf("/proc/%d/fd", h.cmd.Process.Pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && strings.HasPrefix(l, dir+"/") {
			n++
		}
	}
	return n
}

// TestHostileRequests is the hostile-input suite against a real `depot
// serve`: requests Go's client would not send, written by hand on TCP.
// Each is answered at once, with a short message, and stores nothing.
func TestHostileRequests(t *testing.T) {
	data := t.TempDir()
	h := startServe(t, data, "--max-content-size", "1048576", "--body-idle-timeout", "1s")
	admin := adminToken(t, data)
	bearer := func(tok string) string { return "Authorization: Bearer " + tok + "\r\n" }
	post := func(path, body string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: x\r\n" + bearer(admin) + fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body)
	}
	if st, body, _ := exchange(t, h, false, post("/api/v1/images", `{"name":"h"}`)); st != 201 {
		t.Fatalf("create: %d %s", st, body)
	}
	_, body, _ := exchange(t, h, false, post("/api/v1/tokens", `{"subject":"r","role":"reader"}`))
	var env struct{ Data api.Token }
	if err := json.Unmarshal([]byte(body), &env); err != nil || env.Data.Token == "" {
		t.Fatalf("reader token: %s", body)
	}
	reader := env.Data.Token
	put := "PUT /api/v1/image/h/content HTTP/1.1\r\nHost: x\r\n"
	content := strings.Repeat("hostile suite ", 100)
	cd := digest.FromString(content)
	if st, body, _ := exchange(t, h, false, put+bearer(admin)+fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(content), content)); st != 200 {
		t.Fatalf("push: %d %s", st, body)
	}
	get := func(rng string) string {
		return "GET /api/v1/image/h/content HTTP/1.1\r\nHost: x\r\n" + bearer(reader) + "Range: " + rng + "\r\n\r\n"
	}
	chunkedWithTrailer := put + bearer(admin) + "Transfer-Encoding: chunked\r\n\r\n" +
		fmt.Sprintf("%x\r\n%s\r\n0\r\n%s: %s\r\n\r\n", 5, "other", api.HeaderDigest, digest.FromString("not it"))
	many := make([]string, 100)
	for i := range many {
		many[i] = fmt.Sprintf("%d-%d", 2*i, 2*i)
	}
	cases := []struct {
		name, req string
		status    int
		msg       string
		closes    bool
	}{
		{"anonymous PUT with an unsent body", put + "Content-Length: 100000\r\n\r\n", 401, "bearer token", true},
		{"reader PUT with an unsent body", put + bearer(reader) + "Content-Length: 100000\r\n\r\n", 403, "needs writer", true},
		{"declared size over --max-content-size", put + bearer(admin) + "Content-Length: 2000000\r\n\r\n", 413, "--max-content-size", true},
		{"chunked, X-Depot-Size over the limit", put + bearer(admin) + "Transfer-Encoding: chunked\r\nX-Depot-Size: 2000000\r\n\r\n", 413, "limit", true},
		{"empty suffix range", get("bytes=-0"), 416, "", false},
		{"a hundred ranges", get("bytes=" + strings.Join(many, ",")), 200, content, false},
		{"overlapping ranges", get("bytes=0-99,50-149"), 200, content, false},
		{"unannounced wrong trailer", chunkedWithTrailer, 422, "verification", false},
		{"duplicate JSON key", post("/api/v1/images", `{"name":"a","name":"b"}`), 400, "twice", false},
		{"JSON keys differing in case", post("/api/v1/images", `{"name":"a","Name":"b"}`), 400, "differ only in case", false},
		{"10 KiB image name", post("/api/v1/images", `{"name":"`+strings.Repeat("!", 10<<10)+`"}`), 400, "10240 bytes", false},
		{"legacy Digest header", put + bearer(admin) + "Digest: SHA-256=x\r\nContent-Length: 1\r\n\r\nx", 400, "not read by depot", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, body, closed := exchange(t, h, tc.closes, tc.req)
			if st != tc.status || !strings.Contains(body, tc.msg) {
				t.Fatalf("got %d %.300s, want %d mentioning %q", st, body, tc.status, tc.msg)
			}
			if tc.closes && !closed {
				t.Fatal("the server kept the connection open")
			}
			if st >= 400 && (len(body) > 1024 || strings.Contains(body, data)) {
				t.Fatalf("answer of %d bytes, or naming the data dir: %.300s", len(body), body)
			}
		})
	}

	// An upload that goes silent is aborted after --body-idle-timeout: its
	// part file goes and the server closes its descriptor.
	ingest := filepath.Join(data, "ingest")
	st, body, closed := exchange(t, h, true, put+bearer(admin)+"Content-Length: 500000\r\n\r\n", strings.Repeat("x", 100000))
	if st != 400 || !strings.Contains(body, "sent nothing for 1s") || !closed {
		t.Fatalf("stalled upload: %d %s closed=%v", st, body, closed)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(ingest)
		if len(ents) == 0 && serverFDsUnder(t, h, ingest) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the abort: %d files in ingest/, %d server descriptors on them", len(ents), serverFDsUnder(t, h, ingest))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Nothing above changed the content.
	st, body, _ = exchange(t, h, false, "GET /api/v1/image/h/content/info HTTP/1.1\r\nHost: x\r\n"+bearer(reader)+"\r\n")
	if st != 200 || !strings.Contains(body, cd.String()) {
		t.Fatalf("content after the suite: %d %s", st, body)
	}

	if _, errs, code := run(t, nil, "serve", "--data", t.TempDir(), "--addr", "127.0.0.1:0", "--body-idle-timeout", "10ms"); code != 2 || !strings.Contains(errs, "--body-idle-timeout") {
		t.Errorf("--body-idle-timeout 10ms: exit %d %s", code, errs)
	}
}

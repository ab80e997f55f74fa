package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const stall = 500 * time.Millisecond

func timeouts() client.Timeouts { return client.Timeouts{Stall: stall} }

func TestStallBeforeHeaders(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer s.Close()
	hc := client.NewHTTPClient(timeouts())
	defer hc.CloseIdleConnections()
	start := time.Now()
	_, err := hc.Get(s.URL)
	if !client.IsStall(err) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Get = %v, want a StallError", err)
	}
	if took := time.Since(start); took < stall || took > 4*stall {
		t.Errorf("a stall of %s failed after %s", stall, took)
	}
}

func TestStallMidBodyAndSlowBody(t *testing.T) {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		for i := range 10 {
			w.Write([]byte("0123456789"))
			w.(http.Flusher).Flush()
			if r.URL.Path == "/stall" && i == 4 {
				<-r.Context().Done()
				return
			}
			time.Sleep(stall / 4) // /slow: moving, under the stall timeout per byte, over it in all
		}
	}))
	defer s.Close()
	hc := client.NewHTTPClient(timeouts())
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(s.URL + "/stall")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !client.IsStall(err) || len(b) != 50 {
		t.Fatalf("stalled body: %d bytes, %v; want 50 and a StallError", len(b), err)
	}
	start := time.Now()
	resp, err = hc.Get(s.URL + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	b, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(b) != 100 {
		t.Fatalf("slow but moving body: %d bytes, %v", len(b), err)
	}
	if time.Since(start) < 2*stall {
		t.Fatal("the slow body was not slower than the stall timeout: the test proves nothing")
	}
}

func TestRedirectPolicy(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "plain") }))
	defer plain.Close()
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/down":
			http.Redirect(w, r, plain.URL+"/x", http.StatusFound)
		case "/file":
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
		case "/same":
			http.Redirect(w, r, "/ok", http.StatusFound)
		default:
			io.WriteString(w, "secure")
		}
	}))
	defer secure.Close()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, secure.URL+"/ok", http.StatusFound)
	}))
	defer up.Close()
	hc := client.NewHTTPClient(client.Timeouts{TLSConfig: secure.Client().Transport.(*http.Transport).TLSClientConfig})
	defer hc.CloseIdleConnections()
	for _, path := range []string{"/down", "/file"} {
		_, err := hc.Get(secure.URL + path)
		var re *client.RedirectError
		if !errors.As(err, &re) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want a RedirectError", path, err)
		}
	}
	for _, u := range []string{secure.URL + "/same", up.URL} { // https->https, http->https
		resp, err := hc.Get(u)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		resp.Body.Close()
	}
}

// TestDownloadMovesToNextHeadAfterStall: a blob download that stalls on
// one head sends the next request (the resume) to the next head.
func TestDownloadMovesToNextHeadAfterStall(t *testing.T) {
	data := strings.Repeat("x", 1000)
	d := digest.FromString(data)
	var hits [2][]string
	head := func(i int, stalls bool) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i] = append(hits[i], r.Header.Get("Range"))
			w.Header().Set("Accept-Ranges", "bytes")
			if stalls {
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				w.WriteHeader(http.StatusOK)
				io.WriteString(w, data[:400])
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			http.ServeContent(w, r, "", time.Time{}, strings.NewReader(data))
		}))
	}
	a, b := head(0, true), head(1, false)
	defer a.Close()
	defer b.Close()
	c, err := client.New(a.URL+","+b.URL, "", client.WithTimeouts(timeouts()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	body, err := c.OpenBlob(ctx, d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if !client.IsStall(err) || len(got) != 400 {
		t.Fatalf("first head: %d bytes, %v; want 400 and a stall", len(got), err)
	}
	body, err = c.OpenBlob(ctx, d, 400, -1)
	if err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(body)
	body.Close()
	if err != nil || string(got)+string(rest) != data {
		t.Fatalf("resume: %d bytes, %v", len(rest), err)
	}
	if len(hits[0]) != 1 || len(hits[1]) != 1 || hits[1][0] != "bytes=400-" {
		t.Fatalf("requests: first head %q, second head %q; want the resume on the second head", hits[0], hits[1])
	}
}

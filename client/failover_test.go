package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
)

// countedHead is a real HTTP server that counts the requests it was sent
// and answers each with answer.
type countedHead struct {
	*httptest.Server
	hits atomic.Int32
}

func newCountedHead(t *testing.T, answer http.HandlerFunc) *countedHead {
	h := &countedHead{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.hits.Add(1)
		io.Copy(io.Discard, r.Body)
		answer(w, r)
	}))
	t.Cleanup(h.Close)
	return h
}

// answerErr answers as a depot head does when err happened.
func answerErr(err error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		status, env := api.ErrorEnvelope(err)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(env)
	}
}

func answerOK(w http.ResponseWriter, r *http.Request) {
	data, _ := json.Marshal(api.ContentInfo{Size: 3, Chksum: "sha256:x"})
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.Envelope{Success: true, Data: data})
}

// TestFailoverPolicy: a request goes to each head at most once, in order;
// it moves on after a connection error or a 5xx, and never after a refusal
// that every head would repeat: a 4xx (a verification failure included) or
// 507 (the shared store is full). The head that answered is asked first
// next time.
func TestFailoverPolicy(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		first   http.HandlerFunc
		moves   bool
		wantErr error // when the first head's answer is final
		closed  bool  // the first head is down
	}{
		{name: "503", first: answerErr(errdefs.ErrUnavailable), moves: true},
		{name: "500", first: answerErr(errors.New("boom")), moves: true},
		{name: "down", closed: true, moves: true},
		{name: "507", first: answerErr(errdefs.ErrNoSpace), wantErr: errdefs.ErrNoSpace},
		{name: "400", first: answerErr(errdefs.ErrInvalidArgument), wantErr: errdefs.ErrInvalidArgument},
		{name: "401", first: answerErr(errdefs.ErrUnauthorized), wantErr: errdefs.ErrUnauthorized},
		{name: "404", first: answerErr(errdefs.ErrNotFound), wantErr: errdefs.ErrNotFound},
		{name: "409", first: answerErr(errdefs.ErrConflict), wantErr: errdefs.ErrConflict},
		{name: "412", first: answerErr(&errdefs.PreconditionError{Want: "sha256:a"}), wantErr: errdefs.ErrPrecondition},
		{name: "422", first: answerErr(&errdefs.VerificationError{Want: "sha256:a", Got: "sha256:b"}), wantErr: errdefs.ErrVerification},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newCountedHead(t, c.first)
			b := newCountedHead(t, answerOK)
			if c.closed {
				a.Close()
			}
			cl, err := client.New(a.URL+","+b.URL, "", client.WithTimeouts(timeouts()))
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.ContentInfo(ctx, "img")
			if c.moves {
				if err != nil || b.hits.Load() != 1 {
					t.Fatalf("err %v, second head asked %d times; want it asked once, and success", err, b.hits.Load())
				}
				// The head that answered is asked first from now on.
				if _, err := cl.ContentInfo(ctx, "img"); err != nil || b.hits.Load() != 2 {
					t.Fatalf("next request: %v, second head asked %d times", err, b.hits.Load())
				}
				if !c.closed && a.hits.Load() != 1 {
					t.Fatalf("first head asked %d times, want 1", a.hits.Load())
				}
				return
			}
			if !errors.Is(err, c.wantErr) || a.hits.Load() != 1 || b.hits.Load() != 0 {
				t.Fatalf("err %v, heads asked %d and %d times; want %v from the first only", err, a.hits.Load(), b.hits.Load(), c.wantErr)
			}
		})
	}
}

// TestFailoverTriesEachHeadOnce: when every head fails, each was asked
// exactly once, and the error is the last head's answer.
func TestFailoverTriesEachHeadOnce(t *testing.T) {
	heads := []*countedHead{
		newCountedHead(t, answerErr(errdefs.ErrUnavailable)),
		newCountedHead(t, answerErr(errors.New("boom"))),
		newCountedHead(t, answerErr(errdefs.ErrUnavailable)),
	}
	cl, err := client.New(heads[0].URL+","+heads[1].URL+","+heads[2].URL, "", client.WithTimeouts(timeouts()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.GetImage(context.Background(), "img")
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err %v, want ErrUnavailable", err)
	}
	for i, h := range heads {
		if h.hits.Load() != 1 {
			t.Errorf("head %d asked %d times, want 1", i, h.hits.Load())
		}
	}
}

// TestPushResendPolicy: an upload from a file is sent again, from the
// start, to the next head after a 5xx; a stream that cannot be read again
// is not; and a refusal (verification, no space) is never resent.
func TestPushResendPolicy(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(file, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		first   http.HandlerFunc
		stream  bool
		resent  bool
		wantErr error
	}{
		{name: "file 503", first: answerErr(errdefs.ErrUnavailable), resent: true},
		{name: "stream 503", first: answerErr(errdefs.ErrUnavailable), stream: true, wantErr: errdefs.ErrUnavailable},
		{name: "file 422", first: answerErr(&errdefs.VerificationError{Want: "sha256:a", Got: "sha256:b"}), wantErr: errdefs.ErrVerification},
		{name: "file 507", first: answerErr(errdefs.ErrNoSpace), wantErr: errdefs.ErrNoSpace},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newCountedHead(t, c.first)
			b := newCountedHead(t, answerOK)
			cl, err := client.New(a.URL+","+b.URL, "", client.WithTimeouts(timeouts()))
			if err != nil {
				t.Fatal(err)
			}
			var r io.Reader = strings.NewReader("abc")
			if c.stream {
				r = io.LimitReader(r, 3) // no ReadAt, no Seek
			} else {
				f, err := os.Open(file)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				r = f
			}
			_, err = cl.PushContent(ctx, "img", r, 3, client.PushOptions{})
			switch {
			case c.resent:
				if err != nil || a.hits.Load() != 1 || b.hits.Load() != 1 {
					t.Fatalf("err %v, heads asked %d and %d times; want one resend", err, a.hits.Load(), b.hits.Load())
				}
			default:
				if !errors.Is(err, c.wantErr) || a.hits.Load() != 1 || b.hits.Load() != 0 {
					t.Fatalf("err %v, heads asked %d and %d times; want %v from the first only", err, a.hits.Load(), b.hits.Load(), c.wantErr)
				}
			}
		})
	}
}

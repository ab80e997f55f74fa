package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/depot-images/depot/errdefs"
)

// reqBody wraps every request body the server reads. It bounds how long
// one Read may wait for the client (the body idle timeout, enforced with a
// read deadline on the connection, so a stalled client fails the blocked
// Read instead of holding the handler, its part file and its descriptor),
// and it remembers whether the body was read to its end, so that a
// response written before then closes the connection instead of waiting
// for (or draining) a body nobody will read.
type reqBody struct {
	rc   io.ReadCloser
	orig *http.Request // the request the server parsed: its Trailer is filled in at EOF
	ctl  *http.ResponseController
	idle time.Duration

	sawEOF   bool
	timedOut bool
}

type bodyKey struct{}

// bodyOfRequest returns the reqBody handle wraps r's body in (nil for a
// request without a body).
func bodyOfRequest(r *http.Request) *reqBody {
	b, _ := r.Context().Value(bodyKey{}).(*reqBody)
	return b
}

// wrapBody installs a reqBody on r2 (the handler's copy of orig) when the
// request has a body.
func wrapBody(ctx context.Context, w http.ResponseWriter, orig *http.Request, idle time.Duration) (context.Context, *reqBody) {
	if orig.Body == nil || orig.Body == http.NoBody || orig.ContentLength == 0 {
		return ctx, nil
	}
	b := &reqBody{rc: orig.Body, orig: orig, ctl: http.NewResponseController(w), idle: idle}
	return context.WithValue(ctx, bodyKey{}, b), b
}

func (b *reqBody) Read(p []byte) (int, error) {
	if b.sawEOF {
		return 0, io.EOF
	}
	if b.idle > 0 {
		// Errors only when the connection has no deadlines (a test's
		// hijacked conn): the read is then unbounded, as before.
		_ = b.ctl.SetReadDeadline(time.Now().Add(b.idle))
	}
	n, err := b.rc.Read(p)
	if b.idle > 0 {
		// Cleared at once: after EOF the server reads the connection in
		// the background, and a deadline left behind would cancel the
		// request while the upload commits.
		_ = b.ctl.SetReadDeadline(time.Time{})
	}
	switch {
	case err == io.EOF:
		b.sawEOF = true
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		b.timedOut = true
		return n, fmt.Errorf("the client sent nothing for %s; upload aborted: %w", b.idle, errdefs.ErrInvalidArgument)
	}
	return n, err
}

func (b *reqBody) Close() error { return b.rc.Close() }

// pending reports whether the client may still be sending body bytes that
// nobody has read.
func (b *reqBody) pending() bool { return b != nil && !b.sawEOF }

// Trailer is the request's trailer, filled in once the body has been read
// to its end, whether or not the client announced it in a Trailer header.
// (The handler's request is a copy; the server fills in the trailer of the
// request it parsed, and only a trailer announced up front is a map that
// both share.)
func (b *reqBody) Trailer() http.Header {
	if b == nil {
		return nil
	}
	return b.orig.Trailer
}

// abandon makes sure the server does not wait for the rest of a body the
// handler did not read. The response has said "Connection: close". An
// over-limit http.MaxBytesReader tells the server to close the way it does
// after an over-long body: send FIN at once, absorb what the client is
// still sending for a moment, then close, so that a client busy writing
// its body still reads the answer instead of a reset. An immediate read
// deadline makes the server's own drain of the body (up to 256 KiB on a
// keep-alive connection) return at once.
func (b *reqBody) abandon(w http.ResponseWriter) {
	if !b.pending() {
		return
	}
	_, _ = http.MaxBytesReader(w, io.NopCloser(strings.NewReader("x")), 0).Read(make([]byte, 1))
	_ = b.ctl.SetReadDeadline(time.Now())
}

package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/depot-images/depot/errdefs"
)

// Timeouts bound every wait of an HTTP client. A zero field takes the
// default.
type Timeouts struct {
	// Connect bounds the TCP connect.
	Connect time.Duration
	// TLS bounds the TLS handshake.
	TLS time.Duration
	// Stall is the longest a request may wait without a byte: for the
	// response headers of a request without a body, and between bytes of
	// any response body. A large transfer that keeps moving is never cut.
	Stall time.Duration
	// CommitHeader bounds the wait for the response headers of a request
	// with a body (an upload), counted from its last byte: the server
	// verifies and commits before it answers.
	CommitHeader time.Duration
	// TLSConfig, when set, replaces the default TLS configuration (a
	// private CA, say).
	TLSConfig *tls.Config
}

// Default timeouts.
const (
	DefaultConnect      = 30 * time.Second
	DefaultTLS          = 30 * time.Second
	DefaultStall        = 60 * time.Second
	DefaultCommitHeader = 15 * time.Minute
)

func (t Timeouts) withDefaults() Timeouts {
	if t.Connect <= 0 {
		t.Connect = DefaultConnect
	}
	if t.TLS <= 0 {
		t.TLS = DefaultTLS
	}
	if t.Stall <= 0 {
		t.Stall = DefaultStall
	}
	if t.CommitHeader <= 0 {
		t.CommitHeader = DefaultCommitHeader
	}
	return t
}

// StallError says a peer sent nothing for Timeout: no response headers, or
// no byte of a body. It is ErrUnavailable: the transfer resumes, on the next
// head when there is one.
type StallError struct {
	URL     string
	Timeout time.Duration
	Headers bool // it stalled before the response headers
}

func (e *StallError) Error() string {
	what := "body"
	if e.Headers {
		what = "response headers"
	}
	return fmt.Sprintf("%s: no bytes of the %s for %s (--stall-timeout)", e.URL, what, e.Timeout)
}

// Is makes errors.Is(err, errdefs.ErrUnavailable) true.
func (e *StallError) Is(target error) bool { return target == errdefs.ErrUnavailable }

// RedirectError says a redirect was refused: from https to http (a
// downgrade), or to a scheme depot does not speak. It is
// ErrInvalidArgument: the source is misconfigured or hostile, and asking
// again gets the same answer.
type RedirectError struct {
	From, To string
	Reason   string
}

func (e *RedirectError) Error() string {
	return fmt.Sprintf("redirect from %s to %s refused: %s", e.From, e.To, e.Reason)
}

// Is makes errors.Is(err, errdefs.ErrInvalidArgument) true.
func (e *RedirectError) Is(target error) bool { return target == errdefs.ErrInvalidArgument }

// maxRedirects bounds a redirect chain.
const maxRedirects = 10

// CheckRedirect is the redirect policy of every depot HTTP client: at most
// 10 hops, http(s) only, and never from https down to http.
func CheckRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects: %w", maxRedirects, errdefs.ErrUnavailable)
	}
	prev := via[len(via)-1].URL
	switch {
	case req.URL.Scheme != "http" && req.URL.Scheme != "https":
		return &RedirectError{From: redact(prev), To: redact(req.URL), Reason: "only http and https are followed"}
	case req.URL.Scheme == "http" && (prev.Scheme == "https" || via[0].URL.Scheme == "https"):
		return &RedirectError{From: redact(prev), To: redact(req.URL), Reason: "https must not be downgraded to http"}
	}
	return nil
}

// redact drops the query (a presigned URL's signature) and any user info.
func redact(u *url.URL) string {
	c := *u
	c.RawQuery, c.User, c.Fragment = "", nil, ""
	return c.String()
}

// NewHTTPClient returns an HTTP client with t's connect, TLS, header and
// stall timeouts and CheckRedirect. It has no overall deadline: a large
// download takes as long as it takes while bytes keep arriving.
func NewHTTPClient(t Timeouts) *http.Client {
	return &http.Client{Transport: NewTransport(t), CheckRedirect: CheckRedirect}
}

// NewTransport returns a RoundTripper with t's timeouts; see NewHTTPClient.
func NewTransport(t Timeouts) http.RoundTripper {
	t = t.withDefaults()
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.DialContext = (&net.Dialer{Timeout: t.Connect, KeepAlive: 30 * time.Second}).DialContext
	base.TLSHandshakeTimeout = t.TLS
	if t.TLSConfig != nil {
		base.TLSClientConfig = t.TLSConfig
	}
	base.ResponseHeaderTimeout = t.CommitHeader
	base.ExpectContinueTimeout = time.Second
	return &stallTransport{base: base, t: t}
}

// stallTransport enforces the stall timeout: a bodiless request gets its
// headers within Stall, and a body read that gets no byte for Stall fails
// with StallError (the request is cancelled, which frees the connection).
type stallTransport struct {
	base *http.Transport
	t    Timeouts
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// pooled connections.
func (s *stallTransport) CloseIdleConnections() { s.base.CloseIdleConnections() }

func (s *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	var headerStall atomic.Bool
	var timer *time.Timer
	if req.Body == nil || req.Body == http.NoBody {
		timer = time.AfterFunc(s.t.Stall, func() { headerStall.Store(true); cancel() })
	}
	resp, err := s.base.RoundTrip(req.WithContext(ctx))
	if timer != nil {
		timer.Stop()
	}
	if err != nil {
		cancel()
		if headerStall.Load() && req.Context().Err() == nil {
			return nil, &StallError{URL: redact(req.URL), Timeout: s.t.Stall, Headers: true}
		}
		return nil, err
	}
	resp.Body = &stallBody{rc: resp.Body, cancel: cancel, ctx: req.Context(), stall: s.t.Stall, url: redact(req.URL)}
	return resp, nil
}

// stallBody times each Read: a Read blocked for stall without a byte
// cancels the request. Time the caller spends between reads (writing to
// disk, hashing) is not counted.
type stallBody struct {
	rc     io.ReadCloser
	cancel context.CancelFunc
	ctx    context.Context // the caller's
	stall  time.Duration
	url    string

	mu      sync.Mutex
	timer   *time.Timer
	stalled atomic.Bool
}

func (b *stallBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.timer == nil {
		b.timer = time.AfterFunc(b.stall, func() { b.stalled.Store(true); b.cancel() })
	} else {
		b.timer.Reset(b.stall)
	}
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	b.mu.Lock()
	b.timer.Stop()
	b.mu.Unlock()
	if err != nil && err != io.EOF && b.stalled.Load() && b.ctx.Err() == nil {
		return n, &StallError{URL: b.url, Timeout: b.stall}
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.mu.Lock()
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()
	err := b.rc.Close()
	b.cancel()
	return err
}

// IsStall reports whether err is a StallError.
func IsStall(err error) bool {
	var se *StallError
	return errors.As(err, &se)
}

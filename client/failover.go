package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/cenkalti/backoff/v5"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// send performs req under the failover policy and converts transport
// failures and error responses into the errdefs vocabulary.
//
// The policy is the client's one retry loop, upload resends included: one
// attempt per head, starting at the head that answered last and going on
// to the next after a connection error, a stall or a 5xx, without waiting
// (the next head is ready now, and a head that is down does not come back
// within a backoff). What every head would answer alike is permanent and
// never sent again: a 4xx refusal (a verification failure is 422), 507
// (ErrNoSpace: the store the heads share is full), a refused redirect, the
// caller's cancellation, and the last head's answer. A request whose body
// cannot be sent again (a streamed upload) gets one attempt only.
func (c *Client) send(req *http.Request, what string) (*http.Response, error) {
	first, n := c.headOf(req), len(c.bases)
	attempt := 0
	var lastErr error // of the previous attempt, for a request that cannot go on
	try := func() (*http.Response, error) {
		i := attempt
		attempt++
		head := (first + i) % n
		r := req
		if i > 0 {
			var ok bool
			if r, ok = c.onHead(req, first, head); !ok {
				return nil, backoff.Permanent(lastErr)
			}
		}
		resp, err := c.hc.Do(r)
		if err != nil {
			if ctxErr := req.Context().Err(); ctxErr != nil {
				return nil, backoff.Permanent(ctxErr)
			}
			var re *RedirectError
			if errors.As(err, &re) { // every head would redirect alike
				return nil, backoff.Permanent(fmt.Errorf("%s: %w", what, re))
			}
			if IsStall(err) {
				lastErr = fmt.Errorf("%s: %s: %w", what, c.bases[head].Host, err)
			} else {
				lastErr = fmt.Errorf("%s: %s: %v: %w", what, c.bases[head].Host, err, errdefs.ErrUnavailable)
			}
			return nil, lastErr
		}
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusInsufficientStorage && i < n-1 && canResend(req) {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			lastErr = fmt.Errorf("%s: %s: HTTP %d: %w", what, c.bases[head].Host, resp.StatusCode, errdefs.ErrUnavailable)
			return nil, lastErr
		}
		c.cur.Store(int32(head))
		if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotModified {
			return nil, backoff.Permanent(responseError(resp, what))
		}
		return resp, nil
	}
	// Cancellation is the attempt's to see (hc.Do fails with it, and it is
	// reported as ctx.Err(), not a cause); the policy itself never waits.
	resp, err := backoff.Retry(context.WithoutCancel(req.Context()), try,
		backoff.WithBackOff(&backoff.ZeroBackOff{}), backoff.WithMaxTries(uint(n)), backoff.WithMaxElapsedTime(0))
	if p, ok := err.(*backoff.PermanentError); ok { // Retry returns it as is from the last try
		err = p.Err
	}
	return resp, err
}

// responseError reads an error response (and closes it) into the errdefs
// vocabulary through api's table.
func responseError(resp *http.Response, what string) error {
	defer resp.Body.Close()
	var env api.Envelope
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(data, &env) != nil {
		env = api.Envelope{Error: strings.TrimSpace(string(data))}
		if env.Error == "" {
			env.Error = resp.Header.Get("X-Depot-Error")
		}
	}
	return api.ErrorFromEnvelope(resp.StatusCode, env, what)
}

// onHead rewrites req for head i (same path below the head's base).
func (c *Client) onHead(req *http.Request, from, to int) (*http.Request, bool) {
	if !canResend(req) {
		return nil, false
	}
	r := req.Clone(req.Context())
	// One map for every attempt: the body that GetBody returns sets the
	// digest trailer in it at EOF, and Clone would copy it.
	r.Trailer = req.Trailer
	if req.GetBody != nil {
		b, err := req.GetBody()
		if err != nil {
			return nil, false
		}
		r.Body = b
	}
	u := *req.URL
	u.Scheme, u.Host = c.bases[to].Scheme, c.bases[to].Host
	u.Path = c.bases[to].Path + strings.TrimPrefix(req.URL.Path, c.bases[from].Path)
	r.URL, r.Host = &u, c.bases[to].Host
	return r, true
}

// canResend reports whether req can go to another head: a streamed body
// without GetBody cannot be sent again.
func canResend(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

func (c *Client) headOf(req *http.Request) int {
	for i, b := range c.bases {
		if b.Host == req.URL.Host {
			return i
		}
	}
	return 0
}

// checkRedirect applies CheckRedirect and never sends the depot token to
// another origin: a head started with --redirect-content answers downloads
// with a presigned object-store URL, which carries its own authorization.
// (Go's own rule compares host names only, so it would forward the token to
// an object store on the same host but another port.)
func checkRedirect(req *http.Request, via []*http.Request) error {
	if err := CheckRedirect(req, via); err != nil {
		return err
	}
	if req.URL.Scheme != via[0].URL.Scheme || req.URL.Host != via[0].URL.Host {
		req.Header.Del("Authorization")
	}
	return nil
}

// headerOf reads key from resp or, when resp came through redirects, from the
// nearest response in the chain that set it: a head's redirect carries the
// digest and format headers that the object store's answer lacks.
func headerOf(resp *http.Response, key string) string {
	for r := resp; r != nil; {
		if v := r.Header.Get(key); v != "" {
			return v
		}
		if r.Request == nil {
			break
		}
		r = r.Request.Response
	}
	return ""
}

// Package client is the Go client of depot's REST API, used by the CLI and
// the node cache. Failures come back in the errdefs vocabulary (through the
// api package's table), so callers use errors.Is / errors.As exactly as on
// the server side. The client never logs or prints its token.
//
// One concept per file: client.go (the Client, requests and JSON calls),
// failover.go (which head a request goes to, and the one retry policy),
// transport.go (timeouts, stalls, redirects), images.go and tokens.go (the
// JSON API), push.go (content uploads) and download.go (content and blob
// downloads).
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// Client talks to a depot server, or to several heads of one cluster: it
// sends each request to the head that answered last and, on a connection
// error or a 5xx, fails over to the next one, for every request whose body
// can be sent again (all but a streamed content upload).
type Client struct {
	bases []*url.URL
	cur   atomic.Int32 // index of the head that answered last
	token string
	hc    *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithTimeouts sets the connect, TLS, header and stall timeouts (default:
// the package defaults, DefaultStall and so on).
func WithTimeouts(t Timeouts) Option {
	return func(c *Client) { c.hc.Transport = NewTransport(t) }
}

// New returns a client for server: one URL (e.g. "http://127.0.0.1:8484")
// or a comma-separated list of a cluster's heads. token may be empty for
// anonymous reads.
func New(server, token string, opts ...Option) (*Client, error) {
	c := &Client{token: token, hc: &http.Client{CheckRedirect: checkRedirect, Transport: NewTransport(Timeouts{})}}
	for _, o := range opts {
		o(c)
	}
	for _, s := range strings.Split(server, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		u, err := url.Parse(strings.TrimRight(s, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("server %q: want http(s)://host[:port][,…]: %w", s, errdefs.ErrInvalidArgument)
		}
		c.bases = append(c.bases, u)
	}
	if len(c.bases) == 0 {
		return nil, fmt.Errorf("no server given: %w", errdefs.ErrInvalidArgument)
	}
	return c, nil
}

// Server names the server: the comma-separated heads of a cluster, sorted,
// so the name does not depend on the order the heads were given in and can
// key what was resolved against it. (Requests still try heads in the given
// order.)
func (c *Client) Server() string {
	parts := make([]string, len(c.bases))
	for i, b := range c.bases {
		parts[i] = b.String()
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (c *Client) url(path string, q url.Values) string {
	u := *c.bases[int(c.cur.Load())%len(c.bases)]
	u.Path += api.Prefix + path
	u.RawQuery = q.Encode()
	return u.String()
}

func imagePath(ref string, rest string) string {
	return "/image/" + url.PathEscape(ref) + rest
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("User-Agent", "depot-client")
	return req, nil
}

// call does a JSON round trip: in (if non-nil) as the body, the envelope's
// data decoded into out (if non-nil). It returns the envelope's next cursor.
func (c *Client) call(ctx context.Context, method, path string, q url.Values, in, out any, what string) (string, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return "", err
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, q, body)
	if err != nil {
		return "", err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(req, what)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var env api.Envelope
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&env); err != nil {
		return "", fmt.Errorf("%s: bad response: %v: %w", what, err, errdefs.ErrUnavailable)
	}
	if out != nil && len(env.Data) > 0 {
		if err := json.Unmarshal(env.Data, out); err != nil {
			return "", fmt.Errorf("%s: bad response data: %v", what, err)
		}
	}
	return env.Next, nil
}

// Heads is how many heads the client fails over between.
func (c *Client) Heads() int { return len(c.bases) }

// Package client is the Go client of depot's REST API, used by the CLI and
// the node cache. Failures come back in the errdefs vocabulary (through the
// api package's table), so callers use errors.Is / errors.As exactly as on
// the server side. The client never logs or prints its token.
package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/httprange"
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

// send performs req, failing over between heads, and converts transport
// failures and error responses.
func (c *Client) send(req *http.Request, what string) (*http.Response, error) {
	first := c.headOf(req)
	var resp *http.Response
	var lastErr error
	for i := range len(c.bases) {
		head := (first + i) % len(c.bases)
		r := req
		if i > 0 {
			var ok bool
			if r, ok = c.onHead(req, first, head); !ok {
				break
			}
		}
		var err error
		resp, err = c.hc.Do(r)
		if err != nil {
			if ctxErr := req.Context().Err(); ctxErr != nil {
				return nil, ctxErr
			}
			var re *RedirectError
			if errors.As(err, &re) { // every head would redirect alike
				return nil, fmt.Errorf("%s: %w", what, re)
			}
			if IsStall(err) {
				lastErr = fmt.Errorf("%s: %s: %w", what, c.bases[head].Host, err)
			} else {
				lastErr = fmt.Errorf("%s: %s: %v: %w", what, c.bases[head].Host, err, errdefs.ErrUnavailable)
			}
			resp = nil
			continue
		}
		// 5xx: try the next head, except 507 (the shared store is full
		// everywhere).
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusInsufficientStorage && i < len(c.bases)-1 {
			if canResend(req) {
				io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
				lastErr = fmt.Errorf("%s: %s: HTTP %d: %w", what, c.bases[head].Host, resp.StatusCode, errdefs.ErrUnavailable)
				resp = nil
				continue
			}
		}
		c.cur.Store(int32(head))
		break
	}
	if resp == nil {
		return nil, lastErr
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotModified {
		defer resp.Body.Close()
		var env api.Envelope
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(data, &env) != nil {
			env = api.Envelope{Error: strings.TrimSpace(string(data))}
			if env.Error == "" {
				env.Error = resp.Header.Get("X-Depot-Error")
			}
		}
		return nil, api.ErrorFromEnvelope(resp.StatusCode, env, what)
	}
	return resp, nil
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

// CreateImage creates an image and returns its UID.
func (c *Client) CreateImage(ctx context.Context, req api.CreateImageRequest) (string, error) {
	var uid string
	_, err := c.call(ctx, http.MethodPost, "/images", nil, req, &uid, "create image "+req.Name)
	return uid, err
}

// GetImage fetches an image by UID or name.
func (c *Client) GetImage(ctx context.Context, ref string) (api.Image, error) {
	var img api.Image
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, ""), nil, nil, &img, "image "+ref)
	return img, err
}

// ListImages fetches every image, following pages.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var all []api.Image
	after := ""
	for {
		var page []api.Image
		q := url.Values{"limit": {"500"}}
		if after != "" {
			q.Set("after", after)
		}
		next, err := c.call(ctx, http.MethodGet, "/images", q, nil, &page, "list images")
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" || len(page) == 0 {
			return all, nil
		}
		after = next
	}
}

// UpdateImage patches an image's fields.
func (c *Client) UpdateImage(ctx context.Context, ref string, req api.PatchImageRequest) (api.Image, error) {
	var img api.Image
	_, err := c.call(ctx, http.MethodPatch, imagePath(ref, ""), nil, req, &img, "update image "+ref)
	return img, err
}

// DeleteImage deletes an image; its content is collected when unreferenced.
func (c *Client) DeleteImage(ctx context.Context, ref string) error {
	_, err := c.call(ctx, http.MethodDelete, imagePath(ref, ""), nil, nil, nil, "delete image "+ref)
	return err
}

// CloneImage creates a new image sharing src's content and returns its UID.
func (c *Client) CloneImage(ctx context.Context, src string, req api.CloneRequest) (string, error) {
	var uid string
	_, err := c.call(ctx, http.MethodPost, imagePath(src, "/clone"), nil, req, &uid, "clone image "+src)
	return uid, err
}

// History lists content revisions, newest first.
func (c *Client) History(ctx context.Context, ref string) ([]api.Revision, error) {
	var revs []api.Revision
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, "/history"), nil, nil, &revs, "history of "+ref)
	return revs, err
}

// ContentInfo is …/content/info.
func (c *Client) ContentInfo(ctx context.Context, ref string) (api.ContentInfo, error) {
	var info api.ContentInfo
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, "/content/info"), nil, nil, &info, "content info of "+ref)
	return info, err
}

// ContentStat is …/content/stat.
func (c *Client) ContentStat(ctx context.Context, ref string) (api.ContentStat, error) {
	var st api.ContentStat
	_, err := c.call(ctx, http.MethodGet, imagePath(ref, "/content/stat"), nil, nil, &st, "content stat of "+ref)
	return st, err
}

// DeleteContent removes an image's content and history.
func (c *Client) DeleteContent(ctx context.Context, ref string) error {
	_, err := c.call(ctx, http.MethodDelete, imagePath(ref, "/content"), nil, nil, nil, "delete content of "+ref)
	return err
}

// PushOptions tune PushContent.
type PushOptions struct {
	// Digest, when known, is declared up front. Otherwise the client hashes
	// the stream as it sends it and declares the digest in a trailer, so
	// the server still verifies end to end without a second pass.
	Digest digest.Digest
	// IfMatch, when set, makes the upload conditional on the image's
	// current content being this digest (412 / ErrPrecondition otherwise).
	IfMatch digest.Digest
	// Message is recorded with the revision.
	Message string
}

// PushContent streams r (size bytes, or -1 if unknown) as the new content of
// ref. The server stores nothing unless the bytes hash to the declared digest.
//
// When r can also ReadAt and Seek (a file), a push that a head drops
// mid-body (the head dies, or answers 5xx) is sent again from the start to
// the next head; each attempt reads through a section reader of its own, so
// an attempt the transport has not quite let go of never moves the next
// one's position. If the dropped head had committed the content before it
// went away, the retry can meet its own work: with IfMatch that is a 412
// naming the digest being pushed, which PushContent reports as the success
// it was (without IfMatch the revision is recorded twice).
func (c *Client) PushContent(ctx context.Context, ref string, r io.Reader, size int64, opts PushOptions) (api.ContentInfo, error) {
	var trailer http.Header
	if opts.Digest == "" {
		trailer = http.Header{api.HeaderDigest: nil}
	}
	body := func(r io.Reader) io.Reader {
		if opts.Digest != "" {
			return r
		}
		return &trailerReader{r: r, h: sha256.New(), trailer: trailer}
	}
	var fresh func() io.Reader // a new reader of the whole content, when r can give one
	var resent atomic.Bool
	if ra, ok := r.(interface {
		io.ReaderAt
		io.Seeker
	}); ok {
		if start, err := ra.Seek(0, io.SeekCurrent); err == nil {
			// To the end, not to size: a file that changed length since it
			// was measured is then a size mismatch the server refuses, not
			// a silently truncated push.
			n := math.MaxInt64 - start
			fresh = func() io.Reader { return io.NewSectionReader(ra, start, n) }
			r = fresh()
		}
	}
	req, err := c.newRequest(ctx, http.MethodPut, imagePath(ref, "/content"), nil, body(r))
	if err != nil {
		return api.ContentInfo{}, err
	}
	if fresh != nil {
		req.GetBody = func() (io.ReadCloser, error) {
			resent.Store(true)
			return io.NopCloser(body(fresh())), nil
		}
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if opts.Digest != "" {
		req.Header.Set(api.HeaderDigest, opts.Digest.String())
		req.ContentLength = size
	} else {
		req.ContentLength = -1 // trailers need chunked encoding
		req.Trailer = trailer
		if size >= 0 {
			req.Header.Set("X-Depot-Size", strconv.FormatInt(size, 10))
		}
	}
	if opts.IfMatch != "" {
		req.Header.Set("If-Match", api.ETag(opts.IfMatch))
	}
	if opts.Message != "" {
		req.Header.Set(api.HeaderMessage, opts.Message)
	}
	resp, err := c.send(req, "push content to "+ref)
	var pe *errdefs.PreconditionError
	if err != nil && resent.Load() && errors.As(err, &pe) && pe.Have != "" {
		// Did an earlier attempt commit exactly this content? Hash it (a
		// pass of its own: the attempts' hashes may still be in use).
		pushed := opts.Digest
		if pushed == "" {
			pushed, _ = digest.SHA256.FromReader(fresh())
		}
		if pe.Have == pushed {
			return c.ContentInfo(ctx, ref)
		}
	}
	if err != nil {
		return api.ContentInfo{}, err
	}
	defer resp.Body.Close()
	var env api.Envelope
	var info api.ContentInfo
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return info, fmt.Errorf("push content to %s: bad response: %v", ref, err)
	}
	if err := json.Unmarshal(env.Data, &info); err != nil {
		return info, fmt.Errorf("push content to %s: bad response data: %v", ref, err)
	}
	return info, nil
}

// WriteTo sends the stream in 1 MiB writes, so the chunked request has
// large chunks (io.Copy would use 32 KiB), which halves the server's work.
func (t *trailerReader) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := io.ReadFull(t.r, buf)
		if n > 0 {
			t.h.Write(buf[:n])
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			t.trailer.Set(api.HeaderDigest, "sha256:"+hex.EncodeToString(t.h.Sum(nil)))
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// trailerReader hashes what it reads and, at EOF, sets the digest trailer.
type trailerReader struct {
	r       io.Reader
	h       hash.Hash
	trailer http.Header
}

func (t *trailerReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		t.trailer.Set(api.HeaderDigest, "sha256:"+hex.EncodeToString(t.h.Sum(nil)))
	}
	return n, err
}

// Content is an open content or blob download.
type Content struct {
	io.ReadCloser
	Digest digest.Digest
	// Offset is where the body starts: the requested offset when the server
	// honoured the range, else 0.
	Offset int64
	// Size is the length of the body (-1 when unknown).
	Size int64
	// Total is the size of the whole content (-1 when unknown).
	Total int64
	// Ranges reports that the server honours byte ranges.
	Ranges bool
	Format string
}

// OpenContent starts a download of ref's current content.
func (c *Client) OpenContent(ctx context.Context, ref string) (*Content, error) {
	return c.open(ctx, imagePath(ref, "/content"), 0, -1, "content of "+ref)
}

// OpenBlob starts a download of a blob by digest, from offset, length bytes
// (-1 for the rest).
func (c *Client) OpenBlob(ctx context.Context, d digest.Digest, offset, length int64) (*Content, error) {
	return c.open(ctx, "/blob/"+d.String(), offset, length, "blob "+d.String())
}

func (c *Client) open(ctx context.Context, path string, offset, length int64, what string) (*Content, error) {
	req, err := c.newRequest(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	if rh := httprange.Header(offset, length); rh != "" {
		req.Header.Set("Range", rh)
	}
	resp, err := c.send(req, what)
	if err != nil {
		return nil, err
	}
	first := resp.Request // the request sent to a head, before any redirect
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	body := &headBody{ReadCloser: resp.Body, c: c, head: c.headOf(first), ctx: ctx}
	out := &Content{ReadCloser: body, Digest: digest.Digest(headerOf(resp, api.HeaderDigest)),
		Size: resp.ContentLength, Format: headerOf(resp, api.HeaderFormat)}
	if resp.StatusCode == http.StatusPartialContent {
		out.Offset = offset
		out.Total = httprange.Total(resp.Header.Get("Content-Range"))
	} else {
		out.Total = resp.ContentLength
	}
	out.Ranges = resp.Header.Get("Accept-Ranges") == "bytes" || resp.StatusCode == http.StatusPartialContent
	return out, nil
}

// headBody is a download from one head. When it breaks off (the head died,
// or stalled: StallError), the next request goes to the next head first, so
// a resume by Range does not return to the head that just failed.
type headBody struct {
	io.ReadCloser
	c    *Client
	head int
	ctx  context.Context
}

func (b *headBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.ctx.Err() == nil && len(b.c.bases) > 1 {
		b.c.cur.CompareAndSwap(int32(b.head), int32((b.head+1)%len(b.c.bases)))
	}
	return n, err
}

// Heads is how many heads the client fails over between.
func (c *Client) Heads() int { return len(c.bases) }

// CreateToken mints a token; the answer carries the secret once.
func (c *Client) CreateToken(ctx context.Context, req api.TokenRequest) (api.Token, error) {
	var t api.Token
	_, err := c.call(ctx, http.MethodPost, "/tokens", nil, req, &t, "create token")
	return t, err
}

// ServerInfo fetches what the server tells clients before they upload. A
// server older than GET /server answers ErrNotFound.
func (c *Client) ServerInfo(ctx context.Context) (api.ServerInfo, error) {
	var si api.ServerInfo
	_, err := c.call(ctx, http.MethodGet, "/server", nil, nil, &si, "server info")
	return si, err
}

// ListTokens lists token records (never secrets).
func (c *Client) ListTokens(ctx context.Context) ([]api.Token, error) {
	var ts []api.Token
	_, err := c.call(ctx, http.MethodGet, "/tokens", nil, nil, &ts, "list tokens")
	return ts, err
}

// DeleteToken revokes a token.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/tokens/"+url.PathEscape(id), nil, nil, nil, "revoke token "+id)
	return err
}

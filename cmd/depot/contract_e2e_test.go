package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// The contract: docs/openapi.yaml. startServe puts a recording reverse
// proxy in front of every depot serve it starts, and the proxy checks each
// request and answer against the document (openapi3filter): an endpoint,
// status, header or JSON body the document does not describe fails the
// test that caused it. Content bytes are streamed through unread.

var contractDoc struct {
	once   sync.Once
	doc    *openapi3.T
	router routers.Router
	err    error
}

func loadContract(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	c := &contractDoc
	c.once.Do(func() {
		ctx := context.Background()
		l := openapi3.NewLoader()
		l.Context = ctx
		c.doc, c.err = l.LoadFromFile(filepath.Join("..", "..", "docs", "openapi.yaml"))
		if c.err == nil {
			c.err = c.doc.Validate(ctx)
		}
		if c.err == nil && !c.doc.IsOpenAPI31OrLater() {
			c.err = fmt.Errorf("docs/openapi.yaml is OpenAPI %s; want 3.1", c.doc.OpenAPI)
		}
		if c.err == nil {
			c.router, c.err = gorillamux.NewRouter(c.doc)
		}
	})
	if c.err != nil {
		t.Fatalf("docs/openapi.yaml: %v", c.err)
	}
	return c.doc, c.router
}

// maxValidatedBody bounds what the proxy reads of a JSON body to validate.
const maxValidatedBody = 8 << 20

// exchangeKey carries a request's validation state to its answer.
type exchangeKey struct{}

type apiExchange struct {
	route      *routers.Route
	params     map[string]string
	input      *openapi3filter.RequestValidationInput
	requestErr error // the request does not follow the document
}

// contractProxy serves a recording, validating reverse proxy to target on
// loopback and returns its URL. The problems it finds fail t when it
// closes.
func contractProxy(t *testing.T, target string) string {
	_, router := loadContract(t)
	p, err := newContractProxy(target, router)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, msg := range p.close() {
			t.Errorf("contract (docs/openapi.yaml): %s", msg)
		}
	})
	return p.url
}

type contractProxyServer struct {
	url      string
	srv      *httptest.Server
	mu       sync.Mutex
	problems []string
}

// close stops the proxy (waiting for the exchanges in flight) and returns
// what it found.
func (p *contractProxyServer) close() []string {
	p.srv.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.problems
}

func newContractProxy(target string, router routers.Router) (*contractProxyServer, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	p := &contractProxyServer{}
	problem := func(r *http.Request, format string, args ...any) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.problems) < 50 {
			p.problems = append(p.problems, fmt.Sprintf("%s %s: ", r.Method, r.URL.RequestURI())+fmt.Sprintf(format, args...))
		}
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
			// Trailers (a digest sent after a chunked body) are filled in
			// the inbound request's map at the end of its body: forward
			// that map, so they reach the head.
			if pr.In.ContentLength < 0 {
				pr.Out.Trailer = pr.In.Trailer
			}
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// The head is gone (a test killed it) or the client left:
			// no answer of the head's to check.
			w.WriteHeader(http.StatusBadGateway)
		},
		ModifyResponse: func(resp *http.Response) error {
			x, _ := resp.Request.Context().Value(exchangeKey{}).(*apiExchange)
			if x != nil {
				checkAnswer(resp, x, func(format string, args ...any) { problem(resp.Request, format, args...) })
			}
			return nil
		},
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Trailer == nil && r.ContentLength < 0 {
			r.Trailer = http.Header{}
		}
		x := checkRequest(r, router)
		rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
	}))
	p.url = p.srv.URL
	return p, nil
}

// checkRequest finds r's operation in the document and validates r
// against it. A JSON body is read (bounded) and put back.
func checkRequest(r *http.Request, router routers.Router) *apiExchange {
	x := &apiExchange{}
	probe := r.Clone(r.Context())
	probe.URL.Scheme, probe.URL.Host = "http", r.Host
	probe.Body = http.NoBody // the validator must never touch the body the head gets
	route, params, err := router.FindRoute(probe)
	if err != nil {
		x.requestErr = fmt.Errorf("no such operation in the document: %w", err)
		return x
	}
	x.route, x.params = route, params
	opts := &openapi3filter.Options{
		AuthenticationFunc: openapi3filter.NoopAuthenticationFunc,
		MultiError:         true,
	}
	rb := route.Operation.RequestBody
	isJSON := rb != nil && rb.Value != nil && rb.Value.Content.Get("application/json") != nil
	switch {
	case isJSON && r.Body != nil:
		buf, err := io.ReadAll(io.LimitReader(r.Body, maxValidatedBody+1))
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		if err != nil || len(buf) > maxValidatedBody {
			opts.ExcludeRequestBody = true
			break
		}
		// depot reads a JSON body as JSON whatever its Content-Type
		// (curl --data sends a form type); so does the document.
		probe.Header.Set("Content-Type", "application/json")
		probe.Body = io.NopCloser(bytes.NewReader(buf))
		probe.ContentLength = int64(len(buf))
	default:
		opts.ExcludeRequestBody = true
	}
	x.input = &openapi3filter.RequestValidationInput{Request: probe, PathParams: params, Route: route, Options: opts}
	if err := openapi3filter.ValidateRequest(r.Context(), x.input); err != nil {
		x.requestErr = err
	}
	return x
}

// checkAnswer validates the head's answer to x: a request the document
// does not describe must have been refused (404 or 405 for an unknown
// operation, a 4xx for an invalid request), and every answer must be one
// the document lists for its operation, with its headers and JSON body.
func checkAnswer(resp *http.Response, x *apiExchange, problem func(string, ...any)) {
	status := resp.StatusCode
	if x.route == nil {
		if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
			problem("answered %d to an operation the document does not describe (%v)", status, x.requestErr)
		}
		return
	}
	if x.requestErr != nil && status/100 != 4 {
		problem("accepted (%d) a request the document says is invalid: %v", status, x.requestErr)
	}
	op := x.route.Operation
	ref := op.Responses.Status(status)
	if ref == nil || ref.Value == nil {
		problem("status %d is not among the answers the document lists for %s", status, op.OperationID)
		return
	}
	// openapi3filter leaves HEAD, 304 and 307 alone: check their
	// required headers here.
	for name, h := range ref.Value.Headers {
		if h.Value != nil && h.Value.Required && resp.Header.Get(name) == "" {
			problem("answer %d lacks the required header %s", status, name)
		}
	}
	ct := resp.Header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: x.input, Status: status, Header: resp.Header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if resp.Request.Method == http.MethodHead || status == http.StatusNotModified || status == http.StatusTemporaryRedirect {
		if status == http.StatusTemporaryRedirect && resp.Header.Get("Location") == "" {
			problem("a redirect without Location")
		}
		return
	}
	if mt != "application/json" {
		if len(ref.Value.Content) > 0 && resp.ContentLength != 0 && ref.Value.Content.Get(ct) == nil {
			problem("answer %d has Content-Type %q, which the document does not list", status, ct)
		}
		in.Options.ExcludeResponseBody = true
		in.SetBodyBytes(nil)
		if err := openapi3filter.ValidateResponse(resp.Request.Context(), in); err != nil {
			problem("%v", err)
		}
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxValidatedBody+1))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil || len(body) > maxValidatedBody {
		problem("JSON answer unreadable or over %d bytes: %v", maxValidatedBody, err)
		return
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(resp.Request.Context(), in); err != nil {
		var re *openapi3filter.ResponseError
		if errors.As(err, &re) {
			problem("answer %d does not follow the document: %v\n  body: %.500s", status, err, body)
		} else {
			problem("%v\n  body: %.500s", err, body)
		}
	}
}

// TestOpenAPIDocument: docs/openapi.yaml is a valid OpenAPI 3.1 document,
// and it describes exactly the operations the server registers (read from
// internal/server's routes), each with the role the server requires.
func TestOpenAPIDocument(t *testing.T) {
	doc, _ := loadContract(t)
	src, err := os.ReadFile(filepath.Join("..", "..", "internal", "server", "server.go"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`s\.handle\("([A-Z]+) "\+p\+"([^"]+)", auth\.Role([A-Za-z]+)`)
	roles := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		roles[m[1]+" /api/v1"+m[2]] = strings.ToLower(m[3])
	}
	for _, m := range regexp.MustCompile(`s\.(?:handle|mux\.Handle)\("([A-Z]+) (/[a-z]+)"`).FindAllStringSubmatch(string(src), -1) {
		roles[m[1]+" "+m[2]] = "none"
	}
	if len(roles) < 18 {
		t.Fatalf("read only %d routes from internal/server/server.go; did routes() change shape?", len(roles))
	}
	documented := map[string]string{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			role, _ := op.Extensions["x-depot-role"].(string)
			if role == "" {
				t.Errorf("%s %s has no x-depot-role", method, path)
			}
			documented[method+" "+path] = role
		}
	}
	var keys []string
	for k := range roles {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if got, ok := documented[k]; !ok {
			t.Errorf("the server registers %s; the document does not describe it", k)
		} else if got != roles[k] {
			t.Errorf("%s needs role %s; the document says %s", k, roles[k], got)
		}
	}
	for k := range documented {
		method, path, _ := strings.Cut(k, " ")
		if _, ok := roles[k]; !ok && !(method == "HEAD" && roles["GET "+path] != "") {
			t.Errorf("the document describes %s; the server has no such route", k)
		}
	}
}

// TestContractProxyCatchesDrift: the proxy fails a head that answers what
// the document does not describe: an undocumented endpoint that answers,
// an undocumented status, a JSON body of another shape, a missing
// required header, and a request the document calls invalid that the
// head accepts. A head that follows the document passes.
func TestContractProxyCatchesDrift(t *testing.T) {
	_, router := loadContract(t)
	uid := strings.Repeat("a", 32)
	d := "sha256:" + strings.Repeat("b", 64)
	img := `{"uid":"` + uid + `","name":"x","description":"","frozen":false,"parent":null,"distro":null,"content":null,"history":[],` +
		`"created":1,"last_modified":1,"last_modified_on":"h","last_modified_by":"w"}`
	drifting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		switch r.URL.Path {
		case "/api/v1/image/good":
			io.WriteString(w, `{"success":true,"data":`+img+`}`)
		case "/api/v1/image/flat": // the shape before seed 004's content
			io.WriteString(w, `{"success":true,"data":`+strings.Replace(img, `"content":null`, `"content":{"size":1,"mtime":1,"chksum":"`+d+`","fmt":"raw"}`, 1)+`}`)
		case "/api/v1/image/teapot":
			w.WriteHeader(http.StatusTeapot)
			io.WriteString(w, `{"success":false,"error":"x","code":"internal"}`)
		case "/api/v1/images":
			w.WriteHeader(http.StatusCreated) // no Location
			io.WriteString(w, `{"success":true,"data":"`+uid+`"}`)
		case "/api/v1/secret":
			io.WriteString(w, `{"success":true,"data":"hidden handler"}`)
		case "/api/v1/image/gone":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"success":false,"error":"no image gone","code":"not_found"}`)
		}
	}))
	defer drifting.Close()
	p, err := newContractProxy(drifting.URL, router)
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path, body string) {
		req, _ := http.NewRequest(method, p.url+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	do("GET", "/api/v1/image/good", "")
	do("GET", "/api/v1/image/gone", "")
	problems := p.close()
	if len(problems) != 0 {
		t.Fatalf("answers that follow the document were flagged: %q", problems)
	}
	p, err = newContractProxy(drifting.URL, router)
	if err != nil {
		t.Fatal(err)
	}
	do("GET", "/api/v1/image/flat", "")
	do("GET", "/api/v1/image/teapot", "")
	do("POST", "/api/v1/images", `{"name":"x","colour":"red"}`)
	do("GET", "/api/v1/secret", "")
	problems = p.close()
	all := strings.Join(problems, "\n")
	for _, want := range []string{
		"GET /api/v1/image/flat: answer 200 does not follow the document",
		"GET /api/v1/image/teapot: status 418 is not among the answers",
		"POST /api/v1/images: answer 201 lacks the required header Location",
		"POST /api/v1/images: accepted (201) a request the document says is invalid",
		"GET /api/v1/secret: answered 200 to an operation the document does not describe",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("the proxy did not report %q; it reported:\n%s", want, all)
		}
	}
}

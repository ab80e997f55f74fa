// Package server is depot's HTTP API (seed 004 plus by-digest blob URLs):
// images, their streamed content, tokens, /metrics and /healthz.
//
// The server owns request handling, authorization and garbage collection of
// unreferenced blobs. It stores nothing itself: metadata goes to a
// catalog.Catalog and bytes to a blob.Store. It never buffers content in
// memory and never logs a token.
//
// An upload is putContent (upload.go) in three steps, one file each:
// parseUpload (uploadheaders.go), receive (receive.go), commitUpload
// (commit.go). Downloads are serveblob.go; the other content handlers
// content.go; the catalog-to-wire mapping wire.go.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/catalog"
)

// Config is what a Server needs. Catalog, Blobs and Auth are required.
type Config struct {
	Catalog catalog.Catalog
	Blobs   blob.Store
	Auth    *auth.Authority
	Logger  *slog.Logger

	// AllowAnonymousRead lets requests without a token GET and HEAD.
	AllowAnonymousRead bool
	// KeepRevisions is how many content revisions each image retains
	// (the current one included). Default 3.
	KeepRevisions int
	// GCInterval is how often unreferenced blobs are collected. Default 1m;
	// negative disables the loop (tests call CollectGarbage directly).
	GCInterval time.Duration
	// GCGrace is how long an unreferenced blob is kept, so in-flight
	// downloads finish. Zero means the default, 15m; negative means none.
	GCGrace time.Duration
	// IngestTTL is the age after which an abandoned partial upload is
	// removed. Default 1h.
	IngestTTL time.Duration
	// MaxContentSize bounds one content upload. Default 1 TiB. A declared
	// size above it (Content-Length or X-Depot-Size) is refused before
	// any byte of the body is read.
	MaxContentSize int64
	// BodyIdleTimeout is how long a request body may send nothing before
	// the request is aborted (an upload's partial file is removed).
	// Default 60s; negative means no limit.
	BodyIdleTimeout time.Duration
	// GCLeader, when set, makes garbage collection run only while it
	// reports leadership (several heads on one catalog elect one collector).
	GCLeader interface{ IsLeader() bool }
	// RedirectContent answers content and blob GETs with a 307 to a
	// presigned URL valid for this long, so the head does not carry the
	// bytes. Zero serves the bytes. It needs a blob.Presigner store.
	RedirectContent time.Duration
	// HeadName names this head in the records it changes (an image's and
	// its content's last_modified_on), so that with several heads one can
	// tell which made a change. depot serve defaults it to the hostname.
	HeadName string
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.KeepRevisions <= 0 {
		c.KeepRevisions = 3
	}
	if c.GCInterval == 0 {
		c.GCInterval = time.Minute
	}
	if c.GCGrace == 0 {
		c.GCGrace = 15 * time.Minute
	}
	if c.IngestTTL == 0 {
		c.IngestTTL = time.Hour
	}
	if c.MaxContentSize == 0 {
		c.MaxContentSize = 1 << 40
	}
	if c.BodyIdleTimeout == 0 {
		c.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
}

// Server serves the API. Create it with New.
type Server struct {
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics
	reg     *prometheus.Registry

	// commitMu orders blob commits against garbage collection: an upload
	// holds it shared from the blob commit until the catalog references the
	// blob; GC holds it exclusively while it deletes.
	commitMu sync.RWMutex
	// inflight counts the handlers running, so a shutdown can wait for
	// all of them before the catalog closes.
	inflight sync.WaitGroup
	// claimWait is how long an upload waits for a garbage collector to
	// finish with the blob it is about to commit (tests shorten it).
	claimWait time.Duration
	// indexBuilds and indexSem make a chunk index computed on request
	// (chunkindex.go) run once per digest, maxIndexBuilds at a time.
	indexBuilds singleflight.Group
	indexSem    *semaphore.Weighted
	// zstdPool bounds the ranges compressed at once (zstdrange.go).
	zstdPool encoderPool
}

// DefaultBodyIdleTimeout is Config.BodyIdleTimeout's default.
const DefaultBodyIdleTimeout = 60 * time.Second

// maxJSONBody bounds every JSON request body.
const maxJSONBody = 64 << 10

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Catalog == nil || cfg.Blobs == nil || cfg.Auth == nil {
		return nil, errors.New("server: Catalog, Blobs and Auth are required")
	}
	cfg.setDefaults()
	if _, ok := cfg.Blobs.(blob.Presigner); cfg.RedirectContent > 0 && !ok {
		return nil, fmt.Errorf("server: redirecting downloads needs a blob store that clients can read directly (s3://…): %w", errdefs.ErrInvalidArgument)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), reg: prometheus.NewRegistry(), claimWait: 30 * time.Second,
		indexSem: semaphore.NewWeighted(maxIndexBuilds), zstdPool: newEncoderPool(zstdEncoders)}
	s.metrics = newMetrics(s.reg)
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "depot_gc_leader", Help: "1 when this head runs garbage collection (always 1 with a single head).",
	}, func() float64 {
		if s.isGCLeader() {
			return 1
		}
		return 0
	}))
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	p := api.Prefix
	s.handle("POST "+p+"/images", auth.RoleWriter, s.createImage)
	s.handle("GET "+p+"/images", auth.RoleReader, s.listImages)
	s.handle("GET "+p+"/image/{ref}", auth.RoleReader, s.getImage)
	s.handle("PATCH "+p+"/image/{ref}", auth.RoleWriter, s.patchImage)
	s.handle("DELETE "+p+"/image/{ref}", auth.RoleAdmin, s.deleteImage)
	s.handle("POST "+p+"/image/{ref}/clone", auth.RoleWriter, s.cloneImage)
	s.handle("GET "+p+"/image/{ref}/history", auth.RoleReader, s.history)
	s.handle("GET "+p+"/image/{ref}/content", auth.RoleReader, s.getContent) // GET and HEAD
	s.handle("PUT "+p+"/image/{ref}/content", auth.RoleWriter, s.putContent)
	s.handle("DELETE "+p+"/image/{ref}/content", auth.RoleAdmin, s.deleteContent)
	s.handle("GET "+p+"/image/{ref}/content/stat", auth.RoleReader, s.contentStat)
	s.handle("GET "+p+"/image/{ref}/content/info", auth.RoleReader, s.contentInfo)
	s.handle("GET "+p+"/blob/{digest}", auth.RoleReader, s.getBlob)
	s.handle("GET "+p+"/blob/{digest}/chunks", auth.RoleReader, s.getChunks) // GET and HEAD
	s.handle("GET "+p+"/blob/{digest}/zstd", auth.RoleReader, s.getZstd)
	s.handle("POST "+p+"/tokens", auth.RoleAdmin, s.createToken)
	s.handle("GET "+p+"/tokens", auth.RoleAdmin, s.listTokens)
	s.handle("DELETE "+p+"/tokens/{id}", auth.RoleAdmin, s.deleteToken)
	s.handle("GET "+p+"/server", auth.RoleReader, s.serverInfo)
	s.handle("GET /healthz", auth.RoleNone, s.healthz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	s.handle("/", auth.RoleNone, func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, fmt.Errorf("no such endpoint %s %s: %w", r.Method, r.URL.Path, errdefs.ErrNotFound))
	})
}

// Handler is the server's http.Handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Run serves on ln until ctx ends, running garbage collection alongside,
// then shuts down in order: stop accepting and drain the requests in
// flight (they get ShutdownGrace, then their connections are closed and
// they are waited for), then stop garbage collection and wait for it. When
// Run returns, nothing the server started touches the catalog or the blob
// store any more: the caller may close them.
func (s *Server) Run(ctx context.Context, ln net.Listener, srv *http.Server) error {
	srv.Handler = s.Handler()
	var g errgroup.Group
	serveErr := make(chan error, 1)
	g.Go(func() error {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		serveErr <- err
		return err
	})
	// GC outlives the run context: it stops after the drain, not before.
	gcCtx, stopGC := context.WithCancel(context.WithoutCancel(ctx))
	defer stopGC()
	if s.cfg.GCInterval > 0 {
		g.Go(func() error { s.gcLoop(gcCtx); return nil })
	}
	var err error
	select {
	case err = <-serveErr: // the listener failed: drain what is in flight all the same
	case <-ctx.Done():
	}
	s.drain(srv)
	stopGC()
	return errors.Join(err, g.Wait())
}

// ShutdownGrace is how long requests in flight get to finish when the
// server stops, before their connections are closed.
const ShutdownGrace = 10 * time.Second

// drain stops srv accepting, lets the requests in flight finish, and
// waits for every handler to return.
func (s *Server) drain(srv *http.Server) {
	shut, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil {
		s.log.Warn("requests still running at shutdown; closing their connections", "err", err)
		srv.Close()
	}
	// Shutdown does not wait for handlers whose connections it closed (or
	// that hijacked theirs); with their connections gone they end soon.
	s.inflight.Wait()
}

type principalKey struct{}

func principal(r *http.Request) auth.Principal {
	p, _ := r.Context().Value(principalKey{}).(auth.Principal)
	return p
}

// handle registers h for pattern, requiring role, with metrics and an
// access log around it.
func (s *Server) handle(pattern string, role auth.Role, h http.HandlerFunc) {
	route := pattern
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Done()
		start := time.Now()
		ctx, body := wrapBody(r.Context(), w, r, max(s.cfg.BodyIdleTimeout, 0))
		defer body.abandon(w)
		rw := &respWriter{ResponseWriter: w, status: http.StatusOK, body: body}
		var p auth.Principal
		if role != auth.RoleNone {
			var err error
			p, err = s.authorize(r, role)
			if err != nil {
				if errors.Is(err, errdefs.ErrUnauthorized) {
					rw.Header().Set("WWW-Authenticate", `Bearer realm="depot"`)
				}
				s.fail(rw, r, err)
				s.observe(r, route, rw, start, p)
				return
			}
		}
		r2 := r.WithContext(context.WithValue(ctx, principalKey{}, p))
		if body != nil {
			r2.Body = body
		}
		h(rw, r2)
		s.observe(r, route, rw, start, p)
	})
}

func (s *Server) observe(r *http.Request, route string, rw *respWriter, start time.Time, p auth.Principal) {
	d := time.Since(start)
	s.metrics.requests.WithLabelValues(route, fmt.Sprint(rw.status)).Inc()
	s.metrics.duration.WithLabelValues(route).Observe(d.Seconds())
	level := slog.LevelDebug
	if rw.status >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "status", rw.status,
		"bytes", rw.bytes, "duration", d, "subject", p.Subject)
}

// authorize checks the bearer token against the role the route needs.
func (s *Server) authorize(r *http.Request, need auth.Role) (auth.Principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		if need == auth.RoleReader && s.cfg.AllowAnonymousRead {
			return auth.Principal{Subject: "anonymous", Role: auth.RoleReader}, nil
		}
		return auth.Principal{}, fmt.Errorf("this endpoint needs a bearer token (role %s or higher): %w", need, errdefs.ErrUnauthorized)
	}
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return auth.Principal{}, fmt.Errorf("the Authorization header must be \"Bearer <token>\": %w", errdefs.ErrUnauthorized)
	}
	p, err := s.cfg.Auth.Verify(r.Context(), h[len(prefix):])
	if err != nil {
		return auth.Principal{}, err
	}
	if p.Role < need {
		return p, fmt.Errorf("token of %s has role %s; this needs %s: %w", p.Subject, p.Role, need, errdefs.ErrForbidden)
	}
	return p, nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if _, err := s.cfg.Catalog.List(r.Context(), "", 1); err != nil {
		s.fail(w, r, fmt.Errorf("catalog: %v: %w", err, errdefs.ErrUnavailable))
		return
	}
	s.ok(w, http.StatusOK, "ok")
}

func (s *Server) serverInfo(w http.ResponseWriter, r *http.Request) {
	p, ok := s.cfg.Blobs.(blob.DeclaredDigestPreferrer)
	s.ok(w, http.StatusOK, api.ServerInfo{PreferDeclaredDigest: ok && p.PrefersDeclaredDigest()})
}

func (s *Server) isGCLeader() bool { return s.cfg.GCLeader == nil || s.cfg.GCLeader.IsLeader() }

package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/blob/s3"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/bolt"
	etcdcat "github.com/depot-images/depot/internal/catalog/etcd"
	"github.com/depot-images/depot/internal/server"
	"github.com/depot-images/depot/internal/size"
)

type serveOptions struct {
	addr           string
	data           string
	catalogURL     string
	blobsDir       string
	s3AccessKey    string
	s3SecretFile   string
	redirect       bool
	redirectExpiry time.Duration
	anonRead       bool
	keepRevisions  int
	gcInterval     time.Duration
	gcGrace        time.Duration
	maxContentSize size.Bytes
	bodyIdle       time.Duration
	logFormat      string
	etcdCA         string
	etcdCert       string
	etcdKey        string
}

func (o *serveOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.addr, "addr", envOr("DEPOT_ADDR", "127.0.0.1:8484"), "listen address (env DEPOT_ADDR)")
	f.StringVar(&o.data, "data", envOr("DEPOT_DATA", defaultDataDir()), "data directory: catalog.db, blobs/, ingest/ (env DEPOT_DATA)")
	f.StringVar(&o.catalogURL, "catalog", envOr("DEPOT_CATALOG", ""), "catalog: empty for bbolt in --data, or etcd://host1:2379,host2:2379/prefix for several heads (etcds://… over TLS; env DEPOT_CATALOG)")
	f.StringVar(&o.etcdCA, "etcd-ca", envOr("DEPOT_ETCD_CA", ""), "PEM file of the CA that signed the etcd members' certificates, for an etcds:// catalog (default: the system's roots; env DEPOT_ETCD_CA)")
	f.StringVar(&o.etcdCert, "etcd-cert", envOr("DEPOT_ETCD_CERT", ""), "client certificate (PEM) for an etcds:// catalog whose members require one (env DEPOT_ETCD_CERT)")
	f.StringVar(&o.etcdKey, "etcd-key", envOr("DEPOT_ETCD_KEY", ""), "private key (PEM) of --etcd-cert (env DEPOT_ETCD_KEY)")
	f.StringVar(&o.blobsDir, "blobs", envOr("DEPOT_BLOBS", ""), "blob store: a directory, as a path or file:///abs/path (default --data; several heads may share one on a filesystem with atomic rename), or s3://bucket[/prefix]?endpoint=[http://]host:port (env DEPOT_BLOBS)")
	f.StringVar(&o.s3AccessKey, "s3-access-key", envOr("DEPOT_S3_ACCESS_KEY", ""), "S3 access key; empty uses AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, MINIO_ROOT_USER/MINIO_ROOT_PASSWORD, ~/.aws/credentials or the IAM role (env DEPOT_S3_ACCESS_KEY)")
	f.StringVar(&o.s3SecretFile, "s3-secret-key-file", envOr("DEPOT_S3_SECRET_KEY_FILE", ""), "file holding the S3 secret key for --s3-access-key (env DEPOT_S3_SECRET_KEY_FILE)")
	f.BoolVar(&o.redirect, "redirect-content", false, "answer content and blob downloads with a 307 to a presigned URL of the object store (s3:// blobs only), so this head does not carry the bytes")
	f.DurationVar(&o.redirectExpiry, "redirect-expiry", 15*time.Minute, "how long a presigned download URL stays valid")
	f.BoolVar(&o.anonRead, "allow-anonymous-read", false, "let requests without a token GET and HEAD")
	f.IntVar(&o.keepRevisions, "keep-revisions", 3, "content revisions retained per image (current included)")
	f.DurationVar(&o.gcInterval, "gc-interval", time.Minute, "how often unreferenced blobs are collected")
	f.DurationVar(&o.gcGrace, "gc-grace", 15*time.Minute, "how long an unreferenced blob is kept so in-flight downloads finish")
	o.maxContentSize = 1 << 40
	f.Var(&o.maxContentSize, "max-content-size", "largest accepted content upload, e.g. 500G (binary units); a larger declared size is refused (413) before the body is read")
	f.DurationVar(&o.bodyIdle, "body-idle-timeout", server.DefaultBodyIdleTimeout, "abort a request whose body sends nothing for this long (its partial upload is removed)")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
}

// Validate checks the options after flags and environment are applied.
func (o *serveOptions) Validate() error {
	switch {
	case o.data == "":
		return usageError{errors.New("--data is required")}
	case o.keepRevisions < 1:
		return usageError{errors.New("--keep-revisions must be at least 1")}
	case o.gcInterval <= 0 || o.gcGrace < 0:
		return usageError{errors.New("--gc-interval must be positive and --gc-grace not negative")}
	case o.maxContentSize <= 0:
		return usageError{errors.New("--max-content-size must be positive")}
	case o.bodyIdle < time.Second:
		return usageError{errors.New("--body-idle-timeout must be at least 1s")}
	case o.logFormat != "text" && o.logFormat != "json":
		return usageError{errors.New("--log-format is text or json")}
	case o.redirect && !strings.HasPrefix(o.blobsDir, "s3://"):
		return usageError{errors.New("--redirect-content needs --blobs s3://…: clients must be able to fetch the blob store directly")}
	case o.redirect && (o.redirectExpiry < time.Minute || o.redirectExpiry > 7*24*time.Hour):
		return usageError{errors.New("--redirect-expiry must be between 1m and 168h")}
	case (o.s3AccessKey == "") != (o.s3SecretFile == ""):
		return usageError{errors.New("--s3-access-key and --s3-secret-key-file go together")}
	}
	if _, _, err := blobsDir(o.blobsDir); err != nil {
		return err
	}
	return nil
}

// schemeRE is the start of a URL: a scheme (RFC 3986) and a colon.
var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// blobsDir reads --blobs: "" (the data directory), a plain path, or
// file:///abs/path give a directory; s3:// is a bucket (ok false, read by
// s3.ParseURL). Any other scheme, and a file URL with a host, a relative or
// empty path, a query or a fragment, is a usage error: a typo must not
// become a directory of that name.
func blobsDir(v string) (dir string, ok bool, err error) {
	switch {
	case strings.HasPrefix(v, "s3://"):
		return "", false, nil
	case v == "" || strings.HasPrefix(v, "/") || strings.HasPrefix(v, ".") || !schemeRE.MatchString(v):
		return v, true, nil
	}
	bad := func(why string) (string, bool, error) {
		return "", false, usageError{fmt.Errorf("--blobs %q: %s; want a directory (a path, or file:///abs/path) or s3://bucket[/prefix]?endpoint=host:port", v, why)}
	}
	u, err := url.Parse(v)
	switch {
	case err != nil:
		return bad("not a URL")
	case !strings.EqualFold(u.Scheme, "file"):
		return bad("unknown scheme " + strconv.Quote(u.Scheme) + " (write a relative directory with a colon in its name as ./name)")
	case u.Opaque != "" || !strings.HasPrefix(u.Path, "/"):
		return bad("a file URL needs an absolute path")
	case u.Host != "" && u.Host != "localhost":
		return bad("a file URL names a directory on this host, not on " + strconv.Quote(u.Host))
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return bad("a file URL has no user, query or fragment")
	case filepath.Clean(u.Path) == "/":
		return bad("not the root directory")
	}
	return filepath.Clean(u.Path), true, nil
}

func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/depot"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "depot")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "depot")
	}
	return ""
}

func newServeCmd(g *globals) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the image server on the embedded default (bbolt catalog + files)",
		Long: `Run the image server. The data directory holds the catalog (catalog.db),
committed blobs (blobs/sha256/<hex>) and partial uploads (ingest/).

On the first start with no tokens, an admin token is written to
<data>/admin.token (mode 0600); it is never logged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runServe(ctx, g, o)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func newLogger(w *os.File, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: %v", level, err)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

func runServe(ctx context.Context, g *globals, o *serveOptions) error {
	log, err := newLogger(os.Stderr, g.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	cat, err := openCatalog(ctx, o)
	if err != nil {
		return err
	}
	defer cat.Close()
	if err := recordCatalogKind(log, o.data, catalogKindOf(o)); err != nil {
		return err
	}
	blobs, err := openBlobs(ctx, o)
	if err != nil {
		return err
	}
	authority, err := auth.New(ctx, cat)
	if err != nil {
		return err
	}
	if err := bootstrapAdmin(ctx, g, cat, authority, o.data); err != nil {
		return err
	}
	// Shutdown order: Run stops accepting, drains the requests in flight
	// and stops garbage collection; then the election resigns; then (the
	// deferred Close above) the catalog closes. Every goroutine is joined.
	var bg errgroup.Group
	electCtx, stopElection := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { stopElection(); bg.Wait() }()
	var leader interface{ IsLeader() bool }
	if ec, ok := cat.(*etcdcat.Catalog); ok {
		// Several heads share this catalog: one at a time collects garbage.
		host, _ := os.Hostname()
		el := ec.Election("gc", fmt.Sprintf("%s/%d", host, os.Getpid()), 5)
		bg.Go(func() error { return el.Run(electCtx) })
		leader = el
	}
	srv, err := server.New(server.Config{
		GCLeader: leader,
		Catalog:  cat, Blobs: blobs, Auth: authority, Logger: log,
		AllowAnonymousRead: o.anonRead, KeepRevisions: o.keepRevisions,
		GCInterval: o.gcInterval, GCGrace: graceFor(o.gcGrace), MaxContentSize: int64(o.maxContentSize),
		BodyIdleTimeout: o.bodyIdle,
		RedirectContent: redirectFor(o),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %v: %w", o.addr, err, errdefs.ErrUnavailable)
	}
	log.Info("depot serve listening", "url", "http://"+ln.Addr().String(), "data", o.data, "blobs", fmt.Sprint(blobs), "anonymous_read", o.anonRead, "redirect_content", o.redirect)
	hs := &http.Server{ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if err := srv.Run(ctx, ln, hs); err != nil {
		return err
	}
	log.Info("depot serve stopped")
	return nil
}

// bootstrapAdmin mints the first admin token on a catalog with no tokens and
// writes it to <data>/admin.token with mode 0600. The token is never logged.
// openCatalog opens bbolt in the data dir, or etcd for several heads.
func openCatalog(ctx context.Context, o *serveOptions) (catalog.Catalog, error) {
	if o.catalogURL == "" {
		return bolt.Open(filepath.Join(o.data, "catalog.db"), 2*time.Second)
	}
	scheme, rest, _ := strings.Cut(o.catalogURL, "://")
	if scheme != "etcd" && scheme != "etcds" {
		return nil, usageError{fmt.Errorf("--catalog %q: want etcd://host:port[,host:port…][/prefix], or etcds://… for TLS", o.catalogURL)}
	}
	secure := scheme == "etcds"
	if !secure && (o.etcdCA != "" || o.etcdCert != "" || o.etcdKey != "") {
		return nil, usageError{fmt.Errorf("--etcd-ca, --etcd-cert and --etcd-key need a TLS catalog URL (etcds://…), not %q", o.catalogURL)}
	}
	hosts, prefix, _ := strings.Cut(rest, "/")
	var eps []string
	for _, h := range strings.Split(hosts, ",") {
		if h != "" {
			eps = append(eps, map[bool]string{false: "http://", true: "https://"}[secure]+h)
		}
	}
	if len(eps) == 0 {
		return nil, usageError{fmt.Errorf("--catalog %q names no etcd endpoint", o.catalogURL)}
	}
	var tlsCfg *tls.Config
	if secure {
		var err error
		if tlsCfg, err = etcdTLS(o.etcdCA, o.etcdCert, o.etcdKey); err != nil {
			return nil, err
		}
	}
	return etcdcat.Open(ctx, eps, "/"+strings.Trim(prefix, "/")+"/", tlsCfg)
}

// catalogKindFile, in the data directory, names the catalog the head on it
// uses: "bbolt" (catalog.db beside it) or "etcd". depot serve writes it at
// start; depot token create --data reads it, so it never mints into a
// catalog no head reads.
const catalogKindFile = "catalog-kind"

// The kinds of catalog, as catalogKindFile names them.
const (
	catalogBolt = "bbolt"
	catalogEtcd = "etcd"
)

func catalogKindOf(o *serveOptions) string {
	if o.catalogURL == "" {
		return catalogBolt
	}
	return catalogEtcd
}

// recordCatalogKind writes kind to the data directory's catalogKindFile,
// durably, unless it already says so.
func recordCatalogKind(log *slog.Logger, data, kind string) error {
	path := filepath.Join(data, catalogKindFile)
	old, err := readCatalogKind(data)
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	case old == kind:
		return nil
	case old != "":
		log.Warn("this data directory's head used another catalog before", "was", old, "now", kind)
	}
	if err := atomicfile.Write(path, []byte(kind+"\n"), 0o644, true); err != nil {
		return fmt.Errorf("record the catalog kind: %w", err)
	}
	return nil
}

// readCatalogKind reads catalogKindFile; a missing file is fs.ErrNotExist.
func readCatalogKind(data string) (string, error) {
	b, err := os.ReadFile(filepath.Join(data, catalogKindFile))
	if err != nil {
		return "", err
	}
	kind := strings.TrimSpace(string(b))
	if kind != catalogBolt && kind != catalogEtcd {
		return "", fmt.Errorf("%s: unknown catalog kind %q: %w", filepath.Join(data, catalogKindFile), kind, errdefs.ErrCorrupt)
	}
	return kind, nil
}

// etcdTLS is the client TLS configuration for an etcds:// catalog: the CA
// that signed the etcd members' certificates (default: the system's roots)
// and, for etcd's --client-cert-auth, a client certificate and key.
func etcdTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pemBytes, err := os.ReadFile(caFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--etcd-ca: %w", err)}
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pemBytes) {
			return nil, usageError{fmt.Errorf("--etcd-ca %s: no PEM certificate in it", caFile)}
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, usageError{errors.New("--etcd-cert and --etcd-key go together")}
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--etcd-cert/--etcd-key: %w", err)}
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func bootstrapAdmin(ctx context.Context, g *globals, cat catalog.Catalog, a *auth.Authority, data string) error {
	toks, err := cat.ListTokens(ctx)
	if err != nil || len(toks) > 0 {
		return err
	}
	tok, _, err := a.Mint(ctx, "admin", auth.RoleAdmin, "depot serve (first start)", 0)
	if err != nil {
		return err
	}
	path := filepath.Join(data, "admin.token")
	if err := atomicfile.Write(path, []byte(tok+"\n"), 0o600, true); err != nil {
		return fmt.Errorf("write admin token: %w", err)
	}
	fmt.Fprintf(g.stderr, "depot: first start: an admin token was written to %s (mode 0600).\n"+
		"       Use it with: export DEPOT_TOKEN_FILE=%s\n", path, path)
	return nil
}

// openBlobs opens the blob store --blobs names: a directory (default the data
// directory) or an S3 bucket.
func openBlobs(ctx context.Context, o *serveOptions) (blob.Store, error) {
	root, isDir, err := blobsDir(o.blobsDir)
	if err != nil {
		return nil, err
	}
	if isDir {
		if root == "" {
			root = o.data
		}
		return local.Open(root)
	}
	cfg, err := s3.ParseURL(o.blobsDir)
	if err != nil {
		return nil, usageError{err}
	}
	secret := ""
	if o.s3SecretFile != "" {
		b, err := os.ReadFile(o.s3SecretFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--s3-secret-key-file: %w", err)}
		}
		secret = strings.TrimSpace(string(b))
	}
	cfg.Creds = s3.DefaultCredentials(o.s3AccessKey, secret)
	return s3.Open(ctx, cfg)
}

func redirectFor(o *serveOptions) time.Duration {
	if !o.redirect {
		return 0
	}
	return o.redirectExpiry
}

// graceFor maps the flag to server.Config, where zero means "default".
func graceFor(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

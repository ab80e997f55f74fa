package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/catalog"
	etcdcat "github.com/depot-images/depot/internal/catalog/etcd"
	"github.com/depot-images/depot/internal/server"
)

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
		HeadName:        o.headName,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %v: %w", o.addr, err, errdefs.ErrUnavailable)
	}
	log.Info("depot serve listening", "url", "http://"+ln.Addr().String(), "data", o.data, "blobs", fmt.Sprint(blobs), "anonymous_read", o.anonRead, "redirect_content", o.redirect, "head_name", o.headName)
	hs := &http.Server{ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if err := srv.Run(ctx, ln, hs); err != nil {
		return err
	}
	log.Info("depot serve stopped")
	return nil
}

// bootstrapAdmin mints the first admin token on a catalog with no tokens and
// writes it to <data>/admin.token with mode 0600. The token is never logged.
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

package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// Options configure a Cache.
type Options struct {
	Logger *slog.Logger
	// Depot is the client used for depot references (name, UID). Nil means
	// depot references fail with ErrInvalidArgument.
	Depot *client.Client
	// HTTPClient fetches URL and OCI sources; nil is a client with
	// depot's default timeouts and redirect policy (client.NewHTTPClient).
	HTTPClient *http.Client
	// MaxDownloadSize, when > 0, bounds what one download may claim: a
	// source declaring more fails with ErrTooLarge before any body byte is
	// requested. Every download is also bounded by the free space of the
	// cache (ErrNoSpace).
	MaxDownloadSize int64
	// Connections is how many parallel ranged requests fetch one large blob
	// (default 1: a single stream).
	Connections int
	// SeedEntries bounds the seed lookup of a delta transfer, in chunks
	// (chunks.SeedEntryBytes each); 0 is DefaultSeedEntries (96 MiB).
	SeedEntries int
	// Sources overrides source construction (tests, embedding programs).
	Sources func(r ref.Ref, o EnsureOptions) (source.Source, error)
}

// Cache is an open cache directory. It is safe for concurrent use, and
// several processes may open the same directory.
type Cache struct {
	dir  string
	opts Options
	log  *slog.Logger
	// stats count every transfer's bytes (TransferStats), and chunked
	// the bytes an ingest pass (a download, a re-verification) cut into
	// chunks itself to make a chunk index.
	stats struct{ fetched, reused, received, chunked atomic.Int64 }
}

// Open prepares dir for use. The cache keeps dir as an absolute path, so
// every path it hands out (and every qcow2 overlay made on one) means the
// same file whatever the caller's working directory.
func Open(dir string, opts Options) (*Cache, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", dir, err)
	}
	for _, d := range []string{"blobs/sha256", "ingest", "locks", "index/pointers", "index/blobs", "index/chunks", "leases", "quarantine"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("cache %s: %w", dir, err)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = client.NewHTTPClient(client.Timeouts{})
	}
	return &Cache{dir: dir, opts: opts, log: log}, nil
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// BlobPath is where a committed blob lives.
func (c *Cache) BlobPath(d digest.Digest) string {
	return filepath.Join(c.dir, "blobs", "sha256", d.Encoded())
}

func (c *Cache) server() string {
	if c.opts.Depot == nil {
		return ""
	}
	return c.opts.Depot.Server()
}

func (c *Cache) sourceFor(r ref.Ref, o EnsureOptions) (source.Source, error) {
	if c.opts.Sources != nil {
		return c.opts.Sources(r, o)
	}
	switch r.Kind {
	case ref.Depot:
		if c.opts.Depot == nil {
			return nil, fmt.Errorf("%s is a depot reference but no server is configured (--server / DEPOT_SERVER): %w", r, errdefs.ErrInvalidArgument)
		}
		name := r.Name
		if r.UID != "" {
			name = r.UID
		}
		return &source.Depot{Client: c.opts.Depot, Ref: name}, nil
	case ref.HTTP:
		pin := r.Digest
		if o.Checksum != "" {
			if pin != "" && pin != o.Checksum {
				return nil, fmt.Errorf("%s: --checksum %s disagrees with the pinned digest: %w", r, o.Checksum, errdefs.ErrInvalidArgument)
			}
			pin = o.Checksum
		}
		return &source.HTTP{Client: c.opts.HTTPClient, URL: r.URL, Checksum: pin, ChecksumURL: o.ChecksumURL}, nil
	case ref.OCI:
		return source.NewOCI(r, c.opts.HTTPClient)
	}
	return nil, fmt.Errorf("reference %s: unsupported kind: %w", r, errdefs.ErrInvalidArgument)
}

func (c *Cache) diskErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("cache %s: free space or prune the cache, then retry: %w: %w", c.dir, err, errdefs.ErrNoSpace)
	}
	return fmt.Errorf("cache %s: %w", c.dir, err)
}

// WorkDir is where edit workspaces live (see HasWorkspace).
func (c *Cache) WorkDir() string { return filepath.Join(c.dir, "work") }

// HasWorkspace reports whether an edit workspace is bound to uid (such
// entries are never pruned: they may hold unpushed work).
func (c *Cache) HasWorkspace(uid string) bool {
	if uid == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(c.dir, "work", uid))
	return err == nil
}

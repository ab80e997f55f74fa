// Package s3 is the blob store on S3-compatible object storage (AWS S3,
// MinIO, Ceph RGW…), through minio-go. Several heads share one bucket.
//
// Layout under the configured prefix:
//
//	blobs/sha256/<hex>   committed blobs, never modified; user metadata
//	                     Blake3 holds the BLAKE3-256 of blobs that came
//	                     through ingest/ (see below)
//	chunks/sha256/<hex>  the record kept beside blob <hex> (blob.IndexStore:
//	                     the server's chunk index), one PUT
//	ingest/<random>      private partial writes, invisible to readers
//	ingest/<random>.upload  a marker while a write runs, naming its
//	                     multipart upload: "<key>\n<upload id>"
//
// Every write is a multipart upload of its own, hashed as it goes, whose
// part buffers count against one memory budget for the whole store
// (Config.UploadMemory). A write whose digest is declared up front (a push
// that sends it in a header) uploads straight to blobs/sha256/<hex>; Commit
// completes it only after size and digest check out, and aborts it
// otherwise. No copy: committing 50 GiB costs one request. S3 metadata is
// fixed when an upload starts, before the BLAKE3 is known, so these objects
// carry no Blake3 metadata (the catalog records it).
//
// A write without a declared digest uploads to ingest/<random>. Commit
// checks size and digest, completes the upload, copies the object
// server-side to its digest key (a single copy up to 5 GiB, a multipart
// copy above) and deletes the temporary object.
//
// S3 makes an object visible only when its PUT, copy or multipart upload
// completes, so a reader never sees part of a blob. A crash leaves at most a
// marker, an ingest/ object and an unfinished multipart upload; SweepIngests
// finds the upload through the marker (MinIO lists uploads only by exact
// key) and removes all three. An S3 "storage full" answer (MinIO's
// XMinioStorageFull, HTTP 507) is errdefs.ErrNoSpace; other store failures
// are errdefs.ErrUnavailable.
//
// The store can also hand out presigned GET URLs (blob.Presigner), so that
// a head redirects downloads to the object store instead of carrying the
// bytes.
//
// It must never make an object visible under a digest key before its bytes
// hashed to that digest.
//
// Files: s3.go the Store and Open; config.go Config and ParseURL; blobs.go
// committed blobs (Open, Stat, Delete, Walk, PresignGet); upload.go a
// write (partWriter); part.go sending one part, and its retry policy;
// buffers.go part buffers and the upload memory; markers.go upload markers
// and SweepIngests; errors.go the mapping of S3 errors to errdefs.
package s3

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
)

// Store is a blob.Store in an S3 bucket.
type Store struct {
	cfg     Config
	c       *minio.Client
	presign *minio.Client // client for presigned URLs (PublicEndpoint)
	partc   *minio.Client // c without retries, for writes' parts
	// copyPartSize is the largest piece one server-side copy request moves;
	// tests lower it to exercise the multipart copy path.
	copyPartSize int64
	// markerEvery is how often a running write rewrites its marker; tests
	// shorten it to watch a long upload outlive a sweep.
	markerEvery time.Duration
	// uploadMem is Config.UploadMemory, in bytes, shared by all writes.
	uploadMem     *semaphore.Weighted
	uploadMemSize int64
	// parts recycles the part buffers of writes (*[]byte of
	// PartSize capacity), so that successive uploads reuse memory rather
	// than leave it to the garbage collector.
	parts sync.Pool
}

var (
	_ blob.Store         = (*Store)(nil)
	_ blob.IngestSweeper = (*Store)(nil)
	_ blob.Presigner     = (*Store)(nil)
	_ blob.IndexStore    = (*Store)(nil)

	_ blob.DeclaredDigestPreferrer = (*Store)(nil)
)

// Open connects to the bucket and checks that it exists (or creates it when
// cfg.CreateBucket is set).
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	if cfg.Creds == nil {
		cfg.Creds = DefaultCredentials("", "")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.Threads == 0 {
		cfg.Threads = DefaultThreads
	}
	if cfg.UploadMemory == 0 {
		cfg.UploadMemory = DefaultUploadMemory
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{Creds: cfg.Creds, Secure: cfg.Secure, Region: cfg.Region})
	if err != nil {
		return nil, fmt.Errorf("blob store s3://%s: %w", cfg.Bucket, err)
	}
	// Writes retry their parts themselves, each attempt with a reader of
	// its own (see partWriter.uploadPart), so their client
	// makes one attempt per call.
	partc, err := minio.New(cfg.Endpoint, &minio.Options{Creds: cfg.Creds, Secure: cfg.Secure, Region: cfg.Region, MaxRetries: 1})
	if err != nil {
		return nil, fmt.Errorf("blob store s3://%s: %w", cfg.Bucket, err)
	}
	s := &Store{cfg: cfg, c: c, partc: partc, presign: c, copyPartSize: maxSingleCopy, markerEvery: markerRefresh,
		uploadMem: semaphore.NewWeighted(int64(cfg.UploadMemory)), uploadMemSize: int64(cfg.UploadMemory)}
	if pe := cfg.PublicEndpoint; pe != "" {
		secure := cfg.Secure
		if rest, ok := strings.CutPrefix(pe, "http://"); ok {
			secure, pe = false, rest
		} else if rest, ok := strings.CutPrefix(pe, "https://"); ok {
			secure, pe = true, rest
		}
		if s.presign, err = minio.New(pe, &minio.Options{Creds: cfg.Creds, Secure: secure, Region: cfg.Region}); err != nil {
			return nil, fmt.Errorf("blob store s3://%s: public endpoint: %w", cfg.Bucket, err)
		}
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("blob store s3://%s at %s: %v: %w", cfg.Bucket, cfg.Endpoint, err, errdefs.ErrUnavailable)
	}
	if !ok {
		if !cfg.CreateBucket {
			return nil, fmt.Errorf("blob store s3://%s at %s: the bucket does not exist; create it, or add ?create-bucket=true: %w", cfg.Bucket, cfg.Endpoint, errdefs.ErrNotFound)
		}
		if err := c.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
			return nil, fmt.Errorf("blob store s3://%s: create bucket: %w", cfg.Bucket, err)
		}
	}
	return s, nil
}

// String names the store for logs (no credentials).
func (s *Store) String() string {
	return fmt.Sprintf("s3://%s/%s (endpoint %s)", s.cfg.Bucket, s.cfg.Prefix, s.cfg.Endpoint)
}

func (s *Store) blobKey(d digest.Digest) string { return s.cfg.Prefix + "blobs/sha256/" + d.Encoded() }
func (s *Store) indexKey(d digest.Digest) string {
	return s.cfg.Prefix + "chunks/sha256/" + d.Encoded()
}
func (s *Store) blobsPrefix() string  { return s.cfg.Prefix + "blobs/sha256/" }
func (s *Store) ingestPrefix() string { return s.cfg.Prefix + "ingest/" }

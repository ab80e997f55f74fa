// Package s3 is the blob store on S3-compatible object storage (AWS S3,
// MinIO, Ceph RGW…), through minio-go. Several heads share one bucket.
//
// Layout under the configured prefix:
//
//	blobs/sha256/<hex>   committed blobs, never modified; user metadata
//	                     Blake3 holds the BLAKE3-256 of blobs that came
//	                     through ingest/ (see below)
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
package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/size"
)

// Config locates a bucket and tunes uploads.
type Config struct {
	// Endpoint is host[:port] of the S3 API.
	Endpoint string
	// Secure selects https (the default in ParseURL).
	Secure bool
	// Bucket must exist unless CreateBucket is set.
	Bucket string
	// Prefix is prepended to every key ("" or ending in "/").
	Prefix string
	// Region is sent with every request; setting it avoids a bucket-location
	// lookup. Default "us-east-1".
	Region string
	// Creds signs requests. Nil means DefaultCredentials("", "").
	Creds *credentials.Credentials
	// PartSize is the multipart upload part size. Default 16 MiB. A write
	// whose size is known up front (Content-Length) uses larger parts when
	// it needs them to fit in S3's 10,000; one of unknown size is bounded at
	// 10,000 parts (160 GiB by default).
	PartSize uint64
	// Threads is how many parts of one upload are in flight at once.
	// Memory per upload is about PartSize × (Threads+1): the part being
	// filled and Threads in flight. Default 2.
	Threads uint
	// UploadMemory bounds the part buffers that all writes hold at once. A
	// write waits for room for its first buffer and takes more only while
	// there is room to spare. Default 256 MiB.
	UploadMemory uint64
	// PublicEndpoint, when set, is the host[:port] (with an optional
	// http:// or https:// scheme) that presigned URLs name: the address
	// clients reach the object store at, if it differs from Endpoint.
	PublicEndpoint string
	// CreateBucket creates a missing bucket at Open.
	CreateBucket bool
}

// Defaults used when the Config leaves a field zero.
const (
	DefaultPartSize = 16 << 20
	DefaultThreads  = 2
	// DefaultUploadMemory is Config.UploadMemory's default.
	DefaultUploadMemory = 256 << 20
	DefaultRegion       = "us-east-1"
	// maxSingleCopy is the largest object S3 copies in one CopyObject call.
	maxSingleCopy = 5 << 30
)

// ParseURL reads s3://bucket[/prefix][?endpoint=…&region=…&part-size=…&
// threads=…&public-endpoint=…&create-bucket=true]. endpoint may carry a
// scheme: http:// turns TLS off; the default is https. Credentials are not
// part of the URL; see DefaultCredentials.
func ParseURL(raw string) (Config, error) {
	bad := func(why string) (Config, error) {
		return Config{}, fmt.Errorf("blob store %q: %s: %w", raw, why, errdefs.ErrInvalidArgument)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return bad("want s3://bucket[/prefix]?endpoint=host:port")
	}
	if u.User != nil {
		return bad("credentials do not belong in the URL; use --s3-access-key/--s3-secret-key-file or the environment")
	}
	cfg := Config{Bucket: u.Host, Secure: true, Region: DefaultRegion}
	if p := strings.Trim(u.Path, "/"); p != "" {
		for _, seg := range strings.Split(p, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return bad("the prefix must not have empty, . or .. segments")
			}
		}
		cfg.Prefix = p + "/"
	}
	q := u.Query()
	for k := range q {
		switch k {
		case "endpoint", "region", "part-size", "threads", "upload-memory", "public-endpoint", "create-bucket":
		default:
			return bad("unknown parameter " + strconv.Quote(k))
		}
	}
	ep := q.Get("endpoint")
	if ep == "" {
		ep = "s3.amazonaws.com"
	}
	if rest, ok := strings.CutPrefix(ep, "http://"); ok {
		cfg.Secure, ep = false, rest
	} else {
		ep = strings.TrimPrefix(ep, "https://")
	}
	if ep == "" || strings.ContainsAny(ep, "/?#") {
		return bad("endpoint must be [http(s)://]host[:port]")
	}
	cfg.Endpoint = ep
	if r := q.Get("region"); r != "" {
		cfg.Region = r
	}
	if v := q.Get("part-size"); v != "" {
		n, err := size.Parse(v)
		if err != nil || n < 5<<20 || n > 5<<30 {
			return bad("part-size must be a size between 5MiB and 5GiB")
		}
		cfg.PartSize = uint64(n)
	}
	if v := q.Get("upload-memory"); v != "" {
		n, err := size.Parse(v)
		if err != nil || n < 5<<20 {
			return bad("upload-memory must be a size of at least 5MiB")
		}
		cfg.UploadMemory = uint64(n)
	}
	if v := q.Get("threads"); v != "" {
		n, err := strconv.ParseUint(v, 10, 8)
		if err != nil || n == 0 {
			return bad("threads must be a small positive integer")
		}
		cfg.Threads = uint(n)
	}
	cfg.PublicEndpoint = q.Get("public-endpoint")
	if v := q.Get("create-bucket"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return bad("create-bucket must be true or false")
		}
		cfg.CreateBucket = b
	}
	return cfg, nil
}

// DefaultCredentials returns static credentials when accessKey is set, and
// otherwise the first found of: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
// MINIO_ROOT_USER/MINIO_ROOT_PASSWORD (or MINIO_ACCESS_KEY/MINIO_SECRET_KEY),
// ~/.aws/credentials, and the instance's IAM role.
func DefaultCredentials(accessKey, secretKey string) *credentials.Credentials {
	if accessKey != "" {
		return credentials.NewStaticV4(accessKey, secretKey, "")
	}
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.EnvMinio{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	})
}

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
func (s *Store) blobsPrefix() string            { return s.cfg.Prefix + "blobs/sha256/" }
func (s *Store) ingestPrefix() string           { return s.cfg.Prefix + "ingest/" }

// mapErr turns an S3 error about blob d into depot's vocabulary.
func mapErr(op string, d digest.Digest, err error) error {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		switch resp.Code {
		case "NoSuchKey", "NotFound":
			return fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
		}
	}
	return fmt.Errorf("%s blob %s: %w", op, d, classify(err))
}

// classify maps an error from the object store to the vocabulary: a full
// store is errdefs.ErrNoSpace, a cancelled context stays itself, anything
// else is errdefs.ErrUnavailable. The store's own message is kept.
func classify(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && (resp.Code == "XMinioStorageFull" || resp.StatusCode == http.StatusInsufficientStorage) {
		return fmt.Errorf("%v: %w", err, errdefs.ErrNoSpace)
	}
	return fmt.Errorf("%v: %w", err, errdefs.ErrUnavailable)
}

func infoOf(d digest.Digest, o minio.ObjectInfo) blob.Info {
	return blob.Info{Digest: d, Size: o.Size, Committed: o.LastModified, BLAKE3: o.UserMetadata["Blake3"]}
}

// Open implements blob.Provider. The Reader fetches ranges lazily.
func (s *Store) Open(ctx context.Context, d digest.Digest) (blob.Reader, error) {
	if err := contenthash.Validate(d); err != nil {
		return nil, err
	}
	obj, err := s.c.GetObject(ctx, s.cfg.Bucket, s.blobKey(d), minio.GetObjectOptions{})
	if err != nil {
		return nil, mapErr("open", d, err)
	}
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, mapErr("open", d, err)
	}
	return obj, nil
}

// Stat implements blob.Provider. It fills BLAKE3 from the object's metadata.
func (s *Store) Stat(ctx context.Context, d digest.Digest) (blob.Info, error) {
	if err := contenthash.Validate(d); err != nil {
		return blob.Info{}, err
	}
	o, err := s.c.StatObject(ctx, s.cfg.Bucket, s.blobKey(d), minio.StatObjectOptions{})
	if err != nil {
		return blob.Info{}, mapErr("stat", d, err)
	}
	return infoOf(d, o), nil
}

// Delete implements blob.Manager.
func (s *Store) Delete(ctx context.Context, d digest.Digest) error {
	if _, err := s.Stat(ctx, d); err != nil {
		return err
	}
	if err := s.c.RemoveObject(ctx, s.cfg.Bucket, s.blobKey(d), minio.RemoveObjectOptions{}); err != nil {
		return mapErr("delete", d, err)
	}
	return nil
}

// Walk implements blob.Manager. Keys that are not sha256 hex are skipped.
func (s *Store) Walk(ctx context.Context, fn func(blob.Info) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn stops the walk
	prefix := s.blobsPrefix()
	for o := range s.c.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return fmt.Errorf("walk s3://%s/%s: %v: %w", s.cfg.Bucket, prefix, o.Err, errdefs.ErrUnavailable)
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, strings.TrimPrefix(o.Key, prefix))
		if contenthash.Validate(d) != nil {
			continue
		}
		if err := fn(infoOf(d, o)); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// uploadMarker is the suffix of the empty object each write leaves beside
// its temporary key while it runs. Some S3 servers (MinIO) list multipart
// uploads only by exact key, so the marker is how a sweep finds an upload
// that a killed head left unfinished.
const uploadMarker = ".upload"

// SweepIngests implements blob.IngestSweeper: it removes what writes older
// than olderThan left under ingest/: temporary objects, and unfinished
// multipart uploads found through their markers.
func (s *Store) SweepIngests(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	n := 0
	for o := range s.c.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.ingestPrefix(), Recursive: true}) {
		if o.Err != nil {
			return n, fmt.Errorf("sweep ingests: %v: %w", o.Err, errdefs.ErrUnavailable)
		}
		if !o.LastModified.Before(cutoff) {
			continue
		}
		if key, ok := strings.CutSuffix(o.Key, uploadMarker); ok {
			if err := s.abortMarked(ctx, o, key); err != nil {
				return n, fmt.Errorf("sweep ingests: %w", err)
			}
		}
		if s.c.RemoveObject(ctx, s.cfg.Bucket, o.Key, minio.RemoveObjectOptions{}) == nil {
			n++
		}
	}
	return n, nil
}

// abortMarked aborts the unfinished upload a stale marker stands for: the
// one its body names, or, for an empty marker (as depot wrote before every
// write was its own multipart upload), every upload to the ingest/ key
// beside it.
func (s *Store) abortMarked(ctx context.Context, marker minio.ObjectInfo, ingestKey string) error {
	if marker.Size == 0 {
		if err := s.c.RemoveIncompleteUpload(ctx, s.cfg.Bucket, ingestKey); err != nil {
			return fmt.Errorf("abort upload %s: %w", ingestKey, classify(err))
		}
		return nil
	}
	key, id, ok, err := s.markerTarget(ctx, marker.Key)
	if err != nil {
		return fmt.Errorf("read marker %s: %w", marker.Key, classify(err))
	}
	if !ok {
		return nil // not a marker this code wrote: only the marker goes
	}
	err = minio.Core{Client: s.c}.AbortMultipartUpload(ctx, s.cfg.Bucket, key, id)
	var resp minio.ErrorResponse
	if err != nil && !(errors.As(err, &resp) && resp.Code == "NoSuchUpload") {
		return fmt.Errorf("abort upload %s of %s: %w", id, key, classify(err))
	}
	return nil
}

// PresignGet implements blob.Presigner: a URL that GETs blob d without
// credentials until expiry. It checks that the blob exists first, so a
// missing blob is a clear error rather than a redirect to a 404.
func (s *Store) PresignGet(ctx context.Context, d digest.Digest, expiry time.Duration) (*url.URL, error) {
	if _, err := s.Stat(ctx, d); err != nil {
		return nil, err
	}
	params := url.Values{"response-content-type": {"application/octet-stream"}}
	u, err := s.presign.PresignedGetObject(ctx, s.cfg.Bucket, s.blobKey(d), expiry, params)
	if err != nil {
		return nil, mapErr("presign", d, err)
	}
	return u, nil
}

// committedAt reports whether the blob info describes is already committed
// (an object of its size under its digest key), and when.
func (s *Store) committedAt(ctx context.Context, info blob.Info) (time.Time, bool) {
	o, err := s.c.StatObject(ctx, s.cfg.Bucket, s.blobKey(info.Digest), minio.StatObjectOptions{})
	if err != nil || o.Size != info.Size {
		return time.Time{}, false
	}
	return o.LastModified, true
}

func randomID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Store) putMarker(ctx context.Context, key string, body []byte) error {
	_, err := s.c.PutObject(ctx, s.cfg.Bucket, key, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
	return err
}

// markerRefresh is how often a running write rewrites its marker, so that a
// sweep (which removes markers older than an hour) never takes a live
// upload for an abandoned one, however long the upload runs.
const markerRefresh = 10 * time.Minute

// keepMarker rewrites a marker every period until ctx ends (the write
// commits or is abandoned).
func keepMarker(ctx context.Context, s *Store, marker string, body []byte, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.putMarker(ctx, marker, body)
		}
	}
}

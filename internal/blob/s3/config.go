package s3

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/depot-images/depot/errdefs"
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

package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

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
	headName       string
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
	f.StringVar(&o.headName, "head-name", envOr("DEPOT_HEAD_NAME", ""), "this head's name, recorded as last_modified_on in the images and content it changes (default the hostname; env DEPOT_HEAD_NAME)")
}

// headNameRE is what a head name may be: a hostname's characters, so it is
// safe in JSON, logs and terminals.
var headNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// resolveHeadName applies the hostname default to --head-name and checks it.
func (o *serveOptions) resolveHeadName() error {
	if o.headName == "" {
		host, err := os.Hostname()
		if err != nil {
			return usageError{fmt.Errorf("--head-name is not set and the hostname cannot be read (%v); set --head-name", err)}
		}
		if !headNameRE.MatchString(host) {
			return usageError{fmt.Errorf("the hostname %s is not usable as a head name; set --head-name (letters, digits, '.', '_' and '-', at most 253)", strconv.QuoteToASCII(host))}
		}
		o.headName = host
	}
	if !headNameRE.MatchString(o.headName) {
		return usageError{fmt.Errorf("--head-name %s: letters, digits, '.', '_' and '-' only, starting with a letter or digit, at most 253", strconv.QuoteToASCII(o.headName))}
	}
	return nil
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
	return o.resolveHeadName()
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

package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/local"
	"github.com/depot-images/depot/internal/blob/s3"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/catalog/bolt"
	etcdcat "github.com/depot-images/depot/internal/catalog/etcd"
)

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

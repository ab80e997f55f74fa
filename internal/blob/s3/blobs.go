package s3

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/contenthash"
)

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
		if d.Validate() != nil {
			continue
		}
		if err := fn(infoOf(d, o)); err != nil {
			return err
		}
	}
	return ctx.Err()
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

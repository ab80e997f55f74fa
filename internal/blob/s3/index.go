package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/contenthash"
)

// PutIndex implements blob.IndexStore with one PUT of the record: S3 makes
// an object visible only whole.
func (s *Store) PutIndex(ctx context.Context, d digest.Digest, data []byte) error {
	if err := contenthash.Validate(d); err != nil {
		return err
	}
	_, err := s.c.PutObject(ctx, s.cfg.Bucket, s.indexKey(d), bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
	if err != nil {
		return fmt.Errorf("put index of blob %s: %w", d, classify(err))
	}
	return nil
}

// GetIndex implements blob.IndexStore.
func (s *Store) GetIndex(ctx context.Context, d digest.Digest, limit int64) ([]byte, error) {
	if err := contenthash.Validate(d); err != nil {
		return nil, err
	}
	obj, err := s.c.GetObject(ctx, s.cfg.Bucket, s.indexKey(d), minio.GetObjectOptions{})
	if err != nil {
		return nil, indexErr("get", d, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(io.LimitReader(obj, limit+1))
	if err != nil {
		return nil, indexErr("get", d, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("index of blob %s is over %d bytes: %w", d, limit, errdefs.ErrCorrupt)
	}
	return b, nil
}

// DeleteIndex implements blob.IndexStore. S3 deletes of a missing key
// succeed.
func (s *Store) DeleteIndex(ctx context.Context, d digest.Digest) error {
	if err := contenthash.Validate(d); err != nil {
		return err
	}
	if err := s.c.RemoveObject(ctx, s.cfg.Bucket, s.indexKey(d), minio.RemoveObjectOptions{}); err != nil {
		return indexErr("delete", d, err)
	}
	return nil
}

// indexErr is mapErr for an index record.
func indexErr(op string, d digest.Digest, err error) error {
	if errors.Is(mapErr(op, d, err), errdefs.ErrNotFound) {
		return fmt.Errorf("index of blob %s: %w", d, errdefs.ErrNotFound)
	}
	return fmt.Errorf("%s index of blob %s: %w", op, d, classify(err))
}

package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/depot-images/depot/errdefs"
)

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

// markerTarget reads a marker's body: the key and upload ID of a write. ok
// is false, with a nil error, for a body this code did not write (or one
// naming a key other than a blob's or the ingest key beside the marker);
// err is an I/O error.
func (s *Store) markerTarget(ctx context.Context, marker string) (key, id string, ok bool, err error) {
	obj, err := s.c.GetObject(ctx, s.cfg.Bucket, marker, minio.GetObjectOptions{})
	if err != nil {
		return "", "", false, err
	}
	defer obj.Close()
	b, err := io.ReadAll(io.LimitReader(obj, 4096))
	if err != nil {
		return "", "", false, err
	}
	key, id, ok = strings.Cut(string(b), "\n")
	tmp := strings.TrimSuffix(marker, uploadMarker)
	ok = ok && id != "" && (strings.HasPrefix(key, s.blobsPrefix()) || key == tmp)
	return key, id, ok, nil
}

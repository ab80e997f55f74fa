package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

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

package s3

import (
	"bytes"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/minio/minio-go/v7"

	"github.com/depot-images/depot/errdefs"
)

// partAttempts is how many times a part is sent before the write fails.
const partAttempts = 4

// partRetry is the retry policy of one part: up to partAttempts sends,
// 200 ms, 400 ms and 800 ms apart (no jitter, no time limit beyond that).
// The operation marks what is not worth another send permanent.
func partRetry() []backoff.RetryOption {
	b := &backoff.ExponentialBackOff{InitialInterval: 200 * time.Millisecond, Multiplier: 2, MaxInterval: time.Minute}
	return []backoff.RetryOption{backoff.WithBackOff(b), backoff.WithMaxTries(partAttempts), backoff.WithMaxElapsedTime(0)}
}

// uploadPart sends part num under partRetry; retried reports whether any
// attempt failed. Only an unavailable store is retried: a full store
// (ErrNoSpace), a cancelled write or anything else ends the part at once.
// Each attempt reads b through a reader of its own: an attempt answered
// early may still be reading when the next one starts, and the two must
// not share a reader's position.
func (w *partWriter) uploadPart(num int, b []byte) (part minio.ObjectPart, retried bool, err error) {
	core := minio.Core{Client: w.s.partc}
	attempts := 0
	var last error // the last attempt's error, which the part fails with
	part, err = backoff.Retry(w.ctx, func() (minio.ObjectPart, error) {
		attempts++
		part, err := core.PutObjectPart(w.ctx, w.s.cfg.Bucket, w.key, w.id, num, bytes.NewReader(b), int64(len(b)), minio.PutObjectPartOptions{})
		if err == nil {
			return part, nil
		}
		last = classify(err)
		if !errors.Is(last, errdefs.ErrUnavailable) {
			return part, backoff.Permanent(last)
		}
		return part, last
	}, partRetry()...)
	if err != nil {
		// Not the policy's wrapping, nor the context's error when the
		// write ended during a wait: what the store last said.
		return part, true, last
	}
	return part, attempts > 1, nil
}

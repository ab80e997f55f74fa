package cache

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/source"
)

// The retry policy of a fetch. An interrupted transfer (a head died, the
// network dropped: ErrUnavailable) is tried again, and each attempt
// resumes from what the last one left, by Range, on the next head of a
// cluster. Nothing else is: the classes below are final, whatever else an
// error also says, and so is an error after the caller gave up. A stall is
// retried only when the source has another head to go to: waiting out the
// same silent peer again helps nobody.

// transferAttempts is how many transfers one fetch makes at most: the
// first and three resumes.
const transferAttempts = 4

// permanentClasses are never retried: retrying cannot change the answer
// (a full disk, content that is not the digest or is unsafe, a size over a
// bound, a refused redirect or a malformed request).
var permanentClasses = []error{
	errdefs.ErrNoSpace,
	errdefs.ErrVerification,
	errdefs.ErrUnsafeContent,
	errdefs.ErrTooLarge,
	errdefs.ErrInvalidArgument, // client.RedirectError among them
}

// transferBackOff is the wait before each resume: 200ms, 400ms, 800ms.
func transferBackOff() backoff.BackOff {
	return &backoff.ExponentialBackOff{
		InitialInterval: 200 * time.Millisecond,
		Multiplier:      2,
		MaxInterval:     2 * time.Second,
	}
}

// retryable reports whether a transfer of src that failed with err is
// worth another attempt under the policy above.
func retryable(ctx context.Context, src source.Source, err error) bool {
	if ctx.Err() != nil || !errors.Is(err, errdefs.ErrUnavailable) {
		return false
	}
	for _, class := range permanentClasses {
		if errors.Is(err, class) {
			return false
		}
	}
	return !client.IsStall(err) || source.Heads(src) >= 2
}

// withRetries runs attempt, a transfer of d from src, under the retry
// policy and returns its last result. An error it returns is the
// attempt's own, never wrapped.
func (c *Cache) withRetries(ctx context.Context, src source.Source, d digest.Digest, attempt func() (Image, error)) (Image, error) {
	n := 0
	img, err := backoff.Retry(ctx, func() (Image, error) {
		img, err := attempt()
		if err != nil && !retryable(ctx, src, err) {
			return img, backoff.Permanent(err)
		}
		return img, err
	},
		backoff.WithBackOff(transferBackOff()),
		backoff.WithMaxTries(transferAttempts),
		backoff.WithMaxElapsedTime(0), // a transfer may take hours; attempts bound the retries
		backoff.WithNotify(func(err error, _ time.Duration) {
			n++
			c.log.Warn("transfer interrupted; resuming", "digest", d, "attempt", n, "err", err)
		}))
	if pe, ok := err.(*backoff.PermanentError); ok { // the last attempt's, returned as is
		err = pe.Err
	}
	return img, err
}

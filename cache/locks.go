package cache

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
	"github.com/opencontainers/go-digest"
)

// lockDigest takes d's lock, locks/<hex>.lock: an flock shared by every
// process on the cache, and by every goroutine of one (each call opens its
// own descriptor, so it is not re-entrant). It is held across a transfer
// of d, every deletion of d (prune, rm, quarantine), every read-modify-
// write of d's index record, and every lookup that returns d's path, so
// an ensure never returns a path that is being deleted and no record
// update is lost. It waits until ctx is done.
func (c *Cache) lockDigest(ctx context.Context, d digest.Digest) (unlock func(), err error) {
	lock := flock.New(filepath.Join(c.dir, "locks", d.Encoded()+".lock"))
	for {
		got, err := lock.TryLock()
		if err != nil {
			return nil, fmt.Errorf("lock of %s: %w", d, err)
		}
		if got {
			return func() { lock.Unlock() }, nil
		}
		if testHookLockBusy != nil {
			testHookLockBusy(d)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the lock of %s: %w", d, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Test hooks (nil outside tests): testHookLockBusy runs when lockDigest
// finds d's lock taken; testHookRecordRead runs in local between reading
// d's record and writing it back.
var testHookLockBusy, testHookRecordRead func(d digest.Digest)

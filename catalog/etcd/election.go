package etcd

import (
	"context"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leadership is a role held by at most one process at a time, through an
// etcd election on a lease: if the holder dies, its lease expires after the
// TTL and another campaigner takes over.
type Leadership struct {
	held atomic.Bool
}

// IsLeader reports whether this process holds the role now.
func (l *Leadership) IsLeader() bool { return l.held.Load() }

// Campaign runs for role (e.g. "gc") as id until ctx ends, re-campaigning
// whenever the session is lost. ttl is the lease in seconds.
func (c *Catalog) Campaign(ctx context.Context, role, id string, ttl int) *Leadership {
	l := &Leadership{}
	go func() {
		for ctx.Err() == nil {
			sess, err := concurrency.NewSession(c.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
			if err != nil {
				sleep(ctx, time.Second)
				continue
			}
			el := concurrency.NewElection(sess, c.k("election", role))
			if err := el.Campaign(ctx, id); err != nil {
				sess.Close()
				sleep(ctx, time.Second)
				continue
			}
			l.held.Store(true)
			select {
			case <-sess.Done(): // the lease was lost (partition, etcd restart)
			case <-ctx.Done():
			}
			l.held.Store(false)
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			el.Resign(rctx)
			cancel()
			sess.Close()
		}
	}()
	return l
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

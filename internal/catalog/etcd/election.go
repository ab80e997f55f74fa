package etcd

import (
	"context"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leadership is a role held by at most one process at a time, through an
// etcd election on a lease: if the holder dies, its lease expires after the
// TTL and another campaigner takes over. Create it with Election and run
// its campaign with Run, which the caller joins.
type Leadership struct {
	c    *Catalog
	role string
	id   string
	ttl  int
	held atomic.Bool
}

// IsLeader reports whether this process holds the role now.
func (l *Leadership) IsLeader() bool { return l.held.Load() }

// Election prepares a campaign for role (e.g. "gc") as id; ttl is the
// lease in seconds. Nothing runs until Run.
func (c *Catalog) Election(role, id string, ttl int) *Leadership {
	return &Leadership{c: c, role: role, id: id, ttl: ttl}
}

// Run campaigns until ctx ends, re-campaigning whenever the session is
// lost. It returns once ctx has ended and the role is resigned (bounded by
// 2 s), so the caller can close the catalog after it.
func (l *Leadership) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(l.c.cli, concurrency.WithTTL(l.ttl), concurrency.WithContext(ctx))
		if err != nil {
			sleep(ctx, time.Second)
			continue
		}
		el := concurrency.NewElection(sess, l.c.k("election", l.role))
		if err := el.Campaign(ctx, l.id); err != nil {
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
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

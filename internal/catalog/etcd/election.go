package etcd

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
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

// campaignRetry is the retry policy of a campaign: once a second for as
// long as ctx lasts. Only the end of ctx is permanent.
func campaignRetry() []backoff.RetryOption {
	return []backoff.RetryOption{backoff.WithBackOff(backoff.NewConstantBackOff(time.Second)), backoff.WithMaxElapsedTime(0)}
}

// term is one won campaign: the session whose lease holds the role.
type term struct {
	sess *concurrency.Session
	el   *concurrency.Election
}

// Run campaigns until ctx ends, re-campaigning whenever the session is
// lost. It returns once ctx has ended and the role is resigned (bounded by
// 2 s), so the caller can close the catalog after it.
func (l *Leadership) Run(ctx context.Context) error {
	for {
		won, err := backoff.Retry(ctx, func() (term, error) { return l.campaign(ctx) }, campaignRetry()...)
		if err != nil {
			return nil // ctx ended
		}
		l.hold(ctx, won)
	}
}

// campaign opens a session and waits until it holds the role.
func (l *Leadership) campaign(ctx context.Context) (term, error) {
	if err := ctx.Err(); err != nil {
		return term{}, backoff.Permanent(err)
	}
	sess, err := concurrency.NewSession(l.c.cli, concurrency.WithTTL(l.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return term{}, err
	}
	el := concurrency.NewElection(sess, l.c.k("election", l.role))
	if err := el.Campaign(ctx, l.id); err != nil {
		sess.Close()
		return term{}, err
	}
	return term{sess: sess, el: el}, nil
}

// hold keeps the role until the session is lost (a partition, an etcd
// restart) or ctx ends, then resigns it.
func (l *Leadership) hold(ctx context.Context, won term) {
	l.held.Store(true)
	select {
	case <-won.sess.Done():
	case <-ctx.Done():
	}
	l.held.Store(false)
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	won.el.Resign(rctx)
	cancel()
	won.sess.Close()
}

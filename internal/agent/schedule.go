package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/depot-images/depot/errdefs"
)

// task is one periodic job.
type task struct {
	name  string
	every time.Duration
	run   func(ctx context.Context) error
}

// schedule runs each task at once and then every interval after its last
// run ended, one task at a time, until ctx is done (nil) or, with cycles,
// until every task ran that many times. A run is bounded by its interval:
// one that does not finish in it is cut and reported as ErrUnavailable.
// done gets every run's outcome.
func schedule(ctx context.Context, tasks []task, cycles int, done func(task string, err error)) error {
	runs := make([]int, len(tasks))
	next := make([]time.Time, len(tasks))
	for {
		now := time.Now()
		soonest := now.Add(24 * time.Hour)
		finished := cycles > 0
		for i, t := range tasks {
			if cycles > 0 && runs[i] >= cycles {
				continue
			}
			if !now.Before(next[i]) {
				tctx, cancel := context.WithTimeout(ctx, t.every)
				err := t.run(tctx)
				if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
					err = fmt.Errorf("%s did not finish within its interval of %s; it runs again next time: %w", t.name, t.every, errdefs.ErrUnavailable)
				}
				cancel()
				done(t.name, err)
				runs[i]++
				next[i] = time.Now().Add(t.every)
				if cycles > 0 && runs[i] >= cycles {
					continue // finished: its next run is not waited for
				}
			}
			finished = false
			if next[i].Before(soonest) {
				soonest = next[i]
			}
		}
		if finished {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(soonest)):
		}
	}
}

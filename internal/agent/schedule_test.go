package agent

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/depot-images/depot/errdefs"
)

// TestScheduleCycles: with cycles, every task runs exactly that many times,
// never two at once, and schedule then returns.
func TestScheduleCycles(t *testing.T) {
	var running atomic.Int32
	counts := map[string]int{}
	mk := func(name string, every time.Duration) task {
		return task{name, every, func(ctx context.Context) error {
			if running.Add(1) != 1 {
				t.Errorf("%s runs beside another task", name)
			}
			defer running.Add(-1)
			counts[name]++
			return nil
		}}
	}
	var outcomes []string
	err := schedule(context.Background(), []task{mk("a", 5*time.Millisecond), mk("b", 10*time.Millisecond), mk("c", 15*time.Millisecond)}, 3,
		func(name string, err error) {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			outcomes = append(outcomes, name)
		})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if counts[n] != 3 {
			t.Errorf("%s ran %d times, want 3 (%v)", n, counts[n], outcomes)
		}
	}
	if len(outcomes) != 9 || strings.Join(outcomes[:3], "") != "abc" {
		t.Errorf("outcomes %v: want 9, the first round in order", outcomes)
	}
}

// TestScheduleBoundsRun: a run that does not finish within its interval is
// cut, reported as ErrUnavailable, and the others still run.
func TestScheduleBoundsRun(t *testing.T) {
	got := map[string]error{}
	err := schedule(context.Background(), []task{
		{"stuck", 50 * time.Millisecond, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
		{"fine", 50 * time.Millisecond, func(context.Context) error { return nil }},
	}, 1, func(name string, err error) { got[name] = err })
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(got["stuck"], errdefs.ErrUnavailable) || !strings.Contains(got["stuck"].Error(), "stuck did not finish within its interval of 50ms") {
		t.Errorf("stuck: %v", got["stuck"])
	}
	if e, ok := got["fine"]; !ok || e != nil {
		t.Errorf("fine: ran %v, err %v", ok, e)
	}
}

// TestScheduleFailedTaskRunsAgain: an error is reported and the task runs
// again at its next time.
func TestScheduleFailedTaskRunsAgain(t *testing.T) {
	boom := errors.New("boom")
	var errs []error
	err := schedule(context.Background(), []task{{"x", time.Millisecond, func(context.Context) error { return boom }}}, 2,
		func(_ string, err error) { errs = append(errs, err) })
	if err != nil || len(errs) != 2 || !errors.Is(errs[0], boom) || !errors.Is(errs[1], boom) {
		t.Fatalf("schedule %v, outcomes %v: want two runs of boom", err, errs)
	}
}

// TestScheduleStopsWithContext: without cycles, schedule runs until its
// context is done, then returns nil.
func TestScheduleStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	err := schedule(ctx, []task{{"x", time.Hour, func(context.Context) error { n++; return nil }}}, 0,
		func(string, error) { cancel() })
	if err != nil || n != 1 {
		t.Fatalf("schedule %v after %d runs: want nil after 1", err, n)
	}
}

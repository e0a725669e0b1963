package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func TestRunAll(t *testing.T) {
	for _, c := range []struct {
		name       string
		workers, n int
	}{
		{"more calls than workers", 4, 100},
		{"more workers than calls", 64, 3},
		{"no calls", 8, 0},
		{"no workers given: one", 0, 10},
	} {
		t.Run(c.name, func(t *testing.T) {
			var (
				mu      sync.Mutex
				seen    = make(map[int]int)
				running atomic.Int64
				peak    atomic.Int64
			)
			err := Run(context.Background(), c.workers, c.n, func(i int) error {
				r := running.Add(1)
				defer running.Add(-1)
				for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
				}
				mu.Lock()
				seen[i]++
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(seen) != c.n {
				t.Errorf("%d distinct calls, want %d", len(seen), c.n)
			}
			for i, k := range seen {
				if i < 0 || i >= c.n || k != 1 {
					t.Errorf("fn(%d) called %d times", i, k)
				}
			}
			if limit := int64(max(c.workers, 1)); peak.Load() > limit {
				t.Errorf("%d calls at once, want at most %d", peak.Load(), limit)
			}
		})
	}
}

// TestRunStopsAtError: the first error is returned and no call starts after
// it (with one worker, calls run in order).
func TestRunStopsAtError(t *testing.T) {
	boom := errors.New("boom")
	var calls atomic.Int64
	err := Run(context.Background(), 1, 100, func(i int) error {
		calls.Add(1)
		if i == 5 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Errorf("err %v, want boom", err)
	}
	if n := calls.Load(); n != 6 {
		t.Errorf("%d calls, want 6: none after the failing one", n)
	}
}

// TestRunStopsAtCancel: once ctx ends no call starts, and Run says why.
func TestRunStopsAtCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	err := Run(ctx, 1, 100, func(i int) error {
		if calls.Add(1) == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d calls, want 3: none after the cancel", n)
	}
}

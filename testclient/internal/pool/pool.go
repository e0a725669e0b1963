// Package pool runs a batch of independent calls on a bounded number of
// goroutines: the registrations, logins and group edits with which the
// simulation and the load benchmark set up their members.
package pool

import (
	"context"
	"sync"
	"sync/atomic"
)

// Run calls fn(0) … fn(n-1) on at most workers goroutines (at least one)
// and returns the first error. After the first error, or once ctx ends, no
// further call starts; if ctx ends before every call has started, and no
// call failed first, Run returns ctx.Err(). Calls already running are
// waited for: fn should watch ctx itself if it may take long.
func Run(ctx context.Context, workers, n int, fn func(i int) error) error {
	var (
		next     atomic.Int64
		failed   atomic.Bool
		once     sync.Once
		firstErr error // set once, under once; read after wg.Wait
		wg       sync.WaitGroup
	)
	for range min(n, max(workers, 1)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(i)
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

package testclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Reconnection backoff: the first retry comes quickly (a link dropped by
// the network usually works again at once); later ones spread out so that
// many clients of a restarting server do not all knock at the same moment.
const (
	backoffBase = 100 * time.Millisecond
	backoffCap  = 30 * time.Second
)

// Backoff returns how long to wait before reconnection attempt number attempt
// (0 for the first retry): backoffBase doubled per attempt, capped at
// backoffCap, with "equal jitter" — a uniform random time in [d/2, d].
func Backoff(attempt int) time.Duration {
	d := backoffCap
	// Beyond 20 doublings the base is past the cap; stopping there also keeps
	// the shift from overflowing.
	if attempt < 20 {
		d = min(backoffBase<<max(attempt, 0), backoffCap)
	}
	return d/2 + rand.N(d/2+1)
}

// LoginRetry is Login, retried with Backoff until it succeeds, fails for a
// reason retrying cannot fix, or ctx ends. It retries transport errors (the
// server restarting) and "node already connected" (the server has not yet
// noticed that this device's previous link died).
func LoginRetry(ctx context.Context, addr, uid, nodeid string, o Options) (*Client, LoginInfo, error) {
	for attempt := 0; ; attempt++ {
		c, info, err := Login(addr, uid, nodeid, o)
		if err == nil || !retryable(err) {
			return c, info, err
		}
		t := time.NewTimer(Backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, LoginInfo{}, fmt.Errorf("testclient: login retry: %w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// retryable reports whether a failed Login may succeed if tried again.
func retryable(err error) bool {
	var q *QuitError
	if errors.As(err, &q) {
		return q.Reason == ReasonNodeConnected
	}
	return !errors.Is(err, ErrProtocol)
}

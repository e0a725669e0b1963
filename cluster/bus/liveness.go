package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/internal/jskv"
)

// kvOperation is the header nats.go's KV puts on delete and purge markers.
const kvOperation = "KV-Operation"

// renew proves that our evict subscription answers, then writes our
// incarnation to our liveness key by compare-and-set and, on success,
// extends the lease from start, the time the attempt began (the key's
// server timestamp is no earlier). The compare-and-set keeps a renewal of
// an old incarnation, delayed in the network, from landing over a newer
// write. It runs in New and then only in the renew loop.
func (b *Bus) renew(ctx context.Context, start time.Time) error {
	if err := b.ping(ctx); err != nil {
		return fmt.Errorf("ping own evict subscription: %w", err)
	}
	b.mu.Lock()
	inc, rev := b.inc, b.feRev
	b.mu.Unlock()
	if rev == 0 {
		// First write of this incarnation: over whatever is there, a key of
		// a previous incarnation under our name included.
		_, cur, err := b.lastValue(ctx, b.feStream, b.fe.Bucket(), b.feKey)
		if err != nil {
			return err
		}
		rev = cur
	}
	newRev, err := b.fe.Update(ctx, b.feKey, []byte(inc), rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return b.renewConflict(ctx, inc, err)
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	if b.inc == inc && !b.closed {
		b.feRev = newRev
		b.leaseUntil = start.Add(b.lease)
	}
	b.mu.Unlock()
	return nil
}

// renewConflict handles a renewal whose compare-and-set failed. If the key
// holds our incarnation, an earlier renewal whose answer we missed landed:
// adopt its revision, but not its time, which we do not know. Otherwise the
// key expired or another frontend writes under our name: our lease is gone
// and others may already treat us as dead, so fence at once.
func (b *Bus) renewConflict(ctx context.Context, inc string, cause error) error {
	value, rev, err := b.lastValue(ctx, b.feStream, b.fe.Bucket(), b.feKey)
	if err != nil {
		return fmt.Errorf("%w; then read: %w", cause, err)
	}
	if value != nil && string(value) == inc {
		b.mu.Lock()
		if b.inc == inc {
			b.feRev = rev
		}
		b.mu.Unlock()
		return cause
	}
	if value != nil {
		b.log.Error("liveness key written by another frontend of the same name", "incarnation", inc)
	}
	b.fence("liveness key expired or overwritten")
	return cause
}

// ping sends a request to our own evict subscription: it passes through the
// server and waits behind any OnEvict the handler is running.
func (b *Bus) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	m, err := b.nc.RequestWithContext(ctx, b.evictSubj, []byte(pingRequest))
	if err != nil {
		return err
	}
	if string(m.Data) != replyPong {
		return fmt.Errorf("ping answered %q", m.Data)
	}
	return nil
}

// renewLoop renews the liveness key every renewEvery; after a failure it
// retries every pollEvery, and fences when the lease has run out. Each
// attempt is bounded by the lease, so the fence is not late behind a
// request stuck in an election.
func (b *Bus) renewLoop(ctx context.Context) {
	t := time.NewTimer(b.renewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		b.mu.Lock()
		until := b.leaseUntil
		b.mu.Unlock()
		deadline := start.Add(opTimeout)
		if !until.IsZero() && until.Before(deadline) {
			deadline = until
		}
		actx, cancel := context.WithDeadline(ctx, deadline)
		err := b.renew(actx, start)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			t.Reset(time.Until(start.Add(b.renewEvery)))
			continue
		}
		b.log.Warn("liveness renewal failed", "err", err)
		b.mu.Lock()
		until = b.leaseUntil
		b.mu.Unlock()
		if !until.IsZero() && !time.Now().Before(until) {
			b.fence("lease ran out")
			until = time.Time{}
		}
		next := b.pollEvery
		if !until.IsZero() {
			next = min(next, time.Until(until))
		}
		t.Reset(next)
	}
}

// fence drops everything this Bus holds because its lease is gone: every
// held device is evicted (OnEvict), pending claims are abandoned, and only
// after the OnEvicts have returned does the Bus take a new incarnation, so
// that an evict request for an old claim is not answered early. The next
// renewal publishes the new incarnation.
func (b *Bus) fence(reason string) {
	b.mu.Lock()
	type drop struct {
		dev  string
		done chan struct{}
	}
	var drops []drop
	for dev, s := range b.sessions {
		if s.held {
			drops = append(drops, drop{dev, b.takeLocked(dev, s)})
		}
	}
	clear(b.sessions)
	b.leaseUntil = time.Time{}
	b.mu.Unlock()

	b.log.Warn("lease lost, dropping every device", "reason", reason, "devices", len(drops))
	for _, d := range drops {
		b.finishEvict(d.dev, d.done)
	}
	b.mu.Lock()
	b.inc = newIncarnation()
	b.feRev = 0
	b.mu.Unlock()
}

// leaseValidLocked reports whether the lease holds now. b.mu is held.
func (b *Bus) leaseValidLocked() bool {
	return !b.leaseUntil.IsZero() && time.Now().Before(b.leaseUntil)
}

// isDead reports whether incarnation inc of frontend fe is dead: its
// liveness key is gone (expired or deleted by Close) or names another
// incarnation (the frontend restarted or fenced itself).
func (b *Bus) isDead(ctx context.Context, fe, inc string) (bool, error) {
	value, _, err := b.lastValue(ctx, b.feStream, b.fe.Bucket(), encode(fe))
	if err != nil {
		return false, err
	}
	return value == nil || string(value) != inc, nil
}

// lastValue reads key's last entry in bucket from the stream leader. value
// is nil if the key has none or was deleted; rev is the revision to
// compare-and-set over (0 if the key never existed or its entry expired).
func (b *Bus) lastValue(ctx context.Context, st jetstream.Stream, bucket, key string) (value []byte, rev uint64, err error) {
	return jskv.LastValue(ctx, st, bucket, key, opTimeout)
}

// isNoResponders reports whether a request found no subscriber: the
// frontend it was for has no evict subscription on the cluster.
func isNoResponders(err error) bool {
	return errors.Is(err, nats.ErrNoResponders)
}

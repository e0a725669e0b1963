package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// record is the value of a device's session key: the claim that holds it.
type record struct {
	Frontend string `json:"fe"`
	Inc      string `json:"inc"`
	Claim    uint64 `json:"claim"`
}

// session is this Bus's claim of a device: pending from just before its
// record is written until Claim returns, then held.
type session struct {
	claim      uint64
	inc        string
	rev        uint64 // the record's revision once held
	held       bool
	superseded bool // an evict request came while pending: Claim fails
}

// evictRequest asks a frontend to give up a claim; Ping asks only for an
// answer (renew's check of the subscription).
type evictRequest struct {
	Ping  bool   `json:"ping,omitempty"`
	Dev   string `json:"dev,omitempty"`
	Inc   string `json:"inc,omitempty"`
	Claim uint64 `json:"claim,omitempty"`
}

// Replies to evict requests.
const (
	replyReleased = "released"
	replyPong     = "pong"
	replyBad      = "bad request"
)

// pingRequest is evictRequest{Ping: true} as sent.
const pingRequest = `{"ping":true}`

// Claim makes this frontend the holder of dev's session, evicting the
// previous holder if it lives on another frontend (see the package comment
// for the protocol). It returns nil once this Bus holds dev; from then on
// Holds(dev) is true until OnEvict(dev) is called or Release. Claiming a
// device this Bus already holds returns nil at once: the caller replaces
// its own link. Errors: ErrTakenOver if a Claim on another frontend took
// dev before this one finished (a later login won: refuse this one),
// ErrHolderAlive if the previous holder neither answered nor expired in
// time (the login should fail and be retried), ErrClosed, or ctx's error.
// A ctx without deadline is bounded by defaultClaimTimeout. Transient
// JetStream errors (an election) are retried until ctx ends.
func (b *Bus) Claim(ctx context.Context, dev string) error {
	if dev == "" {
		return ErrBadName
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultClaimTimeout)
		defer cancel()
	}
	unlock, err := b.lockDevice(ctx, dev)
	if err != nil {
		return fmt.Errorf("bus: claim: %w", err)
	}
	defer unlock()
	key := encode(dev)
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, b.pollEvery); err != nil {
				return fmt.Errorf("bus: claim: %w (last error: %v)", err, lastErr)
			}
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return ErrClosed
		}
		if s := b.sessions[dev]; s != nil && s.held {
			valid := b.leaseValidLocked()
			b.mu.Unlock()
			if valid {
				return nil
			}
			// The lease is being renewed or the fence is coming: wait
			// for either rather than replace a claim the fence must see.
			lastErr = errors.New("no lease")
			continue
		}
		done := b.evicting[dev]
		b.mu.Unlock()
		if done != nil {
			// Our own OnEvict of an older claim still runs: a claim that
			// held before it returned would have two links.
			select {
			case <-done:
			case <-ctx.Done():
				return fmt.Errorf("bus: claim: %w", ctx.Err())
			}
		}

		rec, rev, err := b.readRecord(ctx, dev)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("bus: claim: %w", err)
			}
			lastErr = err
			continue
		}
		if rec != nil {
			if err := b.resolve(ctx, dev, rec); err != nil {
				if errors.Is(err, ErrHolderAlive) || ctx.Err() != nil {
					return err
				}
				lastErr = err
				continue
			}
		}

		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return ErrClosed
		}
		if !b.leaseValidLocked() {
			// Fenced and not yet renewed: a claim now would be of a
			// dead incarnation.
			b.mu.Unlock()
			lastErr = errors.New("no lease")
			continue
		}
		b.nextClaim++
		s := &session{claim: b.nextClaim, inc: b.inc}
		b.sessions[dev] = s
		b.mu.Unlock()

		value, err := json.Marshal(record{Frontend: b.opts.Frontend, Inc: s.inc, Claim: s.claim})
		if err != nil {
			return fmt.Errorf("bus: claim: %w", err)
		}
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		newRev, err := b.sess.Update(wctx, key, value, rev)
		cancel()

		b.mu.Lock()
		current := b.sessions[dev] == s
		if err != nil || !current || s.superseded || b.closed || s.inc != b.inc || !b.leaseValidLocked() {
			if current {
				// If the write landed after all, the next reader finds a
				// claim of ours that we do not hold, and overwrites it.
				delete(b.sessions, dev)
			}
			superseded, closed := s.superseded, b.closed
			b.mu.Unlock()
			switch {
			case superseded:
				return ErrTakenOver
			case closed:
				return ErrClosed
			case err != nil && ctx.Err() != nil:
				return fmt.Errorf("bus: claim: %w", err)
			case err != nil:
				lastErr = err
			default:
				lastErr = errors.New("lease lost during claim")
			}
			continue
		}
		s.held = true
		s.rev = newRev
		b.mu.Unlock()
		if attempt > 0 {
			b.log.Debug("device claimed after retries", "attempts", attempt+1, "last_err", lastErr)
		}
		return nil
	}
}

// readRecord reads dev's session record from the stream leader. rec is nil
// if no claim holds it (never claimed, released, or an unreadable record,
// which is logged and overwritten).
func (b *Bus) readRecord(ctx context.Context, dev string) (rec *record, rev uint64, err error) {
	value, rev, err := b.lastValue(ctx, b.sessStream, b.sess.Bucket(), encode(dev))
	if err != nil || value == nil {
		return nil, rev, err
	}
	rec = &record{}
	if err := json.Unmarshal(value, rec); err != nil || rec.Frontend == "" || rec.Inc == "" {
		b.log.Warn("unreadable session record overwritten", "revision", rev)
		return nil, rev, nil
	}
	return rec, rev, nil
}

// resolve returns nil once the claim rec no longer holds dev: it is ours
// and not held (a write of ours whose answer we missed), its incarnation is
// dead, or its frontend answered our evict request. It keeps asking while
// the holder lives, and gives up with ErrHolderAlive after resolveFor, by
// when a dead or stuck holder's key would have expired.
func (b *Bus) resolve(ctx context.Context, dev string, rec *record) error {
	b.mu.Lock()
	own := rec.Inc == b.inc
	b.mu.Unlock()
	if own {
		// Not held, or Claim would have returned early.
		return nil
	}
	req, err := json.Marshal(evictRequest{Dev: dev, Inc: rec.Inc, Claim: rec.Claim})
	if err != nil {
		return err
	}
	subj := b.opts.Prefix + ".evict." + encode(rec.Frontend)
	deadline := time.Now().Add(b.resolveFor)
	for {
		dead, err := b.isDead(ctx, rec.Frontend, rec.Inc)
		if err == nil && dead {
			return nil
		}
		if err != nil {
			b.log.Debug("liveness read failed", "err", err)
		}
		rctx, cancel := context.WithTimeout(ctx, b.evictWait)
		start := time.Now()
		m, err := b.nc.RequestWithContext(rctx, subj, req)
		cancel()
		if err == nil && string(m.Data) == replyReleased {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("bus: evict previous holder: %w", ctx.Err())
		}
		if time.Now().After(deadline) {
			b.log.Warn("previous holder of a device neither released it nor expired", "holder", rec.Frontend, "err", err)
			return ErrHolderAlive
		}
		switch {
		case err == nil:
			b.log.Warn("evict request refused", "holder", rec.Frontend, "reply", string(m.Data))
		case !isNoResponders(err):
			b.log.Debug("evict request unanswered", "holder", rec.Frontend, "err", err)
		}
		// A request that failed at once (no responders: the holder's
		// subscription is gone) must not spin.
		if wait := b.pollEvery - time.Since(start); wait > 0 {
			if err := sleep(ctx, wait); err != nil {
				return fmt.Errorf("bus: evict previous holder: %w", err)
			}
		}
	}
}

// onEvictRequest answers an evict request (or a ping). It answers
// "released" for any claim this Bus does not hold, after OnEvict has
// returned for one it held, and marks a pending claim superseded. It runs
// on the subscription's goroutine, one request at a time, so a stuck
// OnEvict stops the pings and with them the renewals.
func (b *Bus) onEvictRequest(m *nats.Msg) {
	var req evictRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || (!req.Ping && (req.Dev == "" || req.Inc == "")) {
		b.log.Warn("bad evict request refused", "len", len(m.Data))
		b.respond(m, replyBad)
		return
	}
	if req.Ping {
		b.respond(m, replyPong)
		return
	}
	b.mu.Lock()
	s := b.sessions[req.Dev]
	if req.Inc == b.inc && s != nil && s.claim == req.Claim && s.inc == req.Inc {
		if !s.held {
			s.superseded = true
			b.mu.Unlock()
			b.respond(m, replyReleased)
			return
		}
		done := b.takeLocked(req.Dev, s)
		b.mu.Unlock()
		b.finishEvict(req.Dev, done)
		b.log.Info("device taken over by another frontend")
		b.respond(m, replyReleased)
		return
	}
	done := b.evicting[req.Dev]
	b.mu.Unlock()
	if done != nil {
		<-done
	}
	b.respond(m, replyReleased)
}

func (b *Bus) respond(m *nats.Msg, reply string) {
	if err := m.Respond([]byte(reply)); err != nil {
		b.log.Warn("evict reply failed", "err", err)
	}
}

// takeLocked removes the held claim s of dev and marks its OnEvict as
// running; the caller calls finishEvict without b.mu. b.mu is held.
func (b *Bus) takeLocked(dev string, s *session) chan struct{} {
	delete(b.sessions, dev)
	done := make(chan struct{})
	b.evicting[dev] = done
	return done
}

// finishEvict runs OnEvict for dev and then lets the requests and Claims
// waiting for it go on.
func (b *Bus) finishEvict(dev string, done chan struct{}) {
	b.opts.OnEvict(dev)
	b.mu.Lock()
	if b.evicting[dev] == done {
		delete(b.evicting, dev)
	}
	b.mu.Unlock()
	close(done)
}

// Holds reports whether this Bus holds dev: local state, no round trip.
func (b *Bus) Holds(dev string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.sessions[dev]
	return s != nil && s.held
}

// Release gives up dev on logout: it stops holding it and deletes the
// record if it is still ours (compare-and-set on the revision we wrote), so
// the device's next login anywhere needs no evict. OnEvict is not called.
// Releasing a device not held is a no-op.
func (b *Bus) Release(ctx context.Context, dev string) error {
	unlock, err := b.lockDevice(ctx, dev)
	if err != nil {
		return fmt.Errorf("bus: release: %w", err)
	}
	defer unlock()
	b.mu.Lock()
	s := b.sessions[dev]
	if s == nil || !s.held {
		b.mu.Unlock()
		return nil
	}
	delete(b.sessions, dev)
	b.mu.Unlock()
	return b.deleteRecord(ctx, dev, s.rev)
}

// deleteRecord deletes dev's record if it still is at rev. A record
// changed since is someone else's and stays; a failed delete leaves a
// record naming a claim we no longer hold, which the next claimer resolves
// with one evict request.
func (b *Bus) deleteRecord(ctx context.Context, dev string, rev uint64) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	err := b.sess.Delete(ctx, encode(dev), jetstream.LastRevision(rev))
	if err == nil || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return nil
	}
	b.log.Warn("delete session record failed", "err", err)
	return fmt.Errorf("bus: delete session record: %w", err)
}

// devLock serialises Claim and Release of one device on this Bus, so that
// two logins of a device on one frontend cannot interleave their writes.
type devLock struct {
	ch      chan struct{} // holds a token while locked
	waiters int           // guarded by Bus.mu: users of this lock
}

// lockDevice locks dev for this Bus's Claims and Releases, or fails with
// ctx's error.
func (b *Bus) lockDevice(ctx context.Context, dev string) (unlock func(), err error) {
	b.mu.Lock()
	l := b.devLocks[dev]
	if l == nil {
		l = &devLock{ch: make(chan struct{}, 1)}
		b.devLocks[dev] = l
	}
	l.waiters++
	b.mu.Unlock()
	release := func() {
		b.mu.Lock()
		l.waiters--
		if l.waiters == 0 {
			delete(b.devLocks, dev)
		}
		b.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

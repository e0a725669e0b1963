package dirkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// renewDivisor sets the renewal interval to LeaseTTL/renewDivisor: four
// chances to renew within a lease.
const renewDivisor = 5

// leaseFraction is the part of LeaseTTL, counted from the send of the last
// successful renewal, during which a Dir trusts its lease. The rest (a
// fifth of the TTL) is the margin for the fence to run before the key can
// expire on the server.
const leaseFraction = 0.8

// pollDivisor sets how often a candidate looks at the lease key, and how
// often a failed renewal is retried, to LeaseTTL/pollDivisor: a successor
// takes over within a twentieth of the TTL of the key's deletion or
// expiry, at a read per candidate per interval.
const pollDivisor = 20

// Serve makes h this Dir's handler for forwarded calls and starts
// campaigning for the lease in the background: whenever this Dir becomes the
// writer it first waits until its watcher has applied every revision the
// bucket held, then answers calls until its lease is lost or Close. Watch
// must have been called; Serve may be called once.
func (d *Dir) Serve(h Handler) error {
	if h == nil {
		return errors.New("dirkv: nil handler")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return ErrClosed
	case !d.watching:
		return errors.New("dirkv: Serve before Watch")
	case d.handler != nil:
		return errors.New("dirkv: already serving")
	}
	d.handler = h
	d.loops.Go(d.leaseLoop)
	return nil
}

// IsWriter reports whether this Dir holds a valid lease now and its
// watcher has caught up since it was elected.
func (d *Dir) IsWriter() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writerLocked()
}

// writerLocked is IsWriter with d.mu held.
func (d *Dir) writerLocked() bool {
	return d.ready && d.leaseValidLocked()
}

// leaseValidLocked reports whether the lease holds now. d.mu is held.
func (d *Dir) leaseValidLocked() bool {
	return !d.leaseUntil.IsZero() && time.Now().Before(d.leaseUntil)
}

// leaseLoop campaigns for the lease while it is not held, renews it every
// renewEvery while it is, and fences when it runs out. Each attempt is
// bounded by the lease, so the fence is not late behind a request stuck in
// an election.
func (d *Dir) leaseLoop() {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		d.mu.Lock()
		held, until := d.leaseRev != 0, d.leaseUntil
		d.mu.Unlock()
		deadline := start.Add(opTimeout)
		if !until.IsZero() && until.Before(deadline) {
			deadline = until
		}
		ctx, cancel := context.WithDeadline(d.ctx, deadline)
		var err error
		if held {
			err = d.renew(ctx, start)
		} else {
			err = d.campaign(ctx, start)
		}
		cancel()
		if d.ctx.Err() != nil {
			return
		}
		if err != nil {
			d.log.Warn("dirkv lease", "held", held, "err", err)
		}
		d.mu.Lock()
		if !d.leaseUntil.IsZero() && !time.Now().Before(d.leaseUntil) {
			d.fenceLocked("lease ran out")
		}
		next := d.pollEvery
		if err == nil && d.leaseValidLocked() {
			next = time.Until(start.Add(d.renewEvery))
		}
		if d.leaseValidLocked() {
			next = min(next, time.Until(d.leaseUntil))
		}
		d.mu.Unlock()
		t.Reset(max(next, 0))
	}
}

// campaign takes the lease if nobody holds it: the key is absent, deleted
// or expired. A key that names us (a write of ours whose reply was lost) is
// adopted, its time unknown: the next renewal starts the lease.
func (d *Dir) campaign(ctx context.Context, start time.Time) error {
	value, rev, err := lastValue(ctx, d.lease, d.lBucket, leaseKey)
	if err != nil {
		return err
	}
	if value != nil {
		if bytes.Equal(value, d.leaseVal) {
			d.mu.Lock()
			if !d.closed {
				d.leaseRev = rev
			}
			d.mu.Unlock()
		}
		return nil
	}
	newRev, err := d.putLease(ctx, rev)
	if isWrongLastSeq(err) {
		return nil // another Dir was quicker
	}
	if err != nil {
		return fmt.Errorf("create lease: %w", err)
	}
	d.extend(newRev, start)
	return nil
}

// renew writes the lease key over our last revision and, on success,
// extends the lease from start, the time the attempt began (the key's
// server timestamp is no earlier). If the compare-and-set fails and the key
// still names us, an earlier write whose reply we missed landed: adopt its
// revision, but not its time. Otherwise the key expired or another Dir
// holds it: fence at once.
func (d *Dir) renew(ctx context.Context, start time.Time) error {
	d.mu.Lock()
	rev := d.leaseRev
	d.mu.Unlock()
	newRev, err := d.putLease(ctx, rev)
	if err == nil {
		d.extend(newRev, start)
		return nil
	}
	if !isWrongLastSeq(err) {
		return fmt.Errorf("renew lease: %w", err)
	}
	value, cur, rerr := lastValue(ctx, d.lease, d.lBucket, leaseKey)
	if rerr != nil {
		return fmt.Errorf("renew lease: %w; then read: %w", err, rerr)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if value != nil && bytes.Equal(value, d.leaseVal) {
		if !d.closed {
			d.leaseRev = cur
		}
		return err
	}
	d.fenceLocked("lease expired or taken")
	d.leaseRev = 0
	return err
}

// putLease writes our lease value over revision rev of the lease key.
func (d *Dir) putLease(ctx context.Context, rev uint64) (uint64, error) {
	ack, err := d.js.PublishMsg(ctx, &nats.Msg{Subject: subject(d.lBucket, leaseKey), Data: d.leaseVal},
		jetstream.WithExpectStream("KV_"+d.lBucket),
		jetstream.WithExpectLastSequencePerSubject(rev))
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// extend records a successful lease write at rev, sent at start. A lease
// that was not valid before starts a new term: the watcher must catch up
// before this Dir acts as the writer.
func (d *Dir) extend(rev uint64, start time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		// Close gives the key up: it must know the revision.
		d.leaseRev = rev
		return
	}
	d.leaseRev = rev
	if d.leaseValidLocked() {
		d.leaseUntil = start.Add(d.leaseFor)
		return
	}
	d.fenceLocked("new term") // a no-op unless a stale term lingers
	d.leaseUntil = start.Add(d.leaseFor)
	if !d.leaseValidLocked() {
		d.leaseUntil = time.Time{}
		return // the attempt took longer than a lease
	}
	d.term++
	d.termCtx, d.termStop = context.WithCancel(d.ctx)
	term, ctx := d.term, d.termCtx
	d.log.Info("dirkv elected writer", "term", term)
	d.loops.Go(func() { d.catchUp(ctx, term) })
}

// fenceLocked ends this Dir's writing and serving at once: the lease is
// lost (or given up). The lease revision is kept: the key may still name
// us, and a renewal over it is then safe. d.mu is held.
func (d *Dir) fenceLocked(reason string) {
	wasWriter := d.ready
	if d.leaseUntil.IsZero() && d.termStop == nil {
		return
	}
	d.leaseUntil = time.Time{}
	d.ready = false
	if d.termStop != nil {
		d.termStop()
		d.termStop = nil
	}
	d.term++
	if d.sub != nil {
		if err := d.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			d.log.Warn("dirkv unsubscribe", "err", err)
		}
		d.sub = nil
	}
	d.log.Info("dirkv writer stopped", "reason", reason, "was_serving", wasWriter)
}

// catchUp waits until the watcher has applied the bucket's last revision,
// then subscribes to forwarded calls, unless term ended meanwhile.
func (d *Dir) catchUp(ctx context.Context, term uint64) {
	for ctx.Err() == nil {
		ictx, cancel := context.WithTimeout(ctx, opTimeout)
		info, err := d.dir.Info(ictx)
		cancel()
		if err != nil {
			d.log.Warn("dirkv catch up: stream info", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(d.pollEvery):
			}
			continue
		}
		last := info.State.LastSeq
		if info.State.Msgs == 0 {
			last = 0 // purged: no revision left to wait for
		}
		if err := d.WaitApplied(ctx, last); err != nil {
			return
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.term != term || !d.leaseValidLocked() {
			return
		}
		sub, err := d.nc.Subscribe(d.callSubj, d.onCall)
		if err != nil {
			d.log.Error("dirkv subscribe calls", "err", err)
			d.fenceLocked("cannot subscribe")
			return
		}
		d.sub = sub
		d.ready = true
		d.log.Info("dirkv serving", "term", term, "applied", d.applied)
		return
	}
}

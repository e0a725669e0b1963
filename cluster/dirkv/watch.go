package dirkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The watcher is an ephemeral pull consumer of the records' stream with
// no acks, read in order. When it fails (its node killed, a missed
// heartbeat, a gap in its delivery sequence) the watcher makes a new one
// from the revision after the last it applied, each attempt bounded by
// opTimeout: nats.go's ordered consumer does the same, but waits up to
// 10 s on a create request lost in an election.
const (
	// watchHeartbeat is the idle heartbeat asked of the server; two missed
	// ones end the consumer.
	watchHeartbeat = time.Second
	// watchExpiry is how long one pull request waits; the heartbeat must
	// be under half of it.
	watchExpiry = 5 * time.Second
	// watchInactive is how long the server keeps a consumer nobody pulls
	// from: the consumer of a Dir that died without Close.
	watchInactive = time.Minute
)

// Watch calls apply, on one goroutine and in revision order, for every
// write of the bucket with a revision above from (this Dir's own included)
// until Close. Applied reports the last revision apply returned from.
// Deletions (Record.Data nil) are passed to apply too. A revision
// overwritten before the watcher read it is skipped: its key's later
// revision comes instead. No apply starts after Close, and Close waits for
// one under way. Watch may be called once.
func (d *Dir) Watch(from uint64, apply func(Record)) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	if d.watching {
		d.mu.Unlock()
		return errors.New("dirkv: already watching")
	}
	d.watching = true
	d.advanceLocked(from)
	d.mu.Unlock()

	ctx, cancel := context.WithTimeout(d.ctx, opTimeout)
	defer cancel()
	it, err := d.consume(ctx, from)
	if err != nil {
		d.mu.Lock()
		d.watching = false
		d.mu.Unlock()
		return fmt.Errorf("dirkv: watch: %w", err)
	}
	if it == nil {
		return ErrClosed
	}
	go d.watch(it, apply)
	return nil
}

// consume makes a consumer of the records after revision from and starts
// pulling from it; it returns nil if the Dir was closed meanwhile.
func (d *Dir) consume(ctx context.Context, from uint64) (jetstream.MessagesContext, error) {
	cfg := jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: watchInactive,
	}
	if from > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = from + 1
	}
	cons, err := d.dir.CreateConsumer(ctx, cfg)
	if err != nil {
		return nil, err
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(watchHeartbeat), jetstream.PullExpiry(watchExpiry),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		it.Stop()
		return nil, nil
	}
	d.iter = it
	return it, nil
}

// reconsume replaces a failed consumer, trying until it succeeds or the Dir
// closes (nil).
func (d *Dir) reconsume(old jetstream.MessagesContext) jetstream.MessagesContext {
	old.Stop()
	for d.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(d.ctx, opTimeout)
		it, err := d.consume(ctx, d.Applied())
		cancel()
		if err == nil {
			return it
		}
		d.log.Warn("dirkv watch: new consumer", "err", err)
		select {
		case <-d.ctx.Done():
		case <-time.After(d.pollEvery):
		}
	}
	return nil
}

// watch runs the watcher until Close. Close does not wait for it, only for
// an apply under way.
func (d *Dir) watch(it jetstream.MessagesContext, apply func(Record)) {
	var delivered uint64 // the consumer's delivery sequence
	for it != nil {
		m, err := it.Next()
		if d.ctx.Err() != nil {
			return
		}
		var meta *jetstream.MsgMetadata
		if err == nil {
			meta, err = m.Metadata()
		}
		if err == nil && meta.Sequence.Consumer != delivered+1 {
			err = fmt.Errorf("delivery %d after %d", meta.Sequence.Consumer, delivered)
		}
		if err != nil {
			d.log.Warn("dirkv watch: consumer failed, making a new one", "err", err)
			it, delivered = d.reconsume(it), 0
			continue
		}
		delivered = meta.Sequence.Consumer
		rev := meta.Sequence.Stream
		rec, ok := d.record(m, rev)
		d.applyMu.Lock()
		d.mu.Lock()
		stale, closed := rev <= d.applied, d.closed
		d.mu.Unlock()
		if closed {
			d.applyMu.Unlock()
			return
		}
		if ok && !stale {
			d.see(rec.Key, rev)
			apply(rec)
		}
		d.mu.Lock()
		d.advanceLocked(rev)
		d.mu.Unlock()
		d.applyMu.Unlock()
	}
}

// advanceLocked raises applied to rev and wakes its waiters. d.mu is held.
func (d *Dir) advanceLocked(rev uint64) {
	if rev <= d.applied {
		return
	}
	d.applied = rev
	close(d.advanced)
	d.advanced = make(chan struct{})
}

// Applied is the last revision the watcher has applied.
func (d *Dir) Applied() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applied
}

// WaitApplied returns once the watcher has applied rev, or ctx's error
// (ErrClosed when the Dir closes first).
func (d *Dir) WaitApplied(ctx context.Context, rev uint64) error {
	for {
		d.mu.Lock()
		applied, advanced, closed := d.applied, d.advanced, d.closed
		d.mu.Unlock()
		if applied >= rev {
			return nil
		}
		if closed {
			return ErrClosed
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dirkv: wait for revision %d (applied %d): %w", rev, applied, ctx.Err())
		case <-d.ctx.Done():
		case <-advanced:
		}
	}
}

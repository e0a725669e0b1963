package store

import (
	"errors"
	"fmt"
	"slices"

	"mnm/durable"
)

// Space reclamation. A segment can be deleted once no live message has bytes
// in it, but only the oldest: ack and queue records in later segments refer to
// messages in earlier ones, and deleting a later segment first would bring
// acknowledged messages back on replay. So when the log is much larger than
// its live data while the oldest segment still holds a few live messages,
// those are copied forward to the head (copy records: same id, priority,
// envelope and data, and the devices that still have it) and the oldest
// segment is deleted.
//
// The policy: compact while the log exceeds twice its live bytes plus one
// segment. That bounds the disk used to about twice the live data, and since
// at least half of what is copied over a round is then dead, the copying costs
// at most about one extra write of each live byte.

// compactDue reports whether the compactor has work: by the policy above, or
// because the oldest segment is at or before one holding bytes of a dead
// secret message (scrubSeq), which are to leave the disk promptly: only the
// oldest segment can go, so every segment up to that one is compacted. Secrets
// are rare (a device's password, once per device added), and those dying
// within scrubDelay share one pass (scrubDue). mu must be held.
func (l *Log) compactDue() bool {
	if len(l.segs) < 2 {
		return false // the only segment is the head
	}
	old := l.segs[0]
	if old.pins.Load() != 0 {
		return false
	}
	return old.live == 0 || l.total > 2*l.live+l.segSize || (l.scrubDue && old.seq <= l.scrubSeq)
}

func (l *Log) kickCompactor() {
	select {
	case l.compactC <- nil:
	default:
	}
}

// compactSync runs the compactor until it has nothing left to do (tests use
// it to wait for compaction instead of polling). It returns false if the
// store closed first.
func (l *Log) compactSync() bool {
	done := make(chan struct{})
	select {
	case l.compactC <- done:
	case <-l.stop:
		return false
	}
	select {
	case <-done:
		return true
	case <-l.stop:
		return false
	}
}

// Reclaim returns once everything appended before it is durable and
// compaction has nothing left to do: in particular, once the bytes of every
// secret message acknowledged before it have left the disk (Message.Secret).
// The store compacts by itself; Reclaim is for tests and tools that must know
// it has. It returns ErrClosed if the store closed first.
func (l *Log) Reclaim() error {
	l.scrubNow() // not waiting for scrubDelay
	if err := l.barrier(); err != nil {
		return err
	}
	if !l.compactSync() {
		return ErrClosed
	}
	return l.failure()
}

// compactor is the goroutine that reclaims space, one segment at a time.
// Requests on compactC carry a channel to close when done, or nil.
func (l *Log) compactor() {
	defer close(l.compactDone)
	for {
		var done chan struct{}
		select {
		case <-l.stop:
			return
		case done = <-l.compactC:
		}
		l.compactAll()
		if done != nil {
			close(done)
		}
	}
}

// compactAll compacts until the policy is met, the store stops, or an error.
func (l *Log) compactAll() {
	for more := true; more; {
		select {
		case <-l.stop:
			return
		default:
		}
		var err error
		if more, err = l.compactOnce(); err != nil {
			if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrFailed) {
				l.log.Error("store: compaction", "err", err)
			}
			more = false
		}
	}
}

// compactOnce deletes or compacts the oldest segment if the policy says so.
// It reports whether it did.
func (l *Log) compactOnce() (bool, error) {
	l.mu.Lock()
	if !l.compactDue() {
		l.mu.Unlock()
		return false, nil
	}
	old := l.segs[0]
	if old.live == 0 {
		l.mu.Unlock()
		return true, l.dropOldest(old)
	}
	ids := l.liveIn(old)
	// Note which devices have each message. From here until its copy record
	// is appended, Ack and CopyQueue keep this current, under mu, so that the
	// copy record lists exactly the devices that have the message at its
	// place in the log.
	l.moving = make(map[ID][]string, len(ids))
	for _, id := range ids {
		l.moving[id] = nil
	}
	for dev, q := range l.queues {
		for p := range q.prio {
			for _, id := range q.prio[p].slice() {
				if devs, ok := l.moving[id]; ok {
					l.moving[id] = append(devs, dev)
				}
			}
		}
	}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.moving = nil
		l.mu.Unlock()
	}()

	moved, bytes := 0, int64(0)
	for _, id := range ids {
		select {
		case <-l.stop:
			return false, ErrClosed
		default:
		}
		n, err := l.copyForward(id)
		if err != nil {
			return false, err
		}
		if n >= 0 {
			moved++
			bytes += n
		}
	}
	if err := l.barrier(); err != nil {
		return false, err
	}
	l.mu.Lock()
	left := old.live
	l.mu.Unlock()
	if left != 0 {
		l.log.Error("store: compaction left live data behind", "file", old.path, "refs", left)
		return false, nil
	}
	l.log.Info("store: compacted segment", "file", old.path, "moved", moved, "bytes", bytes)
	return true, l.dropOldest(old)
}

// liveIn returns the ids of the live messages with bytes in seg, sorted, and
// prunes dead blobs from seg's list. mu must be held.
func (l *Log) liveIn(seg *segment) []ID {
	seg.pruneBlobs()
	var ids []ID
	for _, b := range seg.blobs {
		for i := range ID(b.count) {
			if m := l.msgs[b.first+i]; m != nil && m.blob == b {
				ids = append(ids, b.first+i)
			}
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// copyForward appends a copy record of message id to the head of the log and
// returns the bytes copied, or -1 if the message died meanwhile.
func (l *Log) copyForward(id ID) (int64, error) {
	r, err := l.acquire(id, false)
	if errors.Is(err, ErrNoMessage) {
		return -1, nil
	}
	if err != nil {
		return -1, err
	}
	defer l.release(&r)
	bp := l.bufs.Get().(*[]byte)
	defer l.bufs.Put(bp)
	buf := *bp

	env := make([]byte, r.envLen)
	if err := readAt(r.blob.seg.f, env, r.env); err != nil {
		return -1, err
	}
	// The data goes through a draft, so a big message is copied a chunk at a
	// time like any upload.
	d := &draft{l: l}
	defer d.Abort()
	err = r.blob.pieces(r.off, r.n, func(f durable.File, at, n int64) error {
		_, err := copyAt(d, f, at, n, buf)
		return err
	})
	if err != nil {
		return -1, err
	}
	l.mu.Lock()
	hook := l.beforeCopy
	l.mu.Unlock()
	if hook != nil {
		hook(id)
	}
	b, ok, err := l.appendCopy(d, id, r.prio, r.secret, env)
	if err != nil || !ok {
		return -1, err
	}
	if d.pin != nil {
		// Keep the chunks pinned until the copy is applied and they belong
		// to a live message.
		<-b.done
		if b.err != nil {
			return -1, b.err
		}
	}
	return r.envLen + r.n, nil
}

// appendCopy appends the copy record of message id holding d's data, for the
// devices that have it now. ok is false if none has.
func (l *Log) appendCopy(d *draft, id ID, prio Priority, secret bool, env []byte) (b *batch, ok bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	devs, ok := l.moving[id]
	if !ok || len(devs) == 0 || l.msgs[id] == nil {
		return nil, false, nil
	}
	delete(l.moving, id)
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	if err := l.writable(); err != nil {
		return nil, false, err
	}
	msgs := []recMsg{{id: id, prio: prio, secret: secret, n: d.n, env: env, devs: dedup(devs)}}
	b, bl, err := l.appendBlob(recCopy, d, msgs)
	if err != nil {
		return nil, false, err
	}
	b.applies = append(b.applies, apply{kind: applyCopy, blob: bl, msgs: msgs})
	l.wake.Signal()
	return b, true, nil
}

// dropOldest deletes old, the oldest segment, which the caller saw holding
// nothing live. It first makes the log durable: every record that killed
// old's messages was appended before the caller looked, so after the barrier
// no crash can undo those deaths while old is gone.
func (l *Log) dropOldest(old *segment) error {
	if err := l.barrier(); err != nil {
		return err
	}
	l.mu.Lock()
	if len(l.segs) < 2 || l.segs[0] != old || old.live != 0 || old.pins.Load() != 0 {
		l.mu.Unlock()
		return nil
	}
	l.segs = slices.Delete(l.segs, 0, 1)
	l.total -= old.size
	old.removed = true
	l.closeIfIdle(old)
	l.mu.Unlock()
	// A failed removal leaves the disk in an unknown state: if the file came
	// back after later segments were deleted, replay would resurrect
	// messages. Fail stop.
	if err := l.fs.Remove(old.path); err != nil {
		l.fail(fmt.Errorf("store: %w", err))
		return l.failure()
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		l.fail(fmt.Errorf("store: %w", err))
		return l.failure()
	}
	l.log.Debug("store: deleted segment", "file", old.path)
	return nil
}

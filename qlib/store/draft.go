package store

// draft is the Log's Draft. Data is kept in buf until a full chunk is followed
// by more data; then the chunk goes to the log (written, not waited for) and
// only its place is kept, so a draft never holds more than chunkSize bytes.
type draft struct {
	l      *Log
	buf    []byte  // data not yet in the log: at most chunkSize bytes
	pooled *[]byte // buf's pooled backing array, once the draft outgrew a small post
	chunks []chunk // data already in the log, in order
	n      int64   // total bytes written
	// pin is the segment of the first chunk, pinned until the draft is done
	// so that compaction leaves the chunks alone.
	pin  *segment
	done bool
	err  error // a failed write; Commit returns it
}

// Write implements io.Writer.
func (d *draft) Write(p []byte) (int, error) {
	switch {
	case d.done:
		return 0, ErrDraftDone
	case d.err != nil:
		return 0, d.err
	}
	if err := d.l.writable(); err != nil {
		d.err = err
		return 0, err
	}
	total := len(p)
	for len(p) > 0 {
		if len(d.buf) == chunkSize {
			if err := d.flush(); err != nil {
				d.err = err
				return total - len(p), err
			}
		}
		if d.pooled == nil && len(d.buf)+len(p) > chunkSize {
			// Too big for a small post: switch to a pooled chunk buffer.
			d.pooled = d.l.bufs.Get().(*[]byte)
			d.buf = append((*d.pooled)[:0], d.buf...)
		}
		k := min(chunkSize-len(d.buf), len(p))
		d.buf = append(d.buf, p[:k]...)
		d.n += int64(k)
		p = p[k:]
	}
	return total, nil
}

// flush writes the full buffer to the log as a chunk record.
func (d *draft) flush() error {
	c, err := d.l.appendChunk(d.buf, d.pin == nil)
	if err != nil {
		return err
	}
	if d.pin == nil {
		d.pin = c.seg
	}
	d.chunks = append(d.chunks, c)
	d.buf = d.buf[:0]
	return nil
}

// buffered reports the bytes held in memory (for tests of the memory bound).
func (d *draft) buffered() int { return len(d.buf) }

// Commit implements Draft: CommitAsync, then wait for its completion.
func (d *draft) Commit(msgs ...Message) ([]Receipt, error) {
	type result struct {
		rcpts []Receipt
		err   error
	}
	c := make(chan result, 1)
	err := d.CommitAsync(func(rs []Receipt, err error) { c <- result{rs, err} }, msgs...)
	if err != nil {
		return nil, err
	}
	r := <-c
	return r.rcpts, r.err
}

// CommitAsync implements Draft. On success the draft's pin passes to the
// pending batch, whose writer releases it once the commit is applied (or has
// failed), when the chunks belong to live messages.
func (d *draft) CommitAsync(done func([]Receipt, error), msgs ...Message) error {
	return d.commitAsync(0, done, msgs)
}

// commitAsync is CommitAsync; fixed, when not zero, is the id of the single
// message, issued elsewhere (Import).
func (d *draft) commitAsync(fixed ID, done func([]Receipt, error), msgs []Message) error {
	if d.done {
		return ErrDraftDone
	}
	d.done = true
	if err := d.check(msgs); err != nil {
		d.finish()
		return err
	}
	if err := d.l.appendCommit(d, msgs, fixed, done); err != nil {
		d.finish()
		return err
	}
	// The batch holds a copy of the data and owns the pin now.
	d.releaseBuf()
	d.pin = nil
	d.chunks = nil
	return nil
}

// check returns why msgs cannot be committed from this draft, or nil.
func (d *draft) check(msgs []Message) error {
	if d.err != nil {
		return d.err
	}
	for _, m := range msgs {
		if m.Off < 0 || m.Len < 0 || m.Off > d.n || m.Len > d.n-m.Off {
			return ErrRange
		}
		if m.Prio >= numPrio {
			return ErrPriority
		}
	}
	return nil
}

// Abort implements Draft.
func (d *draft) Abort() {
	if !d.done {
		d.done = true
		d.finish()
	}
}

// finish releases the draft's buffer and pin, when it is aborted or its
// commit refused.
func (d *draft) finish() {
	d.releaseBuf()
	if d.pin != nil {
		if d.pin.pins.Add(-1) == 0 {
			d.l.kickCompactor() // it may have been waiting for this segment
		}
		d.pin = nil
	}
	d.chunks = nil
}

func (d *draft) releaseBuf() {
	if d.pooled != nil {
		d.l.bufs.Put(d.pooled)
		d.pooled = nil
	}
	d.buf = nil
}

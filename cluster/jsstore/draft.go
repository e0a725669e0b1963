package jsstore

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"mnm/qlib/store"
)

// Record headers. A record's body is the envelope, then the data when the
// draft stayed in memory; otherwise the data is read from the draft's
// chunks (hdrDraft), from offset hdrOff.
const (
	hdrPrio   = "Mnm-Prio"
	hdrSecret = "Mnm-Secret"
	hdrEnv    = "Mnm-Env-Len"
	hdrLen    = "Mnm-Data-Len"
	hdrDraft  = "Mnm-Draft"
	hdrOff    = "Mnm-Off"
	hdrChunk  = "Mnm-Chunk-Size"
)

// draft is a store.Draft. Data stays in memory up to chunkSize; beyond that
// it is published chunk by chunk (acked, so memory stays bounded), and the
// partial last chunk goes into the commit's batch.
type draft struct {
	s      *Store
	name   string // subject token of its chunks
	buf    []byte // data not yet in a chunk
	size   int64  // bytes written
	chunks int64  // chunks published
	err    error  // first write error: fails the commit
	done   bool
}

// Draft starts new messages.
func (s *Store) Draft() store.Draft {
	s.mu.Lock()
	s.drafts++
	n := s.drafts
	s.mu.Unlock()
	return &draft{s: s, name: fmt.Sprintf("%s%x", s.tag, n)}
}

func (d *draft) Write(p []byte) (int, error) {
	switch {
	case d.done:
		return 0, store.ErrDraftDone
	case d.err != nil:
		return 0, d.err
	case d.s.isClosed():
		return 0, store.ErrClosed
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), chunkSize-len(d.buf))
		d.buf = append(d.buf, p[:k]...)
		p = p[k:]
		d.size += int64(k)
		if len(d.buf) == chunkSize {
			if err := d.flush(); err != nil {
				d.err = err
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// flush publishes the full buffer as the next chunk and waits for its ack.
func (d *draft) flush() error {
	ctx, cancel := d.s.ctx()
	defer cancel()
	subj := d.s.chunkSubj(d.name, d.chunks)
	if _, err := d.s.js.Publish(ctx, subj, d.buf); err != nil {
		return fmt.Errorf("jsstore: publish chunk %s: %w", subj, err)
	}
	d.chunks++
	d.buf = d.buf[:0]
	return nil
}

// spilled reports whether some data is in chunks rather than in memory.
func (d *draft) spilled() bool { return d.chunks > 0 }

// Abort discards the draft and its chunks.
func (d *draft) Abort() {
	if d.done {
		return
	}
	d.done = true
	d.discard()
}

// discard purges the chunks already published. Best effort: a chunk left
// behind is an orphan for a sweeper (as after a crash mid-draft), never
// read.
func (d *draft) discard() {
	d.buf = nil
	if !d.spilled() || d.s.isClosed() {
		return
	}
	d.s.purgeChunks(d.name)
}

func (d *draft) Commit(msgs ...store.Message) ([]store.Receipt, error) {
	type result struct {
		rs  []store.Receipt
		err error
	}
	c := make(chan result, 1)
	if err := d.CommitAsync(func(rs []store.Receipt, err error) { c <- result{rs, err} }, msgs...); err != nil {
		return nil, err
	}
	r := <-c
	return r.rs, r.err
}

func (d *draft) CommitAsync(done func([]store.Receipt, error), msgs ...store.Message) error {
	if d.done {
		return store.ErrDraftDone
	}
	d.done = true
	if d.err != nil {
		d.discard()
		return d.err
	}
	if err := d.check(msgs); err != nil {
		d.discard()
		return err
	}
	s := d.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return store.ErrClosed
	}
	j := &job{done: done}
	if len(msgs) > 0 {
		first, ceiling := s.issue(len(msgs))
		d.build(j, first, s.opts.Now(), ceiling, msgs)
	}
	s.queueLocked(j)
	s.mu.Unlock()
	if !j.usesChunks && d.spilled() {
		// Nothing refers to the chunks: the commit needs them no more.
		d.discard()
	}
	return nil
}

// check refuses what Commit would refuse at once.
func (d *draft) check(msgs []store.Message) error {
	if len(msgs) > maxCommit {
		return fmt.Errorf("%w: %d messages in one commit, at most %d", ErrTooManyRecipients, len(msgs), maxCommit)
	}
	n := 1 // room for an id ceiling (see issue), which any batch may carry
	if d.spilled() && len(d.buf) > 0 {
		n++ // the last chunk
	}
	for _, m := range msgs {
		if m.Off < 0 || m.Len < 0 || m.Off > d.size || m.Len > d.size-m.Off {
			return store.ErrRange
		}
		if m.Prio != store.Normal && m.Prio != store.High {
			return store.ErrPriority
		}
		devs := len(uniq(m.To))
		if devs == 0 {
			continue // nothing is stored for a message for nobody
		}
		n += 1 + 2*devs
		if d.spilled() && m.Len > 0 {
			n++ // the marker
		}
	}
	if n > d.s.opts.MaxBatch {
		return fmt.Errorf("%w: %d stream messages, the batch limit is %d", ErrTooManyRecipients, n, d.s.opts.MaxBatch)
	}
	return nil
}

// uniq returns devs without duplicates, in first-seen order.
func uniq(devs []string) []string {
	seen := make(map[string]bool, len(devs))
	out := make([]string, 0, len(devs))
	for _, d := range devs {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

// build fills j with the commit's batch and receipts: the last chunk (if
// the draft spilled), then per message its record, its chunk marker, and
// per device an entry followed at once by its ref (the entry says so, as
// the offset of its ref: batch sequences are contiguous). Called with the
// append lock held: it calls the Envelopes.
func (d *draft) build(j *job, first store.ID, posted time.Time, ceiling store.ID, msgs []store.Message) {
	s := d.s
	ids := make([]store.ID, len(msgs))
	for i := range msgs {
		ids[i] = first + store.ID(i)
	}
	if ceiling != 0 {
		j.ceiling = ceiling
		j.batch = append(j.batch, &nats.Msg{Subject: s.ceilingSubj(), Data: []byte(ceiling.String())})
	}
	if d.spilled() && len(d.buf) > 0 && slices.ContainsFunc(msgs, func(m store.Message) bool { return m.Len > 0 && len(m.To) > 0 }) {
		j.batch = append(j.batch, &nats.Msg{Subject: s.chunkSubj(d.name, d.chunks), Data: d.buf})
	}
	for i, m := range msgs {
		var env []byte
		if m.Envelope != nil {
			env = m.Envelope(ids[i], posted, ids)
		}
		j.receipts = append(j.receipts, store.Receipt{ID: ids[i], Posted: posted})
		devs := uniq(m.To)
		if len(devs) == 0 {
			// No queue will ever hold it, so no ack would ever reclaim
			// it: it is not stored (WriteTo says ErrNoMessage, as after
			// the last ack).
			continue
		}
		rec := &nats.Msg{Subject: s.recordSubj(ids[i]), Header: nats.Header{}}
		rec.Header.Set(hdrPrio, strconv.Itoa(int(m.Prio)))
		rec.Header.Set(hdrEnv, strconv.Itoa(len(env)))
		rec.Header.Set(hdrLen, strconv.FormatInt(m.Len, 10))
		if m.Secret {
			rec.Header.Set(hdrSecret, "1")
		}
		chunked := d.spilled() && m.Len > 0
		if chunked {
			rec.Header.Set(hdrDraft, d.name)
			rec.Header.Set(hdrOff, strconv.FormatInt(m.Off, 10))
			rec.Header.Set(hdrChunk, strconv.Itoa(chunkSize))
			rec.Data = env
			j.usesChunks = true
		} else {
			// Not spilled, so d.buf holds all the data (or m.Len is 0).
			rec.Data = append(make([]byte, 0, len(env)+int(m.Len)), env...)
			if m.Len > 0 {
				rec.Data = append(rec.Data, d.buf[m.Off:m.Off+m.Len]...)
			}
		}
		j.batch = append(j.batch, rec)
		if chunked {
			j.batch = append(j.batch, &nats.Msg{Subject: s.markerSubj(d.name, ids[i])})
		}
		e := entry{id: ids[i], size: int64(len(env)) + m.Len, secret: m.Secret, refOff: 1}
		for _, dev := range devs {
			j.batch = append(j.batch,
				&nats.Msg{Subject: s.queueSubj(dev, m.Prio), Data: e.marshal()},
				&nats.Msg{Subject: s.refSubj(ids[i], dev)})
			j.devs = append(j.devs, dev)
		}
	}
	if j.usesChunks {
		j.chunkDraft = d.name
	}
}

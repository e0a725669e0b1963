package jsstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"mnm/qlib/store"
)

// The commit pipeline. CommitAsync queues jobs in id order under the append
// lock. One publisher goroutine takes the jobs queued, as many as fit, and
// sends their messages as one atomic batch on the connection, the commit
// message last with a reply subject of this Store, without waiting for the
// reply: up to maxInflight batches are in flight at once. So under load one
// Raft round and one fsync cover many commits, and while every slot is
// taken the queue grows into the next batch. Because one connection sends
// the batches in order, and a batch keeps its jobs' order, the server
// commits them in order, so a device's entries lie in id order in the
// stream (what Head relies on). One completer goroutine waits for the
// replies in the same order and calls each job's done, so dones run in
// call order. A batch is atomic: when it fails, every commit in it fails.

// commitTimeout bounds the wait for a batch's reply: longer than the
// server's 10 s batch timeout, so that a batch still open on the server is
// not reported failed, plus room for a leader election.
const commitTimeout = 20 * time.Second

// maxBatchBytes bounds the bytes of a batch of several jobs: the server
// holds a batch in memory until its commit message, and large drafts'
// chunks are published before their commits, so commits are small and 8
// MiB holds hundreds of them. A single job is sent whatever its size.
const maxBatchBytes = 8 << 20

// job is one commit on its way.
type job struct {
	num        uint64
	done       func([]store.Receipt, error)
	batch      []*nats.Msg
	receipts   []store.Receipt
	devs       []string // devices given entries, for wakes
	ceiling    store.ID // id ceiling carried by the batch, or 0
	usesChunks bool     // some record reads chunks of chunkDraft
	chunkDraft string
	// exclusive, when set, is the whole job: the publisher runs it with
	// no other batch of this Store in flight and none sent meanwhile
	// (CopyQueue's guarded copy, which any commit for its device would
	// refuse), and done gets its error.
	exclusive func() error
}

// size is about the bytes j's messages take on the wire.
func (j *job) size() int {
	n := 0
	for _, m := range j.batch {
		n += len(m.Subject) + len(m.Data)
		for k, vs := range m.Header {
			for _, v := range vs {
				n += len(k) + len(v) + 4
			}
		}
	}
	return n
}

// batch is one atomic batch on its way: the messages of its jobs, in the
// jobs' order. Jobs with no message ride along and do not fail with it.
type batch struct {
	num     uint64 // the first job's number: names the batch and its reply
	jobs    []*job
	msgs    []*nats.Msg
	resp    chan *nats.Msg // the batch's reply; capacity 1
	sendErr error          // set by the publisher before the batch reaches the completer
	sent    time.Time
}

// enqueue hands j to the pipeline.
func (s *Store) enqueue(j *job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	s.queueLocked(j)
	return nil
}

// queueLocked appends j to the jobs to publish; s.mu is held.
func (s *Store) queueLocked(j *job) {
	s.jobSeq++
	j.num = s.jobSeq
	s.jobs = append(s.jobs, j)
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// publisher sends queued jobs in order until Close has begun and the queue
// is empty. It takes a slot before it takes jobs, so that the jobs queued
// while every slot is taken go out together.
func (s *Store) publisher() {
	defer close(s.complete)
	for {
		s.mu.Lock()
		for len(s.jobs) == 0 && !s.closed {
			s.mu.Unlock()
			<-s.kick
			s.mu.Lock()
		}
		if len(s.jobs) == 0 {
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		s.slots <- struct{}{}
		s.mu.Lock()
		b := s.takeLocked()
		if len(b.msgs) > 0 {
			s.waiting[b.num] = b
		}
		s.mu.Unlock()
		if j := b.jobs[0]; j.exclusive != nil {
			s.runExclusive(j)
		}
		if len(b.msgs) > 0 {
			b.sendErr = s.send(b)
			s.batches.Add(1)
		}
		b.sent = time.Now()
		s.complete <- b
	}
}

// runExclusive runs j.exclusive once every other batch in flight is
// acknowledged: it takes every slot (the publisher holds one already) and
// gives them back after. Its error goes to j's done through the completer,
// in order with the batches around it.
func (s *Store) runExclusive(j *job) {
	for range maxInflight - 1 {
		s.slots <- struct{}{}
	}
	err := j.exclusive()
	for range maxInflight - 1 {
		<-s.slots
	}
	done := j.done
	j.done = func(rs []store.Receipt, _ error) { done(rs, err) }
}

// sendAlone publishes msgs as one atomic batch outside the pipeline and
// waits for its reply: for an exclusive job, which holds every slot. It
// returns the stream sequence of the batch's last message.
func (s *Store) sendAlone(msgs []*nats.Msg) (uint64, error) {
	s.mu.Lock()
	s.jobSeq++
	b := &batch{num: s.jobSeq, msgs: msgs, resp: make(chan *nats.Msg, 1)}
	s.waiting[b.num] = b
	s.mu.Unlock()
	b.sendErr = s.send(b)
	s.batches.Add(1)
	b.sent = time.Now()
	return s.await(b)
}

// takeLocked takes the next batch off the queue: the first job, and the
// ones after it while the batch stays within the server's batch limit and
// maxBatchBytes. Every job fits the limit alone (check), id ceiling
// included. s.mu is held and the queue is not empty.
func (s *Store) takeLocked() *batch {
	b := &batch{num: s.jobs[0].num, resp: make(chan *nats.Msg, 1)}
	size := 0
	n := 0
	for _, j := range s.jobs {
		js := j.size()
		if len(b.jobs) > 0 && (j.exclusive != nil || b.jobs[0].exclusive != nil || len(b.msgs)+len(j.batch) > s.opts.MaxBatch || size+js > maxBatchBytes) {
			break
		}
		b.jobs = append(b.jobs, j)
		b.msgs = append(b.msgs, j.batch...)
		size += js
		n++
	}
	clear(s.jobs[:n])
	s.jobs = s.jobs[n:]
	return b
}

// send publishes b's messages; the commit message carries the reply
// subject.
func (s *Store) send(b *batch) error {
	id := fmt.Sprintf("%s-%d", s.tag, b.num)
	for i, m := range b.msgs {
		m.Header = cloneHeader(m.Header)
		m.Header.Set(jetstreamext.BatchIDHeader, id)
		m.Header.Set(jetstreamext.BatchSeqHeader, strconv.Itoa(i+1))
		if i == len(b.msgs)-1 {
			m.Header.Set(jetstreamext.BatchCommitHeader, "1")
			m.Reply = s.replyPrefix + "." + strconv.FormatUint(b.num, 10)
		}
		if err := s.nc.PublishMsg(m); err != nil {
			return fmt.Errorf("jsstore: publish batch %s: %w", id, err)
		}
	}
	return nil
}

func cloneHeader(h nats.Header) nats.Header {
	out := make(nats.Header, len(h)+3)
	for k, v := range h {
		out[k] = v
	}
	return out
}

// onReply hands a batch reply to its batch.
func (s *Store) onReply(m *nats.Msg) {
	num, err := strconv.ParseUint(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	b := s.waiting[num]
	delete(s.waiting, num)
	s.mu.Unlock()
	if b != nil {
		b.resp <- m
	}
}

// batchReply is the server's answer to a batch's commit message.
type batchReply struct {
	Error *jetstream.APIError `json:"error,omitempty"`
	Seq   uint64              `json:"seq"`
	Count uint64              `json:"count"`
}

// completer waits for each batch's reply in order and reports it to its
// jobs, in order.
func (s *Store) completer() {
	defer close(s.pipeDone)
	for b := range s.complete {
		_, err := s.await(b)
		<-s.slots
		if err != nil {
			s.failed(b, err)
			continue
		}
		var devs []string
		ceiling := false
		for _, j := range b.jobs {
			for _, dev := range j.devs {
				s.committed(dev)
			}
			j.done(j.receipts, nil)
			devs = append(devs, j.devs...)
			ceiling = ceiling || j.ceiling != 0
		}
		s.wake(devs)
		if ceiling {
			s.trimCeiling()
		}
	}
}

// await waits for b to be acknowledged and returns the stream sequence of
// its last message.
func (s *Store) await(b *batch) (lastSeq uint64, err error) {
	if b.sendErr != nil {
		s.forget(b)
		return 0, b.sendErr
	}
	if len(b.msgs) == 0 {
		return 0, nil
	}
	var m *nats.Msg
	select {
	case m = <-b.resp:
	case <-s.dead:
		s.forget(b)
		return 0, store.ErrClosed
	case <-time.After(time.Until(b.sent.Add(commitTimeout))):
		s.forget(b)
		return 0, fmt.Errorf("jsstore: batch of %d: no reply within %s", len(b.msgs), commitTimeout)
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		// Nothing listened on the subject: the batch reached no stream.
		return 0, fmt.Errorf("jsstore: batch of %d: %w", len(b.msgs), nats.ErrNoResponders)
	}
	var r batchReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return 0, fmt.Errorf("jsstore: batch reply %q: %w", m.Data, err)
	}
	if r.Error != nil {
		return 0, fmt.Errorf("jsstore: batch of %d refused: %w", len(b.msgs), r.Error)
	}
	if r.Count != uint64(len(b.msgs)) || r.Seq < r.Count {
		return 0, fmt.Errorf("jsstore: batch of %d acknowledged as %d ending at %d", len(b.msgs), r.Count, r.Seq)
	}
	return r.Seq, nil
}

// forget stops waiting for b's reply.
func (s *Store) forget(b *batch) {
	s.mu.Lock()
	delete(s.waiting, b.num)
	s.mu.Unlock()
}

// failed reports the commits of a batch that is not known to be stored;
// jobs with no message in it succeed all the same. Chunks are purged only
// when the server refused the batch: after a timeout or a lost connection
// the batch may have been stored after all, and its records would then
// read them.
func (s *Store) failed(b *batch, err error) {
	s.log.Warn("jsstore commit failed", "commits", len(b.jobs), "batch", len(b.msgs), "err", err)
	var ceiling store.ID
	for _, j := range b.jobs {
		if j.ceiling != 0 {
			ceiling = j.ceiling
		}
	}
	if ceiling != 0 {
		// The ceiling may not be stored: have the next commit carry one.
		s.mu.Lock()
		if s.ceiling == ceiling {
			s.ceiling = s.last
		}
		s.mu.Unlock()
	}
	var api *jetstream.APIError
	refused := errors.As(err, &api)
	if s.isClosed() && !errors.Is(err, store.ErrClosed) {
		err = fmt.Errorf("%w: %w", store.ErrClosed, err)
	}
	for _, j := range b.jobs {
		if len(j.batch) == 0 {
			j.done(j.receipts, nil)
			continue
		}
		if j.usesChunks && refused {
			s.purgeChunks(j.chunkDraft)
		}
		j.done(nil, err)
	}
}

// trimCeiling drops superseded id ceilings of this node: only the last
// counts. Best effort; a leftover is harmless.
func (s *Store) trimCeiling() {
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.stream.Purge(ctx, jetstream.WithPurgeSubject(s.ceilingSubj()), jetstream.WithPurgeKeep(1)); err != nil {
		s.log.Warn("jsstore trim id ceiling", "err", err)
	}
}

// purgeChunks deletes a draft's chunks.
func (s *Store) purgeChunks(draft string) {
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.stream.Purge(ctx, jetstream.WithPurgeSubject(s.p+".c."+draft+".>")); err != nil {
		s.log.Warn("jsstore purge chunks", "draft", draft, "err", err)
	}
}

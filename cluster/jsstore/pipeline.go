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
// lock. One publisher goroutine sends each job's batch on the connection,
// the commit message last with a reply subject of this Store, without
// waiting for the reply: up to maxInflight batches are in flight at once.
// Because one connection sends them in order, the server commits them in
// order, so a device's entries lie in id order in the stream (what Head
// relies on). One completer goroutine waits for the replies in the same
// order and calls each done, so dones run in call order.

// commitTimeout bounds the wait for a batch's reply: longer than the
// server's 10 s batch timeout, so that a batch still open on the server is
// not reported failed, plus room for a leader election.
const commitTimeout = 20 * time.Second

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
	resp       chan *nats.Msg // the batch's reply; capacity 1
	sendErr    error          // set by the publisher before the job reaches the completer
	sent       time.Time
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
	j.resp = make(chan *nats.Msg, 1)
	s.jobSeq++
	j.num = s.jobSeq
	s.jobs = append(s.jobs, j)
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// publisher sends queued batches in order until Close has begun and the
// queue is empty.
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
		j := s.jobs[0]
		s.jobs = s.jobs[1:]
		if len(j.batch) > 0 {
			s.waiting[j.num] = j
		}
		s.mu.Unlock()
		s.slots <- struct{}{}
		if len(j.batch) > 0 {
			j.sendErr = s.send(j)
		}
		j.sent = time.Now()
		s.complete <- j
	}
}

// send publishes j's batch; the commit message carries the reply subject.
func (s *Store) send(j *job) error {
	id := fmt.Sprintf("%s-%d", s.tag, j.num)
	for i, m := range j.batch {
		m.Header = cloneHeader(m.Header)
		m.Header.Set(jetstreamext.BatchIDHeader, id)
		m.Header.Set(jetstreamext.BatchSeqHeader, strconv.Itoa(i+1))
		if i == len(j.batch)-1 {
			m.Header.Set(jetstreamext.BatchCommitHeader, "1")
			m.Reply = s.replyPrefix + "." + strconv.FormatUint(j.num, 10)
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

// onReply hands a batch reply to its job.
func (s *Store) onReply(m *nats.Msg) {
	num, err := strconv.ParseUint(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	j := s.waiting[num]
	delete(s.waiting, num)
	s.mu.Unlock()
	if j != nil {
		j.resp <- m
	}
}

// batchReply is the server's answer to a batch's commit message.
type batchReply struct {
	Error *jetstream.APIError `json:"error,omitempty"`
	Seq   uint64              `json:"seq"`
	Count uint64              `json:"count"`
}

// completer waits for each job's reply in order and reports it.
func (s *Store) completer() {
	defer close(s.pipeDone)
	for j := range s.complete {
		err := s.await(j)
		<-s.slots
		if err != nil {
			s.failed(j, err)
			continue
		}
		j.done(j.receipts, nil)
		s.wake(j.devs)
		if j.ceiling != 0 {
			s.trimCeiling()
		}
	}
}

// await waits for j's batch to be acknowledged.
func (s *Store) await(j *job) error {
	if j.sendErr != nil {
		s.forget(j)
		return j.sendErr
	}
	if len(j.batch) == 0 {
		return nil
	}
	var m *nats.Msg
	select {
	case m = <-j.resp:
	case <-s.dead:
		s.forget(j)
		return store.ErrClosed
	case <-time.After(time.Until(j.sent.Add(commitTimeout))):
		s.forget(j)
		return fmt.Errorf("jsstore: batch of %d: no reply within %s", len(j.batch), commitTimeout)
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		// Nothing listened on the subject: the batch reached no stream.
		return fmt.Errorf("jsstore: batch of %d: %w", len(j.batch), nats.ErrNoResponders)
	}
	var r batchReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return fmt.Errorf("jsstore: batch reply %q: %w", m.Data, err)
	}
	if r.Error != nil {
		return fmt.Errorf("jsstore: batch of %d refused: %w", len(j.batch), r.Error)
	}
	if r.Count != uint64(len(j.batch)) || r.Seq < r.Count {
		return fmt.Errorf("jsstore: batch of %d acknowledged as %d ending at %d", len(j.batch), r.Count, r.Seq)
	}
	return nil
}

// forget stops waiting for j's reply.
func (s *Store) forget(j *job) {
	s.mu.Lock()
	delete(s.waiting, j.num)
	s.mu.Unlock()
}

// failed reports a commit that is not known to be stored. Its chunks are
// purged only when the server refused the batch: after a timeout or a lost
// connection the batch may have been stored after all, and its records
// would then read them.
func (s *Store) failed(j *job, err error) {
	s.log.Warn("jsstore commit failed", "messages", len(j.receipts), "batch", len(j.batch), "err", err)
	if j.ceiling != 0 {
		// The ceiling may not be stored: have the next commit carry one.
		s.mu.Lock()
		if s.ceiling == j.ceiling {
			s.ceiling = s.last
		}
		s.mu.Unlock()
	}
	var api *jetstream.APIError
	if j.usesChunks && errors.As(err, &api) {
		s.purgeChunks(j.chunkDraft)
	}
	if s.isClosed() && !errors.Is(err, store.ErrClosed) {
		err = fmt.Errorf("%w: %w", store.ErrClosed, err)
	}
	j.done(nil, err)
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

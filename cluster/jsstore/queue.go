package jsstore

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/qlib/store"
)

// entry is the body of a queue entry: the message id, the size of what
// WriteTo sends for it (for QueueBytes without reading the record), whether
// it is secret (for CopyQueue without reading the record), and where its
// ref is, relative to the entry's own sequence. The ref is always the next
// message of the same batch (1), in commits and in copies alike.
//
// The entry does not point at its record by sequence: CopyQueue publishes
// entries before it can know their sequences, and the record is found by
// subject anyway (p.m.<id> holds one message).
type entry struct {
	id     store.ID
	size   int64
	secret bool
	refOff int64
}

func (e entry) marshal() []byte {
	sec := 0
	if e.secret {
		sec = 1
	}
	return fmt.Appendf(nil, "%s %d %d %d", e.id, e.size, sec, e.refOff)
}

func parseEntry(b []byte) (entry, error) {
	f := strings.Fields(string(b))
	if len(f) != 4 {
		return entry{}, fmt.Errorf("jsstore: entry %q: want 4 fields", b)
	}
	id, err := store.ParseID(f[0])
	if err != nil {
		return entry{}, err
	}
	size, err1 := strconv.ParseInt(f[1], 10, 64)
	sec, err2 := strconv.Atoi(f[2])
	off, err3 := strconv.ParseInt(f[3], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil || size < 0 || off == 0 {
		return entry{}, fmt.Errorf("jsstore: entry %q: bad fields", b)
	}
	return entry{id: id, size: size, secret: sec == 1, refOff: off}, nil
}

// queued is an entry where it lies in the stream.
type queued struct {
	entry
	seq  uint64
	prio store.Priority
}

// first returns the first entry of dev's queue of priority prio. The
// subject's last sequence comes first: the server keeps it per subject, so
// an empty queue costs no scan at all; a queue that is not empty is read
// from its floor, which then rises to the entry found (none lies below).
func (s *Store) first(dev string, prio store.Priority) (queued, bool, error) {
	ctx, cancel := s.ctx()
	m, err := s.stream.GetLastMsgForSubject(ctx, s.queueSubj(dev, prio))
	cancel()
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return queued{}, false, nil
	case err != nil:
		return queued{}, false, fmt.Errorf("jsstore: read queue: %w", err)
	}
	floor := s.floor(dev, prio)
	if m.Sequence < floor {
		return queued{}, false, nil
	}
	q, ok, err := s.next(dev, prio, floor)
	if ok {
		s.raiseFloor(dev, prio, q.seq)
	}
	return q, ok, err
}

// floor is where dev's queue of priority prio may begin (Store.floors).
func (s *Store) floor(dev string, prio store.Priority) uint64 {
	s.hintMu.Lock()
	defer s.hintMu.Unlock()
	return max(1, s.floors[floorKey{dev, prio}])
}

// raiseFloor records that dev's queue of priority prio has no entry below
// seq: its first entry, below seq, was just deleted.
func (s *Store) raiseFloor(dev string, prio store.Priority, seq uint64) {
	s.hintMu.Lock()
	defer s.hintMu.Unlock()
	k := floorKey{dev, prio}
	if seq > s.floors[k] {
		s.floors[k] = seq
	}
}

// next returns the first entry of dev's queue of priority prio at or after
// stream sequence seq, from the leader by the subject index.
func (s *Store) next(dev string, prio store.Priority, seq uint64) (queued, bool, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	m, err := s.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(s.queueSubj(dev, prio)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return queued{}, false, nil
	}
	if err != nil {
		return queued{}, false, fmt.Errorf("jsstore: read queue: %w", err)
	}
	e, err := parseEntry(m.Data)
	if err != nil {
		return queued{}, false, err
	}
	return queued{entry: e, seq: m.Sequence, prio: prio}, true, nil
}

// entries returns dev's queue in delivery order. It costs one read per
// entry (plus two): fine for the away sweep and tests; Len and QueueBytes
// use it too, which a device with a long queue would feel.
func (s *Store) entries(dev string) ([]queued, error) {
	var out []queued
	for _, prio := range []store.Priority{store.High, store.Normal} {
		if _, err := s.readOn(dev, prio, s.floor(dev, prio)-1, func(q queued) { out = append(out, q) }); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readOn calls fn with each entry of dev's queue of priority prio after
// stream sequence after, in order, a read each, and returns the sequence
// of the last entry read (after itself when there is none).
func (s *Store) readOn(dev string, prio store.Priority, after uint64, fn func(queued)) (uint64, error) {
	for {
		q, ok, err := s.next(dev, prio, after+1)
		if err != nil || !ok {
			return after, err
		}
		fn(q)
		after = q.seq
	}
}

// Head returns the first entry of dev's queue. The stream holds a device's
// entries of one priority in the order committed, which for one frontend
// is id order; entries committed on different frontends at once lie in the
// order the stream got them. A read error reads as an empty queue (logged):
// the device's link asks again at its next wake or reconnect.
func (s *Store) Head(dev string) (store.ID, bool) {
	if s.isClosed() {
		return 0, false
	}
	// Both reads at once: one leader round instead of two when High is
	// empty. Normal's result only counts when High has no entry, so its
	// error does not hide a High entry.
	type result struct {
		q   queued
		ok  bool
		err error
	}
	normal := make(chan result, 1)
	go func() {
		q, ok, err := s.first(dev, store.Normal)
		normal <- result{q, ok, err}
	}()
	q, ok, err := s.first(dev, store.High)
	if err == nil && !ok {
		r := <-normal
		q, ok, err = r.q, r.ok, r.err
	}
	if err != nil {
		s.log.Warn("jsstore head", "err", err)
		return 0, false
	}
	if !ok {
		return 0, false
	}
	s.hintMu.Lock()
	s.hints[dev] = entryRef{id: q.id, seq: q.seq, refOff: q.refOff, prio: q.prio, size: q.size}
	s.hintMu.Unlock()
	return q.id, true
}

// Len reports the number of entries in dev's queue.
func (s *Store) Len(dev string) int {
	qs, err := s.entries(dev)
	if err != nil {
		s.log.Warn("jsstore len", "err", err)
	}
	return len(qs)
}

// Queue returns the ids of dev's queue in delivery order.
func (s *Store) Queue(dev string) []store.ID {
	qs, err := s.entries(dev)
	if err != nil {
		s.log.Warn("jsstore queue", "err", err)
	}
	ids := make([]store.ID, len(qs))
	for i, q := range qs {
		ids[i] = q.id
	}
	return ids
}

// QueueBytes reports the sum of WriteTo's sizes over dev's entries.
//
// qlib asks it for every recipient device of every post (the
// queueBytesPerDevice limit), and counting a queue costs a read per entry:
// counted afresh every 2 s, deep queues made it most of the cluster's work
// (`./mnm 200 -timescale 0.01`, groups of 100: 117 deliveries in 70 s;
// 35,747 with the limit off). So a count is kept per device (21,829
// deliveries in the same run) and brought up to date by
// reading only the entries after the last ones it read, at most every
// queueBytesTTL and at once after this frontend's commits for the device.
// This frontend's acks take their sizes off at once; other frontends'
// acks are seen at the next full count (queueBytesRecount): until then the
// count may be high, never low but for what other frontends committed
// within the TTL. The limit is a threshold, never a reservation (qlib's
// roomFor).
func (s *Store) QueueBytes(dev string) int64 {
	s.hintMu.Lock()
	c, ok := s.qbytes[dev]
	now := time.Now()
	switch {
	case ok && c.n >= 0 && (c.counting || now.Sub(c.checked) < queueBytesTTL):
		s.hintMu.Unlock()
		return c.n
	case ok && c.counting:
		s.hintMu.Unlock() // being counted afresh: read it all, keep nothing
		return s.countBytes(dev)
	}
	full := !ok || c.n < 0 || now.Sub(c.full) >= queueBytesRecount
	if full {
		c = queueBytes{full: now}
	}
	c.counting = true
	gen := c.gen
	s.qbytes[dev] = c
	s.hintMu.Unlock()

	n, read := c.n, c.read
	var err error
	if full {
		n, read = 0, [2]uint64{s.floor(dev, store.Normal) - 1, s.floor(dev, store.High) - 1}
	}
	for prio := range read {
		if read[prio], err = s.readOn(dev, store.Priority(prio), read[prio], func(q queued) { n += q.size }); err != nil {
			break
		}
	}

	s.hintMu.Lock()
	defer s.hintMu.Unlock()
	cur := s.qbytes[dev]
	if err != nil || cur.gen != gen {
		// A failed read, or the queue replaced meanwhile: count afresh next
		// time.
		if err != nil {
			s.log.Warn("jsstore queue bytes", "err", err)
		}
		cur.n, cur.counting = -1, false
		s.qbytes[dev] = cur
		return max(0, n)
	}
	// Local acks during the count took their sizes off cur.n already, from
	// the value before the count: carry them over.
	n += cur.n - c.n
	if len(s.qbytes) >= maxQueueBytesCached {
		clear(s.qbytes) // a flood of devices: count again
	}
	s.qbytes[dev] = queueBytes{n: max(0, n), read: read, full: c.full, checked: now, gen: gen}
	return max(0, n)
}

// countBytes counts dev's queue afresh and keeps nothing.
func (s *Store) countBytes(dev string) int64 {
	qs, err := s.entries(dev)
	if err != nil {
		s.log.Warn("jsstore queue bytes", "err", err)
	}
	var n int64
	for _, q := range qs {
		n += q.size
	}
	return n
}

// queueBytes is what QueueBytes keeps of one device's count.
type queueBytes struct {
	n        int64     // the bytes of the entries counted; -1: count afresh
	read     [2]uint64 // by priority: the last sequence read
	full     time.Time // when the last full count began
	checked  time.Time // when the count was last brought up to date
	counting bool      // a count is being made
	gen      uint64    // bumped when the queue is replaced: drops a count begun before
}

// queueBytesTTL is how long a count is trusted without reading on,
// queueBytesRecount how long before it is made afresh, and
// maxQueueBytesCached bounds the devices kept.
const (
	queueBytesTTL       = 2 * time.Second
	queueBytesRecount   = 30 * time.Second
	maxQueueBytesCached = 100_000
)

// forgetBytes drops dev's count: its queue was replaced (CopyQueue).
func (s *Store) forgetBytes(dev string) {
	s.hintMu.Lock()
	c := s.qbytes[dev]
	s.qbytes[dev] = queueBytes{n: -1, gen: c.gen + 1}
	s.hintMu.Unlock()
}

// committed has dev's count read on at its next use: this frontend just
// committed entries for it.
func (s *Store) committed(dev string) {
	s.hintMu.Lock()
	if c, ok := s.qbytes[dev]; ok {
		c.checked = time.Time{}
		s.qbytes[dev] = c
	}
	s.hintMu.Unlock()
}

// acked takes an acknowledged entry's size off dev's count: the entry was
// read into it, being below the sequences read (Head found it first).
func (s *Store) acked(dev string, size int64) {
	s.hintMu.Lock()
	if c, ok := s.qbytes[dev]; ok && c.n >= 0 {
		c.n -= size
		s.qbytes[dev] = c
	}
	s.hintMu.Unlock()
}

// find returns dev's entry for id by a scan of the queue.
func (s *Store) find(dev string, id store.ID) (queued, bool, error) {
	qs, err := s.entries(dev)
	if err != nil {
		return queued{}, false, err
	}
	for _, q := range qs {
		if q.id == id {
			return q, true, nil
		}
	}
	return queued{}, false, nil
}

// Ack removes id from dev's queue: its entry and its ref, both at once,
// then, if that was the message's last ref, the message.
//
// The two deletes are independent leader rounds, so they go out together:
// one round's wait instead of two. If the entry's fails and the ref's
// succeeds, the entry is left without its ref and Ack returns the error.
// The entry comes back at the device's next Head: while the message is
// there (other refs, or this ack's look never ran), the device gets it
// again, a counted redelivery; once an ack elsewhere has reclaimed it,
// WriteTo says ErrNoMessage having written nothing, and qlib drops the
// entry (an Ack that finds no ref and no record). So the worst case is an
// orphan entry, never a lost message: a ref goes only in an ack, after the
// device got the message.
func (s *Store) Ack(dev string, id store.ID) error {
	if s.isClosed() {
		return store.ErrClosed
	}
	// Head's hint names the entry by sequence, and sequences are never
	// reused: if a message is still there, it is that entry, and the
	// delete needs no read first. If it is gone (acknowledged, or
	// replaced by CopyQueue), look in the queue; the ref deleted with it
	// was that gone entry's own, which its remover deletes too.
	s.hintMu.Lock()
	h, hinted := s.hints[dev]
	delete(s.hints, dev)
	s.hintMu.Unlock()
	if hinted && h.id == id {
		entryErr, refErr := s.deleteEntry(h.seq, h.refOff)
		if entryErr == nil {
			s.raiseFloor(dev, h.prio, h.seq+1) // h was the first entry
			s.acked(dev, h.size)
			return s.ackRest(id, refErr)
		}
		if !errors.Is(entryErr, jetstream.ErrMsgNotFound) {
			return entryErr
		}
	}
	q, ok, err := s.find(dev, id)
	if err != nil {
		return err
	}
	if !ok {
		return store.ErrNotQueued
	}
	entryErr, refErr := s.deleteEntry(q.seq, q.refOff)
	if entryErr != nil {
		if errors.Is(entryErr, jetstream.ErrMsgNotFound) {
			return store.ErrNotQueued // acknowledged at the same time elsewhere
		}
		return entryErr
	}
	s.acked(dev, q.size)
	return s.ackRest(id, refErr)
}

// deleteEntry deletes the entry at seq and its ref at seq+refOff at once,
// and returns when both deletes have completed, with each one's error.
func (s *Store) deleteEntry(seq uint64, refOff int64) (entryErr, refErr error) {
	ref := make(chan error, 1)
	go func() { ref <- s.deleteSeq(uint64(int64(seq)+refOff), false) }()
	entryErr = s.deleteSeq(seq, false)
	return entryErr, <-ref
}

// ackRest finishes an ack once its entry is deleted and its ref delete has
// completed (refErr): the message goes if that was its last ref.
func (s *Store) ackRest(id store.ID, refErr error) error {
	if refErr != nil && !errors.Is(refErr, jetstream.ErrMsgNotFound) {
		return refErr
	}
	return s.reclaim(id)
}

// deleteSeq deletes the message at seq (overwriting it if secure).
// jetstream.ErrMsgNotFound if there is none.
func (s *Store) deleteSeq(seq uint64, secure bool) error {
	ctx, cancel := s.ctx()
	defer cancel()
	del := s.stream.DeleteMsg
	if secure {
		del = s.stream.SecureDeleteMsg
	}
	err := del(ctx, seq)
	if err == nil {
		return nil
	}
	// The server's reply to deleting a missing message is an unsuccessful
	// delete, not a not-found code: look.
	if _, gerr := s.stream.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return jetstream.ErrMsgNotFound
	}
	return fmt.Errorf("jsstore: delete %d: %w", seq, err)
}

// reclaim deletes message id if no ref to it is left.
//
// Every holder of a ref deletes its ref first and looks second (Ack sends
// its entry delete alongside the ref's, but looks only once the ref's has
// completed), and both go to the stream leader, which applies deletes in
// one order. So when two frontends acknowledge the last two refs of one
// message at once, the one whose delete is applied last cannot see the
// other's ref: at least one of them finds none and deletes the message
// (both may; deleting twice is harmless). No message is kept for ever by
// a race, and none is deleted while a ref is left, because a ref is only
// ever added with its entry in the batch that also holds the record
// (commit) or while another ref exists (CopyQueue, whose source entry is
// in place).
//
// The record is read at the same time as the look, not after it: both are
// reads, the record's sequence and headers never change, and a record
// deleted in between makes the delete below find nothing, as a record
// reclaimed by another ack does. One leader round instead of two, at the
// cost of a read wasted when refs are left.
func (s *Store) reclaim(id store.ID) error {
	ctx, cancel := s.ctx()
	defer cancel()
	type read struct {
		rec *jetstream.RawStreamMsg
		err error
	}
	record := make(chan read, 1)
	go func() {
		rec, err := s.stream.GetLastMsgForSubject(ctx, s.recordSubj(id))
		record <- read{rec, err}
	}()
	_, err := s.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(s.refsSubj(id)))
	r := <-record
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("jsstore: look for refs of %v: %w", id, err)
	}
	rec, err := r.rec, r.err
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // reclaimed by another ack
	}
	if err != nil {
		return fmt.Errorf("jsstore: read record %v: %w", id, err)
	}
	secret := rec.Header.Get(hdrSecret) == "1"
	if err := s.deleteSeq(rec.Sequence, secret); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return err
	}
	draft := rec.Header.Get(hdrDraft)
	if draft == "" {
		return nil
	}
	// Chunks are shared by the messages of one draft; they go with the
	// last marker, by the same delete-then-look rule as refs.
	if err := s.stream.Purge(ctx, jetstream.WithPurgeSubject(s.markerSubj(draft, id))); err != nil {
		return fmt.Errorf("jsstore: delete marker of %v: %w", id, err)
	}
	_, err = s.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(s.p+".d."+draft+".>"))
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("jsstore: look for markers of draft %s: %w", draft, err)
	}
	s.purgeChunks(draft)
	s.log.Debug("jsstore reclaimed chunks", "draft", draft)
	return nil
}

// WriteTo writes message id, envelope then data, to w.
func (s *Store) WriteTo(w io.Writer, id store.ID) (int64, error) {
	if s.isClosed() {
		return 0, store.ErrClosed
	}
	ctx, cancel := s.ctx()
	defer cancel()
	rec, err := s.stream.GetLastMsgForSubject(ctx, s.recordSubj(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, store.ErrNoMessage
	}
	if err != nil {
		return 0, fmt.Errorf("jsstore: read record %v: %w", id, err)
	}
	draft := rec.Header.Get(hdrDraft)
	if draft == "" {
		n, err := w.Write(rec.Data)
		return int64(n), err
	}
	length, err1 := strconv.ParseInt(rec.Header.Get(hdrLen), 10, 64)
	off, err2 := strconv.ParseInt(rec.Header.Get(hdrOff), 10, 64)
	cs, err3 := strconv.ParseInt(rec.Header.Get(hdrChunk), 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil || length < 0 || off < 0 || cs <= 0 {
		return 0, fmt.Errorf("jsstore: record %v: bad chunk headers", id)
	}
	n, err := w.Write(rec.Data)
	total := int64(n)
	if err != nil {
		return total, err
	}
	for pos, end := off, off+length; pos < end; {
		k := pos / cs
		c, err := s.stream.GetLastMsgForSubject(ctx, s.chunkSubj(draft, k))
		if err != nil {
			return total, fmt.Errorf("jsstore: read chunk %d of %v: %w", k, id, err)
		}
		from := pos - k*cs
		to := min(int64(len(c.Data)), end-k*cs)
		if from >= to {
			return total, fmt.Errorf("jsstore: chunk %d of %v: %d bytes, short", k, id, len(c.Data))
		}
		n, err := w.Write(c.Data[from:to])
		total += int64(n)
		if err != nil {
			return total, err
		}
		pos = k*cs + to
	}
	return total, nil
}

// CopyQueue gives dst a copy of src's queue (but for secret messages),
// replacing what dst had. It serves a device just added to its member
// (qlib's newnode), which is in the directory, and so gets new posts,
// before its queue is copied: commits for src and dst go on meanwhile,
// from any frontend. dst must end with src's entries and every entry that
// reaches dst meanwhile, each once and in order per sender: a commit for
// dst that lands between reading the queues and writing the copy must not
// end up before the copy's older entries.
//
// So the copy is written as dst's whole queue, in id order (a sender's
// posts are in id order), and guarded: its batch carries the last sequence
// of each of dst's queue subjects as last read
// (Nats-Expected-Last-Subject-Sequence), and the stream refuses it if an
// entry reached dst since. dst's queue as read then goes: what it had
// before the call is replaced, what reached it during the call is in the
// copy. A refused copy takes back what it wrote and starts again, up to
// copyAttempts times. A crash before the old entries are deleted leaves
// some doubled: a counted redelivery.
func (s *Store) CopyQueue(src, dst string) error {
	if s.isClosed() {
		return store.ErrClosed
	}
	if src == dst {
		return nil
	}
	had, err := s.entries(dst)
	if err != nil {
		return err
	}
	before := make(map[uint64]bool, len(had)) // by sequence: an id may be queued twice
	for _, q := range had {
		before[q.seq] = true
	}
	return s.copyQueue(src, dst, before)
}

// copyAttempts bounds the copy's attempts: an attempt is refused only by
// an entry reaching the device from another frontend within the read or
// two between the copy's last look at the queue and its batch, and each
// new attempt reads only what arrived, so a handful is plenty unless the
// member's devices are flooded; then the new device's copy fails and its
// member may ask again.
const copyAttempts = 20

// errQueueMoved refuses a copy whose device got an entry since its queue
// was read.
var errQueueMoved = errors.New("jsstore: copy queue: the device's queue changed during the copy")

// copyQueue is CopyQueue once dst's entries are known; before holds the sequences
// of dst's entries when the call began. src's queue is read first; dst's,
// the copy and its guard go in one exclusive job of the pipeline, so that
// no commit of this frontend's is in flight to trip the guard, and the
// window for another frontend's is a read or two.
func (s *Store) copyQueue(src, dst string, before map[uint64]bool) error {
	from, err := s.entries(src)
	if err != nil {
		return err
	}
	var cur []queued
	var copied int
	result := make(chan error, 1)
	j := &job{done: func(_ []store.Receipt, err error) { result <- err }}
	j.exclusive = func() error {
		var err error
		cur, copied, err = s.writeCopy(dst, from, before)
		return err
	}
	if err := s.enqueue(j); err != nil {
		return err
	}
	if err := <-result; err != nil {
		return err
	}
	for _, q := range cur {
		if err := s.deleteSeq(q.seq, false); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return err
		}
		if err := s.deleteSeq(uint64(int64(q.seq)+q.refOff), false); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return err
		}
		if err := s.reclaim(q.id); err != nil {
			return err
		}
	}
	s.forgetBytes(dst)
	if copied > 0 {
		s.wake([]string{dst})
	}
	s.log.Info("jsstore copied queue", "entries", copied, "replaced", len(cur))
	return nil
}

// writeCopy reads dst's queue (cur) and writes, guarded, its new queue: from
// (src's, but secret entries) and what reached dst during the call, in id
// order. A refused copy is taken back, and the next attempt reads on from
// where the last look stopped. The caller deletes cur once the copy is
// written.
func (s *Store) writeCopy(dst string, from []queued, before map[uint64]bool) (cur []queued, copied int, err error) {
	inSrc := make(map[store.ID]bool, len(from))
	var base []queued
	for _, q := range from {
		inSrc[q.id] = true
		if !q.secret {
			base = append(base, q)
		}
	}
	v := &queueView{read: map[store.Priority]uint64{store.High: s.floor(dst, store.High) - 1, store.Normal: s.floor(dst, store.Normal) - 1},
		byPrio: map[store.Priority][]queued{}}
	for attempt := 1; ; attempt++ {
		last, err := s.steadyEntries(dst, v)
		if err != nil {
			return nil, 0, err
		}
		cur = append(slices.Clone(v.byPrio[store.High]), v.byPrio[store.Normal]...)
		batch := slices.Clone(base)
		for _, q := range cur {
			if !before[q.seq] && !inSrc[q.id] {
				batch = append(batch, q) // reached dst, and src too, during the call
			}
		}
		slices.SortStableFunc(batch, func(a, b queued) int { return cmp.Compare(a.id, b.id) })
		err = s.writeBatches(dst, batch, last)
		if err == nil {
			return cur, len(batch), nil
		}
		if !errors.Is(err, errQueueMoved) || attempt == copyAttempts {
			return nil, 0, err
		}
		s.log.Debug("jsstore copy queue: an entry reached the copy's device meanwhile, copying again", "attempt", attempt)
		// A pause of 1–4 ms, so that the attempts do not keep step with a
		// steady stream of commits. This frontend's commits wait for it
		// (the copy holds the pipeline), which is why it is short.
		time.Sleep(time.Millisecond + rand.N(3*time.Millisecond))
	}
}

// writeBatches writes batch as dst's entries, in batches the server's
// limit holds, each guarded by dst's queue subjects' last sequences. A
// refused batch takes back the ones before it.
func (s *Store) writeBatches(dst string, batch []queued, last map[store.Priority]uint64) error {
	last = maps.Clone(last)
	var written []queued                 // the copy's entries so far, at their new sequences
	per := max(1, (s.opts.MaxBatch-1)/2) // an entry and its ref each
	for rest := batch; len(rest) > 0; {
		n := min(per, len(rest))
		got, err := s.copyBatch(dst, rest[:n], last)
		if err != nil {
			if errors.Is(err, errQueueMoved) {
				s.unwrite(written)
			}
			return err
		}
		written = append(written, got...)
		for _, q := range got {
			last[q.prio] = max(last[q.prio], q.seq)
		}
		rest = rest[n:]
	}
	return nil
}

// queueView is what steadyEntries has read of a queue: the entries of
// each priority, and the last sequence read of each.
type queueView struct {
	byPrio map[store.Priority][]queued
	read   map[store.Priority]uint64
}

// steadyEntries reads on in dev's queue from where v stopped, and then the
// last sequence of each of its queue subjects, until the two agree: last
// then guards exactly the entries read, and the time from the last look to
// the copy's batch, its window for a commit to slip in, is one read
// whatever the queue's length. A queue that never holds still gives
// errQueueMoved.
func (s *Store) steadyEntries(dev string, v *queueView) (map[store.Priority]uint64, error) {
	for range steadyReads {
		for _, prio := range []store.Priority{store.High, store.Normal} {
			var err error
			v.read[prio], err = s.readOn(dev, prio, v.read[prio], func(q queued) { v.byPrio[prio] = append(v.byPrio[prio], q) })
			if err != nil {
				return nil, err
			}
		}
		last, err := s.lastSeqs(dev)
		if err != nil {
			return nil, err
		}
		// Read up to each subject's last entry (or past it: a floor is
		// above a subject left empty, whose last is 0).
		if last[store.High] <= v.read[store.High] && last[store.Normal] <= v.read[store.Normal] {
			return last, nil
		}
	}
	return nil, errQueueMoved
}

// steadyReads bounds steadyEntries' looks.
const steadyReads = 8

// lastSeqs reads the last sequence of each of dev's queue subjects (0 for
// none), both at once.
func (s *Store) lastSeqs(dev string) (map[store.Priority]uint64, error) {
	type result struct {
		prio store.Priority
		seq  uint64
		err  error
	}
	out := make(chan result, 2)
	for _, prio := range []store.Priority{store.High, store.Normal} {
		go func() {
			ctx, cancel := s.ctx()
			defer cancel()
			m, err := s.stream.GetLastMsgForSubject(ctx, s.queueSubj(dev, prio))
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
				out <- result{prio, 0, nil}
			case err != nil:
				out <- result{prio, 0, fmt.Errorf("jsstore: read queue: %w", err)}
			default:
				out <- result{prio, m.Sequence, nil}
			}
		}()
	}
	last := make(map[store.Priority]uint64, 2)
	var errs []error
	for range 2 {
		r := <-out
		last[r.prio] = r.seq
		errs = append(errs, r.err)
	}
	return last, errors.Join(errs...)
}

// copyBatch publishes entries and refs for dst as one atomic batch, from
// an exclusive job (sendAlone), guarded by last (dst's queue subjects'
// last sequences), and returns the entries as written, at their
// sequences. errQueueMoved when the stream refused the guard.
func (s *Store) copyBatch(dst string, qs []queued, last map[store.Priority]uint64) ([]queued, error) {
	msgs := make([]*nats.Msg, 0, 2*len(qs))
	for _, q := range qs {
		e := q.entry
		e.refOff = 1
		msgs = append(msgs,
			&nats.Msg{Subject: s.queueSubj(dst, q.prio), Data: e.marshal(), Header: nats.Header{}},
			&nats.Msg{Subject: s.refSubj(q.id, dst), Header: nats.Header{}})
	}
	// The guard of the first entry's subject rides on the entry; the other
	// subject's on the first ref, before the batch writes that subject.
	first := qs[0].prio
	other := store.Normal
	if first == store.Normal {
		other = store.High
	}
	msgs[0].Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last[first], 10))
	msgs[1].Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last[other], 10))
	msgs[1].Header.Set(expectedLastSubjSeqSubjHeader, s.queueSubj(dst, other))
	seq, err := s.sendAlone(msgs)
	if err != nil {
		var api *jetstream.APIError
		if errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return nil, fmt.Errorf("%w: %w", errQueueMoved, err)
		}
		return nil, fmt.Errorf("jsstore: copy queue: %w", err)
	}
	// The batch's messages took consecutive sequences ending at seq: the
	// entries are its even ones.
	out := make([]queued, len(qs))
	base := seq - uint64(len(msgs)) + 1
	for i, q := range qs {
		q.seq = base + uint64(2*i)
		q.refOff = 1
		out[i] = q
	}
	return out, nil
}

// expectedLastSubjSeqSubjHeader names the subject a batch message's
// Nats-Expected-Last-Subject-Sequence is about, when not its own (NATS
// 2.11; nats.go has no constant for it).
const expectedLastSubjSeqSubjHeader = "Nats-Expected-Last-Subject-Sequence-Subject"

// unwrite deletes a refused copy's entries and refs written by its earlier
// batches. Best effort: a leftover is an entry doubled in the new device's
// queue, which its next copy attempt replaces (it is dst's "old" then).
func (s *Store) unwrite(qs []queued) {
	for _, q := range qs {
		if err := s.deleteSeq(q.seq, false); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.Warn("jsstore copy queue: taking back a refused copy's entry failed", "err", err)
		}
		if err := s.deleteSeq(q.seq+1, false); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.Warn("jsstore copy queue: taking back a refused copy's ref failed", "err", err)
		}
	}
}

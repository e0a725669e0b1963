package store

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"mnm/durable"
)

// numPrio is the number of priorities; queues keep one list per priority.
const numPrio = High + 1

// segment is one file of the log.
type segment struct {
	seq  uint64
	path string
	// f is set before any record in the segment becomes visible and cleared
	// (closed) only when the segment is removed or the store closed and no
	// reader holds it.
	f durable.File

	// pins counts drafts whose first chunk is here: their data is not yet
	// referenced by a live message but will be, so the segment must stay.
	pins atomic.Int32

	// Guarded by Log.mu.
	size      int64   // bytes written to the file
	live      int     // references from live blobs: records and chunks
	liveBytes int64   // bytes of those references
	blobs     []*blob // blobs with bytes here, for compaction; may hold dead ones
	dead      int     // blobs in the list that died since it was last pruned
	readers   int     // WriteTo calls and copies reading the file
	removed   bool    // unlinked; close f when readers reaches zero

	// Guarded by Log.pendMu, while the segment is the head: the device
	// sets defined in it (record.go), by hash, and the octets of their
	// definitions. Dropped when the next segment becomes the head.
	devSets     map[setHash]struct{}
	devSetBytes int

	// Writer goroutine only.
	syncs uint32 // fsyncs completed: the epoch of frames written now
}

// pruneAt is the least number of dead blobs for which a segment's list is
// pruned; pruning when half the list is dead keeps the cost amortised O(1)
// and the dead blobs' memory at most that of the live ones.
const pruneAt = 64

// pruneBlobs drops dead blobs from s.blobs. Log.mu must be held.
func (s *segment) pruneBlobs() {
	live := s.blobs[:0]
	for _, b := range s.blobs {
		if b.live > 0 {
			live = append(live, b)
		}
	}
	clear(s.blobs[len(live):])
	s.blobs = live
	s.dead = 0
}

func newSegment(dir string, seq uint64) *segment {
	return &segment{seq: seq, path: filepath.Join(dir, segName(seq))}
}

const (
	segPrefix = "seg-"
	segSuffix = ".log"
)

func segName(seq uint64) string { return fmt.Sprintf("%s%016x%s", segPrefix, seq, segSuffix) }

// parseSegName returns the seq of a segment file name.
func parseSegName(name string) (uint64, bool) {
	hex, ok := strings.CutPrefix(name, segPrefix)
	if !ok {
		return 0, false
	}
	if hex, ok = strings.CutSuffix(hex, segSuffix); !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(hex, 16, 64)
	return seq, err == nil && segName(seq) == name
}

// blob is the stored data of one commit or copy record: the record (holding
// envelopes and the inline tail) and the chunk records before it. It is shared
// by the messages of the record and lives while any of them does.
//
// There is one per commit, so it is kept small: offsets within the record are
// 32 bits (a frame is at most maxPayload long).
type blob struct {
	seg     *segment // holds the record
	chunks  []chunk  // data before the tail, in order
	recOff  int64    // file offset of the record's frame
	first   ID       // the record's messages are first, first+1, …
	recLen  uint32   // frame length
	tailRel uint32   // offset of the inline tail from recOff
	tailLen uint32
	count   uint32
	live    int32 // live messages using it; guarded by Log.mu
	missing bool  // recovery: a chunk's segment was deleted (fine unless a message still lives)
}

// segments appends to dst each distinct segment b has bytes in.
func (b *blob) segments(dst []*segment) []*segment {
	add := func(s *segment) {
		if s != nil && !slices.Contains(dst, s) {
			dst = append(dst, s)
		}
	}
	add(b.seg)
	for _, c := range b.chunks {
		add(c.seg)
	}
	return dst
}

// pieces calls fn for each stretch of file holding data range [off, off+n)
// of b, in order.
func (b *blob) pieces(off, n int64, fn func(f durable.File, at, n int64) error) error {
	end := off + n
	pos := int64(0)
	for _, c := range b.chunks {
		if pos >= end {
			return nil
		}
		if lo, hi := max(off, pos), min(end, pos+c.n); lo < hi {
			if err := fn(c.seg.f, c.off+lo-pos, hi-lo); err != nil {
				return err
			}
		}
		pos += c.n
	}
	if lo, hi := max(off, pos), min(end, pos+int64(b.tailLen)); lo < hi {
		return fn(b.seg.f, b.recOff+int64(b.tailRel)+lo-pos, hi-lo)
	}
	return nil
}

// message is a stored message with at least one queue entry. There may be
// millions, so it is kept small.
type message struct {
	blob   *blob
	off, n int64  // data range within the blob
	envRel uint32 // offset of the envelope from blob.recOff
	envLen uint32
	refs   int32 // queue entries
	prio   Priority
	secret bool  // Message.Secret: never copied to another queue, scrubbed once dead
	at     int64 // queued at, Unix nanoseconds (Backlog)
}

// idQueue is one priority's entries of a device queue, in id order, as a
// slice consumed from the front.
type idQueue struct {
	ids  []ID
	head int // ids[:head] are gone
}

// shrinkAt is the number of consumed entries at which an idQueue moves its
// live entries down, so that a long-lived queue does not grow without bound
// while copying stays amortised O(1) per entry.
const shrinkAt = 1024

func (q *idQueue) len() int    { return len(q.ids) - q.head }
func (q *idQueue) slice() []ID { return q.ids[q.head:] }

func (q *idQueue) front() (ID, bool) {
	if q.head == len(q.ids) {
		return 0, false
	}
	return q.ids[q.head], true
}

// push adds id. New messages have the highest ids yet, so this appends; the
// sorted insert is there so that order holds whatever happens.
func (q *idQueue) push(id ID) {
	if n := len(q.ids); n == q.head || q.ids[n-1] < id {
		q.ids = append(q.ids, id)
		return
	}
	i, found := slices.BinarySearch(q.slice(), id)
	if !found {
		q.ids = slices.Insert(q.ids, q.head+i, id)
	}
}

func (q *idQueue) remove(id ID) bool {
	if q.head == len(q.ids) {
		return false
	}
	if q.ids[q.head] == id {
		q.head++
		q.shrink()
		return true
	}
	i, found := slices.BinarySearch(q.slice(), id)
	if !found {
		return false
	}
	q.ids = slices.Delete(q.ids, q.head+i, q.head+i+1)
	return true
}

func (q *idQueue) shrink() {
	switch {
	case q.head == len(q.ids):
		if cap(q.ids) > shrinkAt {
			q.ids = nil
		} else {
			q.ids = q.ids[:0]
		}
		q.head = 0
	case q.head >= shrinkAt && 2*q.head >= len(q.ids):
		n := copy(q.ids, q.ids[q.head:])
		q.ids = q.ids[:n]
		q.head = 0
	}
}

// devQueue is a device's queue and watcher.
type devQueue struct {
	prio  [numPrio]idQueue
	watch func()
	stamp uint64 // the last batch that added entries, to notify once per batch
	bytes int64  // sizes of the messages referenced (queuebytes.go)
}

func (d *devQueue) head() (ID, bool) {
	for p := int(numPrio) - 1; p >= 0; p-- {
		if id, ok := d.prio[p].front(); ok {
			return id, true
		}
	}
	return 0, false
}

func (d *devQueue) len() int {
	n := 0
	for p := range d.prio {
		n += d.prio[p].len()
	}
	return n
}

// ids returns all entries in delivery order.
func (d *devQueue) ids() []ID {
	var ids []ID
	for p := int(numPrio) - 1; p >= 0; p-- {
		ids = append(ids, d.prio[p].slice()...)
	}
	return ids
}

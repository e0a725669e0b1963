package store

import (
	"cmp"
	"slices"
	"time"
)

// Backlog is the store's summary for monitoring: what waits in device
// queues, and what the log takes on disk.
type Backlog struct {
	Messages   int64     // queue entries, over all devices
	Bytes      int64     // their messages' sizes, a message counted once per queue
	Devices    int       // devices with at least one entry
	Oldest     time.Time // when the oldest entry was queued; zero when none
	StoreBytes int64     // the log's files
}

// QueueStat is one device's backlog.
type QueueStat struct {
	Dev      string
	Messages int
	Bytes    int64
	Oldest   time.Time // when its oldest entry was queued
}

// Backlog summarises the queues. It looks at every queue, holding the
// index's lock: monitoring calls it every few seconds at most, and a
// hundred thousand queues take about a millisecond.
//
// A message's queue time is the commit that stored it, kept in memory; for
// messages stored before the store was opened it is the opening (the log
// does not record commit times), so after a restart ages count from then.
func (l *Log) Backlog() Backlog {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := Backlog{StoreBytes: l.total}
	var oldest int64
	for _, q := range l.queues {
		n := q.len()
		if n == 0 {
			continue
		}
		b.Messages += int64(n)
		b.Bytes += q.bytes
		b.Devices++
		if at := l.queuedAt(q); oldest == 0 || at < oldest {
			oldest = at
		}
	}
	if oldest != 0 {
		b.Oldest = time.Unix(0, oldest)
	}
	return b
}

// Deepest returns the n device queues holding the most messages, deepest
// first (ties: the older first).
func (l *Log) Deepest(n int) []QueueStat {
	l.mu.Lock()
	out := make([]QueueStat, 0, min(n, len(l.queues)))
	for dev, q := range l.queues {
		if c := q.len(); c > 0 {
			out = append(out, QueueStat{Dev: dev, Messages: c, Bytes: q.bytes, Oldest: time.Unix(0, l.queuedAt(q))})
		}
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b QueueStat) int {
		return cmp.Or(cmp.Compare(b.Messages, a.Messages), a.Oldest.Compare(b.Oldest), cmp.Compare(a.Dev, b.Dev))
	})
	return out[:min(n, len(out))]
}

// queuedAt is when q's oldest entry was queued, in Unix nanoseconds: the
// earliest queue time of the heads of its priorities (each is in id
// order, and ids increase with commit time). mu is held.
func (l *Log) queuedAt(q *devQueue) int64 {
	var at int64
	for p := range q.prio {
		if id, ok := q.prio[p].front(); ok {
			if m := l.msgs[id]; m != nil && (at == 0 || m.at < at) {
				at = m.at
			}
		}
	}
	return at
}

// Writable reports nil when the store takes commits: it has not failed and
// is not closing.
func (l *Log) Writable() error { return l.writable() }

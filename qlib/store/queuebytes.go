package store

// Queue byte accounting. Each device queue keeps the sum of the sizes of the
// messages it references (devQueue.bytes), so that the server can refuse new
// messages for a device whose backlog is too large without walking its
// queue. A message queued for five devices counts once for each: each of
// them holds it until it acks it, and what a device's backlog costs the
// server is what that device keeps alive.
//
// The tally changes with the entries, under Log.mu: where a commit is
// applied (push), where a device acks (remove), where CopyQueue replaces a
// queue, and where recovery builds the queues. Compaction moves a message's
// bytes to another file without changing their size, so it leaves the
// tallies alone.

// size is what one queue entry referencing m costs: its envelope and its
// data, the bytes WriteTo sends.
func (m *message) size() int64 { return int64(m.envLen) + m.n }

// QueueBytes reports the bytes of the messages in dev's queue: for each
// entry, the envelope and data that WriteTo would send.
func (l *Log) QueueBytes(dev string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if q := l.queues[dev]; q != nil {
		return q.bytes
	}
	return 0
}

// recount sets q's tally from its entries. mu must be held (or the index
// not yet shared, as during recovery).
func (l *Log) recount(q *devQueue) {
	q.bytes = 0
	for p := range q.prio {
		for _, id := range q.prio[p].slice() {
			q.bytes += l.msgs[id].size()
		}
	}
}

package testclient

import "sync"

// Verdict classifies a message seen by OrderTracker.Observe.
type Verdict int

// Verdicts.
const (
	InOrder   Verdict = iota // first sight, after every lower sequence number seen so far
	Reordered                // first sight, but a higher sequence number came earlier
	Duplicate                // seen before
)

func (v Verdict) String() string {
	switch v {
	case InOrder:
		return "in order"
	case Reordered:
		return "reordered"
	case Duplicate:
		return "duplicate"
	}
	return "unknown verdict"
}

// OrderTracker checks the messages of many streams as receivers see them. A
// stream is what one receiver (a device) gets from one sender, numbered by
// the sender 0, 1, 2, …; for exact loss accounting every receiver of a
// stream must be meant to get all of it, so name streams accordingly (for
// posts to varying recipients, "sender/recipient" rather than "sender").
//
// Memory per stream is constant while messages arrive in order; a gap costs
// an entry per message received after it until it is filled.
//
// It is safe for concurrent use.
type OrderTracker struct {
	mu sync.Mutex
	// Guarded by mu:
	streams map[streamKey]*stream
	stats   OrderStats
}

type streamKey struct{ receiver, sender string }

// stream is what a receiver has seen of a sender.
type stream struct {
	next  uint64              // every seq below next has been seen
	top   uint64              // one more than the highest seq seen
	above map[uint64]struct{} // seqs seen at or above next+1 (gaps below them)
}

// OrderStats counts what OrderTracker observed.
type OrderStats struct {
	Streams    int    // (receiver, sender) pairs seen
	Received   uint64 // distinct messages
	Reorders   uint64 // distinct messages that came after a higher seq
	Duplicates uint64 // messages seen more than once (each repeat counts)
}

// NewOrderTracker returns an empty tracker.
func NewOrderTracker() *OrderTracker {
	return &OrderTracker{streams: make(map[streamKey]*stream)}
}

// Observe records that receiver got message seq of sender and classifies it.
func (t *OrderTracker) Observe(receiver, sender string, seq uint64) Verdict {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := streamKey{receiver, sender}
	s := t.streams[k]
	if s == nil {
		s = &stream{}
		t.streams[k] = s
		t.stats.Streams++
	}
	if seq < s.next {
		t.stats.Duplicates++
		return Duplicate
	}
	if _, ok := s.above[seq]; ok {
		t.stats.Duplicates++
		return Duplicate
	}
	t.stats.Received++
	v := InOrder
	if seq < s.top {
		v = Reordered
		t.stats.Reorders++
	} else {
		s.top = seq + 1
	}
	if seq == s.next {
		s.next++
		for len(s.above) > 0 {
			if _, ok := s.above[s.next]; !ok {
				break
			}
			delete(s.above, s.next)
			s.next++
		}
	} else {
		if s.above == nil {
			s.above = make(map[uint64]struct{})
		}
		s.above[seq] = struct{}{}
	}
	return v
}

// Stats returns the counts so far.
func (t *OrderTracker) Stats() OrderStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stats
}

// Lost returns how many of the messages 0…sent-1 of sender receiver never got.
func (t *OrderTracker) Lost(receiver, sender string, sent uint64) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[streamKey{receiver, sender}]
	if s == nil {
		return sent
	}
	if sent <= s.next {
		return 0
	}
	lost := sent - s.next
	for seq := range s.above {
		if seq < sent {
			lost--
		}
	}
	return lost
}

// Missing returns up to limit of the lowest sequence numbers below sent that
// receiver never got from sender, for diagnostics.
func (t *OrderTracker) Missing(receiver, sender string, sent uint64, limit int) []uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.streams[streamKey{receiver, sender}]
	var out []uint64
	seq := uint64(0)
	if s != nil {
		seq = s.next
	}
	for ; seq < sent && len(out) < limit; seq++ {
		if s != nil {
			if _, ok := s.above[seq]; ok {
				continue
			}
		}
		out = append(out, seq)
	}
	return out
}

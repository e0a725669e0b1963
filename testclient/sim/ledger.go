package sim

import (
	"time"

	"mnm/testclient"
)

// The ledger: posts in flight, per sender, under the sender's lock (see
// the package comment for what it checks and why it holds no more).

// postState is what the sender knows of a post.
type postState uint8

const (
	postSending postState = iota // sent, ack awaited
	postAcked                    // acked with a msgid: on stable storage, owed to its recipients
	postUnknown                  // no ack came: maybe stored, maybe not
	postRefused                  // refused by the server: nothing stored
)

// post is a post in the ledger.
type post struct {
	sent  time.Time
	size  int
	state postState
	left  int // recipients that have not received it
	to    []delivery
}

// delivery is a post's recipient. There is one per recipient of every
// post in flight, so it is kept to 16 octets (fields ordered for packing).
type delivery struct {
	prev    uint64 // the sender's previous post to this recipient, not yet received when this one was made
	to      int32  // recipient member index
	hasPrev bool   // prev is set
	got     bool   // received
	skipped bool   // a later post of the sender reached the recipient first
}

func (p *post) find(r int32) *delivery {
	for i := range p.to {
		if p.to[i].to == r {
			return &p.to[i]
		}
	}
	return nil
}

// claimSeq returns the number of m's next post.
func (m *member) claimSeq() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	seq := m.next
	m.next++
	return seq
}

// begin records post seq of s to recipients to, before it is sent (a
// recipient may receive it before the sender has its ack). It returns the
// time the post counts as sent.
func (sim *simulation) begin(s *member, seq uint64, to []int32, size int) time.Time {
	p := &post{size: size, left: len(to), to: make([]delivery, len(to))}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range to {
		d := &p.to[i]
		d.to = r
		d.prev, d.hasPrev = s.pending[r]
		s.pending[r] = seq
	}
	p.sent = time.Now()
	s.posts[seq] = p
	return p.sent
}

// settle records the outcome of post seq of s.
func (sim *simulation) settle(s *member, seq uint64, state postState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.posts[seq]
	if p == nil {
		return
	}
	switch state {
	case postRefused:
		// Nothing was stored: as if it had not been posted.
		for i := range p.to {
			d := &p.to[i]
			if s.pending[d.to] != seq {
				continue
			}
			if d.hasPrev {
				s.pending[d.to] = d.prev
			} else {
				delete(s.pending, d.to)
			}
		}
		delete(s.posts, seq)
		return
	case postAcked:
		sim.st.posts.Add(1)
		sim.st.postBytes.Add(uint64(p.size))
		sim.st.owed.Add(int64(p.left))
		for _, d := range p.to {
			if !d.got {
				sim.members[d.to].owed.Add(1)
			}
		}
	case postUnknown:
		sim.st.unacked.Add(1)
	}
	p.state = state
	if p.left == 0 {
		delete(s.posts, seq)
	}
}

// receive checks a delivery to r received at now, and records it.
func (sim *simulation) receive(r *member, f *testclient.Frame, now time.Time) {
	info, err := testclient.CheckPayload(f.Data)
	if err != nil {
		sim.integrity(&sim.st.corrupt, 1, "corrupt delivery", "member", r.idx, "id", f.Str("id"), "err", err)
		return
	}
	from := f.Str("from")
	if info.Sender != from {
		sim.integrity(&sim.st.corrupt, 1, "delivery from one sender carries another's payload",
			"member", r.idx, "id", f.Str("id"), "from", from, "payloadSender", info.Sender)
		return
	}
	s := sim.byUID[from]
	if s == nil {
		sim.integrity(&sim.st.misdelivered, 1, "delivery from a sender that is no member", "member", r.idx, "from", from)
		return
	}
	ri := int32(r.idx)
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.posts[info.Seq]
	if p == nil {
		if info.Seq < s.next {
			// Settled: every recipient had it (or it was refused).
			sim.integrity(&sim.st.duplicates, 1, "delivery of a post every recipient already had",
				"member", r.idx, "sender", s.idx, "seq", info.Seq)
		} else {
			sim.integrity(&sim.st.misdelivered, 1, "delivery of a post never made", "member", r.idx, "sender", s.idx, "seq", info.Seq)
		}
		return
	}
	d := p.find(ri)
	switch {
	case d == nil:
		sim.integrity(&sim.st.misdelivered, 1, "delivery to a member the post does not name",
			"member", r.idx, "sender", s.idx, "seq", info.Seq)
		return
	case d.got:
		sim.integrity(&sim.st.duplicates, 1, "duplicate delivery", "member", r.idx, "sender", s.idx, "seq", info.Seq)
		return
	}
	d.got = true
	p.left--
	sim.st.deliveries.Add(1)
	sim.st.deliveryBytes.Add(uint64(len(f.Data)))
	// From the post, or from the recipient's login if that came later: the
	// time a member spent offline measures the member, not the server.
	start := p.sent
	if since := r.onlineSince.Load(); since > start.UnixNano() {
		start = time.Unix(0, since)
	}
	sim.st.deliveryLatency.Observe(now.Sub(start))
	if d.skipped {
		sim.st.reordered.Add(1) // counted as an integrity error when skipped
	}
	if n := s.markSkipped(ri, d.prev, d.hasPrev); n > 0 {
		sim.integrity(&sim.st.skipped, uint64(n), "delivery overtook earlier posts of its sender",
			"member", r.idx, "sender", s.idx, "seq", info.Seq, "overtaken", n)
	}
	if s.pending[ri] == info.Seq {
		delete(s.pending, ri)
	}
	if p.state == postAcked {
		// Decrement, then look at final: whoever sets final looks at the
		// counts after, so one of the two sees the zero.
		if r.owed.Add(-1) == 0 && sim.final.Load() {
			select {
			case r.wake <- struct{}{}:
			default:
			}
		}
		if sim.st.owed.Add(-1) == 0 && sim.final.Load() {
			sim.markDrained()
		}
	}
	if p.left == 0 && p.state != postSending {
		delete(s.posts, info.Seq)
	}
}

// markSkipped walks back from post prev through the posts of s to r that r
// has not received, and marks the acked ones skipped: they should have come
// before. Posts whose ack never came may never have been stored, so they
// are passed over. It returns how many it newly marked. s.mu is held.
func (s *member) markSkipped(r int32, prev uint64, hasPrev bool) int {
	n := 0
	for hasPrev {
		p := s.posts[prev]
		if p == nil {
			return n // settled: r had it
		}
		d := p.find(r)
		if d == nil || d.got {
			return n
		}
		if p.state == postAcked && !d.skipped {
			d.skipped = true
			n++
		}
		prev, hasPrev = d.prev, d.hasPrev
	}
	return n
}

// unsettled counts, at the end, the acked deliveries never received: lost
// if a later post of the same sender reached the recipient, else in flight.
func (sim *simulation) unsettled() (lost, inFlight uint64) {
	for _, s := range sim.members {
		s.mu.Lock()
		for seq, p := range s.posts {
			if p.state != postAcked {
				continue
			}
			for _, d := range p.to {
				switch {
				case d.got:
				case d.skipped:
					lost++
					if sim.st.loggedIntegrity.Add(1) <= maxLogged {
						sim.log.Error("lost delivery", "member", d.to, "sender", s.idx, "seq", seq)
					}
				default:
					inFlight++
				}
			}
		}
		s.mu.Unlock()
	}
	return lost, inFlight
}

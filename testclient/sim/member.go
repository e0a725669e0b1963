package sim

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"mnm/testclient"
)

// Running: the members' sessions, their posts, and the drain.

// run starts the members, prints status lines until ctx ends or the
// duration passes, then drains and returns the summary.
func (sim *simulation) run(ctx context.Context) Summary {
	defer sim.abortCancel()
	first := sim.counts()
	start := first.at
	var posting, all sync.WaitGroup
	for _, m := range sim.members {
		posting.Add(1)
		all.Go(func() { sim.runMember(m, &posting) })
	}
	statusStop, statusDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(statusDone)
		sim.status(first, statusStop)
	}()

	var timeout <-chan time.Time
	if sim.cfg.Duration > 0 {
		t := time.NewTimer(sim.cfg.Duration)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ctx.Done():
	case <-timeout:
	}
	last := sim.counts()
	stopped := last.at
	bound := time.AfterFunc(sim.cfg.Drain, sim.abortCancel)
	defer bound.Stop()
	sim.stopCycle()
	sim.printf("sim: stopping: no new posts; waiting up to %s for deliveries in flight\n", sim.cfg.Drain)

	postingDone := make(chan struct{})
	go func() {
		posting.Wait()
		close(postingDone)
	}()
	select {
	case <-postingDone:
	case <-sim.abort.Done():
	}
	sim.final.Store(true)
	close(sim.finalSet)
	if sim.st.owed.Load() == 0 {
		sim.markDrained()
	}
	drained := false
	select {
	case <-sim.drained:
		drained = true
	case <-sim.abort.Done():
	}
	close(sim.drainDone)
	sim.abortCancel() // no member waits for anything any more: logins, slots
	all.Wait()
	close(statusStop)
	<-statusDone
	sum := sim.summary()
	sum.Traffic, sum.Drain, sum.Drained = stopped.Sub(start), time.Since(stopped), drained
	sum.TrafficPosts, sum.TrafficDeliveries, sum.TrafficDeliveryBytes = last.posts, last.deliveries, last.deliveryBytes
	sum.TrafficDeliveryP50, _ = last.delivery.Quantile(0.5)
	sum.TrafficDeliveryP99, _ = last.delivery.Quantile(0.99)
	sum.SelfCPU = last.selfCPU - first.selfCPU
	if first.procOK && last.procOK {
		sum.CPU = last.proc.CPU - first.proc.CPU
	}
	return sum
}

// markDrained records that every acked delivery has arrived after posting
// ended.
func (sim *simulation) markDrained() {
	sim.drainedOnce.Do(func() { close(sim.drained) })
}

// runMember runs one member: sessions until the cycle ends, then the drain.
func (sim *simulation) runMember(m *member, posting *sync.WaitGroup) {
	rng := rand.New(rand.NewPCG(sim.cfg.Seed, uint64(m.idx)))
	var l *link
	for sim.pause(rng) {
		if l = sim.login(m, sim.cycle); l == nil {
			continue
		}
		sim.session(l, rng)
		if sim.cycle.Err() != nil {
			break // stay logged in for the drain
		}
		if sim.alive(l) {
			sim.logout(l)
		}
		l = nil
	}
	posting.Done()
	sim.drainMember(m, l)
}

// pause waits a random 1–30 s (scaled), or until the cycle ends; it reports
// whether the cycle goes on.
func (sim *simulation) pause(rng *rand.Rand) bool {
	d := pauseMin + time.Duration(rng.Int64N(int64(pauseMax-pauseMin+1)))
	t := time.NewTimer(sim.scale(d))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-sim.cycle.Done():
		return false
	}
}

// link is a logged-in member's link.
//
// Lock order. The simulation has three mutexes, and only these two nest:
//
//	link.mu → member.mu
//
// onMessage holds the receiving link's mu while it acks a delivery and
// records it in the sender's part of the ledger (receive takes the
// sender's member.mu). Nothing that holds a member.mu takes a link.mu or
// another member's mu: settle and receive change other members' counts
// through atomics only, and unsettled takes each member's mu in turn. The
// third, lockedWriter.mu, is a leaf: nothing is locked while printing. The
// Client's own locks are taken under link.mu (by Ack) but never held
// while calling back into the simulation.
type link struct {
	sim   *simulation
	m     *member
	c     *testclient.Client // set once login succeeds, before ready is closed
	ready chan struct{}      // closed when c is set
	end   sync.Once          // runs ended's accounting once

	// mu orders acks before Quit: a message is acked and recorded, or
	// neither, so the server redelivers exactly what the ledger lacks.
	mu sync.Mutex
	// Guarded by mu:
	quitting bool
}

// login logs m in, retrying until ctx ends; nil if it did not succeed.
func (sim *simulation) login(m *member, ctx context.Context) *link {
	if !sim.acquire(ctx) {
		return nil
	}
	l := &link{sim: sim, m: m, ready: make(chan struct{})}
	o := sim.options()
	o.OnMessage = l.onMessage
	o.OnOther = func(*testclient.Frame) {} // presence notices, stray acks
	addr, o := sim.dial(m, o)
	c, _, err := testclient.LoginRetry(ctx, addr, m.uid, m.nodeid, o)
	if err != nil {
		sim.release()
		if ctx.Err() == nil {
			sim.fail("login failed", "member", m.idx, "err", err)
		}
		return nil
	}
	l.c = c
	m.onlineSince.Store(time.Now().UnixNano()) // before any message is handled
	close(l.ready)
	sim.st.online.Add(1)
	sim.st.logins.Add(1)
	return l
}

// onMessage handles a stored message on the link's reader goroutine: ack,
// then check deliveries.
func (l *link) onMessage(f *testclient.Frame) {
	<-l.ready
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.quitting {
		return
	}
	// Acked first, so the server can send the next while this one is
	// checked. If the ack cannot be written the link is failing: the server
	// keeps the message and sends it again, so it is not recorded.
	if err := l.c.Ack(f.Str("id")); err != nil {
		return
	}
	if f.Op() != "delivery" {
		return // login notices, member notices, invitations
	}
	if l.sim.cfg.Tamper != nil {
		l.sim.cfg.Tamper(f)
	}
	l.sim.receive(l.m, f, time.Now())
}

// alive reports whether the link is up, and accounts for its end if not.
func (sim *simulation) alive(l *link) bool {
	select {
	case <-l.c.Done():
		sim.ended(l, l.c.Err())
		return false
	default:
		return true
	}
}

// logout quits the link; messages arriving meanwhile are neither acked nor
// recorded.
func (sim *simulation) logout(l *link) {
	l.mu.Lock()
	l.quitting = true
	l.mu.Unlock()
	sim.ended(l, l.c.Quit())
}

// ended accounts once for the end of a link: err is why it ended (nil for
// a clean logout).
func (sim *simulation) ended(l *link, err error) {
	l.end.Do(func() {
		l.m.onlineSince.Store(0)
		sim.st.online.Add(-1)
		sim.release()
		switch {
		case err == nil, errors.Is(err, testclient.ErrClosed):
		case errors.Is(err, testclient.ErrProtocol):
			sim.integrity(&sim.st.corrupt, 1, "link ended: the server broke the protocol", "member", l.m.idx, "err", err)
		default:
			sim.fail("link ended", "member", l.m.idx, "err", err)
		}
	})
}

// postKind is the addressing of a post.
type postKind uint8

const (
	postDirect      postKind = iota // to directTo random other members
	postGroup                       // ToGroup: the group, sender included
	postGroupOthers                 // ToGroupOthers: the group, sender excluded
)

// sessionPlan is the kinds of a session's posts in random order.
func sessionPlan(rng *rand.Rand) []postKind {
	plan := make([]postKind, directPosts, directPosts+2)
	plan = append(plan, postGroup, postGroupOthers)
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	return plan
}

// session makes the session's posts, each after a pause; it ends early if
// the cycle ends or the link fails.
func (sim *simulation) session(l *link, rng *rand.Rand) {
	for _, k := range sessionPlan(rng) {
		if !sim.pause(rng) || !sim.alive(l) || !sim.send(l, k, rng) {
			return
		}
	}
}

// directRecipients picks directTo distinct members other than self (all
// the others when there are fewer).
func directRecipients(self, n int, rng *rand.Rand) []int32 {
	k := min(directTo, n-1)
	out := make([]int32, 0, k)
	for len(out) < k {
		r := int32(rng.IntN(n - 1))
		if r >= int32(self) {
			r++
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// postSize draws a post size: log-uniform from sizeSplit to sizeMax
// with probability sizeLargeShare, else from sizeMin to sizeSplit.
func postSize(rng *rand.Rand) int {
	lo, hi := float64(sizeMin), float64(sizeSplit)
	if rng.Float64() < sizeLargeShare {
		lo, hi = sizeSplit, sizeMax
	}
	return int(math.Round(logUniform(rng, lo, hi)))
}

// logUniform draws x from [lo, hi] such that ln x is uniform.
func logUniform(rng *rand.Rand, lo, hi float64) float64 {
	a, b := math.Log(lo), math.Log(hi)
	return math.Exp(a + rng.Float64()*(b-a))
}

// send makes one post and waits for its ack; it reports whether the link is
// still usable.
func (sim *simulation) send(l *link, k postKind, rng *rand.Rand) bool {
	m := l.m
	var to []int32
	var list []testclient.Recipient
	switch k {
	case postDirect:
		to = directRecipients(m.idx, len(sim.members), rng)
		for _, r := range to {
			list = append(list, testclient.Recipient{ID: sim.members[r].uid, Type: testclient.ToUser})
		}
	case postGroup, postGroupOthers:
		typ := testclient.ToGroup
		if k == postGroupOthers {
			typ = testclient.ToGroupOthers
		}
		list = []testclient.Recipient{{ID: m.group.gid, Type: typ}}
		for i := m.group.lo; i < m.group.hi; i++ {
			if i != m.idx || k == postGroup {
				to = append(to, int32(i))
			}
		}
	}
	seq := m.claimSeq()
	data := testclient.MakePayload(seq, m.uid, postSize(rng), rng)
	sent := sim.begin(m, seq, to, len(data))
	ch, err := l.c.PostAsync(list, data)
	if err != nil {
		sim.settle(m, seq, postUnknown)
		sim.fail("post not sent", "member", m.idx, "err", err)
		return false
	}
	t := time.NewTimer(ackTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		switch {
		case r.Err != nil:
			sim.settle(m, seq, postUnknown)
			sim.fail("post not acked", "member", m.idx, "err", r.Err)
			return false
		case r.Ack.Error != "":
			sim.settle(m, seq, postRefused)
			sim.fail("post refused", "member", m.idx, "error", r.Ack.Error)
			return true
		case r.Ack.MsgID == "":
			sim.settle(m, seq, postUnknown)
			sim.fail("post acked without msgid", "member", m.idx)
			return true
		}
		sim.st.ackLatency.Observe(time.Since(sent))
		sim.settle(m, seq, postAcked)
		return true
	case <-t.C:
		sim.settle(m, seq, postUnknown)
		sim.fail("post ack timed out; closing the link", "member", m.idx, "after", ackTimeout)
		l.c.Close()
		return false
	case <-sim.abort.Done():
		sim.settle(m, seq, postUnknown)
		return false
	}
}

// drainMember keeps m online, once posting has ended everywhere, until it
// has every acked delivery owed to it or the drain is over, logging in again
// if needed; then it logs out. A member owed nothing leaves at once, freeing
// its slot for one that is.
func (sim *simulation) drainMember(m *member, l *link) {
	select {
	case <-sim.finalSet:
	case <-sim.drainDone:
	}
	for m.owed.Load() > 0 {
		if l == nil || !sim.alive(l) {
			if l = sim.login(m, sim.abort); l == nil {
				return
			}
		}
		select {
		case <-m.wake:
		case <-l.c.Done(): // accounted for by alive, then log in again
		case <-sim.drainDone:
			sim.logout(l)
			return
		}
	}
	if l != nil && sim.alive(l) {
		sim.logout(l)
	}
}

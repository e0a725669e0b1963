package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"mnm/testclient"
	"mnm/testclient/proc"
)

// These tests drive the simulation's ledger directly, without links: a
// post is begun and settled as a member would, and deliveries are handed to
// receive as a link would. Run against a real server is tested in package
// main (sim_test.go), where the server lives.

// newTestSim returns a simulation of n members with made-up uids.
func newTestSim(t *testing.T, n int) *simulation {
	t.Helper()
	cfg, err := Config{Frontends: []Frontend{{Addr: "127.0.0.1:1"}}, Members: n, Seed: 1}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	sim := newSimulation(cfg, io.Discard)
	for _, m := range sim.members {
		m.uid = fmt.Sprintf("uid-of-member-%d", m.idx)
		sim.byUID[m.uid] = m
	}
	return sim
}

// post begins a post of s to the members to and settles it with state
// (postSending leaves it unsettled); it returns the post's seq.
func (sim *simulation) testPost(s *member, state postState, to ...int32) uint64 {
	seq := s.claimSeq()
	sim.begin(s, seq, to, 100)
	if state != postSending {
		sim.settle(s, seq, state)
	}
	return seq
}

// deliveryOf is the frame that carries post seq of s.
func deliveryOf(s *member, seq uint64) *testclient.Frame {
	return &testclient.Frame{
		Head: map[string]any{"op": "delivery", "from": s.uid, "id": "0000000000000001"},
		Data: testclient.MakePayload(seq, s.uid, 100, nil),
	}
}

// tally is the counters that tests check.
type tally struct {
	deliveries, corrupt, duplicates, misdelivered, skipped, reordered uint64
	owed                                                              int64
}

func (sim *simulation) tally() tally {
	st := &sim.st
	return tally{
		deliveries: st.deliveries.Load(), corrupt: st.corrupt.Load(), duplicates: st.duplicates.Load(),
		misdelivered: st.misdelivered.Load(), skipped: st.skipped.Load(), reordered: st.reordered.Load(),
		owed: st.owed.Load(),
	}
}

func TestLedgerChecks(t *testing.T) {
	sim := newTestSim(t, 3)
	a, b, c := sim.members[0], sim.members[1], sim.members[2]
	now := time.Now()
	steps := []struct {
		name string
		do   func()
		want tally
	}{
		{"delivery before the ack", func() {
			seq := sim.testPost(a, postSending, 1, 2)
			sim.receive(b, deliveryOf(a, seq), now)
		}, tally{deliveries: 1}},
		{"ack: c is owed it", func() { sim.settle(a, 0, postAcked) }, tally{deliveries: 1, owed: 1}},
		{"c receives it", func() { sim.receive(c, deliveryOf(a, 0), now) }, tally{deliveries: 2}},
		{"again after every recipient had it", func() { sim.receive(b, deliveryOf(a, 0), now) },
			tally{deliveries: 2, duplicates: 1}},
		{"twice while others still wait", func() {
			seq := sim.testPost(a, postAcked, 1, 2)
			sim.receive(b, deliveryOf(a, seq), now)
			sim.receive(b, deliveryOf(a, seq), now)
		}, tally{deliveries: 3, duplicates: 2, owed: 1}},
		{"to a member the post does not name", func() {
			seq := sim.testPost(a, postAcked, 1)
			sim.receive(c, deliveryOf(a, seq), now)
		}, tally{deliveries: 3, duplicates: 2, misdelivered: 1, owed: 2}},
		{"a post never made", func() { sim.receive(c, deliveryOf(a, 99), now) },
			tally{deliveries: 3, duplicates: 2, misdelivered: 2, owed: 2}},
		{"a changed octet", func() {
			f := deliveryOf(a, 1)
			f.Data[len(f.Data)-1] ^= 1
			sim.receive(c, f, now)
		}, tally{deliveries: 3, duplicates: 2, misdelivered: 2, corrupt: 1, owed: 2}},
		{"from another sender than the payload's", func() {
			f := deliveryOf(a, 1)
			f.Head["from"] = b.uid
			sim.receive(c, f, now)
		}, tally{deliveries: 3, duplicates: 2, misdelivered: 2, corrupt: 2, owed: 2}},
		{"truncated", func() {
			f := deliveryOf(a, 1)
			f.Data = f.Data[:50]
			sim.receive(c, f, now)
		}, tally{deliveries: 3, duplicates: 2, misdelivered: 2, corrupt: 3, owed: 2}},
		{"from no member", func() {
			f := &testclient.Frame{Head: map[string]any{"op": "delivery", "from": "stranger"}, Data: testclient.MakePayload(0, "stranger", 100, nil)}
			sim.receive(c, f, now)
		}, tally{deliveries: 3, duplicates: 2, misdelivered: 3, corrupt: 3, owed: 2}},
	}
	// The steps build on each other: after a failed one, the rest would
	// only repeat its error.
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			s.do()
			if got := sim.tally(); got != s.want {
				t.Fatalf("%+v, want %+v", got, s.want)
			}
		})
		if !ok {
			return
		}
	}
	if sim.st.skipped.Load() != 0 {
		t.Error("order errors where there were none")
	}
}

func TestLedgerOrder(t *testing.T) {
	sim := newTestSim(t, 2)
	a, b := sim.members[0], sim.members[1]
	now := time.Now()
	q := sim.testPost(a, postAcked, 1)
	sim.testPost(a, postAcked, 1) // never delivered
	h := sim.testPost(a, postAcked, 1)
	sim.receive(b, deliveryOf(a, h), now)
	if got := sim.tally(); got != (tally{deliveries: 1, skipped: 2, owed: 2}) {
		t.Fatalf("h before q and g: %+v", got)
	}
	sim.receive(b, deliveryOf(a, q), now)
	if got := sim.tally(); got != (tally{deliveries: 2, skipped: 2, reordered: 1, owed: 1}) {
		t.Fatalf("then q: %+v", got)
	}
	// g never comes: a later post overtook it, so it is lost, not in flight.
	sum := sim.summary()
	if sum.Lost != 1 || sum.Reordered != 1 || sum.InFlight != 0 || sum.IntegrityErrors() != 2 {
		t.Errorf("summary %+v", sum)
	}
}

func TestLedgerInFlight(t *testing.T) {
	sim := newTestSim(t, 2)
	a, b := sim.members[0], sim.members[1]
	seq := sim.testPost(a, postAcked, 1)
	sum := sim.summary()
	if sum.InFlight != 1 || sum.Lost != 0 || sum.IntegrityErrors() != 0 {
		t.Fatalf("an acked post not yet received: %+v", sum)
	}
	sim.final.Store(true)
	select {
	case <-sim.drained:
		t.Fatal("drained with a delivery owed")
	default:
	}
	if got := b.owed.Load(); got != 1 {
		t.Fatalf("b is owed %d, want 1", got)
	}
	sim.receive(b, deliveryOf(a, seq), time.Now())
	select {
	case <-sim.drained:
	default:
		t.Fatal("not drained once the last owed delivery came")
	}
	select {
	case <-b.wake:
	default:
		t.Fatal("b not woken when it had everything owed to it")
	}
	if got := b.owed.Load(); got != 0 {
		t.Errorf("b is owed %d after delivery", got)
	}
	if sum := sim.summary(); sum.InFlight != 0 || len(a.posts) != 0 {
		t.Errorf("after delivery: %+v, %d posts in the ledger", sum, len(a.posts))
	}
}

// TestLedgerUnsettledPosts: a post whose ack never came may or may not
// have been stored, and a refused one was not; neither may be taken for an
// order error, nor be owed.
func TestLedgerUnsettledPosts(t *testing.T) {
	sim := newTestSim(t, 2)
	a, b := sim.members[0], sim.members[1]
	now := time.Now()
	q := sim.testPost(a, postAcked, 1)
	u := sim.testPost(a, postUnknown, 1)
	sim.testPost(a, postRefused, 1)
	h := sim.testPost(a, postAcked, 1)
	if got := sim.tally(); got.owed != 2 {
		t.Fatalf("owed %d, want 2 (q and h)", got.owed)
	}
	// h overtakes u (passed over: maybe never stored) and q (acked: an error).
	sim.receive(b, deliveryOf(a, h), now)
	if got := sim.tally(); got != (tally{deliveries: 1, skipped: 1, owed: 1}) {
		t.Fatalf("h first: %+v", got)
	}
	sim.receive(b, deliveryOf(a, u), now)
	sim.receive(b, deliveryOf(a, q), now)
	if got := sim.tally(); got != (tally{deliveries: 3, skipped: 1, reordered: 1}) {
		t.Fatalf("then u and q: %+v", got)
	}
	if sum := sim.summary(); sum.Unacked != 1 || sum.Lost != 0 || sum.InFlight != 0 || sum.Posts != 2 {
		t.Errorf("summary %+v", sum)
	}
	if len(a.posts) != 0 || len(a.pending) != 0 {
		t.Errorf("ledger not empty: %d posts, %d pending", len(a.posts), len(a.pending))
	}
}

// TestDeliveryLatencyExcludesOffline: a delivery's latency runs from the
// post, or from the recipient's login if that came later.
func TestDeliveryLatencyExcludesOffline(t *testing.T) {
	sim := newTestSim(t, 3)
	a, b, c := sim.members[0], sim.members[1], sim.members[2]
	b.onlineSince.Store(time.Now().Add(-time.Hour).UnixNano())
	seq := sim.testPost(a, postAcked, 1, 2)
	sent := a.posts[seq].sent
	sim.receive(b, deliveryOf(a, seq), sent.Add(40*time.Millisecond))
	login := sent.Add(time.Hour)
	c.onlineSince.Store(login.UnixNano())
	sim.receive(c, deliveryOf(a, seq), login.Add(40*time.Millisecond))
	h := sim.st.deliveryLatency.Counts()
	p0, ok := h.Quantile(0.01)
	p100, _ := h.Quantile(1)
	if !ok || p0 < 36*time.Millisecond || p100 > 44*time.Millisecond {
		t.Errorf("latencies from %v to %v, want both 40ms", p0, p100)
	}
}

func TestPartition(t *testing.T) {
	for _, n := range []int{2, 3, 99, 100, 101, 199, 250, 1000, 10001} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			groups := partition(n, groupMax)
			if want := (n + groupMax - 1) / groupMax; len(groups) != want {
				t.Errorf("%d groups, want %d", len(groups), want)
			}
			lo, smallest, largest := 0, n, 0
			for _, g := range groups {
				if g[0] != lo {
					t.Fatalf("group %v does not start at %d", g, lo)
				}
				size := g[1] - g[0]
				smallest, largest = min(smallest, size), max(largest, size)
				lo = g[1]
			}
			if lo != n || smallest < 2 || largest > groupMax || largest-smallest > 1 {
				t.Errorf("groups %v", groups)
			}
		})
	}
}

func TestSessionPlanAndRecipients(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	plan := sessionPlan(rng)
	count := map[postKind]int{}
	for _, k := range plan {
		count[k]++
	}
	if count[postDirect] != 15 || count[postGroup] != 1 || count[postGroupOthers] != 1 || len(plan) != 17 {
		t.Errorf("plan %v", plan)
	}
	for _, n := range []int{2, 3, 10} {
		for self := range n {
			for range 50 {
				to := directRecipients(self, n, rng)
				want := min(2, n-1)
				if len(to) != want || slices.Contains(to, int32(self)) ||
					slices.ContainsFunc(to, func(r int32) bool { return r < 0 || int(r) >= n }) ||
					(len(to) == 2 && to[0] == to[1]) {
					t.Fatalf("n=%d self=%d: recipients %v", n, self, to)
				}
			}
		}
	}
}

func TestPostSize(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const samples = 100000
	sizes := make([]int, samples)
	large, sum := 0, 0
	for i := range sizes {
		sizes[i] = postSize(rng)
		if sizes[i] < sizeMin || sizes[i] > sizeMax {
			t.Fatalf("size %d out of range", sizes[i])
		}
		if sizes[i] > sizeSplit {
			large++
		}
		sum += sizes[i]
	}
	// The sample mean has a standard error of about 70 octets (1%): the
	// mixture's standard deviation is about 22 KB.
	if mean := float64(sum) / samples; mean < 0.9*sizeMean || mean > 1.1*sizeMean {
		t.Errorf("mean %.0f, want %d ± 10%%", mean, sizeMean)
	}
	if frac := float64(large) / samples; frac < 0.04 || frac > 0.05 {
		t.Errorf("%.4f over %d, want about %v", frac, sizeSplit, sizeLargeShare)
	}
	slices.Sort(sizes)
	// Median m: (1 − 0.045)·ln(m/80)/ln(200) = 0.5, so m ≈ 1282.
	if med := sizes[samples/2]; med < 1150 || med > 1420 {
		t.Errorf("median %d, want about 1282", med)
	}
	if sizes[0] > 100 || sizes[samples-1] < 200000 {
		t.Errorf("sizes from %d to %d, want nearly the whole range", sizes[0], sizes[samples-1])
	}
}

// TestPostSizeMean checks the derivation of sizeLargeShare: the exact
// mean of the mixture is sizeMean.
func TestPostSizeMean(t *testing.T) {
	logUniformMean := func(a, b float64) float64 { return (b - a) / math.Log(b/a) }
	small := logUniformMean(sizeMin, sizeSplit)
	large := logUniformMean(sizeSplit, sizeMax)
	mean := (1-sizeLargeShare)*small + sizeLargeShare*large
	if math.Abs(mean-sizeMean) > 0.01*sizeMean {
		t.Errorf("mixture mean %.0f (small %.0f, large %.0f), want %d", mean, small, large, sizeMean)
	}
}

// TestStatusLine: the status line names whose memory and CPU it shows,
// and turns CPU time into a share of a core over the interval.
func TestStatusLine(t *testing.T) {
	var calls int
	cfg, err := Config{Frontends: oneFrontend(), Members: 2, ProcName: "server+members", Proc: func() (proc.Stats, error) {
		calls++
		return proc.Stats{RSS: 45e6, HWM: 60e6, CPU: time.Duration(calls) * 1500 * time.Millisecond}, nil
	}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	sim := newSimulation(cfg, io.Discard)
	prev := sim.counts()
	cur := sim.counts()
	cur.at = prev.at.Add(5 * time.Second)
	line := sim.statusLine(prev, cur, 5*time.Second)
	if !strings.HasSuffix(line, ", server+members rss 45 MB cpu 30%") {
		t.Errorf("status line %q", line)
	}
	// A process that cannot be read (the server exited) shows nothing.
	cur.procOK = false
	if line := sim.statusLine(prev, cur, 5*time.Second); strings.Contains(line, "rss") {
		t.Errorf("status line without the process: %q", line)
	}
	if sum := sim.summary(); sum.RSS != 45e6 || sum.PeakRSS != 60e6 {
		t.Errorf("summary rss %d, peak %d", sum.RSS, sum.PeakRSS)
	}
	// The default names the server.
	if c, _ := (Config{Frontends: oneFrontend(), Members: 2}).withDefaults(); c.ProcName != "server" {
		t.Errorf("default ProcName %q", c.ProcName)
	}
	if got := cores(3*time.Second, 2*time.Second); got != "150% of a core" {
		t.Errorf("cores: %q", got)
	}
	if got := cores(time.Second, 0); got != "-" {
		t.Errorf("cores over no time: %q", got)
	}
}

// oneFrontend is a site of one server, for configurations that go no
// further than their check.
func oneFrontend() []Frontend { return []Frontend{{Addr: "x:1"}} }

func TestConfig(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"no address", Config{Members: 5}},
		{"empty address", Config{Frontends: []Frontend{{Addr: "x:1"}, {}}, Members: 5}},
		{"address twice", Config{Frontends: []Frontend{{Addr: "x:1"}, {Addr: "x:2"}, {Addr: "x:1"}}, Members: 5}},
		{"one member", Config{Frontends: oneFrontend(), Members: 1}},
		{"negative timescale", Config{Frontends: oneFrontend(), Members: 5, Timescale: -1}},
		{"NaN timescale", Config{Frontends: oneFrontend(), Members: 5, Timescale: math.NaN()}},
		{"negative drain", Config{Frontends: oneFrontend(), Members: 5, Drain: -time.Second}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := c.cfg.withDefaults(); err == nil {
				t.Errorf("%+v accepted", c.cfg)
			}
			if _, err := Run(context.Background(), c.cfg, io.Discard); err == nil {
				t.Errorf("Run ran %+v", c.cfg)
			}
		})
	}
	c, err := Config{Frontends: oneFrontend(), Members: 2}.withDefaults()
	if err != nil || c.Timescale != 1 || c.Interval != DefaultInterval || c.Drain != DefaultDrain || c.Seed == 0 {
		t.Errorf("defaults %+v, %v", c, err)
	}
}

// TestRunSetupFails: a server that cannot be reached fails setup with an
// error, promptly.
func TestRunSetupFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var out strings.Builder
	_, err = Run(context.Background(), Config{Frontends: []Frontend{{Addr: addr}}, Members: 3}, &out)
	if err == nil || !strings.Contains(err.Error(), "register") {
		t.Fatalf("Run against a closed port: %v", err)
	}
}

func TestLinkEnded(t *testing.T) {
	sim := newTestSim(t, 2)
	m := sim.members[0]
	for _, c := range []struct {
		name                 string
		err                  error
		wantErrs, wantIntegr uint64
	}{
		{"logout", nil, 0, 0},
		{"closed", testclient.ErrClosed, 0, 0},
		{"quit by the server", &testclient.QuitError{Reason: "idle"}, 1, 0},
		{"protocol broken", fmt.Errorf("testclient: link ended: %w", fmt.Errorf("%w: bad headsum", testclient.ErrProtocol)), 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &link{sim: sim, m: m}
			m.onlineSince.Store(1)
			sim.st.online.Add(1)
			sim.ended(l, c.err)
			sim.ended(l, errors.New("accounted once"))
			if m.onlineSince.Load() != 0 || sim.st.online.Load() != 0 {
				t.Errorf("%v: still online", c.err)
			}
			if got := sim.st.errors.Load() + sim.st.corrupt.Load(); got != c.wantErrs {
				t.Errorf("%v: %d errors, want %d", c.err, got, c.wantErrs)
			}
			if got := sim.st.corrupt.Load(); got != c.wantIntegr {
				t.Errorf("%v: %d integrity errors, want %d", c.err, got, c.wantIntegr)
			}
			sim.st.errors.Store(0)
			sim.st.corrupt.Store(0)
		})
	}
}

// TestLedgerConcurrent has members post to every other and receive on
// their own goroutines, as links do (run with -race).
func TestLedgerConcurrent(t *testing.T) {
	const members, posts = 8, 200
	sim := newTestSim(t, members)
	var others [members][]int32
	for i := range members {
		for j := range members {
			if j != i {
				others[i] = append(others[i], int32(j))
			}
		}
	}
	// Each receiver gets every sender's posts in order, interleaved across
	// senders by the scheduler.
	inbox := make([]chan *testclient.Frame, members)
	for i := range inbox {
		inbox[i] = make(chan *testclient.Frame, members*posts)
	}
	var senders, receivers sync.WaitGroup
	for i, s := range sim.members {
		senders.Go(func() {
			for range posts {
				seq := s.claimSeq()
				sim.begin(s, seq, others[i], 100)
				for _, r := range others[i] {
					inbox[r] <- deliveryOf(s, seq)
				}
				sim.settle(s, seq, postAcked)
			}
		})
	}
	for i, r := range sim.members {
		receivers.Go(func() {
			for f := range inbox[i] {
				sim.receive(r, f, time.Now())
			}
		})
	}
	senders.Wait()
	for _, ch := range inbox {
		close(ch)
	}
	receivers.Wait()
	want := tally{deliveries: members * (members - 1) * posts}
	if got := sim.tally(); got != want {
		t.Errorf("%+v, want %+v", got, want)
	}
	for _, m := range sim.members {
		if len(m.posts) != 0 || len(m.pending) != 0 {
			t.Errorf("member %d: %d posts, %d pending left", m.idx, len(m.posts), len(m.pending))
		}
	}
}

func TestFmtLatency(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		ok   bool
		want string
	}{
		{0, false, "-"},
		{635 * time.Microsecond, true, "635µs"},
		{37345 * time.Microsecond, true, "37.3ms"},
		{2500 * time.Millisecond, true, "2.50s"},
	} {
		t.Run(c.want, func(t *testing.T) {
			if got := fmtLatency(c.d, c.ok); got != c.want {
				t.Errorf("fmtLatency(%v) = %q, want %q", c.d, got, c.want)
			}
		})
	}
}

// FuzzReceive hands receive arbitrary delivery data: it must classify
// every one (a delivery or an integrity error), never panic.
func FuzzReceive(f *testing.F) {
	f.Add(testclient.MakePayload(0, "uid-of-member-0", 100, nil), "uid-of-member-0") // a real delivery
	f.Add(testclient.MakePayload(7, "uid-of-member-0", 100, nil), "uid-of-member-0") // a post never made
	f.Add(testclient.MakePayload(0, "uid-of-member-1", 90, nil), "uid-of-member-0")  // payload of another sender
	f.Add([]byte{}, "")                                                              // empty
	f.Add([]byte("m\x01\x00\x00\x00\x00\x00\x1c"), "uid-of-member-0")                // a fixed part, cut short
	f.Fuzz(func(t *testing.T, data []byte, from string) {
		sim := newTestSim(t, 2)
		sim.testPost(sim.members[0], postAcked, 1)
		frame := &testclient.Frame{Head: map[string]any{"op": "delivery", "from": from}, Data: data}
		sim.receive(sim.members[1], frame, time.Now())
		got := sim.tally()
		if n := got.deliveries + got.corrupt + got.duplicates + got.misdelivered; n != 1 {
			t.Errorf("%+v: want exactly one outcome", got)
		}
	})
}

func TestDeliverySize(t *testing.T) {
	// The ledger holds one per recipient of every post in flight.
	if got := unsafe.Sizeof(delivery{}); got != 16 {
		t.Errorf("delivery is %d octets, want 16", got)
	}
}

func TestOnlineSlots(t *testing.T) {
	cfg, err := Config{Frontends: oneFrontend(), Members: 3, MaxOnline: 1}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	sim := newSimulation(cfg, io.Discard)
	if !sim.acquire(context.Background()) {
		t.Fatal("first slot refused")
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan bool)
	go func() { got <- sim.acquire(ctx) }()
	cancel()
	if <-got {
		t.Fatal("second slot granted beyond MaxOnline")
	}
	sim.release()
	if !sim.acquire(context.Background()) {
		t.Fatal("slot not reusable after release")
	}
	if _, err := (Config{Frontends: oneFrontend(), Members: 3, MaxOnline: -1}).withDefaults(); err == nil {
		t.Error("negative MaxOnline accepted")
	}
}

// TestFrontendSpread: members are spread over the frontends round-robin,
// and a member's devices each one frontend further; the addresses are
// listed as given, one server's as it is.
func TestFrontendSpread(t *testing.T) {
	cfg := Config{Frontends: []Frontend{{Addr: "a:1"}, {Addr: "b:1"}, {Addr: "c:1"}}}
	for _, c := range []struct {
		m, d int
		want string
	}{
		{0, 0, "a:1"}, {1, 0, "b:1"}, {2, 0, "c:1"}, {3, 0, "a:1"},
		{0, 1, "b:1"}, {2, 1, "a:1"}, {4, 2, "a:1"},
	} {
		if got := cfg.frontend(c.m, c.d).Addr; got != c.want {
			t.Errorf("member %d device %d on %s, want %s", c.m, c.d, got, c.want)
		}
	}
	if got := cfg.addrs(); got != "a:1, b:1, c:1" {
		t.Errorf("addresses %q", got)
	}
	if got := (Config{Frontends: oneFrontend()}).addrs(); got != "x:1" {
		t.Errorf("one address %q", got)
	}
}

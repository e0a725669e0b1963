package testclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// RunSim is a live simulation of a site: members on real links posting to
// each other, every received message checked end to end. Each member repeats
// the published cycle of an mnm user:
//
//	log in; 17 posts, each after a pause of 1–30 s: 15 to two random other
//	members, one to its group (ToGroup, itself included) and one to its group
//	(ToGroupOthers); log out (Quit); stay offline 1–30 s; repeat.
//
// A member starts with the offline pause, so logins are spread out. The
// order of the 17 posts is shuffled per session. Post sizes range from 80
// octets to 250 KB with a mean of 6.7 KB, the mean delivered message of the
// reference server's published run: most posts are 80 octets to 16 KB, one
// in 22 is 16 KB to 250 KB (postSize); the median is about 1.3 KB.
//
// Groups: members are partitioned into groups of at most 100 (of nearly
// equal size), set up through the protocol: each member registers with an
// alias, the group's first member creates the group by inviting the others
// (GroupInvite), and they join (GroupEdit "join").
//
// Checks on every stored message: the Client's frame checks (headsum, header
// form); on deliveries, CheckPayload, the payload's sender against "from",
// and the ledger below: was it posted to this member, seen before, and did
// every earlier post of the same sender to this member come first. At the
// end, what counts:
//
//   - lost: a delivery whose post was acked to the sender (so it was on
//     stable storage, SPEC §5) that the recipient never received, although it
//     did receive a later post of the same sender. Per-sender order (SPEC §5)
//     means the missing one can no longer arrive in order.
//   - in flight: a delivery whose post was acked, not received when the drain
//     ended, with nothing later from that sender received either. It may
//     still be queued (the drain is bounded); it is reported, not counted as
//     an integrity error. When the drain completes, there are none.
//   - posts whose ack never came (link ended, ack timeout, the drain ended)
//     may or may not have been stored: their deliveries are checked when they
//     come, but they are owed to nobody.
//   - reordered: a delivery that came after a later post of its sender.
//   - duplicate: a delivery received twice by the same member. The server
//     redelivers only what was not acked, and a member acks before its
//     Quit can be sent, so a duplicate is a server error unless a link broke
//     mid-delivery (counted among the errors too).
//   - misdelivered: a delivery of a post that does not name the member, or
//     of a post never made.
//   - corrupt: a delivery whose payload fails CheckPayload or names another
//     sender than "from", or a link ended by a frame that breaks the protocol.
//
// Integrity errors are the sum of corrupt, duplicate, misdelivered,
// reordered and lost. Other failures (a refused post, a link that broke, an
// ack that did not come) are counted as errors.
//
// The ledger holds only posts in flight, not a record per pair of members,
// so its memory follows the backlog, not N² (OrderTracker keeps a stream per
// receiver and sender: with 10,000 members posting to random others, that is
// tens of millions of streams within an hour).

// The published cycle of a member.
const (
	simDirectPosts = 15 // posts per session to simDirectTo random other members
	simDirectTo    = 2
	simPauseMin    = time.Second // before each post, and offline between sessions
	simPauseMax    = 30 * time.Second
	simGroupMax    = 100    // members per group
	simSizeMin     = 80     // smallest post, octets
	simSizeMax     = 250000 // largest post, octets ("250 KB")
)

// Post sizes are a mixture of two log-uniform ranges (the logarithm of the
// size is uniform in each), so that they span simSizeMin to simSizeMax while
// their mean is simSizeMean: the reference server's published run delivered
// 1 million messages totalling 6.7 GB. A single log-uniform range over the
// whole span has a mean of 31 KB, nearly five times that traffic.
//
// The mean of a log-uniform size on [a, b] is (b − a) / ln(b/a):
//
//	small, 80 to 16,000:       15,920 / ln 200    ≈  3,005 octets
//	large, 16,000 to 250,000: 234,000 / ln 15.625 ≈ 85,126 octets
//
// so the share w of large posts that makes the mean 6,700 solves
// (1 − w)·3,005 + w·85,126 = 6,700: w = 3,695 / 82,121 ≈ 0.045, one post in
// 22. A post's size does not depend on its recipients, so the mean delivered
// size is the mean post size.
const (
	simSizeSplit      = 16000 // the boundary of the two ranges, octets
	simSizeLargeShare = 0.045 // share of posts in the large range
	simSizeMean       = 6700  // the mean the share gives, octets (tested)
)

// SimMinMembers is the smallest simulation: a member posts to others.
const SimMinMembers = 2

// Defaults of SimConfig.
const (
	// DefaultSimInterval is the status line period: often enough to watch,
	// rarely enough to read.
	DefaultSimInterval = 5 * time.Second
	// DefaultSimDrain bounds the wait for deliveries in flight after the
	// simulation stops: a healthy server delivers its backlog in well under
	// this, and someone who pressed Ctrl-C does not want to wait longer.
	DefaultSimDrain = 30 * time.Second
)

const (
	// simAckTimeout bounds the wait for a post's ack. A server that takes
	// longer is failing, not slow; the member closes the link and logs in
	// again, so one stuck link does not stall it for the rest of the run.
	simAckTimeout = time.Minute
	// simPulse keeps a member's link alive through long pauses (at
	// timescales above 1): half the server's 2-minute idle deadline.
	simPulse = time.Minute
	// simSetupWorkers bounds the registrations and group edits in flight
	// during setup: enough to fill the server's group commits, few enough
	// that no login waits past the server's 5-second login deadline.
	simSetupWorkers = 64
	// simMaxLogged bounds the events of each kind (integrity errors, other
	// errors) written to the log, so a systematic failure does not bury the
	// status lines; the counters keep counting.
	simMaxLogged = 20
	// simInviteText is the text of the group invitations.
	simInviteText = "welcome to the simulation"
)

// SimConfig configures RunSim.
type SimConfig struct {
	// Addr is the server's "host:port"; TLS configures the links (nil: the
	// certificate is not verified, as for a "=host:port" site).
	Addr string
	TLS  *tls.Config
	// Members is the number of simulated members, at least SimMinMembers.
	// Each holds one link while online.
	Members int
	// MaxOnline, if positive, caps the links open at once: a member waits
	// for a free slot to log in. With the server in the same process each
	// link costs two file descriptors, so this keeps the process under its
	// limit, where running out would fail the server rather than the run.
	MaxOnline int
	// Timescale multiplies every pause: 0.01 turns 1–30 s into 10–300 ms.
	// 0 means 1.
	Timescale float64
	// Duration, if positive, stops the simulation this long after setup, as
	// if ctx had ended.
	Duration time.Duration
	// Interval is the status line period; 0 means DefaultSimInterval.
	Interval time.Duration
	// Drain bounds the wait for deliveries in flight after the simulation
	// stops; 0 means DefaultSimDrain.
	Drain time.Duration
	// Seed seeds the members' random choices; 0 picks one. Timing makes runs
	// differ anyway, but a seed reproduces the choices of sizes and
	// recipients.
	Seed uint64
	// Proc, if set, reads the memory and CPU time of the process that the
	// status lines and the summary report on: the server's, when it runs
	// apart from the simulation, or this one's, when the server shares it.
	// ProcName names that process in them; "" means "server".
	Proc     func() (ProcStats, error)
	ProcName string
	// Logger receives integrity errors (level error) and other failures
	// (warn), at most simMaxLogged of each kind; nil discards them. Nodeids
	// are never logged.
	Logger *slog.Logger
	// Tamper, if set, is called on each delivery before it is checked. Tests
	// use it to show that the checks catch a damaged message.
	Tamper func(f *Frame)
}

func (c SimConfig) withDefaults() (SimConfig, error) {
	switch {
	case c.Addr == "":
		return c, errors.New("sim: no server address")
	case c.Members < SimMinMembers:
		return c, fmt.Errorf("sim: %d members; at least %d are needed", c.Members, SimMinMembers)
	case c.Timescale < 0 || math.IsNaN(c.Timescale) || math.IsInf(c.Timescale, 0):
		return c, fmt.Errorf("sim: invalid timescale %v", c.Timescale)
	case c.Duration < 0 || c.Interval < 0 || c.Drain < 0 || c.MaxOnline < 0:
		return c, errors.New("sim: negative duration, interval, drain or online limit")
	}
	if c.Timescale == 0 {
		c.Timescale = 1
	}
	if c.Interval == 0 {
		c.Interval = DefaultSimInterval
	}
	if c.Drain == 0 {
		c.Drain = DefaultSimDrain
	}
	for c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProcName == "" {
		c.ProcName = "server"
	}
	return c, nil
}

// SimSummary is what a simulation did and found.
type SimSummary struct {
	Members int
	Traffic time.Duration // from the end of setup to the stop
	Drain   time.Duration // from the stop until every member logged out
	Drained bool          // every acked delivery arrived before the drain's bound

	// Counts at the stop, the end of the traffic: divided by Traffic, they
	// are the rates the site kept up with (later counts include the drain).
	TrafficPosts, TrafficDeliveries, TrafficDeliveryBytes uint64
	// Latency of the deliveries received during the traffic. The drain
	// empties a backlog that posting no longer feeds, so the overall
	// DeliveryP50 and DeliveryP99 include waits that grew while the members
	// were offline or the server behind; these do not.
	TrafficDeliveryP50, TrafficDeliveryP99 time.Duration

	Logins        uint64
	Posts         uint64 // acked posts
	PostBytes     uint64
	Unacked       uint64 // posts whose ack never came: stored or not, owed to nobody
	Deliveries    uint64 // deliveries received (each once per recipient)
	DeliveryBytes uint64
	Errors        uint64 // failures other than integrity errors

	Corrupt      uint64
	Duplicates   uint64
	Misdelivered uint64
	Reordered    uint64
	Lost         uint64
	InFlight     uint64 // acked deliveries not received when the drain ended: not losses

	AckP50, AckP99           time.Duration // post sent → ack received
	DeliveryP50, DeliveryP99 time.Duration // post sent (or recipient's login, if later) → received

	// Of the process SimConfig.Proc reads, zero if unknown: its resident set
	// size at the end and its peak (VmHWM, over its whole life), in octets,
	// and its CPU time during the traffic.
	RSS, PeakRSS int64
	CPU          time.Duration
	// SelfCPU is this process's CPU time during the traffic: the simulated
	// members', and the server's too if it runs in this process.
	SelfCPU time.Duration
}

// IntegrityErrors is the number of integrity errors: a simulation passes
// when it is 0.
func (s SimSummary) IntegrityErrors() uint64 {
	return s.Corrupt + s.Duplicates + s.Misdelivered + s.Reordered + s.Lost
}

// RunSim runs the simulation described above against the server at
// cfg.Addr until ctx ends or cfg.Duration passes, writing a status line to
// out every cfg.Interval. Then members stop posting, stay (or come) online
// until every acked delivery has arrived or cfg.Drain has passed, and log
// out; RunSim writes a summary to out and returns it. It returns an error
// only when the configuration is invalid or setup fails (or ctx ends during
// setup); integrity errors are in the summary.
func RunSim(ctx context.Context, cfg SimConfig, out io.Writer) (SimSummary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return SimSummary{}, err
	}
	sim := newSimulation(cfg, &lockedWriter{w: out})
	sim.printf("sim: setting up %d members in %d groups at %s (seed %d)\n",
		len(sim.members), len(sim.groups), cfg.Addr, cfg.Seed)
	if err := sim.setup(ctx); err != nil {
		return SimSummary{}, err
	}
	sim.printf("sim: running at timescale %g (pauses %s–%s)\n",
		cfg.Timescale, sim.scale(simPauseMin), sim.scale(simPauseMax))
	sum := sim.run(ctx)
	sim.printSummary(sum)
	return sum, nil
}

// lockedWriter serialises writes from the status goroutine and the rest.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// simulation is one run of RunSim.
type simulation struct {
	cfg     SimConfig
	out     io.Writer
	log     *slog.Logger
	members []*simMember
	groups  []*simGroup
	byUID   map[string]*simMember // filled by setup, read-only afterwards
	slots   chan struct{}         // one element per open link; nil: no MaxOnline
	st      simStats

	// cycle ends when members must stop posting; abort ends when the drain's
	// bound has passed (and at the end of run).
	cycle, abort           context.Context
	stopCycle, abortCancel context.CancelFunc
	drainDone              chan struct{} // closed when the drain is over: members log out
	final                  atomic.Bool   // posting is over: owed can only fall
	finalSet               chan struct{} // closed when final is set
	drained                chan struct{} // closed when owed reaches 0 after final
	drainedOnce            sync.Once
}

// simGroup is a group of members with indices lo ≤ i < hi; lo created it.
type simGroup struct {
	gid    string
	lo, hi int
}

// simMember is a simulated member (a user with one device) and, as a
// sender, its part of the ledger.
type simMember struct {
	idx         int
	alias       string
	group       *simGroup
	uid, nodeid string        // set by setup
	onlineSince atomic.Int64  // UnixNano of the current login; 0 while offline
	owed        atomic.Int64  // acked deliveries to this member not yet received
	wake        chan struct{} // (cap 1) owed fell to 0 after posting ended

	mu sync.Mutex
	// Guarded by mu:
	next    uint64              // number of the next post, the payload's seq
	posts   map[uint64]*simPost // posts not settled: unacked, or not yet received by every recipient
	pending map[int32]uint64    // recipient → latest post to it that it has not received
}

// postState is what the sender knows of a post.
type postState uint8

const (
	postSending postState = iota // sent, ack awaited
	postAcked                    // acked with a msgid: on stable storage, owed to its recipients
	postUnknown                  // no ack came: maybe stored, maybe not
	postRefused                  // refused by the server: nothing stored
)

// simPost is a post in the ledger.
type simPost struct {
	sent  time.Time
	size  int
	state postState
	left  int // recipients that have not received it
	to    []simDelivery
}

// simDelivery is a post's recipient. There is one per recipient of every
// post in flight, so it is kept to 16 octets (fields ordered for packing).
type simDelivery struct {
	prev    uint64 // the sender's previous post to this recipient, not yet received when this one was made
	to      int32  // recipient member index
	hasPrev bool   // prev is set
	got     bool   // received
	skipped bool   // a later post of the sender reached the recipient first
}

func (p *simPost) find(r int32) *simDelivery {
	for i := range p.to {
		if p.to[i].to == r {
			return &p.to[i]
		}
	}
	return nil
}

// simStats are the counters of a run; all are updated atomically.
type simStats struct {
	online                                     atomic.Int64
	logins, posts, postBytes, unacked          atomic.Uint64
	deliveries, deliveryBytes, errors          atomic.Uint64
	corrupt, duplicates, misdelivered, skipped atomic.Uint64
	reordered                                  atomic.Uint64
	owed                                       atomic.Int64 // acked deliveries not yet received
	loggedErrors, loggedIntegrity              atomic.Int64
	ackLatency, deliveryLatency                latencyHist
}

func newSimulation(cfg SimConfig, out io.Writer) *simulation {
	sim := &simulation{
		cfg:       cfg,
		out:       out,
		log:       cfg.Logger,
		byUID:     make(map[string]*simMember, cfg.Members),
		drainDone: make(chan struct{}),
		finalSet:  make(chan struct{}),
		drained:   make(chan struct{}),
	}
	if cfg.MaxOnline > 0 {
		sim.slots = make(chan struct{}, cfg.MaxOnline)
	}
	sim.cycle, sim.stopCycle = context.WithCancel(context.Background())
	sim.abort, sim.abortCancel = context.WithCancel(context.Background())
	// A tag in the aliases and group ids lets several runs share a server.
	tag := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	for g, b := range partition(cfg.Members, simGroupMax) {
		sim.groups = append(sim.groups, &simGroup{gid: fmt.Sprintf("sim-%s-group-%d", tag, g), lo: b[0], hi: b[1]})
	}
	for _, g := range sim.groups {
		for i := g.lo; i < g.hi; i++ {
			sim.members = append(sim.members, &simMember{
				idx:     i,
				alias:   fmt.Sprintf("sim-%s-member-%d", tag, i),
				group:   g,
				wake:    make(chan struct{}, 1),
				posts:   make(map[uint64]*simPost),
				pending: make(map[int32]uint64),
			})
		}
	}
	return sim
}

// partition splits n members into the fewest groups of at most limit, of
// nearly equal size, as [lo, hi) index ranges. With n ≥ 2 every group has at
// least 2 members, so that a post to a group excluding the sender has a
// recipient.
func partition(n, limit int) [][2]int {
	groups := (n + limit - 1) / limit
	out := make([][2]int, 0, groups)
	lo := 0
	for g := range groups {
		size := n / groups
		if g < n%groups {
			size++
		}
		out = append(out, [2]int{lo, lo + size})
		lo += size
	}
	return out
}

func (sim *simulation) printf(format string, a ...any) {
	fmt.Fprintf(sim.out, format, a...)
}

func (sim *simulation) scale(d time.Duration) time.Duration {
	return time.Duration(float64(d) * sim.cfg.Timescale)
}

// fail counts a failure that is not an integrity error and logs the first
// few.
func (sim *simulation) fail(msg string, args ...any) {
	sim.st.errors.Add(1)
	if n := sim.st.loggedErrors.Add(1); n <= simMaxLogged {
		sim.log.Warn(msg, args...)
		if n == simMaxLogged {
			sim.log.Warn("further failures are counted, not logged")
		}
	}
}

// integrity adds n integrity errors to c and logs the first few events.
func (sim *simulation) integrity(c *atomic.Uint64, n uint64, msg string, args ...any) {
	c.Add(n)
	if n := sim.st.loggedIntegrity.Add(1); n <= simMaxLogged {
		sim.log.Error(msg, args...)
		if n == simMaxLogged {
			sim.log.Error("further integrity errors are counted, not logged")
		}
	}
}

// Setup.

// setup registers the members and forms the groups through the protocol.
// Each step is its own short link (register; the owner's invitations; each
// join), so that setup holds at most simSetupWorkers links whatever the
// number of members.
func (sim *simulation) setup(ctx context.Context) error {
	// Setup notices (invitations, member notices) are acked and otherwise
	// ignored; those still queued reach the members at their first login.
	o := sim.options()
	o.AutoAck = true
	o.OnMessage = func(*Frame) {}
	start := time.Now()
	err := sim.parallel(ctx, len(sim.members), func(i int) error {
		m := sim.members[i]
		return sim.setupLink(ctx, func() (*Client, error) {
			c, reg, err := Register(sim.cfg.Addr, fmt.Sprintf("sim device %d", i), m.alias, o)
			if err != nil {
				return nil, fmt.Errorf("sim: register member %d: %w", i, err)
			}
			if reg.AliasError != "" {
				return c, fmt.Errorf("sim: register member %d: alias %q refused: %s", i, m.alias, reg.AliasError)
			}
			m.uid, m.nodeid = reg.UID, reg.NodeID
			return c, nil
		})
	})
	if err != nil {
		return err
	}
	sim.printf("sim: setup: %d members registered in %s\n", len(sim.members), time.Since(start).Round(time.Millisecond))
	start = time.Now()
	for _, m := range sim.members {
		sim.byUID[m.uid] = m
	}
	// The first member of a group creates it with its first invitation.
	err = sim.parallel(ctx, len(sim.groups), func(g int) error {
		grp := sim.groups[g]
		owner := sim.members[grp.lo]
		return sim.setupLink(ctx, func() (*Client, error) {
			c, _, err := Login(sim.cfg.Addr, owner.uid, owner.nodeid, o)
			if err != nil {
				return nil, fmt.Errorf("sim: member %d logs in to invite: %w", grp.lo, err)
			}
			for i := grp.lo + 1; i < grp.hi; i++ {
				if err := ctx.Err(); err != nil {
					return c, err
				}
				ack, err := c.GroupInvite(grp.gid, owner.alias, sim.members[i].alias, simInviteText)
				if err == nil && ack.Error != "" {
					err = errors.New(ack.Error)
				}
				if err != nil {
					return c, fmt.Errorf("sim: invite member %d to %s: %w", i, grp.gid, err)
				}
			}
			return c, nil
		})
	})
	if err != nil {
		return err
	}
	err = sim.parallel(ctx, len(sim.members), func(i int) error {
		m := sim.members[i]
		if i == m.group.lo {
			return nil
		}
		return sim.setupLink(ctx, func() (*Client, error) {
			c, _, err := Login(sim.cfg.Addr, m.uid, m.nodeid, o)
			if err != nil {
				return nil, fmt.Errorf("sim: member %d logs in to join: %w", i, err)
			}
			ack, err := c.GroupEdit("join", m.group.gid, "", "")
			if err == nil && ack.Error != "" {
				err = errors.New(ack.Error)
			}
			if err != nil {
				return c, fmt.Errorf("sim: member %d joins %s: %w", i, m.group.gid, err)
			}
			return c, nil
		})
	})
	if err == nil {
		sim.printf("sim: setup: %d groups formed in %s\n", len(sim.groups), time.Since(start).Round(time.Millisecond))
	}
	return err
}

// setupLink runs one setup step on a link of its own, within the online
// limit: fn opens the link and uses it; the link it returns (even with an
// error) is then logged out.
func (sim *simulation) setupLink(ctx context.Context, fn func() (*Client, error)) error {
	if !sim.acquire(ctx) {
		return ctx.Err()
	}
	defer sim.release()
	c, err := fn()
	if c != nil {
		if qerr := c.Quit(); err == nil && qerr != nil {
			err = fmt.Errorf("sim: setup logout: %w", qerr)
		}
	}
	return err
}

// acquire takes one of the MaxOnline slots for a link, waiting until ctx
// ends; it reports whether it got one. release gives it back.
func (sim *simulation) acquire(ctx context.Context) bool {
	if sim.slots == nil {
		return true
	}
	select {
	case sim.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (sim *simulation) release() {
	if sim.slots != nil {
		<-sim.slots
	}
}

// parallel calls fn(0) … fn(n-1) on simSetupWorkers goroutines. After the
// first error, or once ctx ends, no further call starts; it returns the
// first error.
func (sim *simulation) parallel(ctx context.Context, n int, fn func(i int) error) error {
	var (
		next     atomic.Int64
		firstErr error
		once     sync.Once
		failed   atomic.Bool
		wg       sync.WaitGroup
	)
	for range min(n, simSetupWorkers) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(i)
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// options are the Client options of every link.
func (sim *simulation) options() Options {
	return Options{TLS: sim.cfg.TLS, Logger: sim.log, PulseInterval: simPulse}
}

// Running.

// run starts the members, prints status lines until ctx ends or the
// duration passes, then drains and returns the summary.
func (sim *simulation) run(ctx context.Context) SimSummary {
	defer sim.abortCancel()
	first := sim.counts()
	start := first.at
	var posting, all sync.WaitGroup
	for _, m := range sim.members {
		posting.Add(1)
		all.Go(func() { sim.member(m, &posting) })
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
	sum.TrafficDeliveryP50, _ = last.delivery.quantile(0.5)
	sum.TrafficDeliveryP99, _ = last.delivery.quantile(0.99)
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

// member runs one member: sessions until the cycle ends, then the drain.
func (sim *simulation) member(m *simMember, posting *sync.WaitGroup) {
	rng := rand.New(rand.NewPCG(sim.cfg.Seed, uint64(m.idx)))
	var l *simLink
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
	d := simPauseMin + time.Duration(rng.Int64N(int64(simPauseMax-simPauseMin+1)))
	t := time.NewTimer(sim.scale(d))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-sim.cycle.Done():
		return false
	}
}

// simLink is a logged-in member's link.
type simLink struct {
	sim   *simulation
	m     *simMember
	c     *Client       // set once login succeeds, before ready is closed
	ready chan struct{} // closed when c is set
	end   sync.Once     // runs ended's accounting once

	// mu orders acks before Quit: a message is acked and recorded, or
	// neither, so the server redelivers exactly what the ledger lacks.
	mu sync.Mutex
	// Guarded by mu:
	quitting bool
}

// login logs m in, retrying until ctx ends; nil if it did not succeed.
func (sim *simulation) login(m *simMember, ctx context.Context) *simLink {
	if !sim.acquire(ctx) {
		return nil
	}
	l := &simLink{sim: sim, m: m, ready: make(chan struct{})}
	o := sim.options()
	o.OnMessage = l.onMessage
	o.OnOther = func(*Frame) {} // presence notices, stray acks
	c, _, err := LoginRetry(ctx, sim.cfg.Addr, m.uid, m.nodeid, o)
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
func (l *simLink) onMessage(f *Frame) {
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
func (sim *simulation) alive(l *simLink) bool {
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
func (sim *simulation) logout(l *simLink) {
	l.mu.Lock()
	l.quitting = true
	l.mu.Unlock()
	sim.ended(l, l.c.Quit())
}

// ended accounts once for the end of a link: err is why it ended (nil for
// a clean logout).
func (sim *simulation) ended(l *simLink, err error) {
	l.end.Do(func() {
		l.m.onlineSince.Store(0)
		sim.st.online.Add(-1)
		sim.release()
		switch {
		case err == nil, errors.Is(err, ErrClosed):
		case errors.Is(err, ErrProtocol):
			sim.integrity(&sim.st.corrupt, 1, "link ended: the server broke the protocol", "member", l.m.idx, "err", err)
		default:
			sim.fail("link ended", "member", l.m.idx, "err", err)
		}
	})
}

// postKind is the addressing of a post.
type postKind uint8

const (
	postDirect      postKind = iota // to simDirectTo random other members
	postGroup                       // ToGroup: the group, sender included
	postGroupOthers                 // ToGroupOthers: the group, sender excluded
)

// sessionPlan is the kinds of a session's posts in random order.
func sessionPlan(rng *rand.Rand) []postKind {
	plan := make([]postKind, simDirectPosts, simDirectPosts+2)
	plan = append(plan, postGroup, postGroupOthers)
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	return plan
}

// session makes the session's posts, each after a pause; it ends early if
// the cycle ends or the link fails.
func (sim *simulation) session(l *simLink, rng *rand.Rand) {
	for _, k := range sessionPlan(rng) {
		if !sim.pause(rng) || !sim.alive(l) || !sim.post(l, k, rng) {
			return
		}
	}
}

// directRecipients picks simDirectTo distinct members other than self (all
// the others when there are fewer).
func directRecipients(self, n int, rng *rand.Rand) []int32 {
	k := min(simDirectTo, n-1)
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

// postSize draws a post size: log-uniform from simSizeSplit to simSizeMax
// with probability simSizeLargeShare, else from simSizeMin to simSizeSplit.
func postSize(rng *rand.Rand) int {
	lo, hi := float64(simSizeMin), float64(simSizeSplit)
	if rng.Float64() < simSizeLargeShare {
		lo, hi = simSizeSplit, simSizeMax
	}
	return int(math.Round(logUniform(rng, lo, hi)))
}

// logUniform draws x from [lo, hi] such that ln x is uniform.
func logUniform(rng *rand.Rand, lo, hi float64) float64 {
	a, b := math.Log(lo), math.Log(hi)
	return math.Exp(a + rng.Float64()*(b-a))
}

// post makes one post and waits for its ack; it reports whether the link is
// still usable.
func (sim *simulation) post(l *simLink, k postKind, rng *rand.Rand) bool {
	m := l.m
	var to []int32
	var list []Recipient
	switch k {
	case postDirect:
		to = directRecipients(m.idx, len(sim.members), rng)
		for _, r := range to {
			list = append(list, Recipient{ID: sim.members[r].uid, Type: ToUser})
		}
	case postGroup, postGroupOthers:
		typ := ToGroup
		if k == postGroupOthers {
			typ = ToGroupOthers
		}
		list = []Recipient{{ID: m.group.gid, Type: typ}}
		for i := m.group.lo; i < m.group.hi; i++ {
			if i != m.idx || k == postGroup {
				to = append(to, int32(i))
			}
		}
	}
	seq := m.claimSeq()
	data := MakePayload(seq, m.uid, postSize(rng), rng)
	sent := sim.begin(m, seq, to, len(data))
	ch, err := l.c.PostAsync(list, data)
	if err != nil {
		sim.settle(m, seq, postUnknown)
		sim.fail("post not sent", "member", m.idx, "err", err)
		return false
	}
	t := time.NewTimer(simAckTimeout)
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
		sim.st.ackLatency.observe(time.Since(sent))
		sim.settle(m, seq, postAcked)
		return true
	case <-t.C:
		sim.settle(m, seq, postUnknown)
		sim.fail("post ack timed out; closing the link", "member", m.idx, "after", simAckTimeout)
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
func (sim *simulation) drainMember(m *simMember, l *simLink) {
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

// The ledger: posts in flight, per sender, under the sender's lock.

// claimSeq returns the number of m's next post.
func (m *simMember) claimSeq() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	seq := m.next
	m.next++
	return seq
}

// begin records post seq of s to recipients to, before it is sent (a
// recipient may receive it before the sender has its ack). It returns the
// time the post counts as sent.
func (sim *simulation) begin(s *simMember, seq uint64, to []int32, size int) time.Time {
	p := &simPost{size: size, left: len(to), to: make([]simDelivery, len(to))}
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
func (sim *simulation) settle(s *simMember, seq uint64, state postState) {
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
func (sim *simulation) receive(r *simMember, f *Frame, now time.Time) {
	info, err := CheckPayload(f.Data)
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
	sim.st.deliveryLatency.observe(now.Sub(start))
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
func (s *simMember) markSkipped(r int32, prev uint64, hasPrev bool) int {
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
					if sim.st.loggedIntegrity.Add(1) <= simMaxLogged {
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

// Reporting.

// simCounts is a snapshot of the counters in a status line.
type simCounts struct {
	at                                time.Time
	online                            int64
	posts, postBytes                  uint64
	deliveries, deliveryBytes, errors uint64
	integrity                         uint64
	ack, delivery                     histCounts
	proc                              ProcStats // of the process cfg.Proc reads
	procOK                            bool      // proc was read
	selfCPU                           time.Duration
}

func (sim *simulation) counts() simCounts {
	st := &sim.st
	c := simCounts{
		at:            time.Now(),
		online:        st.online.Load(),
		posts:         st.posts.Load(),
		postBytes:     st.postBytes.Load(),
		deliveries:    st.deliveries.Load(),
		deliveryBytes: st.deliveryBytes.Load(),
		errors:        st.errors.Load(),
		integrity:     st.corrupt.Load() + st.duplicates.Load() + st.misdelivered.Load() + st.skipped.Load(),
		ack:           st.ackLatency.counts(),
		delivery:      st.deliveryLatency.counts(),
		selfCPU:       selfCPU(),
	}
	if sim.cfg.Proc != nil {
		ps, err := sim.cfg.Proc()
		c.proc, c.procOK = ps, err == nil
	}
	return c
}

// status prints a status line every interval, from the counts first at
// the start, until stop is closed.
func (sim *simulation) status(first simCounts, stop <-chan struct{}) {
	t := time.NewTicker(sim.cfg.Interval)
	defer t.Stop()
	prev := first
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			cur := sim.counts()
			sim.printf("%s\n", sim.statusLine(prev, cur, cur.at.Sub(first.at)))
			prev = cur
		}
	}
}

// statusLine renders the counters, with rates and latencies over the time
// since prev.
func (sim *simulation) statusLine(prev, cur simCounts, elapsed time.Duration) string {
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(a, b uint64) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(b-a) / secs
	}
	ack, deliv := cur.ack.sub(prev.ack), cur.delivery.sub(prev.delivery)
	line := fmt.Sprintf("sim: %s online %d/%d, posts %d (%.0f/s, %.1f MB/s), deliveries %d (%.0f/s, %.1f MB/s), "+
		"ack p50/p99 %s/%s, delivery p50/p99 %s/%s, errors %d, integrity %d",
		elapsed.Round(time.Second), cur.online, len(sim.members),
		cur.posts, rate(prev.posts, cur.posts), rate(prev.postBytes, cur.postBytes)/1e6,
		cur.deliveries, rate(prev.deliveries, cur.deliveries), rate(prev.deliveryBytes, cur.deliveryBytes)/1e6,
		fmtLatency(ack.quantile(0.5)), fmtLatency(ack.quantile(0.99)),
		fmtLatency(deliv.quantile(0.5)), fmtLatency(deliv.quantile(0.99)),
		cur.errors, cur.integrity)
	if cur.procOK {
		// Whose figures these are is in the line: the server's alone, or
		// the whole process's when the members share it.
		line += fmt.Sprintf(", %s rss %.0f MB", sim.cfg.ProcName, float64(cur.proc.RSS)/1e6)
		if prev.procOK && secs > 0 {
			line += fmt.Sprintf(" cpu %.0f%%", 100*(cur.proc.CPU-prev.proc.CPU).Seconds()/secs)
		}
	}
	return line
}

// cores renders CPU time used over a wall-clock time as a share of one
// core, as top does.
func cores(cpu, wall time.Duration) string {
	if wall <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%% of a core", 100*cpu.Seconds()/wall.Seconds())
}

// fmtLatency renders a latency to about two significant digits; "-" when
// there were no samples.
func fmtLatency(d time.Duration, ok bool) string {
	switch {
	case !ok:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

// summary gathers the final counts; members have logged out.
func (sim *simulation) summary() SimSummary {
	st := &sim.st
	// Every skipped delivery has either arrived since (reordered) or not
	// (lost): its post stays in the ledger until all recipients have it.
	lost, inFlight := sim.unsettled()
	ack, deliv := st.ackLatency.counts(), st.deliveryLatency.counts()
	s := SimSummary{
		Members:       len(sim.members),
		Logins:        st.logins.Load(),
		Posts:         st.posts.Load(),
		PostBytes:     st.postBytes.Load(),
		Unacked:       st.unacked.Load(),
		Deliveries:    st.deliveries.Load(),
		DeliveryBytes: st.deliveryBytes.Load(),
		Errors:        st.errors.Load(),
		Corrupt:       st.corrupt.Load(),
		Duplicates:    st.duplicates.Load(),
		Misdelivered:  st.misdelivered.Load(),
		Reordered:     st.reordered.Load(),
		Lost:          lost,
		InFlight:      inFlight,
	}
	s.AckP50, _ = ack.quantile(0.5)
	s.AckP99, _ = ack.quantile(0.99)
	s.DeliveryP50, _ = deliv.quantile(0.5)
	s.DeliveryP99, _ = deliv.quantile(0.99)
	if sim.cfg.Proc != nil {
		if ps, err := sim.cfg.Proc(); err == nil {
			s.RSS, s.PeakRSS = ps.RSS, ps.HWM
		}
	}
	return s
}

func (sim *simulation) printSummary(s SimSummary) {
	drain := "complete"
	if !s.Drained {
		drain = "bound reached"
	}
	sim.printf("sim: summary: %d members, %s of traffic, %s of drain (%s), %d logins\n",
		s.Members, s.Traffic.Round(time.Millisecond), s.Drain.Round(time.Millisecond), drain, s.Logins)
	sim.printf("  posts       %d acked, %.1f MB; post→ack p50 %s, p99 %s; %d without ack\n",
		s.Posts, float64(s.PostBytes)/1e6, fmtLatency(s.AckP50, s.AckP50 > 0), fmtLatency(s.AckP99, s.AckP99 > 0), s.Unacked)
	sim.printf("  deliveries  %d, %.1f MB (mean %.1f KB); post→delivery p50 %s, p99 %s (from the post or the recipient's login, whichever is later)\n",
		s.Deliveries, float64(s.DeliveryBytes)/1e6, float64(s.DeliveryBytes)/1e3/float64(max(s.Deliveries, 1)),
		fmtLatency(s.DeliveryP50, s.DeliveryP50 > 0), fmtLatency(s.DeliveryP99, s.DeliveryP99 > 0))
	if secs := s.Traffic.Seconds(); secs > 0 {
		sim.printf("  traffic     %.0f posts/s, %.0f deliveries/s, %.1f MB/s delivered; post→delivery p50 %s, p99 %s (until the stop)\n",
			float64(s.TrafficPosts)/secs, float64(s.TrafficDeliveries)/secs, float64(s.TrafficDeliveryBytes)/1e6/secs,
			fmtLatency(s.TrafficDeliveryP50, s.TrafficDeliveryP50 > 0), fmtLatency(s.TrafficDeliveryP99, s.TrafficDeliveryP99 > 0))
	}
	sim.printf("  errors      %d (failed logins or posts, broken links)\n", s.Errors)
	sim.printf("  integrity   %d (corrupt %d, duplicate %d, misdelivered %d, reordered %d, lost %d)\n",
		s.IntegrityErrors(), s.Corrupt, s.Duplicates, s.Misdelivered, s.Reordered, s.Lost)
	sim.printf("  in flight   %d acked deliveries not received when the drain ended (not losses)\n", s.InFlight)
	if s.RSS > 0 {
		sim.printf("  %-11s rss %.1f MB, peak %.1f MB; cpu %s during the traffic (%s)\n",
			sim.cfg.ProcName, float64(s.RSS)/1e6, float64(s.PeakRSS)/1e6, s.CPU.Round(10*time.Millisecond), cores(s.CPU, s.Traffic))
	}
	sim.printf("  self        cpu %s during the traffic (%s; this process)\n", s.SelfCPU.Round(10*time.Millisecond), cores(s.SelfCPU, s.Traffic))
	if n := s.IntegrityErrors(); n > 0 {
		sim.printf("sim: FAIL: %d integrity errors\n", n)
	} else {
		sim.printf("sim: PASS: no integrity errors\n")
	}
}

// Latency histograms.

// histBuckets covers 1 µs to 2^36 µs (19 hours) in eighths of an octave.
const (
	histPerOctave = 8
	histBuckets   = histPerOctave * 36
)

// latencyHist counts durations in buckets an eighth of an octave wide
// (about 9% apart), so percentiles cost no memory per sample and no lock.
type latencyHist struct{ n [histBuckets]atomic.Uint64 }

func (h *latencyHist) observe(d time.Duration) {
	b := 0
	if us := d.Microseconds(); us > 1 {
		b = min(int(histPerOctave*math.Log2(float64(us))), histBuckets-1)
	}
	h.n[b].Add(1)
}

// histCounts is a snapshot of a latencyHist.
type histCounts [histBuckets]uint64

func (h *latencyHist) counts() histCounts {
	var c histCounts
	for i := range h.n {
		c[i] = h.n[i].Load()
	}
	return c
}

// sub returns the counts added since o.
func (c histCounts) sub(o histCounts) histCounts {
	for i := range c {
		c[i] -= o[i]
	}
	return c
}

// quantile returns the q-quantile (0 < q ≤ 1) as the geometric middle of
// its bucket, and false if there are no samples.
func (c histCounts) quantile(q float64) (time.Duration, bool) {
	var total uint64
	for _, n := range c {
		total += n
	}
	if total == 0 {
		return 0, false
	}
	rank := max(uint64(math.Ceil(q*float64(total))), 1)
	var cum uint64
	for b, n := range c {
		if cum += n; cum >= rank {
			us := math.Exp2((float64(b) + 0.5) / histPerOctave)
			return time.Duration(us * float64(time.Microsecond)), true
		}
	}
	return 0, false // not reached: cum ends at total ≥ rank
}

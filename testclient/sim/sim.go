// Package sim is a live simulation of a site: members on real links posting to
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
// Checks on every stored message: the testclient.Client's frame checks
// (headsum, header form); on deliveries, testclient.CheckPayload, the
// payload's sender against "from", and the ledger below: was it posted to
// this member, seen before, and did every earlier post of the same sender to
// this member come first. At the end, what counts:
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
// Frontends: a site may be served by several frontends (Config.Frontends),
// any of which a member may use. The simulation spreads the members over
// them round-robin: device d of member m connects to frontend (m+d) mod n,
// for its registration, its group setup and every login. A member has one
// device (d = 0), so with two or more frontends most posts, direct and to a
// group, go from a link on one frontend to members on others, and the
// checks below then verify the site's cross-frontend delivery.
//
// Integrity errors are the sum of corrupt, duplicate, misdelivered,
// reordered and lost. Other failures (a refused post, a link that broke, an
// ack that did not come) are counted as errors.
//
// The ledger holds only posts in flight, not a record per pair of members,
// so its memory follows the backlog, not N² (testclient.OrderTracker, which
// the load benchmark uses, keeps a stream per receiver and sender: with
// 10,000 members posting to random others, that is tens of millions of
// streams within an hour).
package sim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mnm/testclient"
	"mnm/testclient/internal/latency"
	"mnm/testclient/proc"
)

// The published cycle of a member.
const (
	directPosts = 15 // posts per session to directTo random other members
	directTo    = 2
	pauseMin    = time.Second // before each post, and offline between sessions
	pauseMax    = 30 * time.Second
	groupMax    = 100    // members per group
	sizeMin     = 80     // smallest post, octets
	sizeMax     = 250000 // largest post, octets ("250 KB")
)

// Post sizes are a mixture of two log-uniform ranges (the logarithm of the
// size is uniform in each), so that they span sizeMin to sizeMax while
// their mean is sizeMean: the reference server's published run delivered
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
	sizeSplit      = 16000 // the boundary of the two ranges, octets
	sizeLargeShare = 0.045 // share of posts in the large range
	sizeMean       = 6700  // the mean the share gives, octets (tested)
)

// MinMembers is the smallest simulation: a member posts to others.
const MinMembers = 2

// Defaults of Config.
const (
	// DefaultInterval is the status line period: often enough to watch,
	// rarely enough to read.
	DefaultInterval = 5 * time.Second
	// DefaultDrain bounds the wait for deliveries in flight after the
	// simulation stops: a healthy server delivers its backlog in well under
	// this, and someone who pressed Ctrl-C does not want to wait longer.
	DefaultDrain = 30 * time.Second
)

const (
	// ackTimeout bounds the wait for a post's ack. A server that takes
	// longer is failing, not slow; the member closes the link and logs in
	// again, so one stuck link does not stall it for the rest of the run.
	ackTimeout = time.Minute
	// pulse keeps a member's link alive through long pauses (at
	// timescales above 1): half the server's 2-minute idle deadline.
	pulse = time.Minute
	// setupWorkers bounds the registrations and group edits in flight
	// during setup: enough to fill the server's group commits, few enough
	// that no login waits past the server's 5-second login deadline.
	setupWorkers = 64
	// maxLogged bounds the events of each kind (integrity errors, other
	// errors) written to the log, so a systematic failure does not bury the
	// status lines; the counters keep counting.
	maxLogged = 20
	// inviteText is the text of the group invitations.
	inviteText = "welcome to the simulation"
)

// Frontend is one address of the simulated site.
type Frontend struct {
	Addr string      // "host:port"
	TLS  *tls.Config // nil: the certificate is not verified, as for a "=host:port" site
}

// Config configures Run.
type Config struct {
	// Frontends are the site's addresses: one server, or the frontends of
	// a clustered site, over which the members are spread (see the package
	// comment). None may be empty or given twice.
	Frontends []Frontend
	// Members is the number of simulated members, at least MinMembers.
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
	// Interval is the status line period; 0 means DefaultInterval.
	Interval time.Duration
	// Drain bounds the wait for deliveries in flight after the simulation
	// stops; 0 means DefaultDrain.
	Drain time.Duration
	// Seed seeds the members' random choices; 0 picks one. Timing makes runs
	// differ anyway, but a seed reproduces the choices of sizes and
	// recipients.
	Seed uint64
	// Proc, if set, reads the memory and CPU time of the process that the
	// status lines and the summary report on: the server's, when it runs
	// apart from the simulation, or this one's, when the server shares it.
	// ProcName names that process in them; "" means "server".
	Proc     func() (proc.Stats, error)
	ProcName string
	// Logger receives integrity errors (level error) and other failures
	// (warn), at most maxLogged of each kind; nil discards them. Nodeids
	// are never logged.
	Logger *slog.Logger
	// Tamper, if set, is called on each delivery before it is checked. Tests
	// use it to show that the checks catch a damaged message.
	Tamper func(f *testclient.Frame)
}

func (c Config) withDefaults() (Config, error) {
	if err := checkFrontends(c.Frontends); err != nil {
		return c, err
	}
	switch {
	case c.Members < MinMembers:
		return c, fmt.Errorf("sim: %d members; at least %d are needed", c.Members, MinMembers)
	case c.Timescale < 0 || math.IsNaN(c.Timescale) || math.IsInf(c.Timescale, 0):
		return c, fmt.Errorf("sim: invalid timescale %v", c.Timescale)
	case c.Duration < 0 || c.Interval < 0 || c.Drain < 0 || c.MaxOnline < 0:
		return c, errors.New("sim: negative duration, interval, drain or online limit")
	}
	if c.Timescale == 0 {
		c.Timescale = 1
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Drain == 0 {
		c.Drain = DefaultDrain
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

// checkFrontends checks that there is at least one address, and none
// empty or given twice.
func checkFrontends(frontends []Frontend) error {
	if len(frontends) == 0 {
		return errors.New("sim: no server address")
	}
	seen := make(map[string]bool, len(frontends))
	for i, f := range frontends {
		switch {
		case f.Addr == "":
			return fmt.Errorf("sim: frontend %d has no address", i+1)
		case seen[f.Addr]:
			return fmt.Errorf("sim: frontend %s given twice", f.Addr)
		}
		seen[f.Addr] = true
	}
	return nil
}

// frontend is where device d of member m connects.
func (c Config) frontend(m, d int) Frontend {
	return c.Frontends[(m+d)%len(c.Frontends)]
}

// addrs lists the frontends' addresses for the output: one server's
// address as it is.
func (c Config) addrs() string {
	list := make([]string, len(c.Frontends))
	for i, f := range c.Frontends {
		list[i] = f.Addr
	}
	return strings.Join(list, ", ")
}

// Summary is what a simulation did and found.
type Summary struct {
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

	// Of the process Config.Proc reads, zero if unknown: its resident set
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
func (s Summary) IntegrityErrors() uint64 {
	return s.Corrupt + s.Duplicates + s.Misdelivered + s.Reordered + s.Lost
}

// Run runs the simulation described above against the server at
// cfg.Addr until ctx ends or cfg.Duration passes, writing a status line to
// out every cfg.Interval. Then members stop posting, stay (or come) online
// until every acked delivery has arrived or cfg.Drain has passed, and log
// out; Run writes a summary to out and returns it. It returns an error
// only when the configuration is invalid or setup fails (or ctx ends during
// setup); integrity errors are in the summary.
func Run(ctx context.Context, cfg Config, out io.Writer) (Summary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Summary{}, err
	}
	sim := newSimulation(cfg, &lockedWriter{w: out})
	sim.printf("sim: setting up %d members in %d groups at %s (seed %d)\n",
		len(sim.members), len(sim.groups), cfg.addrs(), cfg.Seed)
	if err := sim.setup(ctx); err != nil {
		return Summary{}, err
	}
	sim.printf("sim: running at timescale %g (pauses %s–%s)\n",
		cfg.Timescale, sim.scale(pauseMin), sim.scale(pauseMax))
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

// simulation is one run of Run.
type simulation struct {
	cfg     Config
	out     io.Writer
	log     *slog.Logger
	members []*member
	groups  []*group
	byUID   map[string]*member // filled by setup, read-only afterwards
	slots   chan struct{}      // one element per open link; nil: no MaxOnline
	st      counters

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

// group is a group of members with indices lo ≤ i < hi; lo created it.
type group struct {
	gid    string
	lo, hi int
}

// member is a simulated member (a user with one device) and, as a
// sender, its part of the ledger.
type member struct {
	idx         int
	alias       string
	group       *group
	uid, nodeid string        // set by setup
	onlineSince atomic.Int64  // UnixNano of the current login; 0 while offline
	owed        atomic.Int64  // acked deliveries to this member not yet received
	wake        chan struct{} // (cap 1) owed fell to 0 after posting ended

	mu sync.Mutex
	// Guarded by mu:
	next    uint64           // number of the next post, the payload's seq
	posts   map[uint64]*post // posts not settled: unacked, or not yet received by every recipient
	pending map[int32]uint64 // recipient → latest post to it that it has not received
}

// counters are the counts of a run; all are updated atomically.
type counters struct {
	online                                     atomic.Int64
	logins, posts, postBytes, unacked          atomic.Uint64
	deliveries, deliveryBytes, errors          atomic.Uint64
	corrupt, duplicates, misdelivered, skipped atomic.Uint64
	reordered                                  atomic.Uint64
	owed                                       atomic.Int64 // acked deliveries not yet received
	loggedErrors, loggedIntegrity              atomic.Int64
	ackLatency, deliveryLatency                latency.Hist
}

func newSimulation(cfg Config, out io.Writer) *simulation {
	sim := &simulation{
		cfg:       cfg,
		out:       out,
		log:       cfg.Logger,
		byUID:     make(map[string]*member, cfg.Members),
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
	for g, b := range partition(cfg.Members, groupMax) {
		sim.groups = append(sim.groups, &group{gid: fmt.Sprintf("sim-%s-group-%d", tag, g), lo: b[0], hi: b[1]})
	}
	for _, g := range sim.groups {
		for i := g.lo; i < g.hi; i++ {
			sim.members = append(sim.members, &member{
				idx:     i,
				alias:   fmt.Sprintf("sim-%s-member-%d", tag, i),
				group:   g,
				wake:    make(chan struct{}, 1),
				posts:   make(map[uint64]*post),
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
	if n := sim.st.loggedErrors.Add(1); n <= maxLogged {
		sim.log.Warn(msg, args...)
		if n == maxLogged {
			sim.log.Warn("further failures are counted, not logged")
		}
	}
}

// integrity adds n integrity errors to c and logs the first few events.
func (sim *simulation) integrity(c *atomic.Uint64, n uint64, msg string, args ...any) {
	c.Add(n)
	if n := sim.st.loggedIntegrity.Add(1); n <= maxLogged {
		sim.log.Error(msg, args...)
		if n == maxLogged {
			sim.log.Error("further integrity errors are counted, not logged")
		}
	}
}

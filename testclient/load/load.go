// Package load is the load benchmark: Users members post to each other as
// fast as the server lets them, and every delivery is checked for
// integrity, order and loss (Run). It also measures what an idle logged-in
// link costs the server (Idle).
//
// Each sender (every member, or the first Senders) posts Posts messages of
// Size octets, every one to the same Recipients other members, chosen at
// random (seeded by Config.Seed) when the run starts and fixed for the run:
// so each (receiver, sender) pair is a stream that must arrive whole and in
// order, which testclient.OrderTracker checks exactly. Window posts are in
// flight per member (PostAsync); every receiving device acks each message as
// it arrives (AutoAck), so delivery runs as fast as the server's
// one-message-at-a-time queue allows.
//
// A site may be served by several frontends (Config.Frontends): member i
// connects to frontend i mod n, and with two or more frontends every
// member's recipients are on frontends other than its own, so that every
// delivery measured crosses from one frontend to another.
package load

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"mnm/testclient"
	"mnm/testclient/internal/latency"
	"mnm/testclient/internal/pool"
	"mnm/testclient/proc"
)

// Defaults of Config.
const (
	// DefaultTimeout bounds a whole run when Config.Timeout is 0:
	// long enough for the benchmark's standard runs on a loaded 2-core
	// machine, short enough that a lost message ends the run with a report
	// rather than a hang.
	DefaultTimeout = 2 * time.Minute
	// setupWorkers is how many registrations or logins run at once. The
	// server makes each account durable (fsyncs) and does a TLS handshake;
	// a few dozen at once keep it busy without tripping its login timeout.
	setupWorkers = 32
	// sampleInterval is how often the server's RSS is read during a run: often
	// enough to catch a peak that lasts a fraction of the run, rarely enough
	// that reading /proc costs nothing measurable.
	sampleInterval = 50 * time.Millisecond
	// senderPrefix starts a member's name in its payloads ("m17"); the
	// receiver finds the sender's index from it.
	senderPrefix = "m"
)

// Frontend is one address of the site under load.
type Frontend struct {
	Addr string      // "host:port"
	TLS  *tls.Config // nil: do not verify the certificate (a "=host:port" site)
}

// Config describes a load run.
type Config struct {
	// Frontends are the addresses serving the site: one server, or
	// several frontends of one clustered site. Members are spread over
	// them round-robin (see the package comment).
	Frontends []Frontend

	Users      int // members, each a freshly registered account with one device; at least 2
	Senders    int // members that post (the others only receive); 0 means all
	Posts      int // posts per sender
	Size       int // payload octets per post (at least PayloadMin of the member's name)
	Recipients int // recipients per post, 1 … Users-1
	Window     int // posts in flight per sender; at least 1

	// Timeout bounds the whole run, setup included; 0 means
	// DefaultTimeout. A run that times out reports what did not arrive.
	Timeout time.Duration
	// Seed chooses the recipients and the payload filler.
	Seed uint64
	// ServerPIDs, if any, are the server's processes (at most one per
	// frontend): their RSS and CPU time are read from /proc during the run
	// and summed. For a server in this process, pass os.Getpid() (the
	// figures then include the load generator).
	ServerPIDs []int
	// Strict runs CheckFrame on every received frame. It costs the load
	// generator two JSON encodings per frame, CPU the server then lacks on a
	// shared machine, so it is off by default; payloads are always checked.
	Strict bool
	// Ready, if set, is called once setup is done, just before the first
	// post: the place to start a CPU profile of the measured part.
	Ready func()
	// Logger receives progress events; nil discards them.
	Logger *slog.Logger
}

// Result is what a run measured. Rates are per second of Elapsed; MB is
// 10^6 octets of payload.
type Result struct {
	Users, Senders, Posts, Size, Recipients, Window int // the configuration run
	Frontends                                       int // addresses loaded

	// ServerPIDs are the processes whose figures the Server fields sum.
	ServerPIDs []int

	Posted     int64 // posts acked with a message id
	PostErrors int64 // posts refused, whose ack never came, or not sent because the run stopped
	Expected   int64 // deliveries owed for the posted messages: Posted × Recipients
	Delivered  int64 // distinct expected deliveries that arrived
	Lost       int64 // posted (acked) messages some recipient never got
	Duplicates int64 // deliveries of a message already received
	Reordered  int64 // deliveries after a later message of the same sender
	Corrupt    int64 // payloads failing CheckPayload, or from a sender that did not post to this member
	TimedOut   bool
	Err        string // why the run stopped before every delivery arrived, if it did

	Setup   time.Duration // registering the members
	Elapsed time.Duration // first post to last delivery (or to the end of the run)

	PostRate     float64 // acked posts per second
	DeliveryRate float64 // deliveries per second
	MBRate       float64 // delivered payload, MB per second

	AckP50, AckP99           time.Duration // post sent → its ack received
	DeliveryP50, DeliveryP99 time.Duration // post sent → delivered to a recipient

	ServerRSSPeak int64         // highest RSS (of ServerPIDs together) sampled during the run, octets; 0 if unknown
	ServerHWM     int64         // the servers' VmHWM (peak RSS over its life), summed, at the end; 0 if unknown
	ServerCPU     time.Duration // server CPU time (user+system) while posting; 0 if unknown
	LoaderCPU     time.Duration // this process's CPU time while posting
}

// MarshalJSON writes the result as one flat object with units in the keys
// (ms, s, bytes), the form `mnm load` prints. Against several frontends it
// adds "frontends", and "server_sum_of_pids" when the server figures are a
// sum; against one it is the single-server form.
func (r Result) MarshalJSON() ([]byte, error) {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	frontends, summed := siteKeys(r.Frontends, r.ServerPIDs)
	return json.Marshal(struct {
		Frontends     int     `json:"frontends,omitempty"`
		SummedPIDs    []int   `json:"server_sum_of_pids,omitempty"`
		Users         int     `json:"users"`
		Senders       int     `json:"senders"`
		Posts         int     `json:"posts"`
		Size          int     `json:"size"`
		Recipients    int     `json:"recipients"`
		Window        int     `json:"window"`
		Posted        int64   `json:"posted"`
		PostErrors    int64   `json:"post_errors"`
		Expected      int64   `json:"expected"`
		Delivered     int64   `json:"delivered"`
		Lost          int64   `json:"lost"`
		Duplicates    int64   `json:"duplicates"`
		Reordered     int64   `json:"reordered"`
		Corrupt       int64   `json:"corrupt"`
		TimedOut      bool    `json:"timed_out"`
		Err           string  `json:"error,omitempty"`
		SetupS        float64 `json:"setup_s"`
		ElapsedS      float64 `json:"elapsed_s"`
		PostRate      float64 `json:"posts_per_s"`
		DeliveryRate  float64 `json:"deliveries_per_s"`
		MBRate        float64 `json:"mb_per_s"`
		AckP50        float64 `json:"ack_p50_ms"`
		AckP99        float64 `json:"ack_p99_ms"`
		DeliveryP50   float64 `json:"delivery_p50_ms"`
		DeliveryP99   float64 `json:"delivery_p99_ms"`
		ServerRSSPeak int64   `json:"server_rss_peak_bytes,omitempty"`
		ServerHWM     int64   `json:"server_hwm_bytes,omitempty"`
		ServerCPU     float64 `json:"server_cpu_s,omitempty"`
		LoaderCPU     float64 `json:"loader_cpu_s"`
	}{
		frontends, summed,
		r.Users, r.Senders, r.Posts, r.Size, r.Recipients, r.Window,
		r.Posted, r.PostErrors, r.Expected, r.Delivered, r.Lost, r.Duplicates, r.Reordered, r.Corrupt,
		r.TimedOut, r.Err,
		r.Setup.Seconds(), r.Elapsed.Seconds(), round(r.PostRate), round(r.DeliveryRate), round(r.MBRate),
		ms(r.AckP50), ms(r.AckP99), ms(r.DeliveryP50), ms(r.DeliveryP99),
		r.ServerRSSPeak, r.ServerHWM, r.ServerCPU.Seconds(), r.LoaderCPU.Seconds(),
	})
}

// round keeps two decimals: rates are not meaningful beyond that.
func round(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }

// siteKeys are the values of the JSON keys "frontends" and
// "server_sum_of_pids": zero (omitted) against one server, so that its
// output is what it was before frontends.
func siteKeys(frontends int, pids []int) (int, []int) {
	if frontends < 2 {
		return 0, nil
	}
	return frontends, pids
}

// checkSite checks the addresses and processes of a site: at least one
// address, none empty or given twice, at most one process per address and
// none twice. The messages are the ones `mnm load` and `mnm N` show.
func checkSite(frontends []Frontend, pids []int) error {
	if len(frontends) == 0 {
		return errors.New("no server address")
	}
	seen := make(map[string]bool, len(frontends))
	for i, f := range frontends {
		switch {
		case f.Addr == "":
			return fmt.Errorf("frontend %d has no address", i+1)
		case seen[f.Addr]:
			return fmt.Errorf("frontend %s given twice", f.Addr)
		}
		seen[f.Addr] = true
	}
	if len(pids) > len(frontends) {
		return fmt.Errorf("%d server processes for %d frontends", len(pids), len(frontends))
	}
	seenPID := make(map[int]bool, len(pids))
	for _, pid := range pids {
		switch {
		case pid <= 0:
			return fmt.Errorf("server process %d", pid)
		case seenPID[pid]:
			return fmt.Errorf("server process %d given twice", pid)
		}
		seenPID[pid] = true
	}
	return nil
}

// otherFrontends is how many of users members are on a frontend other
// than member i's, with members spread over n frontends round-robin.
func otherFrontends(users, n, i int) int {
	if n < 2 {
		return users - 1
	}
	same := users / n // members on i's frontend, i included
	if i%n < users%n {
		same++
	}
	return users - same
}

// ErrConfig is wrapped by the errors of an unusable Config or IdleConfig.
var ErrConfig = errors.New("load: bad configuration")

func (cfg *Config) check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	if err := checkSite(cfg.Frontends, cfg.ServerPIDs); err != nil {
		return bad("%v", err)
	}
	n := len(cfg.Frontends)
	// The member with the fewest others on other frontends: the first
	// member of frontend 0 is on the most crowded one.
	fewest := otherFrontends(cfg.Users, n, 0)
	switch {
	case cfg.Users < 2:
		return bad("%d users; at least 2 are needed to post to each other", cfg.Users)
	case cfg.Senders < 0 || cfg.Senders > cfg.Users:
		return bad("%d senders of %d users", cfg.Senders, cfg.Users)
	case cfg.Posts < 1:
		return bad("%d posts per member", cfg.Posts)
	case cfg.Recipients < 1 || cfg.Recipients > cfg.Users-1:
		return bad("%d recipients; between 1 and users-1 (%d)", cfg.Recipients, cfg.Users-1)
	case cfg.Recipients > fewest:
		return bad("%d recipients; at most %d with %d users on %d frontends, each recipient on another frontend than its sender",
			cfg.Recipients, fewest, cfg.Users, n)
	case cfg.Window < 1:
		return bad("window %d", cfg.Window)
	case cfg.Size < testclient.PayloadMin(memberName(cfg.Users-1)) || cfg.Size > testclient.MaxDataLen:
		return bad("size %d; between %d and %d", cfg.Size, testclient.PayloadMin(memberName(cfg.Users-1)), testclient.MaxDataLen)
	}
	return nil
}

func memberName(i int) string { return senderPrefix + strconv.Itoa(i) }

// member is one account of a run: a sender and a receiver.
type member struct {
	idx  int
	name string // sender name in its payloads
	uid  string
	c    *testclient.Client
	to   []testclient.Recipient // whom it posts to
	toIx map[int]bool           // the same, by member index; read-only once posting starts
	sent []atomic.Int64

	// Written only by the Client's reader goroutine (OnMessage), read after
	// the Client is closed.
	order *testclient.OrderTracker // what this member received

	// Written only by the member's ack goroutine, read after it ended.
	ok []bool // ok[seq]: post seq was acked with a message id
}

// run is the state shared by a run's goroutines.
type run struct {
	cfg     Config
	log     *slog.Logger
	members []*member

	delivered  atomic.Int64
	target     atomic.Int64 // deliveries to wait for; lowered when a post fails
	corrupt    atomic.Int64
	posted     atomic.Int64
	postErrors atomic.Int64

	ackLatency      latency.Hist // post sent → its ack received
	deliveryLatency latency.Hist // post sent → delivered to a recipient

	stop     chan struct{} // closed when the run ends, for whatever reason
	stopOnce sync.Once
	complete chan struct{} // closed when target deliveries arrived
	compOnce sync.Once

	mu      sync.Mutex
	failure error // guarded by mu: the first link or post failure
}

// Run registers cfg.Users members, has each sender post cfg.Posts messages, waits
// until every delivery arrived (or the run times out, or a link fails), and
// reports what it measured. An error means the run could not start (bad
// configuration, failed registration); failures during the run are in the
// result, with whatever did not arrive counted as lost.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.check(); err != nil {
		return Result{}, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Senders == 0 {
		cfg.Senders = cfg.Users
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	r := &run{
		cfg:      cfg,
		log:      cfg.Logger,
		stop:     make(chan struct{}),
		complete: make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.target.Store(int64(cfg.Senders) * int64(cfg.Posts) * int64(cfg.Recipients))
	r.plan()

	t0 := time.Now()
	err := r.register(ctx)
	defer r.closeAll()
	if err != nil {
		return Result{}, err
	}
	setup := time.Since(t0)
	r.log.Info("load: members registered", "users", cfg.Users, "setup", setup)
	for _, m := range r.members {
		go r.watchLink(m)
	}

	if cfg.Ready != nil {
		cfg.Ready()
	}
	sampler := startSampler(cfg.ServerPIDs)
	loaderCPU0 := proc.SelfCPU()
	start := time.Now()
	var posters sync.WaitGroup
	for _, m := range r.members[:cfg.Senders] {
		posters.Add(1)
		go func() {
			defer posters.Done()
			r.post(m)
		}()
	}
	postersDone := make(chan struct{})
	go func() {
		posters.Wait()
		close(postersDone)
	}()
	// The run is over when every post has its ack and every delivery owed
	// arrived, or when it fails or times out.
	var lastPost time.Time
	timedOut := false
	complete, posted := r.complete, (<-chan struct{})(postersDone)
	for posted != nil || complete != nil {
		select {
		case <-complete:
			complete = nil
		case <-posted:
			lastPost = time.Now()
			posted = nil
		case <-r.stop:
			complete, posted = nil, nil
		case <-ctx.Done():
			timedOut = errors.Is(ctx.Err(), context.DeadlineExceeded)
			r.fail(fmt.Errorf("load: load run: %w", ctx.Err()))
		}
	}
	elapsed := time.Since(start)
	loaderCPU := proc.SelfCPU() - loaderCPU0
	r.halt()
	posters.Wait() // they see stop and return
	if lastPost.IsZero() {
		lastPost = time.Now()
	}
	server := sampler.finish()
	r.closeAll()

	res := r.result(timedOut)
	res.Setup, res.Elapsed, res.LoaderCPU = setup, elapsed, loaderCPU
	if d := lastPost.Sub(start); d > 0 {
		res.PostRate = float64(res.Posted) / d.Seconds()
	}
	if s := elapsed.Seconds(); s > 0 {
		res.DeliveryRate = float64(res.Delivered) / s
		res.MBRate = float64(res.Delivered) * float64(cfg.Size) / 1e6 / s
	}
	res.ServerRSSPeak, res.ServerHWM, res.ServerCPU = server.peakRSS, server.hwm, server.cpu
	return res, nil
}

// plan creates the members and chooses their recipients.
func (r *run) plan() {
	cfg := r.cfg
	r.members = make([]*member, cfg.Users)
	for i := range r.members {
		r.members[i] = &member{
			idx:   i,
			name:  memberName(i),
			toIx:  make(map[int]bool, cfg.Recipients),
			sent:  make([]atomic.Int64, cfg.Posts),
			ok:    make([]bool, cfg.Posts),
			order: testclient.NewOrderTracker(),
		}
	}
	n := len(cfg.Frontends)
	for i, m := range r.members[:cfg.Senders] {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
		if n > 1 {
			// Only members of other frontends: every delivery crosses.
			var others []int
			for j := range cfg.Users {
				if j%n != i%n {
					others = append(others, j)
				}
			}
			for len(m.toIx) < cfg.Recipients {
				m.toIx[others[rng.IntN(len(others))]] = true
			}
			continue
		}
		for len(m.toIx) < cfg.Recipients {
			j := rng.IntN(cfg.Users - 1)
			if j >= i {
				j++ // skip the member itself
			}
			m.toIx[j] = true
		}
	}
}

// frontend is where member (or idle link) i connects: round-robin.
func frontend(frontends []Frontend, i int) Frontend {
	return frontends[i%len(frontends)]
}

// register creates every member's account, setupWorkers at a time, each
// through the frontend its link stays on.
func (r *run) register(ctx context.Context) error {
	o := testclient.Options{AutoAck: true, Lax: !r.cfg.Strict, Logger: r.log, OnOther: func(*testclient.Frame) {}}
	err := setup(ctx, len(r.members), func(i int) error {
		m := r.members[i]
		fe := frontend(r.cfg.Frontends, i)
		mo := o
		mo.TLS = fe.TLS
		mo.OnMessage = func(f *testclient.Frame) { r.receive(m, f) }
		c, reg, err := testclient.Register(fe.Addr, "load", "_", mo)
		if err != nil {
			return fmt.Errorf("load: register member %d: %w", i, err)
		}
		m.c, m.uid = c, reg.UID
		return nil
	})
	if err != nil {
		return err
	}
	for _, m := range r.members {
		for j := range m.toIx {
			m.to = append(m.to, testclient.Recipient{ID: r.members[j].uid, Type: testclient.ToUser})
		}
	}
	return nil
}

// setup calls fn(0) … fn(n-1), setupWorkers at a time (pool.Run), and
// returns the first error; one that is ctx's own says it stopped setup.
func setup(ctx context.Context, n int, fn func(i int) error) error {
	err := pool.Run(ctx, setupWorkers, n, fn)
	if err != nil && err == ctx.Err() {
		return fmt.Errorf("load: setup: %w", err)
	}
	return err
}

// watchLink ends the run if m's link ends before the run does: its
// deliveries would never come.
func (r *run) watchLink(m *member) {
	select {
	case <-m.c.Done():
		r.fail(fmt.Errorf("load: link of member %d ended: %w", m.idx, m.c.Err()))
	case <-r.stop:
	}
}

// inFlight is a post awaiting its ack.
type inFlight struct {
	seq  int
	sent time.Time
	ack  <-chan testclient.AckResult
}

// post sends m's posts, Window at a time; a second goroutine collects the
// acks in order (the server answers a link's requests in order) and opens
// the window again.
func (r *run) post(m *member) {
	cfg := r.cfg
	window := make(chan struct{}, cfg.Window)
	pending := make(chan inFlight, cfg.Window)
	acksDone := make(chan struct{})
	go func() {
		defer close(acksDone)
		r.collectAcks(m, pending, window)
	}()
	defer func() {
		close(pending)
		<-acksDone
	}()
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(m.idx)|1<<63))
	for seq := range cfg.Posts {
		select {
		case window <- struct{}{}:
		case <-r.stop:
			r.postFailed(cfg.Posts - seq)
			return
		}
		data := testclient.MakePayload(uint64(seq), m.name, cfg.Size, rng)
		now := time.Now()
		m.sent[seq].Store(now.UnixNano())
		ch, err := m.c.PostAsync(m.to, data)
		if err != nil {
			r.fail(fmt.Errorf("load: post of member %d: %w", m.idx, err))
			r.postFailed(cfg.Posts - seq)
			return
		}
		pending <- inFlight{seq: seq, sent: now, ack: ch}
	}
}

// collectAcks waits for the acks of m's posts in the order sent.
func (r *run) collectAcks(m *member, pending <-chan inFlight, window <-chan struct{}) {
	for p := range pending {
		var res testclient.AckResult
		select {
		case res = <-p.ack:
		case <-r.stop:
			select {
			case res = <-p.ack: // it came as the run stopped: count it
			default:
				r.postFailed(1)
				<-window
				continue
			}
		}
		lat := time.Since(p.sent)
		switch {
		case res.Err != nil:
			r.fail(fmt.Errorf("load: ack of member %d post %d: %w", m.idx, p.seq, res.Err))
			r.postFailed(1)
		case res.Ack.Error != "" || res.Ack.MsgID == "":
			r.log.Warn("load: post refused", "member", m.idx, "seq", p.seq, "error", res.Ack.Error)
			r.postFailed(1)
		default:
			m.ok[p.seq] = true
			r.ackLatency.Observe(lat)
			r.posted.Add(1)
		}
		<-window
	}
}

// postFailed accounts for n posts that will not be delivered: the run no
// longer waits for their deliveries.
func (r *run) postFailed(n int) {
	r.postErrors.Add(int64(n))
	if r.target.Add(-int64(n)*int64(r.cfg.Recipients)) <= r.delivered.Load() {
		r.compOnce.Do(func() { close(r.complete) })
	}
}

// receive checks a message delivered to m. It runs on m's reader goroutine;
// AutoAck acks the message when it returns.
func (r *run) receive(m *member, f *testclient.Frame) {
	now := time.Now()
	if f.Op() != "delivery" {
		return // another stored message (a login notice): acked, not counted
	}
	info, err := testclient.CheckPayload(f.Data)
	var s *member
	if err == nil {
		s = r.sender(info.Sender)
	}
	switch {
	case err != nil:
		r.log.Warn("load: corrupt payload", "receiver", m.idx, "err", err)
	case s == nil || !s.toIx[m.idx] || f.Str("from") != s.uid:
		err = fmt.Errorf("unexpected sender %q (from %q)", info.Sender, f.Str("from"))
	case info.Seq >= uint64(len(s.sent)):
		err = fmt.Errorf("sequence number %d beyond the run's %d posts", info.Seq, len(s.sent))
	}
	if err != nil {
		r.log.Warn("load: bad delivery", "receiver", m.idx, "err", err)
		r.corrupt.Add(1)
		return
	}
	if m.order.Observe(m.name, s.name, info.Seq) == testclient.Duplicate {
		return
	}
	r.deliveryLatency.Observe(now.Sub(time.Unix(0, s.sent[info.Seq].Load())))
	if r.delivered.Add(1) >= r.target.Load() {
		r.compOnce.Do(func() { close(r.complete) })
	}
}

// sender returns the member named name, or nil.
func (r *run) sender(name string) *member {
	if len(name) <= len(senderPrefix) || name[:len(senderPrefix)] != senderPrefix {
		return nil
	}
	i, err := strconv.Atoi(name[len(senderPrefix):])
	if err != nil || i < 0 || i >= len(r.members) {
		return nil
	}
	return r.members[i]
}

// fail records the first failure and ends the run.
func (r *run) fail(err error) {
	r.mu.Lock()
	if r.failure == nil {
		r.failure = err
		r.log.Warn("load: run failed", "err", err)
	}
	r.mu.Unlock()
	r.halt()
}

func (r *run) halt() { r.stopOnce.Do(func() { close(r.stop) }) }

// closeAll closes every member's link; it may be called more than once.
func (r *run) closeAll() {
	r.halt()
	var wg sync.WaitGroup
	for _, m := range r.members {
		if m.c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.c.Close()
		}()
	}
	wg.Wait()
}

// result counts what arrived and what did not. The links must be closed.
func (r *run) result(timedOut bool) Result {
	cfg := r.cfg
	res := Result{
		Users: cfg.Users, Senders: cfg.Senders, Posts: cfg.Posts, Size: cfg.Size, Recipients: cfg.Recipients, Window: cfg.Window,
		Frontends: len(cfg.Frontends), ServerPIDs: cfg.ServerPIDs,
		Posted:     r.posted.Load(),
		PostErrors: r.postErrors.Load(),
		Delivered:  r.delivered.Load(),
		Corrupt:    r.corrupt.Load(),
		TimedOut:   timedOut,
	}
	res.Expected = res.Posted * int64(cfg.Recipients)
	for _, m := range r.members {
		st := m.order.Stats()
		res.Duplicates += int64(st.Duplicates)
		res.Reordered += int64(st.Reorders)
	}
	for _, s := range r.members {
		for j := range s.toIx {
			recv := r.members[j]
			for _, seq := range recv.order.Missing(recv.name, s.name, uint64(cfg.Posts), cfg.Posts) {
				if s.ok[seq] {
					res.Lost++
				}
			}
		}
	}
	// Without samples the percentiles stay 0.
	ack, deliv := r.ackLatency.Counts(), r.deliveryLatency.Counts()
	res.AckP50, _ = ack.Quantile(0.5)
	res.AckP99, _ = ack.Quantile(0.99)
	res.DeliveryP50, _ = deliv.Quantile(0.5)
	res.DeliveryP99, _ = deliv.Quantile(0.99)
	r.mu.Lock()
	if r.failure != nil {
		res.Err = r.failure.Error()
	}
	r.mu.Unlock()
	return res
}

// sampler reads the servers' RSS, summed, every sampleInterval and keeps
// the peak.
type sampler struct {
	pids []int
	cpu0 time.Duration
	stop chan struct{}
	done chan samples
}

type samples struct {
	peakRSS, hwm int64
	cpu          time.Duration
}

// startSampler starts sampling pids; none samples nothing, and neither
// does a process that cannot be read.
func startSampler(pids []int) *sampler {
	s := &sampler{pids: pids, stop: make(chan struct{}), done: make(chan samples, 1)}
	if len(pids) == 0 {
		return s
	}
	ps, err := proc.ReadSum(pids)
	if err != nil {
		s.pids = nil
		return s
	}
	s.cpu0 = ps.CPU
	go func() {
		t := time.NewTicker(sampleInterval)
		defer t.Stop()
		peak := ps.RSS
		for {
			select {
			case <-t.C:
				if ps, err := proc.ReadSum(pids); err == nil {
					peak = max(peak, ps.RSS)
				}
			case <-s.stop:
				s.done <- samples{peakRSS: peak}
				return
			}
		}
	}()
	return s
}

// finish stops sampling and returns the peak RSS, the final VmHWM and the CPU
// time used since the start; zeros if the process could not be read.
func (s *sampler) finish() samples {
	if len(s.pids) == 0 {
		return samples{}
	}
	close(s.stop)
	out := <-s.done
	if ps, err := proc.ReadSum(s.pids); err == nil {
		out.peakRSS = max(out.peakRSS, ps.RSS)
		out.hwm = ps.HWM
		out.cpu = ps.CPU - s.cpu0
	}
	return out
}

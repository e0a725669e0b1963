package testclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load benchmark: Users members post to each other as fast as the server
// lets them, and every delivery is checked for integrity, order and loss.
//
// Each sender (every member, or the first Senders) posts Posts messages of
// Size octets, every one to the same Recipients other members, chosen at random (seeded by LoadConfig.Seed)
// when the run starts and fixed for the run: so each (receiver, sender) pair
// is a stream that must arrive whole and in order, which OrderTracker checks
// exactly. Window posts are in flight per member (PostAsync); every receiving
// device acks each message as it arrives (AutoAck), so delivery runs as fast
// as the server's one-message-at-a-time queue allows.

// Defaults of LoadConfig.
const (
	// DefaultLoadTimeout bounds a whole run when LoadConfig.Timeout is 0:
	// long enough for the benchmark's standard runs on a loaded 2-core
	// machine, short enough that a lost message ends the run with a report
	// rather than a hang.
	DefaultLoadTimeout = 2 * time.Minute
	// setupParallel is how many registrations or logins run at once. The
	// server makes each account durable (fsyncs) and does a TLS handshake;
	// a few dozen at once keep it busy without tripping its login timeout.
	setupParallel = 32
	// sampleInterval is how often the server's RSS is read during a run: often
	// enough to catch a peak that lasts a fraction of the run, rarely enough
	// that reading /proc costs nothing measurable.
	sampleInterval = 50 * time.Millisecond
	// userHZ is the unit of the CPU times in /proc/PID/stat. Linux fixes it
	// at 100 for user space on every architecture Go runs on.
	userHZ = 100
	// senderPrefix starts a member's name in its payloads ("m17"); the
	// receiver finds the sender's index from it.
	senderPrefix = "m"
)

// LoadConfig describes a load run.
type LoadConfig struct {
	Addr string      // server "host:port"
	TLS  *tls.Config // nil: do not verify the certificate (a "=host:port" site)

	Users      int // members, each a freshly registered account with one device; at least 2
	Senders    int // members that post (the others only receive); 0 means all
	Posts      int // posts per sender
	Size       int // payload octets per post (at least PayloadMin of the member's name)
	Recipients int // recipients per post, 1 … Users-1
	Window     int // posts in flight per sender; at least 1

	// Timeout bounds the whole run, setup included; 0 means
	// DefaultLoadTimeout. A run that times out reports what did not arrive.
	Timeout time.Duration
	// Seed chooses the recipients and the payload filler.
	Seed uint64
	// ServerPID, if not 0, is the server's process: its RSS and CPU time are
	// read from /proc during the run. For a server in this process, pass
	// os.Getpid() (the figures then include the load generator).
	ServerPID int
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

// LoadResult is what a run measured. Rates are per second of Elapsed; MB is
// 10^6 octets of payload.
type LoadResult struct {
	Users, Senders, Posts, Size, Recipients, Window int // the configuration run

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

	ServerRSSPeak int64         // highest RSS sampled during the run, octets; 0 if unknown
	ServerHWM     int64         // the server's VmHWM (peak RSS over its life) at the end; 0 if unknown
	ServerCPU     time.Duration // server CPU time (user+system) while posting; 0 if unknown
	LoaderCPU     time.Duration // this process's CPU time while posting
}

// MarshalJSON writes the result as one flat object with units in the keys
// (ms, s, bytes), the form `mnm load` prints.
func (r LoadResult) MarshalJSON() ([]byte, error) {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	return json.Marshal(struct {
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

// ErrLoadConfig is wrapped by the errors of an unusable LoadConfig or IdleConfig.
var ErrLoadConfig = errors.New("testclient: bad load configuration")

func (cfg *LoadConfig) check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrLoadConfig, fmt.Sprintf(format, a...))
	}
	switch {
	case cfg.Addr == "":
		return bad("no server address")
	case cfg.Users < 2:
		return bad("%d users; at least 2 are needed to post to each other", cfg.Users)
	case cfg.Senders < 0 || cfg.Senders > cfg.Users:
		return bad("%d senders of %d users", cfg.Senders, cfg.Users)
	case cfg.Posts < 1:
		return bad("%d posts per member", cfg.Posts)
	case cfg.Recipients < 1 || cfg.Recipients > cfg.Users-1:
		return bad("%d recipients; between 1 and users-1 (%d)", cfg.Recipients, cfg.Users-1)
	case cfg.Window < 1:
		return bad("window %d", cfg.Window)
	case cfg.Size < PayloadMin(memberName(cfg.Users-1)) || cfg.Size > MaxDataLen:
		return bad("size %d; between %d and %d", cfg.Size, PayloadMin(memberName(cfg.Users-1)), MaxDataLen)
	}
	return nil
}

func memberName(i int) string { return senderPrefix + strconv.Itoa(i) }

// member is one account of a run: a sender and a receiver.
type member struct {
	idx  int
	name string // sender name in its payloads
	uid  string
	c    *Client
	to   []Recipient  // whom it posts to
	toIx map[int]bool // the same, by member index; read-only once posting starts
	sent []atomic.Int64

	// Written only by the Client's reader goroutine (OnMessage), read after
	// the Client is closed.
	order    *OrderTracker // what this member received
	deliverL []time.Duration

	// Written only by the member's ack goroutine, read after it ended.
	ackL []time.Duration
	ok   []bool // ok[seq]: post seq was acked with a message id
}

// loadRun is the state shared by a run's goroutines.
type loadRun struct {
	cfg     LoadConfig
	log     *slog.Logger
	members []*member

	delivered  atomic.Int64
	target     atomic.Int64 // deliveries to wait for; lowered when a post fails
	corrupt    atomic.Int64
	posted     atomic.Int64
	postErrors atomic.Int64

	stop     chan struct{} // closed when the run ends, for whatever reason
	stopOnce sync.Once
	complete chan struct{} // closed when target deliveries arrived
	compOnce sync.Once

	mu      sync.Mutex
	failure error // guarded by mu: the first link or post failure
}

// RunLoad registers cfg.Users members, has each sender post cfg.Posts messages, waits
// until every delivery arrived (or the run times out, or a link fails), and
// reports what it measured. An error means the run could not start (bad
// configuration, failed registration); failures during the run are in the
// result, with whatever did not arrive counted as lost.
func RunLoad(ctx context.Context, cfg LoadConfig) (LoadResult, error) {
	if err := cfg.check(); err != nil {
		return LoadResult{}, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultLoadTimeout
	}
	if cfg.Senders == 0 {
		cfg.Senders = cfg.Users
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	r := &loadRun{
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
		return LoadResult{}, err
	}
	setup := time.Since(t0)
	r.log.Info("load: members registered", "users", cfg.Users, "setup", setup)
	for _, m := range r.members {
		go r.watchLink(m)
	}

	if cfg.Ready != nil {
		cfg.Ready()
	}
	sampler := startSampler(cfg.ServerPID)
	loaderCPU0 := selfCPU()
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
			r.fail(fmt.Errorf("testclient: load run: %w", ctx.Err()))
		}
	}
	elapsed := time.Since(start)
	loaderCPU := selfCPU() - loaderCPU0
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
func (r *loadRun) plan() {
	cfg := r.cfg
	r.members = make([]*member, cfg.Users)
	for i := range r.members {
		r.members[i] = &member{
			idx:   i,
			name:  memberName(i),
			toIx:  make(map[int]bool, cfg.Recipients),
			sent:  make([]atomic.Int64, cfg.Posts),
			ok:    make([]bool, cfg.Posts),
			order: NewOrderTracker(),
		}
	}
	for i, m := range r.members[:cfg.Senders] {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
		for len(m.toIx) < cfg.Recipients {
			j := rng.IntN(cfg.Users - 1)
			if j >= i {
				j++ // skip the member itself
			}
			m.toIx[j] = true
		}
	}
}

// register creates every member's account, setupParallel at a time.
func (r *loadRun) register(ctx context.Context) error {
	o := Options{TLS: r.cfg.TLS, AutoAck: true, Lax: !r.cfg.Strict, Logger: r.log, OnOther: func(*Frame) {}}
	err := parallel(ctx, len(r.members), func(i int) error {
		m := r.members[i]
		mo := o
		mo.OnMessage = func(f *Frame) { r.receive(m, f) }
		c, reg, err := Register(r.cfg.Addr, "load", "_", mo)
		if err != nil {
			return fmt.Errorf("testclient: register member %d: %w", i, err)
		}
		m.c, m.uid = c, reg.UID
		return nil
	})
	if err != nil {
		return err
	}
	for _, m := range r.members {
		for j := range m.toIx {
			m.to = append(m.to, Recipient{ID: r.members[j].uid, Type: ToUser})
		}
	}
	return nil
}

// parallel runs fn(0) … fn(n-1), setupParallel at a time, and returns the
// first error; after an error or the end of ctx no new call starts.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, setupParallel)
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return errors.Join(first, fmt.Errorf("testclient: setup: %w", ctx.Err()))
		}
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// watchLink ends the run if m's link ends before the run does: its
// deliveries would never come.
func (r *loadRun) watchLink(m *member) {
	select {
	case <-m.c.Done():
		r.fail(fmt.Errorf("testclient: link of member %d ended: %w", m.idx, m.c.Err()))
	case <-r.stop:
	}
}

// inFlight is a post awaiting its ack.
type inFlight struct {
	seq  int
	sent time.Time
	ack  <-chan AckResult
}

// post sends m's posts, Window at a time; a second goroutine collects the
// acks in order (the server answers a link's requests in order) and opens
// the window again.
func (r *loadRun) post(m *member) {
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
		data := MakePayload(uint64(seq), m.name, cfg.Size, rng)
		now := time.Now()
		m.sent[seq].Store(now.UnixNano())
		ch, err := m.c.PostAsync(m.to, data)
		if err != nil {
			r.fail(fmt.Errorf("testclient: post of member %d: %w", m.idx, err))
			r.postFailed(cfg.Posts - seq)
			return
		}
		pending <- inFlight{seq: seq, sent: now, ack: ch}
	}
}

// collectAcks waits for the acks of m's posts in the order sent.
func (r *loadRun) collectAcks(m *member, pending <-chan inFlight, window <-chan struct{}) {
	for p := range pending {
		var res AckResult
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
			r.fail(fmt.Errorf("testclient: ack of member %d post %d: %w", m.idx, p.seq, res.Err))
			r.postFailed(1)
		case res.Ack.Error != "" || res.Ack.MsgID == "":
			r.log.Warn("load: post refused", "member", m.idx, "seq", p.seq, "error", res.Ack.Error)
			r.postFailed(1)
		default:
			m.ok[p.seq] = true
			m.ackL = append(m.ackL, lat)
			r.posted.Add(1)
		}
		<-window
	}
}

// postFailed accounts for n posts that will not be delivered: the run no
// longer waits for their deliveries.
func (r *loadRun) postFailed(n int) {
	r.postErrors.Add(int64(n))
	if r.target.Add(-int64(n)*int64(r.cfg.Recipients)) <= r.delivered.Load() {
		r.compOnce.Do(func() { close(r.complete) })
	}
}

// receive checks a message delivered to m. It runs on m's reader goroutine;
// AutoAck acks the message when it returns.
func (r *loadRun) receive(m *member, f *Frame) {
	now := time.Now()
	if f.Op() != "delivery" {
		return // another stored message (a login notice): acked, not counted
	}
	info, err := CheckPayload(f.Data)
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
	if m.order.Observe(m.name, s.name, info.Seq) == Duplicate {
		return
	}
	m.deliverL = append(m.deliverL, now.Sub(time.Unix(0, s.sent[info.Seq].Load())))
	if r.delivered.Add(1) >= r.target.Load() {
		r.compOnce.Do(func() { close(r.complete) })
	}
}

// sender returns the member named name, or nil.
func (r *loadRun) sender(name string) *member {
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
func (r *loadRun) fail(err error) {
	r.mu.Lock()
	if r.failure == nil {
		r.failure = err
		r.log.Warn("load: run failed", "err", err)
	}
	r.mu.Unlock()
	r.halt()
}

func (r *loadRun) halt() { r.stopOnce.Do(func() { close(r.stop) }) }

// closeAll closes every member's link; it may be called more than once.
func (r *loadRun) closeAll() {
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
func (r *loadRun) result(timedOut bool) LoadResult {
	cfg := r.cfg
	res := LoadResult{
		Users: cfg.Users, Senders: cfg.Senders, Posts: cfg.Posts, Size: cfg.Size, Recipients: cfg.Recipients, Window: cfg.Window,
		Posted:     r.posted.Load(),
		PostErrors: r.postErrors.Load(),
		Delivered:  r.delivered.Load(),
		Corrupt:    r.corrupt.Load(),
		TimedOut:   timedOut,
	}
	res.Expected = res.Posted * int64(cfg.Recipients)
	var ackL, deliverL []time.Duration
	for _, m := range r.members {
		st := m.order.Stats()
		res.Duplicates += int64(st.Duplicates)
		res.Reordered += int64(st.Reorders)
		ackL = append(ackL, m.ackL...)
		deliverL = append(deliverL, m.deliverL...)
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
	res.AckP50, res.AckP99 = percentile(ackL, 50), percentile(ackL, 99)
	res.DeliveryP50, res.DeliveryP99 = percentile(deliverL, 50), percentile(deliverL, 99)
	r.mu.Lock()
	if r.failure != nil {
		res.Err = r.failure.Error()
	}
	r.mu.Unlock()
	return res
}

// percentile returns the nearest-rank pth percentile of d, sorting d; 0 if
// d is empty.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := (len(d)*p + 99) / 100 // ceil(n·p/100), the nearest rank
	return d[max(i-1, 0)]
}

// ProcStats is what /proc says about a process's memory and CPU.
type ProcStats struct {
	RSS int64         // resident set size now (VmRSS), octets
	HWM int64         // peak resident set size (VmHWM), octets
	CPU time.Duration // user + system time so far
}

// ReadProcStats reads /proc/PID/status and /proc/PID/stat (Linux only).
func ReadProcStats(pid int) (ProcStats, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	status, err := os.ReadFile(dir + "status")
	if err != nil {
		return ProcStats{}, fmt.Errorf("testclient: %w", err)
	}
	stat, err := os.ReadFile(dir + "stat")
	if err != nil {
		return ProcStats{}, fmt.Errorf("testclient: %w", err)
	}
	var ps ProcStats
	if ps.RSS, ps.HWM, err = parseProcStatus(status); err != nil {
		return ProcStats{}, err
	}
	if ps.CPU, err = parseProcStat(stat); err != nil {
		return ProcStats{}, err
	}
	return ps, nil
}

// ErrProc is wrapped by the errors of parsing /proc files.
var ErrProc = errors.New("testclient: unexpected /proc format")

// parseProcStatus returns VmRSS and VmHWM from /proc/PID/status, whose lines
// read "VmRSS:\t   12345 kB".
func parseProcStatus(b []byte) (rss, hwm int64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	found := 0
	for sc.Scan() {
		key, val, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(key) {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &hwm
		default:
			continue
		}
		f := bytes.Fields(val)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, 0, fmt.Errorf("%w: status line %q", ErrProc, sc.Bytes())
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return 0, 0, fmt.Errorf("%w: status line %q", ErrProc, sc.Bytes())
		}
		*dst = kb << 10
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("%w: status without VmRSS and VmHWM", ErrProc)
	}
	return rss, hwm, nil
}

// parseProcStat returns utime+stime from /proc/PID/stat. The command name
// (field 2) is in parentheses and may hold spaces and parentheses itself, so
// fields are counted from the last ')': utime and stime are fields 14 and 15.
func parseProcStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%w: stat without a command name", ErrProc)
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3 (state)
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, fmt.Errorf("%w: stat with %d fields", ErrProc, len(f)+2)
	}
	var ticks int64
	for _, k := range []int{utime, stime} {
		n, err := strconv.ParseInt(string(f[k]), 10, 64)
		if err != nil || n < 0 || n > 1<<50 {
			return 0, fmt.Errorf("%w: stat field %d %q", ErrProc, k+3, f[k])
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / userHZ), nil
}

// sampler reads a process's RSS every sampleInterval and keeps the peak.
type sampler struct {
	pid  int
	cpu0 time.Duration
	stop chan struct{}
	done chan samples
}

type samples struct {
	peakRSS, hwm int64
	cpu          time.Duration
}

// startSampler starts sampling pid; pid 0 samples nothing.
func startSampler(pid int) *sampler {
	s := &sampler{pid: pid, stop: make(chan struct{}), done: make(chan samples, 1)}
	if pid == 0 {
		return s
	}
	ps, err := ReadProcStats(pid)
	if err != nil {
		s.pid = 0
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
				if ps, err := ReadProcStats(pid); err == nil {
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
	if s.pid == 0 {
		return samples{}
	}
	close(s.stop)
	out := <-s.done
	if ps, err := ReadProcStats(s.pid); err == nil {
		out.peakRSS = max(out.peakRSS, ps.RSS)
		out.hwm = ps.HWM
		out.cpu = ps.CPU - s.cpu0
	}
	return out
}

// The idle-links measurement: how much server memory a logged-in link costs
// while it does nothing, the state most of a site's devices are in.

// Defaults of IdleConfig.
const (
	// DefaultIdleSettle is how long RunIdle waits after the links are set up
	// before reading the server's RSS: long enough for the short-lived
	// goroutines and buffers of the logins to be gone.
	DefaultIdleSettle = 2 * time.Second
	// idlePulse keeps the measured links alive: below the server's 2-minute
	// idle deadline (SPEC §2), and rare enough to cost nothing.
	idlePulse = time.Minute
)

// IdleConfig describes an idle-links measurement.
type IdleConfig struct {
	Addr string      // server "host:port"
	TLS  *tls.Config // nil: do not verify the certificate
	// Links is how many accounts are registered and then logged in, one link each.
	Links int
	// ServerPID is the server's process, whose RSS is read from /proc.
	// Required. For a server in this process, os.Getpid(): the figures then
	// include this process's own end of the links.
	ServerPID int
	// Settle is the wait before each RSS reading; 0 means DefaultIdleSettle.
	Settle time.Duration
	// Hold, if set, keeps the links up and idle this much longer after the
	// reading with all links logged in, then reads the RSS once more: long
	// enough (over 2 minutes) and the server has collected garbage at least
	// once without a burst of logins behind it, which is what a site's idle
	// links cost it for most of their lives.
	Hold time.Duration
	// Timeout bounds the whole measurement, Hold excepted; 0 means
	// DefaultLoadTimeout.
	Timeout time.Duration
	// Measured, if set, is called right after the last RSS reading, while
	// every link is still up: the place to take a heap profile of them.
	Measured func()
	Logger   *slog.Logger // nil discards
}

// IdleResult is what RunIdle measured. RSS figures are octets.
type IdleResult struct {
	Links int
	// RSSStart is the server's RSS before anything was done; RSSBefore after
	// the accounts were registered (their links closed again); RSSAfter with
	// every account logged in on an idle link; RSSHeld after IdleConfig.Hold
	// more (0 without Hold).
	RSSStart, RSSBefore, RSSAfter, RSSHeld int64
	PerLink                                float64       // (RSSAfter − RSSBefore) / Links
	PerLinkHeld                            float64       // (RSSHeld − RSSBefore) / Links
	Register, Login                        time.Duration // time to register, then to log in, all accounts
}

// MarshalJSON writes the result with units in the keys, as `mnm load -idle` prints it.
func (r IdleResult) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Links         int     `json:"links"`
		RSSStart      int64   `json:"server_rss_start_bytes"`
		RSSBefore     int64   `json:"server_rss_before_bytes"`
		RSSAfter      int64   `json:"server_rss_after_bytes"`
		RSSHeld       int64   `json:"server_rss_held_bytes,omitempty"`
		PerLinkKiB    float64 `json:"per_link_kib"`
		PerLinkHeld   float64 `json:"per_link_held_kib,omitempty"`
		PerAccountKiB float64 `json:"per_account_kib"`
		RegisterS     float64 `json:"register_s"`
		LoginS        float64 `json:"login_s"`
	}{
		r.Links, r.RSSStart, r.RSSBefore, r.RSSAfter, r.RSSHeld,
		round(r.PerLink / 1024), round(r.PerLinkHeld / 1024),
		round(float64(r.RSSBefore-r.RSSStart) / float64(max(r.Links, 1)) / 1024),
		r.Register.Seconds(), r.Login.Seconds(),
	})
}

// RunIdle registers cfg.Links accounts (closing each link at once, so that
// the "before" figure holds the accounts but not their links), reads the
// server's RSS, logs every account in and waits until each link has received
// and acked its login notice, then reads the RSS again with all links idle.
// The difference per link is what an idle logged-in link costs the server.
func RunIdle(ctx context.Context, cfg IdleConfig) (IdleResult, error) {
	if cfg.Addr == "" || cfg.Links < 1 || cfg.ServerPID == 0 {
		return IdleResult{}, fmt.Errorf("%w: idle needs an address, links ≥ 1 and the server's pid", ErrLoadConfig)
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultIdleSettle
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultLoadTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout+cfg.Hold)
	defer cancel()
	res := IdleResult{Links: cfg.Links}
	rss := func() (int64, error) {
		ps, err := ReadProcStats(cfg.ServerPID)
		return ps.RSS, err
	}
	var err error
	if res.RSSStart, err = rss(); err != nil {
		return res, err
	}

	t0 := time.Now()
	regs := make([]Registration, cfg.Links)
	o := Options{TLS: cfg.TLS, Lax: true, Logger: log, OnOther: func(*Frame) {}}
	err = parallel(ctx, cfg.Links, func(i int) error {
		c, reg, err := Register(cfg.Addr, "idle", "_", o)
		if err != nil {
			return fmt.Errorf("testclient: register account %d: %w", i, err)
		}
		regs[i] = reg
		return c.Close()
	})
	if err != nil {
		return res, err
	}
	res.Register = time.Since(t0)
	log.Info("idle: accounts registered", "links", cfg.Links, "took", res.Register)
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return res, err
	}
	if res.RSSBefore, err = rss(); err != nil {
		return res, err
	}

	t0 = time.Now()
	clients := make([]*Client, cfg.Links)
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			if c != nil {
				wg.Go(func() { c.Close() })
			}
		}
		wg.Wait()
	}()
	var notices sync.WaitGroup // one per link: its login notice arrived
	notices.Add(cfg.Links)
	err = parallel(ctx, cfg.Links, func(i int) error {
		lo := o
		lo.AutoAck, lo.PulseInterval = true, idlePulse
		var once sync.Once
		lo.OnMessage = func(f *Frame) {
			if f.Op() == "login" {
				once.Do(notices.Done)
			}
		}
		c, _, err := LoginRetry(ctx, cfg.Addr, regs[i].UID, regs[i].NodeID, lo)
		if err != nil {
			return fmt.Errorf("testclient: log in account %d: %w", i, err)
		}
		clients[i] = c
		return nil
	})
	if err != nil {
		return res, err
	}
	noticed := make(chan struct{})
	go func() {
		notices.Wait()
		close(noticed)
	}()
	select {
	case <-noticed:
	case <-ctx.Done():
		return res, fmt.Errorf("testclient: idle: waiting for login notices: %w", ctx.Err())
	}
	res.Login = time.Since(t0)
	log.Info("idle: links logged in", "links", cfg.Links, "took", res.Login)
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return res, err
	}
	if res.RSSAfter, err = rss(); err != nil {
		return res, err
	}
	res.PerLink = float64(res.RSSAfter-res.RSSBefore) / float64(cfg.Links)
	if cfg.Hold > 0 {
		log.Info("idle: holding the links", "for", cfg.Hold)
		if err := sleepCtx(ctx, cfg.Hold); err != nil {
			return res, err
		}
		if res.RSSHeld, err = rss(); err != nil {
			return res, err
		}
		res.PerLinkHeld = float64(res.RSSHeld-res.RSSBefore) / float64(cfg.Links)
	}
	if cfg.Measured != nil {
		cfg.Measured()
	}
	return res, nil
}

// sleepCtx waits d, or until ctx ends. It is a measurement's settling time,
// not synchronisation: nothing is waited for but the clock.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("testclient: idle: %w", ctx.Err())
	}
}

package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beevik/ntp"
)

// ntpDefaultPort is the NTP service port (RFC 5905).
const ntpDefaultPort = "123"

// ntpQueryTimeout bounds one NTP query. A public server answers in well under
// a second; 2 s allows a slow path while keeping the worst start-up delay with
// the default configuration (hosts asked at once, 3 tries × 2 s) at 6 s.
const ntpQueryTimeout = 2 * time.Second

// ntpOffsetWarn is the offset beyond which the local clock is set badly
// enough to tell the operator: other services on the host use it too.
const ntpOffsetWarn = 10 * time.Second

// Clock is a wall clock corrected by NTP: measured at start (SyncClock) and,
// if the daemon runs RunChecks, again periodically. Message ids and posted
// times come from it, because SPEC §3 asks for NTP time.
//
// Now adds the time elapsed since start, read from the monotonic clock, to
// the corrected wall time of the start. A step of the system clock (by an
// operator or a time daemon) therefore does not move it, backwards or
// forwards. What moves it is a new measurement (Adjust): the host's
// oscillator drifts, and the re-checks correct that.
//
// Now never goes backwards, also when a re-check finds a smaller offset.
// The change is slewed, as ntpd does: the applied offset moves toward the
// measured one by at most slewRate (500 ppm, ntpd's maximum), so Now still
// advances, at 0.9995 of real time, until it has caught up; a 100 ms
// correction takes 200 s. Clamping alone (never return less than the last
// value) would instead freeze the clock for the whole correction, stamping
// every post in that time alike. A clamp to the last value returned is kept
// as well, as the guarantee across goroutines: one that read the elapsed
// time just before a re-check may compute a later time than one just after.
// On hosts that suspend (not servers, usually) the clock falls behind by
// the time spent suspended, since Go's monotonic clock stops then, until
// the next re-check. The store persists an id ceiling too, so ids never
// repeat across restarts whatever this clock does.
//
// A Clock is safe for concurrent use.
type Clock struct {
	base  time.Time                  // time.Now() at the start, with its monotonic reading; never changes
	state atomic.Pointer[clockState] // the offset being applied
	last  atomic.Int64               // the latest time Now returned, Unix nanoseconds
	// synced is when NTP last gave a usable answer, Unix nanoseconds of
	// the local clock; 0: never, the local clock is used as it is.
	synced atomic.Int64
}

// slewRate is the largest rate at which the applied offset changes: 1/2000
// of elapsed time, 500 ppm, the most ntpd slews by. Below 1, so Now keeps
// advancing while a negative correction is applied.
const slewRate = 2000

// clockState is an offset change being slewed: from the applied offset
// from, at elapsed time at (since Clock.base), toward target, the latest
// measurement. Immutable once published.
type clockState struct {
	at     time.Duration
	from   time.Duration
	target time.Duration
}

// applied is the offset to add at elapsed time e.
func (s *clockState) applied(e time.Duration) time.Duration {
	step := max(e-s.at, 0) / slewRate
	switch d := s.target - s.from; {
	case d.Abs() <= step:
		return s.target
	case d > 0:
		return s.from + step
	default:
		return s.from - step
	}
}

// newClock returns a Clock starting now with offset applied at once.
func newClock(offset time.Duration) *Clock {
	c := &Clock{base: time.Now()}
	c.state.Store(&clockState{from: offset, target: offset})
	return c
}

// ClockOption adjusts SyncClock.
type ClockOption func(*clockOptions)

type clockOptions struct {
	timeout time.Duration
}

// WithNTPTimeout sets how long SyncClock waits for each NTP reply (default
// ntpQueryTimeout). Tests shorten it.
func WithNTPTimeout(d time.Duration) ClockOption {
	return func(o *clockOptions) { o.timeout = d }
}

// LocalClock returns a Clock that uses the local clock as it is (offset 0),
// without querying NTP: for tests and tools that need a Clock.
func LocalClock() *Clock { return newClock(0) }

// DefaultNTPMaxOffset bounds the offset SyncClock accepts from NTP unless the
// configuration says otherwise. NTP is unauthenticated: a spoofed reply at
// start would move message ids, and the store's persisted id ceiling, forward
// for good. 1000 s is ntpd's own panic threshold, beyond which it too refuses
// to step the clock without an operator; a host whose clock is that far off
// needs its time daemon fixed, not a correction inside mnm.
const DefaultNTPMaxOffset = 1000 * time.Second

// ntpAgreement is how far apart two hosts' offsets may be and still agree.
// Public servers agree to milliseconds; a second allows an asymmetric path
// while keeping a spoofer who wins the vote from moving ids by more.
const ntpAgreement = time.Second

// ntpReading is one host's measurement.
type ntpReading struct {
	host     string
	offset   time.Duration
	rtt      time.Duration
	agreeing int // hosts in the majority (set on the answer used)
}

// SyncClock measures the local clock's offset from NTP. It asks every host of
// cfg at once, each up to cfg.Retries times (at least once); a host that
// answers "kiss of death" (slow down) is not asked again. Because NTP is
// unauthenticated, an answer is used only when it is believable:
//
//   - an offset beyond cfg.MaxOffset (DefaultNTPMaxOffset) is refused;
//   - when several hosts answer, a majority must agree within ntpAgreement,
//     and the median of that majority is used; answers outside it are
//     logged as outliers. Without a majority nothing is used.
//
// Every refusal is logged at error level. When no answer is usable it logs a
// warning and returns a local clock (offset 0), or an error when
// cfg.Required.
func SyncClock(cfg NTPConfig, logger *slog.Logger, opts ...ClockOption) (*Clock, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	agreed, err := measureNTP(cfg, logger, opts...)
	if err == nil {
		level := slog.LevelInfo
		if agreed.offset.Abs() > ntpOffsetWarn {
			level = slog.LevelWarn
		}
		logger.Log(context.Background(), level, "ntp clock synced", "host", agreed.host, "offset", agreed.offset,
			"rtt", agreed.rtt, "agreeing", agreed.agreeing, "asked", len(cfg.Hosts))
		c := newClock(agreed.offset)
		c.synced.Store(time.Now().UnixNano())
		return c, nil
	}
	if cfg.Required {
		return nil, fmt.Errorf("ntp: required, but no usable answer: %w", err)
	}
	logger.Warn("ntp unavailable, using the local clock", "hosts", len(cfg.Hosts))
	return LocalClock(), nil
}

// measureNTP asks the hosts of cfg and returns the believable answer, by
// the rules of SyncClock, logging each refusal; or an error saying why
// there is none.
func measureNTP(cfg NTPConfig, logger *slog.Logger, opts ...ClockOption) (*ntpReading, error) {
	o := clockOptions{timeout: ntpQueryTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	maxOffset := DefaultNTPMaxOffset
	if cfg.MaxOffsetSeconds > 0 {
		maxOffset = time.Duration(cfg.MaxOffsetSeconds) * time.Second
	}

	var errs []error
	var answers []ntpReading
	for _, r := range queryHosts(cfg.Hosts, max(cfg.Retries, 1), o.timeout) {
		switch {
		case r.err != nil:
			logger.Warn("ntp host did not answer", "host", r.host, "tries", r.tries, "err", r.err)
			errs = append(errs, fmt.Errorf("%s: %w", r.host, r.err))
		case r.resp.ClockOffset.Abs() > maxOffset:
			logger.Error("ntp answer refused: offset beyond the bound (spoofed, or this host's clock needs fixing)",
				"host", r.host, "offset", r.resp.ClockOffset, "maxOffset", maxOffset)
			errs = append(errs, fmt.Errorf("%s: offset %v beyond %v", r.host, r.resp.ClockOffset, maxOffset))
		default:
			answers = append(answers, ntpReading{host: r.host, offset: r.resp.ClockOffset, rtt: r.resp.RTT})
		}
	}

	if len(answers) > 0 {
		agreed, outliers := ntpMajority(answers)
		for _, a := range outliers {
			logger.Error("ntp answer refused: disagrees with the other hosts", "host", a.host, "offset", a.offset)
		}
		if agreed != nil {
			agreed.agreeing = len(answers) - len(outliers)
			return agreed, nil
		}
		logger.Error("ntp hosts disagree; not using any of them", "answers", len(answers))
		errs = append(errs, fmt.Errorf("%d hosts answered without a majority agreeing within %v", len(answers), ntpAgreement))
	}
	if len(cfg.Hosts) == 0 {
		errs = append(errs, errors.New("no hosts configured"))
	}
	return nil, errors.Join(errs...)
}

// ntpMajority returns the answer to use, the median of the largest group of
// answers within ntpAgreement of its median, when that group is a strict
// majority of answers; outliers are the answers outside it. Without a strict
// majority agreed is nil (one answer is a majority of one).
func ntpMajority(answers []ntpReading) (agreed *ntpReading, outliers []ntpReading) {
	sorted := slices.Clone(answers)
	slices.SortFunc(sorted, func(a, b ntpReading) int { return cmp.Compare(a.offset, b.offset) })
	// The largest window of sorted offsets no wider than 2×ntpAgreement
	// around its median: every member is within ntpAgreement of it.
	best, bestLen := 0, 0
	for i := range sorted {
		j := i
		for j < len(sorted) && sorted[j].offset-sorted[i].offset <= 2*ntpAgreement {
			j++
		}
		if j-i > bestLen {
			best, bestLen = i, j-i
		}
	}
	if 2*bestLen <= len(sorted) && len(sorted) > 1 {
		return nil, nil
	}
	group := sorted[best : best+bestLen]
	median := group[len(group)/2]
	for _, a := range answers {
		if (a.offset - median.offset).Abs() > ntpAgreement {
			outliers = append(outliers, a)
		}
	}
	return &median, outliers
}

// ntpResult is what asking one host gave.
type ntpResult struct {
	host  string
	resp  *ntp.Response
	tries int
	err   error
}

// queryHosts asks every host at once, so that the start-up delay is one
// host's worst case rather than the sum, and returns the results in the
// configured order.
func queryHosts(hosts []string, tries int, timeout time.Duration) []ntpResult {
	results := make([]ntpResult, len(hosts))
	var wg sync.WaitGroup
	for i, host := range hosts {
		wg.Go(func() {
			resp, n, err := queryNTP(host, tries, timeout)
			results[i] = ntpResult{host: host, resp: resp, tries: n, err: err}
		})
	}
	wg.Wait()
	return results
}

// queryNTP asks host up to tries times and returns the first valid reply and
// the number of queries sent.
func queryNTP(host string, tries int, timeout time.Duration) (*ntp.Response, int, error) {
	addr, err := ntpAddress(host)
	if err != nil {
		return nil, 0, err
	}
	var lastErr error
	for i := 1; i <= tries; i++ {
		resp, err := ntp.QueryWithOptions(addr, ntp.QueryOptions{Timeout: timeout})
		if err == nil {
			err = resp.Validate()
		}
		if err == nil {
			return resp, i, nil
		}
		lastErr = err
		if errors.Is(err, ntp.ErrKissOfDeath) {
			// The server asks us to stop; asking again at once is abuse.
			return nil, i, err
		}
	}
	return nil, tries, lastErr
}

// ntpAddress turns a configured NTP host ("host", "host:port", "[v6]",
// "[v6]:port" or a bare IPv6 address) into the "host:port" to query.
func ntpAddress(host string) (string, error) {
	const maxNTPHostBytes = 253 + len("[]:65535") // a DNS name plus a port
	if host == "" {
		return "", errors.New("empty host")
	}
	if len(host) > maxNTPHostBytes {
		return "", fmt.Errorf("host of %d bytes, at most %d", len(host), maxNTPHostBytes)
	}
	name, port := host, ntpDefaultPort
	switch {
	case strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]"):
		name = host[1 : len(host)-1]
		if ip, err := netip.ParseAddr(name); err != nil || !ip.Is6() || !validZone(ip.Zone()) {
			return "", fmt.Errorf("%q: %q in brackets is not an IPv6 address", host, name)
		}
	case strings.Count(host, ":") > 1 && !strings.HasPrefix(host, "["):
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return "", fmt.Errorf("%q: not an IPv6 address: %v", host, err)
		}
		if !validZone(ip.Zone()) {
			return "", fmt.Errorf("%q: zone %q is not an interface name", host, ip.Zone())
		}
	case strings.Contains(host, ":"):
		var err error
		name, port, err = net.SplitHostPort(host)
		if err != nil {
			return "", fmt.Errorf("%q: %v", host, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return "", fmt.Errorf("%q: port %q is not a number in 1…65535", host, port)
		}
	}
	if ip, err := netip.ParseAddr(name); err != nil && !isHostName(name) || err == nil && !validZone(ip.Zone()) {
		return "", fmt.Errorf("%q: %q is neither an IP address nor a host name", host, name)
	}
	return net.JoinHostPort(name, port), nil
}

// validZone reports whether an IPv6 zone can be written in an address:
// netip accepts any zone ("::0%[" parses), but one holding a bracket cannot
// be joined with a port and split again. Interface names and indexes use
// letters, digits, '.', '_' and '-'.
func validZone(zone string) bool {
	for _, c := range zone {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Now returns the NTP-corrected time, in UTC and without a monotonic reading.
// It never goes backwards (see Clock).
func (c *Clock) Now() time.Time {
	e := time.Since(c.base)
	t := c.base.Add(e + c.state.Load().applied(e)).Round(0)
	n := t.UnixNano()
	for {
		last := c.last.Load()
		if n <= last {
			return time.Unix(0, last).UTC()
		}
		if c.last.CompareAndSwap(last, n) {
			return t.UTC()
		}
	}
}

// Offset is NTP time minus the local clock at the latest measurement; 0
// when NTP was never used. Now may still be slewing toward it.
func (c *Clock) Offset() time.Duration { return c.state.Load().target }

// Synced is when NTP last gave a usable answer (by the local clock), or the
// zero time when it never has and the local clock is used as it is.
func (c *Clock) Synced() time.Time {
	if ns := c.synced.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Adjust makes offset the clock's target, slewed toward from the offset
// applied now, and returns the previous target.
func (c *Clock) Adjust(offset time.Duration) (prev time.Duration) {
	for {
		old := c.state.Load()
		e := time.Since(c.base)
		next := &clockState{at: e, from: old.applied(e), target: offset}
		if c.state.CompareAndSwap(old, next) {
			return old.target
		}
	}
}

// Recheck measures the offset again, by the rules of SyncClock, and adjusts
// the clock to it. It logs the result at debug level, or at warn level when
// the offset moved by more than ntpOffsetWarn; refused answers are logged
// as at start. Without a believable answer the clock keeps its offset and
// the error says why.
func (c *Clock) Recheck(cfg NTPConfig, logger *slog.Logger, opts ...ClockOption) error {
	agreed, err := measureNTP(cfg, logger, opts...)
	if err != nil {
		logger.Warn("ntp re-check found no usable answer; keeping the offset", "offset", c.Offset(), "err", err)
		return err
	}
	prev := c.Adjust(agreed.offset)
	c.synced.Store(time.Now().UnixNano())
	level := slog.LevelDebug
	if (agreed.offset - prev).Abs() > ntpOffsetWarn {
		level = slog.LevelWarn
	}
	logger.Log(context.Background(), level, "ntp re-check", "host", agreed.host, "offset", agreed.offset,
		"change", agreed.offset-prev, "rtt", agreed.rtt, "agreeing", agreed.agreeing, "asked", len(cfg.Hosts))
	return nil
}

// DefaultNTPCheckEvery is how often the offset is measured again unless
// ntp.checkEveryMinutes says otherwise: a server's oscillator drifts by
// tens of ppm, a few ms an hour, so an hourly check keeps the clock within
// NTP's own accuracy at one query per host an hour.
const DefaultNTPCheckEvery = defaultNTPCheckEveryMinutes * time.Minute

// RunChecks calls Recheck every interval until stop is closed, then closes
// done. The daemon runs it (startDaemon) and stops it at shutdown.
func (c *Clock) RunChecks(cfg NTPConfig, every time.Duration, logger *slog.Logger, stop <-chan struct{}, done chan<- struct{}, opts ...ClockOption) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			c.Recheck(cfg, logger, opts...)
		}
	}
}

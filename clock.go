package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/beevik/ntp"
)

// ntpDefaultPort is the NTP service port (RFC 5905).
const ntpDefaultPort = "123"

// ntpQueryTimeout bounds one NTP query. A public server answers in well under
// a second; 2 s allows a slow path while keeping the worst start-up delay with
// the default configuration (4 hosts × 3 tries × 2 s) under half a minute.
const ntpQueryTimeout = 2 * time.Second

// ntpOffsetWarn is the offset beyond which the local clock is set badly
// enough to tell the operator: other services on the host use it too.
const ntpOffsetWarn = 10 * time.Second

// Clock is a wall clock corrected by an NTP measurement taken at start. Message
// ids and posted times come from it, because SPEC §3 asks for NTP time.
//
// Now is monotonic: it adds the time elapsed since the measurement, read from
// the monotonic clock, to the corrected wall time of the measurement. A later
// step of the system clock (by an operator or a time daemon) therefore does
// not move it, backwards or forwards. Two consequences are accepted: it drifts
// with the host's oscillator until the next start, and on hosts that suspend
// (not servers, usually) it falls behind by the time spent suspended, since
// Go's monotonic clock stops then. The store still persists an id ceiling, so
// ids never repeat across restarts whatever this clock does.
//
// A Clock is immutable and safe for concurrent use.
type Clock struct {
	base   time.Time     // time.Now() at the measurement, with its monotonic reading
	offset time.Duration // NTP time minus local wall time at the measurement
	synced bool          // whether an NTP host answered
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
func LocalClock() *Clock {
	return &Clock{base: time.Now()}
}

// SyncClock measures the local clock's offset from NTP. It queries cfg.Hosts in
// order, each up to cfg.Retries times (at least once), and uses the first
// valid reply; a host that answers "kiss of death" (slow down) is not asked
// again. When no host answers it logs a warning and returns a local clock
// (offset 0), or an error when cfg.Required.
func SyncClock(cfg NTPConfig, logger *slog.Logger, opts ...ClockOption) (*Clock, error) {
	o := clockOptions{timeout: ntpQueryTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tries := max(cfg.Retries, 1)

	var errs []error
	for _, host := range cfg.Hosts {
		resp, n, err := queryNTP(host, tries, o.timeout)
		if err != nil {
			logger.Warn("ntp host did not answer", "host", host, "tries", n, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", host, err))
			continue
		}
		c := &Clock{base: time.Now(), offset: resp.ClockOffset, synced: true}
		level := slog.LevelInfo
		if resp.ClockOffset.Abs() > ntpOffsetWarn {
			level = slog.LevelWarn
		}
		logger.Log(context.Background(), level, "ntp clock synced", "host", host, "offset", resp.ClockOffset, "rtt", resp.RTT)
		return c, nil
	}

	if len(cfg.Hosts) == 0 {
		errs = append(errs, errors.New("no hosts configured"))
	}
	if cfg.Required {
		return nil, fmt.Errorf("ntp: required, but no host answered: %w", errors.Join(errs...))
	}
	logger.Warn("ntp unavailable, using the local clock", "hosts", len(cfg.Hosts))
	return LocalClock(), nil
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
	return c.base.Add(c.offset + time.Since(c.base)).Round(0).UTC()
}

// Offset is the measured NTP time minus the local wall time, 0 when no NTP host
// answered.
func (c *Clock) Offset() time.Duration { return c.offset }

// Synced reports whether an NTP host answered; false means Now is the local
// clock.
func (c *Clock) Synced() bool { return c.synced }

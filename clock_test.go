package main

import (
	"encoding/binary"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ntpReplyMode says how a test NTP responder answers.
type ntpReplyMode int

const (
	ntpAnswer      ntpReplyMode = iota // a valid reply with the responder's time
	ntpUnsynced                        // a reply with leap indicator 3 (clock not synchronised)
	ntpKissOfDeath                     // stratum 0, code RATE: "stop asking"
	ntpDrop                            // no reply: the client times out
)

// Layout of an NTP v4 packet (RFC 5905 §7.3).
const (
	ntpPacketLen   = 48
	ntpModeClient  = 3
	ntpModeServer  = 4
	ntpEpochOffset = 2208988800 // seconds from 1900-01-01 to 1970-01-01
)

// ntpResponder is a loopback NTP server for tests: it answers NTP v4 client
// packets with its own time, the real time plus offset, and counts requests.
type ntpResponder struct {
	conn     *net.UDPConn
	offset   atomic.Int64 // a time.Duration; setOffset changes it mid-test
	mode     ntpReplyMode
	requests atomic.Int64
	done     chan struct{}
}

// startNTPResponder starts a loopback NTP server whose clock runs offset ahead
// of the real one and returns its "127.0.0.1:port", usable as an NTPConfig
// host. It stops when the test ends. End-to-end tests use it to give the
// server a known clock without touching the network.
func startNTPResponder(t *testing.T, offset time.Duration) (addr string) {
	t.Helper()
	return newNTPResponder(t, offset, ntpAnswer).conn.LocalAddr().String()
}

// newNTPResponder starts a responder answering in mode.
func newNTPResponder(t *testing.T, offset time.Duration, mode ntpReplyMode) *ntpResponder {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("ntp responder: %v", err)
	}
	r := &ntpResponder{conn: conn, mode: mode, done: make(chan struct{})}
	r.setOffset(offset)
	go r.serve()
	t.Cleanup(func() {
		conn.Close()
		<-r.done
	})
	return r
}

func (r *ntpResponder) addr() string { return r.conn.LocalAddr().String() }

// setOffset moves the responder's clock: later answers are offset ahead
// of the real time.
func (r *ntpResponder) setOffset(d time.Duration) { r.offset.Store(int64(d)) }

func (r *ntpResponder) serve() {
	defer close(r.done)
	buf := make([]byte, 512)
	for {
		n, from, err := r.conn.ReadFromUDP(buf)
		if err != nil {
			return // closed at cleanup
		}
		if n < ntpPacketLen || buf[0]&7 != ntpModeClient {
			continue
		}
		r.requests.Add(1)
		if r.mode == ntpDrop {
			continue
		}
		offset := time.Duration(r.offset.Load())
		received := time.Now().Add(offset)
		resp := make([]byte, ntpPacketLen)
		version := buf[0] >> 3 & 7
		leap, stratum, refID := byte(0), byte(1), "LOCL"
		switch r.mode {
		case ntpUnsynced:
			leap = 3
		case ntpKissOfDeath:
			stratum, refID = 0, "RATE"
		}
		resp[0] = leap<<6 | version<<3 | ntpModeServer
		resp[1] = stratum
		resp[2] = buf[2] // poll: echo the client's
		resp[3] = 0xec   // precision: 2^-20 s
		copy(resp[12:16], refID)
		binary.BigEndian.PutUint64(resp[16:], ntpTimestamp(received.Add(-time.Minute))) // reference: last "set"
		copy(resp[24:32], buf[40:48])                                                   // origin: the client's transmit field
		binary.BigEndian.PutUint64(resp[32:], ntpTimestamp(received))
		binary.BigEndian.PutUint64(resp[40:], ntpTimestamp(time.Now().Add(offset)))
		r.conn.WriteToUDP(resp, from) // best effort, like a real server
	}
}

// ntpTimestamp is t in NTP's 32.32 fixed-point seconds since 1900 (era 0; the
// client infers the era).
func ntpTimestamp(t time.Time) uint64 {
	secs := uint64(t.Unix() + ntpEpochOffset)
	frac := uint64(t.Nanosecond()) << 32 / uint64(time.Second)
	return secs<<32 | frac
}

// closedUDPAddr returns a loopback UDP address nobody listens on: a query to it
// is refused (ICMP port unreachable) or times out.
func closedUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// testNTPTimeout keeps failing queries short; loopback replies take
// microseconds, so it cannot cause a spurious failure of a live responder
// except on a badly overloaded machine.
const testNTPTimeout = 500 * time.Millisecond

// observe returns what the server sees of a Clock: how far its Now is from
// the local clock, which is the offset in use, and whether SyncClock used an
// NTP answer, which it logs. Loopback round trips take microseconds; a
// second of slack in comparing offsets cannot flake, yet catches a sign
// error or a unit slip.
func observe(c *Clock, logs *lockedBuffer) (offset time.Duration, synced bool) {
	return c.Now().Sub(time.Now()), strings.Contains(logs.String(), "ntp clock synced")
}

// near reports whether two offsets agree within observe's slack.
func near(a, b time.Duration) bool { return (a - b).Abs() <= time.Second }

func TestSyncClockMeasuresOffset(t *testing.T) {
	for _, offset := range []time.Duration{time.Hour, -time.Hour, 0} {
		t.Run(offset.String(), func(t *testing.T) {
			addr := startNTPResponder(t, offset)
			logger, logs := newTestLogger()
			c, err := SyncClock(NTPConfig{Hosts: []string{addr}, Retries: 1, MaxOffsetSeconds: 2 * 3600}, logger, WithNTPTimeout(testNTPTimeout))
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := observe(c, logs); !near(got, offset) {
				t.Errorf("Now() - time.Now() = %v, want %v ± 1s", got, offset)
			}
			out := logs.String()
			if !strings.Contains(out, "ntp clock synced") || !strings.Contains(out, "host="+addr) || !strings.Contains(out, "rtt=") {
				t.Errorf("log lacks the sync line with host and rtt:\n%s", out)
			}
			wantLevel := "level=INFO"
			if offset.Abs() > ntpOffsetWarn {
				wantLevel = "level=WARN"
			}
			if !strings.Contains(out, wantLevel) {
				t.Errorf("log lacks %s:\n%s", wantLevel, out)
			}
		})
	}
}

func TestSyncClockUnreachableFallsBack(t *testing.T) {
	addr := closedUDPAddr(t)
	logger, logs := newTestLogger()
	c, err := SyncClock(NTPConfig{Hosts: []string{addr}, Retries: 2}, logger, WithNTPTimeout(testNTPTimeout))
	if err != nil {
		t.Fatalf("SyncClock: %v, want a local clock", err)
	}
	if off, synced := observe(c, logs); !near(off, 0) || synced {
		t.Errorf("offset %v, synced %v; want the local clock", off, synced)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN msg=\"ntp host did not answer\" host=" + addr, "level=WARN msg=\"ntp unavailable, using the local clock\""} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestSyncClockRequired(t *testing.T) {
	_, err := SyncClock(NTPConfig{Hosts: []string{closedUDPAddr(t)}, Retries: 1, Required: true}, nil, WithNTPTimeout(testNTPTimeout))
	if err == nil || !strings.Contains(err.Error(), "ntp: required") {
		t.Errorf("err = %v, want ntp: required …", err)
	}
	_, err = SyncClock(NTPConfig{Required: true}, nil)
	if err == nil || !strings.Contains(err.Error(), "no hosts configured") {
		t.Errorf("no hosts: err = %v, want no hosts configured", err)
	}
}

func TestSyncClockNoHosts(t *testing.T) {
	logger, logs := newTestLogger()
	c, err := SyncClock(NTPConfig{}, logger)
	if err != nil {
		t.Fatalf("SyncClock: %v, want a local clock", err)
	}
	if off, synced := observe(c, logs); !near(off, 0) || synced {
		t.Errorf("offset %v, synced %v; want the local clock", off, synced)
	}
	if !strings.Contains(logs.String(), "ntp unavailable") {
		t.Errorf("no warning logged:\n%s", logs)
	}
}

func TestSyncClockRetries(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mode      ntpReplyMode
		retries   int
		wantTries int64
	}{
		{"unsynced", ntpUnsynced, 3, 3},
		{"zero retries means one try", ntpUnsynced, 0, 1},
		{"timeouts", ntpDrop, 2, 2},
		{"kiss of death is not retried", ntpKissOfDeath, 3, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := newNTPResponder(t, 0, tc.mode)
			good := newNTPResponder(t, time.Hour, ntpAnswer)
			timeout := testNTPTimeout
			if tc.mode == ntpDrop {
				timeout = 50 * time.Millisecond // every try waits this long
			}
			logger, logs := newTestLogger()
			c, err := SyncClock(NTPConfig{Hosts: []string{bad.addr(), good.addr()}, Retries: tc.retries, MaxOffsetSeconds: 2 * 3600}, logger, WithNTPTimeout(timeout))
			if err != nil {
				t.Fatal(err)
			}
			if got := bad.requests.Load(); got != tc.wantTries {
				t.Errorf("failing host got %d requests, want %d", got, tc.wantTries)
			}
			if got := good.requests.Load(); got != 1 {
				t.Errorf("second host got %d requests, want 1", got)
			}
			if off, _ := observe(c, logs); !near(off, time.Hour) {
				t.Errorf("offset %v, want the second host's 1h", off)
			}
			if !strings.Contains(logs.String(), "host="+bad.addr()) {
				t.Errorf("failing host not logged:\n%s", logs)
			}
		})
	}
}

// TestSyncClockRefusesSpoofedOffset is the attack of issue #10 item 10: a
// spoofed answer at start, a day ahead, would push ids (and the persisted id
// ceiling) forward for good. Beyond the bound it is refused, loudly.
func TestSyncClockRefusesSpoofedOffset(t *testing.T) {
	for _, tc := range []struct {
		name      string
		maxOffset int
		offset    time.Duration
		accept    bool
	}{
		{"a day ahead, default bound", 0, 24 * time.Hour, false},
		{"a day behind, default bound", 0, -24 * time.Hour, false},
		{"within the default bound", 0, DefaultNTPMaxOffset - time.Minute, true},
		{"beyond a configured bound", 60, 2 * time.Minute, false},
		{"within a configured bound", 7200, time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spoof := newNTPResponder(t, tc.offset, ntpAnswer)
			logger, logs := newTestLogger()
			cfg := NTPConfig{Hosts: []string{spoof.addr()}, Retries: 1, MaxOffsetSeconds: tc.maxOffset}
			c, err := SyncClock(cfg, logger, WithNTPTimeout(testNTPTimeout))
			if err != nil {
				t.Fatal(err)
			}
			off, synced := observe(c, logs)
			if tc.accept {
				if !near(off, tc.offset) || !synced {
					t.Errorf("offset %v, synced %v; want %v, true", off, synced, tc.offset)
				}
				return
			}
			if !near(off, 0) || synced {
				t.Errorf("offset %v, synced %v; want the local clock", off, synced)
			}
			if !strings.Contains(logs.String(), `level=ERROR msg="ntp answer refused: offset beyond the bound`) {
				t.Errorf("refusal not logged at error level:\n%s", logs)
			}
			cfg.Required = true
			if _, err := SyncClock(cfg, nil, WithNTPTimeout(testNTPTimeout)); err == nil || !strings.Contains(err.Error(), "beyond") {
				t.Errorf("required: err = %v, want a refusal naming the bound", err)
			}
		})
	}
}

// TestSyncClockHostsMustAgree: when several hosts answer, a majority must
// agree; a spoofer among honest hosts is outvoted, and hosts that disagree
// without a majority are not used at all.
func TestSyncClockHostsMustAgree(t *testing.T) {
	const spoofed = 10 * time.Minute // within the default bound
	for _, tc := range []struct {
		name    string
		offsets []time.Duration
		want    time.Duration // the offset used; ignored when !synced
		synced  bool
		errors  int // error lines logged
	}{
		{"all agree", []time.Duration{0, 0, 0}, 0, true, 0},
		{"one spoofer among three", []time.Duration{0, spoofed, 0}, 0, true, 1},
		{"spoofer first among three", []time.Duration{spoofed, 0, 0}, 0, true, 1},
		{"two spoofers agreeing outvote one", []time.Duration{spoofed, 0, spoofed}, spoofed, true, 1},
		{"two disagree", []time.Duration{0, spoofed}, 0, false, 1},
		{"three disagree", []time.Duration{0, spoofed, -spoofed}, 0, false, 1},
		{"one answer", []time.Duration{spoofed}, spoofed, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hosts []string
			var rs []*ntpResponder
			for _, off := range tc.offsets {
				r := newNTPResponder(t, off, ntpAnswer)
				rs = append(rs, r)
				hosts = append(hosts, r.addr())
			}
			logger, logs := newTestLogger()
			c, err := SyncClock(NTPConfig{Hosts: hosts, Retries: 1}, logger, WithNTPTimeout(testNTPTimeout))
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range rs {
				if n := r.requests.Load(); n != 1 {
					t.Errorf("host %d asked %d times, want 1 (every host is asked)", i, n)
				}
			}
			off, synced := observe(c, logs)
			if synced != tc.synced {
				t.Fatalf("synced %v, want %v\n%s", synced, tc.synced, logs)
			}
			if !near(off, tc.want) {
				t.Errorf("offset %v, want %v", off, tc.want)
			}
			if got := strings.Count(logs.String(), "level=ERROR"); got != tc.errors {
				t.Errorf("%d error lines, want %d:\n%s", got, tc.errors, logs)
			}
			if !tc.synced && !strings.Contains(logs.String(), "ntp hosts disagree") {
				t.Errorf("disagreement not logged:\n%s", logs)
			}
		})
	}
}

func TestClockNowMonotonic(t *testing.T) {
	c := newClock(-time.Hour)
	prev := c.Now()
	for range 10000 {
		now := c.Now()
		if now.Before(prev) {
			t.Fatalf("Now() went back from %v to %v", prev, now)
		}
		prev = now
	}
	if loc := prev.Location(); loc != time.UTC {
		t.Errorf("Now() location = %v, want UTC", loc)
	}
	if s := prev.String(); strings.Contains(s, "m=") {
		t.Errorf("Now() carries a monotonic reading: %s", s)
	}
}

func TestNTPAddress(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"pool.ntp.org", "pool.ntp.org:123"},
		{"pool.ntp.org:1123", "pool.ntp.org:1123"},
		{"127.0.0.1", "127.0.0.1:123"},
		{"127.0.0.1:5", "127.0.0.1:5"},
		{"::1", "[::1]:123"},
		{"[::1]", "[::1]:123"},
		{"[::1]:9", "[::1]:9"},
		{"2001:db8::1", "[2001:db8::1]:123"},
		{"time_1.example", "time_1.example:123"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ntpAddress(tc.in)
			if err != nil || got != tc.want {
				t.Errorf("ntpAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
	for _, in := range []string{
		"",
		"host:",
		"host:0",
		"host:65536",
		"host:ntp",
		"host name",
		"[127.0.0.1]",
		"[::1",
		"::1]",
		"1:2:3:x::",
		"a..b",
		strings.Repeat("a", 300),
		"host\n",
	} {
		if got, err := ntpAddress(in); err == nil {
			t.Errorf("ntpAddress(%q) = %q, want an error", in, got)
		}
	}
}

// FuzzNTPAddress checks that any configured host string either fails or yields
// an address that net.SplitHostPort accepts with a numeric, non-zero port.
func FuzzNTPAddress(f *testing.F) {
	for _, seed := range []string{
		"pool.ntp.org",  // the common case: a name, default port
		"127.0.0.1:123", // test responders
		"[::1]:9",       // bracketed IPv6 with port
		"fe80::1%eth0",  // bare IPv6 with a zone
		"[",             // unbalanced bracket
		"a:b:c",         // colons but not IPv6
		"host:99999",    // port out of range
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		addr, err := ntpAddress(in)
		if err != nil {
			return
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" || port == "" || port == "0" {
			t.Fatalf("ntpAddress(%q) = %q: host %q port %q err %v", in, addr, host, port, err)
		}
	})
}

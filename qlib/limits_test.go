package qlib

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testLimiter is a limiter on a fake clock, logging into a buffer.
func testLimiter(cfg Limits) (*limiter, *fakeClock, *syncBuffer) {
	clock := newFakeClock()
	cfg.Now = clock.Now
	logs := &syncBuffer{}
	return newLimiter(cfg, slog.New(slog.NewTextHandler(logs, nil))), clock, logs
}

func stranger(addr string) remote {
	return remote{addr: netip.MustParseAddr(addr), limited: true}
}

func TestBucket(t *testing.T) {
	clock := newFakeClock()
	var b bucket
	for i := range 5 {
		if !b.take(clock.Now(), 5, time.Hour) {
			t.Fatalf("a new bucket of 5 refused take %d", i+1)
		}
	}
	if b.take(clock.Now(), 5, time.Hour) {
		t.Fatal("an empty bucket gave a token")
	}
	// One token comes back every 12 minutes, not before.
	clock.Advance(11 * time.Minute)
	if b.take(clock.Now(), 5, time.Hour) {
		t.Fatal("a token came back after 11 minutes, want 12")
	}
	clock.Advance(time.Minute)
	if !b.take(clock.Now(), 5, time.Hour) {
		t.Fatal("no token after 12 minutes")
	}
	if b.take(clock.Now(), 5, time.Hour) {
		t.Fatal("two tokens after 12 minutes")
	}
	// A long pause refills to the size, no more.
	clock.Advance(100 * time.Hour)
	n := 0
	for b.take(clock.Now(), 5, time.Hour) {
		n++
	}
	if n != 5 {
		t.Fatalf("after a long pause the bucket gave %d tokens, want 5", n)
	}
	// A clock stepped back refills nothing.
	clock.Advance(-time.Hour)
	if b.take(clock.Now(), 5, time.Hour) {
		t.Fatal("a token came from a clock stepped back")
	}
}

func TestBackoff(t *testing.T) {
	clock := newFakeClock()
	var b backoff
	for i := range 2 {
		if d := b.fail(clock.Now(), 3, time.Minute); d != 0 {
			t.Fatalf("failure %d of a limit of 3 started a backoff of %v", i+1, d)
		}
		if b.blocked(clock.Now()) {
			t.Fatalf("blocked after %d failures of 3", i+1)
		}
	}
	// From the limit on: 1s, 2s, 4s, …, capped at a minute.
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60}
	for i, w := range want {
		w *= time.Second
		if d := b.fail(clock.Now(), 3, time.Minute); d != w {
			t.Fatalf("failure %d: backoff %v, want %v", 3+i, d, w)
		}
		clock.Advance(w - time.Millisecond)
		if !b.blocked(clock.Now()) {
			t.Fatalf("failure %d: not blocked just before %v", 3+i, w)
		}
		clock.Advance(time.Millisecond)
		if b.blocked(clock.Now()) {
			t.Fatalf("failure %d: still blocked after %v", 3+i, w)
		}
	}
	// However long the failures go on, the interval stays at the cap.
	for range 100 {
		b.fail(clock.Now(), 3, time.Minute)
	}
	if d := b.fail(clock.Now(), 3, time.Minute); d != time.Minute {
		t.Fatalf("after 110 failures the backoff is %v", d)
	}
}

func TestTableExpiry(t *testing.T) {
	clock := newFakeClock()
	tb := newTable[string, int](10, time.Minute)
	*tb.get("a", clock.Now()) = 1
	clock.Advance(40 * time.Second)
	*tb.get("b", clock.Now()) = 2
	// find neither creates nor refreshes.
	if tb.find("c", clock.Now()) != nil || tb.len() != 2 {
		t.Fatalf("find created an entry: %d entries", tb.len())
	}
	clock.Advance(30 * time.Second)
	if v := tb.find("a", clock.Now()); v != nil {
		t.Fatalf("a found 70s after its last use with a ttl of a minute: %d", *v)
	}
	if v := tb.find("b", clock.Now()); v == nil || *v != 2 {
		t.Fatal("b lost 30s after its last use")
	}
	// get refreshes: b lives on while it is used.
	tb.get("b", clock.Now())
	for range 5 {
		clock.Advance(50 * time.Second)
		if v := tb.get("b", clock.Now()); *v != 2 {
			t.Fatalf("b reset while in use: %d", *v)
		}
	}
	// Expired entries go as others are touched, so an idle table shrinks.
	clock.Advance(2 * time.Minute)
	tb.get("z", clock.Now())
	if tb.len() != 1 {
		t.Fatalf("%d entries after all but one expired", tb.len())
	}
	tb.remove("z")
	if tb.len() != 0 || tb.newest != nil || tb.oldest != nil {
		t.Fatalf("remove left %d entries", tb.len())
	}
}

// TestTableBound: a flood of new keys never grows the table past its bound;
// the least recently used entries make room, and an entry in use survives.
func TestTableBound(t *testing.T) {
	clock := newFakeClock()
	tb := newTable[int, int](100, time.Hour)
	*tb.get(-1, clock.Now()) = 7
	for i := range 10_000 {
		tb.get(i, clock.Now())
		tb.get(-1, clock.Now()) // kept in use
		if tb.len() > 100 {
			t.Fatalf("%d entries after %d keys, bound 100", tb.len(), i+1)
		}
	}
	if v := tb.find(-1, clock.Now()); v == nil || *v != 7 {
		t.Fatal("the entry in use was evicted")
	}
	if tb.find(0, clock.Now()) != nil || tb.find(9_999, clock.Now()) == nil {
		t.Fatal("eviction did not take the least recently used")
	}
	if tb.evicted != 10_000-99 {
		t.Fatalf("evicted %d, want %d", tb.evicted, 10_000-99)
	}
	// The list and the map agree.
	n := 0
	for s := tb.newest; s != nil; s = s.older {
		if tb.m[s.key] != s {
			t.Fatalf("key %d in the list but not the map", s.key)
		}
		n++
	}
	if n != tb.len() {
		t.Fatalf("list of %d, map of %d", n, tb.len())
	}
}

// TestTableMemory measures what the per-address state costs when a flood
// from many addresses fills it: every per-address and per-uid table at its
// bound, every per-member table at its bound. The figure is the README's.
func TestTableMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory")
	}
	lm, clock, _ := testLimiter(DefaultLimits())
	measure := func(fill func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		fill()
		runtime.GC()
		runtime.ReadMemStats(&after)
		return after.HeapAlloc - before.HeapAlloc
	}
	const flood = 4 * maxTrackedAddrs
	addrs := make([]remote, flood)
	for i := range addrs {
		addrs[i] = stranger(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String())
	}
	uids := make([]string, flood)
	for i := range uids {
		uids[i] = fmt.Sprintf("U%031d", i)
	}
	perAddr := measure(func() {
		for i := range flood {
			lm.allowRegister(addrs[i])
			lm.loginFailed(addrs[i], uids[i])
			clock.Advance(time.Millisecond)
		}
	})
	perMember := measure(func() {
		for i := range flood {
			lm.allowPing(uids[i])
			lm.allowInvite(uids[i])
		}
	})
	lm.mu.Lock()
	sizes := []int{lm.registers.len(), lm.addrFails.len(), lm.uidFails.len(), lm.pings.len(), lm.invites.len(), lm.notes.len()}
	lm.mu.Unlock()
	bounds := []int{maxTrackedAddrs, maxTrackedAddrs, maxTrackedUIDs, maxTrackedMembers, maxTrackedMembers, maxLogKeys}
	for i := range sizes {
		if sizes[i] > bounds[i] {
			t.Errorf("table %d has %d entries after a flood of %d keys, bound %d", i, sizes[i], flood, bounds[i])
		}
	}
	entries := uint64(maxTrackedAddrs + maxTrackedAddrs + maxTrackedUIDs)
	t.Logf("per-address and per-uid state after a flood of %d addresses: %d KiB (%d B per entry)",
		flood, perAddr>>10, perAddr/entries)
	t.Logf("per-member state after %d members pinged and invited: %d KiB (%d B per entry)",
		flood, perMember>>10, perMember/(2*maxTrackedMembers))
	const maxTotal = 24 << 20
	if total := perAddr + perMember; total > maxTotal {
		t.Errorf("the limits' state takes %d MiB after a flood, want under %d MiB", total>>20, maxTotal>>20)
	}
}

func TestRemoteOf(t *testing.T) {
	lm, _, _ := testLimiter(DefaultLimits())
	cases := []struct {
		addr    net.Addr
		key     string
		limited bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5}, "127.0.0.1", false},
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 5}, "127.0.0.2", true},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 5}, "::", false},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 5}, "192.0.2.7", true},
		// An IPv6 host counts as its /64.
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), Port: 5}, "2001:db8:1:2::", true},
		{&net.UDPAddr{IP: net.IPv4(192, 0, 2, 8), Port: 5}, "192.0.2.8", true},
		// Not an IP address (an in-process pipe): not counted.
		{pipeAddr{}, "invalid IP", false},
		{nil, "invalid IP", false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.addr), func(t *testing.T) {
			r := lm.remoteOf(c.addr)
			if r.addr.String() != c.key || r.limited != c.limited {
				t.Errorf("remoteOf(%v) = %v limited %v, want %s limited %v", c.addr, r.addr, r.limited, c.key, c.limited)
			}
		})
	}
	// An operator's range exempts every address in it.
	lm, _, _ = testLimiter(Limits{Exempt: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}})
	if r := lm.remoteOf(&net.TCPAddr{IP: net.ParseIP("2001:db8:5::1")}); r.limited {
		t.Error("an address in an exempt range is limited")
	}
	if r := lm.remoteOf(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}); !r.limited {
		t.Error("loopback is exempt though the operator's list leaves it out")
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func TestLinksPerAddrCount(t *testing.T) {
	lm, _, logs := testLimiter(Limits{LinksPerAddr: 3})
	a, b := stranger("192.0.2.1"), stranger("192.0.2.2")
	for i := range 3 {
		if !lm.openLink(a) {
			t.Fatalf("link %d of 3 refused", i+1)
		}
	}
	for range 10 {
		if lm.openLink(a) {
			t.Fatal("a fourth link allowed")
		}
	}
	if !lm.openLink(b) {
		t.Fatal("another address refused")
	}
	local := remote{addr: netip.MustParseAddr("127.0.0.1")}
	for range 10 {
		if !lm.openLink(local) {
			t.Fatal("an exempt address refused")
		}
	}
	lm.closeLink(a)
	if !lm.openLink(a) {
		t.Fatal("a link refused after one closed")
	}
	for range 3 {
		lm.closeLink(a)
	}
	lm.closeLink(b)
	lm.mu.Lock()
	n := len(lm.links)
	lm.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d addresses counted after their links closed", n)
	}
	// Ten refusals, one log line.
	if got := strings.Count(logs.String(), "too many links"); got != 1 {
		t.Fatalf("%d log lines for 10 refusals, want 1:\n%s", got, logs)
	}
}

func TestRegisterBucket(t *testing.T) {
	lm, clock, _ := testLimiter(Limits{RegisterPerHour: 10})
	a := stranger("192.0.2.1")
	for i := range 10 {
		if !lm.allowRegister(a) {
			t.Fatalf("registration %d of 10 refused", i+1)
		}
	}
	if lm.allowRegister(a) {
		t.Fatal("an eleventh registration within the hour")
	}
	if !lm.allowRegister(stranger("192.0.2.2")) {
		t.Fatal("another address refused")
	}
	if !lm.allowRegister(remote{addr: netip.MustParseAddr("127.0.0.1")}) {
		t.Fatal("an exempt address refused")
	}
	clock.Advance(6 * time.Minute)
	if !lm.allowRegister(a) || lm.allowRegister(a) {
		t.Fatal("want exactly one registration back after 6 minutes")
	}
}

// TestLoginBackoff: an address failing logins backs off; a uid failed from
// many addresses backs off only for addresses that have failed; success
// forgives; exempt addresses are neither counted nor held back.
func TestLoginBackoff(t *testing.T) {
	lm, clock, logs := testLimiter(Limits{LoginFailuresPerAddr: 5, LoginFailuresPerUID: 3})
	bad := stranger("192.0.2.1")
	const victim, other = "VICTIM", "OTHER"
	// Five failures, each to another uid so that no uid backs off.
	for i := range 5 {
		uid := fmt.Sprint("U", i)
		if !lm.allowLogin(bad, uid) {
			t.Fatalf("attempt %d refused before the limit", i+1)
		}
		lm.loginFailed(bad, uid)
	}
	if lm.allowLogin(bad, other) || lm.allowLogin(bad, victim) {
		t.Fatal("the address is not backing off after 5 failures")
	}
	// Refused attempts do not lengthen the backoff.
	clock.Advance(time.Second)
	if !lm.allowLogin(bad, victim) {
		t.Fatal("still backing off after the first interval")
	}

	// Failures to the victim's uid from many addresses, each under its own
	// limit, make the uid back off — for those addresses only.
	for i := range 3 {
		a := stranger(fmt.Sprintf("198.51.100.%d", i+1))
		lm.loginFailed(a, victim)
	}
	if lm.allowLogin(stranger("198.51.100.1"), victim) {
		t.Fatal("a failing address may try the uid during its backoff")
	}
	if !lm.allowLogin(stranger("198.51.100.1"), other) {
		t.Fatal("the uid's backoff held back another uid")
	}
	clean := stranger("203.0.113.9")
	if !lm.allowLogin(clean, victim) {
		t.Fatal("the member, from an address with a clean record, is locked out")
	}
	local := remote{addr: netip.MustParseAddr("127.0.0.1")}
	if !lm.allowLogin(local, victim) {
		t.Fatal("an exempt address is held back")
	}
	for range 50 {
		lm.loginFailed(local, victim)
	}
	lm.mu.Lock()
	uf := *lm.uidFails.find(victim, clock.Now())
	lm.mu.Unlock()
	if uf.failures != 3 {
		t.Fatalf("the uid has %d failures on record, want 3 (exempt failures do not count)", uf.failures)
	}

	// The uid's backoff is short and capped whatever the failures.
	for i := range 40 {
		lm.loginFailed(stranger(fmt.Sprintf("198.51.100.%d", 10+i)), victim)
	}
	clock.Advance(uidBackoffMax)
	if !lm.allowLogin(stranger("198.51.100.1"), victim) {
		t.Fatal("the uid's backoff outlasts its cap")
	}

	// A success forgives the uid's failures and the address's.
	lm.loginFailed(stranger("198.51.100.1"), victim)
	lm.loginSucceeded(clean, victim)
	if !lm.allowLogin(stranger("198.51.100.1"), victim) {
		t.Fatal("the uid still backs off after its member logged in")
	}
	for i := range 10 {
		lm.loginFailed(bad, fmt.Sprint("U", i))
	}
	lm.loginSucceeded(bad, other)
	if !lm.allowLogin(bad, other) {
		t.Fatal("the address still backs off after a login from it succeeded")
	}
	if !strings.Contains(logs.String(), "login backoff: failed logins from the address") ||
		!strings.Contains(logs.String(), "login backoff: failed logins to the uid") {
		t.Fatalf("backoffs not logged:\n%s", logs)
	}

	// Failures are forgotten an hour after the last.
	for i := range 5 {
		lm.loginFailed(bad, fmt.Sprint("U", i))
	}
	clock.Advance(failureMemory + time.Second)
	lm.loginFailed(bad, other)
	if !lm.allowLogin(bad, other) {
		t.Fatal("old failures were not forgotten")
	}
}

func TestDailyLimits(t *testing.T) {
	lm, clock, _ := testLimiter(Limits{PingsPerDay: 4, InvitesPerDay: 2})
	for i := range 4 {
		if err := lm.allowPing("U1"); err != nil {
			t.Fatalf("ping %d of 4: %v", i+1, err)
		}
	}
	err := lm.allowPing("U1")
	if !errors.Is(err, errPingLimit) || err.Error() != "ping limit reached: 4 per 24 hours" {
		t.Fatalf("fifth ping: %v", err)
	}
	if err := lm.allowPing("U2"); err != nil {
		t.Fatalf("another member's ping: %v", err)
	}
	// Invitations are counted apart from pings.
	for range 2 {
		if err := lm.allowInvite("U1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := lm.allowInvite("U1"); err == nil || err.Error() != "invitation limit reached: 2 per 24 hours" {
		t.Fatalf("third invitation: %v", err)
	}
	clock.Advance(6 * time.Hour)
	if lm.allowPing("U1") != nil || lm.allowPing("U1") == nil {
		t.Fatal("want one ping back after 6 hours")
	}
	// Off means off.
	lm, _, _ = testLimiter(Limits{})
	for range 1000 {
		if err := lm.allowPing("U1"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLogThrottle: hits of one key give a line per logEvery, counting the
// hits; hits of many keys give at most logBurst lines per logEvery.
func TestLogThrottle(t *testing.T) {
	lm, clock, logs := testLimiter(Limits{})
	for range 1000 {
		lm.hit(hitPings, "limit hit", "one key")
	}
	clock.Advance(logEvery)
	lm.hit(hitPings, "limit hit", "one key")
	out := logs.String()
	if n := strings.Count(out, "limit hit"); n != 2 {
		t.Fatalf("%d lines for 1001 hits of one key over a minute, want 2:\n%s", n, out)
	}
	if !strings.Contains(out, "hits=1000") {
		t.Fatalf("the second line does not count the hits it stands for:\n%s", out)
	}
	lm, clock, logs = testLimiter(Limits{})
	for i := range 10 * logBurst {
		lm.hit(hitPings, "limit hit", fmt.Sprint(i))
	}
	if n := strings.Count(logs.String(), "limit hit"); n != logBurst {
		t.Fatalf("%d lines for %d keys within a minute, want %d", n, 10*logBurst, logBurst)
	}
	clock.Advance(logEvery)
	lm.hit(hitPings, "limit hit", "late")
	if !strings.Contains(logs.String(), fmt.Sprintf("silenced=%d", 9*logBurst)) {
		t.Fatalf("the line after a silence does not count the lines dropped:\n%s", logs)
	}
}

package qlib

// The limits under attack, over real TLS: each test floods the server with
// what one limit bounds, from a stranger's address (127.0.0.2 and up: only
// 127.0.0.1 is exempt by default) or as a member, and shows that the flood
// is bounded, that the client gets the refusal it can show, that a line is
// logged (once, not per hit), that a victim is unaffected and that the
// server stays up.

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mnm/testclient"
)

// limitServer starts a server with the default limits changed by mod, on
// a fake clock that the test moves.
func limitServer(t *testing.T, mod func(*Limits), tweak ...func(*Config)) (*testServer, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	ts := startServer(t, func(c *Config) {
		lim := DefaultLimits()
		lim.Now = clock.Now
		if mod != nil {
			mod(&lim)
		}
		c.Limits = &lim
		for _, f := range tweak {
			f(c)
		}
	})
	return ts, clock
}

// dialFrom opens a TLS link to the server from local address ip.
func (ts *testServer) dialFrom(ip string) (*testclient.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", ts.addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		nc.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	c := testclient.NewConn(tc)
	c.SetReadTimeout(10 * time.Second)
	ts.t.Cleanup(func() { c.Close() })
	return c, nil
}

// requestFrom sends TmtpRev and req (a Register or Login) from ip and
// returns the reply after the tmtprev one: registered, info or quit.
func (ts *testServer) requestFrom(ip string, req map[string]any) *testclient.Frame {
	ts.t.Helper()
	c, err := ts.dialFrom(ip)
	if err != nil {
		ts.t.Fatalf("dial from %s: %v", ip, err)
	}
	defer c.Close()
	if err := c.WriteFrame(map[string]any{"Op": 0, "Id": "1"}, nil); err != nil {
		ts.t.Fatal(err)
	}
	if err := c.WriteFrame(req, nil); err != nil {
		ts.t.Fatal(err)
	}
	if f := mustRead(ts.t, c); f.Op() != "tmtprev" {
		ts.t.Fatalf("tmtprev reply %s", f.Raw)
	}
	return mustRead(ts.t, c)
}

func registerReq() map[string]any { return map[string]any{"Op": 1, "NewNode": "dev", "NewAlias": "_"} }

func loginReq(uid, nodeid string) map[string]any {
	return map[string]any{"Op": 2, "Uid": uid, "Node": nodeid}
}

// wrongNode is a well-formed nodeid that no device has.
const wrongNode = "LB27ML46LB27ML46LB27ML46LB27ML46LB27ML46"

func isQuit(f *testclient.Frame, reason string) bool {
	return f.Op() == "quit" && f.Str("error") == reason
}

// countLogs counts the server's log lines containing s.
func (ts *testServer) countLogs(s string) int { return strings.Count(ts.logs.String(), s) }

// victimWorks shows the server up and serving a member at 127.0.0.1: a
// post from one device of a new member reaches another member.
func (ts *testServer) victimWorks() {
	ts.t.Helper()
	a, _ := ts.register()
	b, reg := ts.register()
	ack, err := a.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte("still here"))
	if err != nil || ack.Error != "" {
		ts.t.Fatalf("victim's post: %v %+v", err, ack)
	}
	if f := nextMessage(ts.t, b); f.Str("id") != ack.MsgID {
		ts.t.Fatalf("victim got %s, want the post %s", f.Raw, ack.MsgID)
	}
}

// TestLimitLinksPerAddr: a stranger opening links without end gets
// LinksPerAddr of them; the rest are closed before the TLS handshake, with
// one log line for all; members elsewhere connect as usual; a closed link
// frees its place.
func TestLimitLinksPerAddr(t *testing.T) {
	const limit, flood = 5, 60
	ts, _ := limitServer(t, func(l *Limits) { l.LinksPerAddr = limit })
	var held []*testclient.Conn
	refused := 0
	for range flood {
		c, err := ts.dialFrom("127.0.0.2")
		if err != nil {
			refused++
			continue
		}
		// Keep it beyond the handshake: TmtpRev and its reply.
		if err := c.WriteFrame(map[string]any{"Op": 0, "Id": "1"}, nil); err != nil {
			t.Fatal(err)
		}
		if f := mustRead(t, c); f.Op() != "tmtprev" {
			t.Fatalf("held link %d: %s", len(held), f.Raw)
		}
		held = append(held, c)
	}
	if len(held) != limit || refused != flood-limit {
		t.Fatalf("%d links held and %d refused, want %d and %d", len(held), refused, limit, flood-limit)
	}
	if n := ts.srv.Stats().Links; n > limit {
		t.Fatalf("the server holds %d links for a limit of %d", n, limit)
	}
	if n := ts.srv.Stats().Refused; n != flood-limit {
		t.Errorf("Stats().Refused = %d, want %d", n, flood-limit)
	}
	// Another stranger is counted apart, and members work.
	if _, err := ts.dialFrom("127.0.0.3"); err != nil {
		t.Fatalf("another address refused: %v", err)
	}
	ts.victimWorks()
	if n := ts.countLogs("link refused: too many links from the address"); n != 1 {
		t.Errorf("%d log lines for %d refusals, want 1:\n%s", n, flood-limit, ts.logs)
	}
	if !strings.Contains(ts.logs.String(), "remote=127.0.0.2") {
		t.Errorf("the log line does not name the address:\n%s", ts.logs)
	}

	held[0].Close()
	waitFor(t, "a link from 127.0.0.2", func() bool {
		c, err := ts.dialFrom("127.0.0.2")
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// TestLimitRegistrations: a stranger creating accounts gets
// RegisterPerHour of them, then quit "register failure", and no account
// is made; members elsewhere register as usual; the bucket refills.
func TestLimitRegistrations(t *testing.T) {
	const limit, flood = 3, 20
	ts, clock := limitServer(t, func(l *Limits) { l.RegisterPerHour = limit })
	made := 0
	for i := range flood {
		f := ts.requestFrom("127.0.0.2", registerReq())
		switch {
		case f.Op() == "registered":
			made++
		case isQuit(f, "register failure"):
		default:
			t.Fatalf("registration %d: %s", i+1, f.Raw)
		}
	}
	ts.dir.mu.Lock()
	users := len(ts.dir.devices)
	ts.dir.mu.Unlock()
	if made != limit || users != limit {
		t.Fatalf("%d registrations accepted and %d users made for a limit of %d", made, users, limit)
	}
	if n := ts.countLogs("register refused: too many registrations from the address"); n != 1 {
		t.Errorf("%d log lines for %d refusals, want 1", n, flood-limit)
	}
	if f := ts.requestFrom("127.0.0.3", registerReq()); f.Op() != "registered" {
		t.Errorf("another address: %s", f.Raw)
	}
	ts.victimWorks()
	// One registration back every 20 minutes.
	clock.Advance(20 * time.Minute)
	if f := ts.requestFrom("127.0.0.2", registerReq()); f.Op() != "registered" {
		t.Errorf("after 20 minutes: %s", f.Raw)
	}
	if f := ts.requestFrom("127.0.0.2", registerReq()); !isQuit(f, "register failure") {
		t.Errorf("a second one after 20 minutes: %s", f.Raw)
	}
}

// countingDir counts the nodeid checks.
type countingDir struct {
	*fakeDir
	logins atomic.Int64
}

func (d *countingDir) Login(uid string, node []byte) (string, error) {
	d.logins.Add(1)
	return d.fakeDir.Login(uid, node)
}

// TestLimitLoginFailuresPerAddr: a stranger failing logins from one address
// gets LoginFailuresPerAddr nodeid checks, then every login from it is
// refused ("login failed") without a check, its own right nodeid too,
// until the backoff ends; members elsewhere log in as usual; a success
// forgives the address.
func TestLimitLoginFailuresPerAddr(t *testing.T) {
	const limit, flood = 5, 50
	var dir *countingDir
	ts, clock := limitServer(t, func(l *Limits) { l.LoginFailuresPerAddr = limit },
		func(c *Config) {
			dir = &countingDir{fakeDir: c.Directory.(*fakeDir)}
			c.Directory = dir
		})
	// The stranger has an account of its own; the victim too.
	own := ts.requestFrom("127.0.0.2", registerReq())
	_, victim := ts.register()

	for i := range flood {
		// Each to another made-up uid, so that no uid backs off.
		f := ts.requestFrom("127.0.0.2", loginReq(fmt.Sprintf("U%031d", 1000+i), wrongNode))
		if !isQuit(f, "login failed") {
			t.Fatalf("failed login %d: %s", i+1, f.Raw)
		}
	}
	if n := dir.logins.Load(); n != limit {
		t.Fatalf("%d nodeid checks for %d attempts, want %d", n, flood, limit)
	}
	if f := ts.requestFrom("127.0.0.2", loginReq(own.Str("uid"), own.Str("nodeid"))); !isQuit(f, "login failed") {
		t.Fatalf("the right nodeid during the backoff: %s", f.Raw)
	}
	// The member, at another address, is not held back.
	if f := ts.requestFrom("127.0.0.3", loginReq(victim.UID, victim.NodeID)); f.Op() != "info" {
		t.Fatalf("the victim's login from another address: %s", f.Raw)
	}
	ts.login(victim.UID, victim.NodeID)
	if n := ts.countLogs("login backoff: failed logins from the address"); n != 1 {
		t.Errorf("%d backoff lines, want 1:\n%s", n, ts.logs)
	}
	if n := ts.countLogs("login refused: the address is backing off"); n != 1 {
		t.Errorf("%d refusal lines for %d refusals, want 1", n, flood-limit+1)
	}

	// The backoff was a second (the limit-th failure); then the right
	// nodeid gets in and forgives the address.
	clock.Advance(loginBackoffBase)
	if f := ts.requestFrom("127.0.0.2", loginReq(own.Str("uid"), own.Str("nodeid"))); f.Op() != "info" {
		t.Fatalf("the right nodeid after the backoff: %s", f.Raw)
	}
	for i := range limit - 1 {
		if f := ts.requestFrom("127.0.0.2", loginReq(fmt.Sprintf("U%031d", i), wrongNode)); !isQuit(f, "login failed") {
			t.Fatal(f.Raw)
		}
	}
	if f := ts.requestFrom("127.0.0.2", loginReq(own.Str("uid"), own.Str("nodeid"))); f.Op() != "info" {
		t.Fatalf("a success did not forgive the address's failures: %s", f.Raw)
	}
	ts.victimWorks()
}

// TestLimitLoginFailuresPerUID: strangers at many addresses fail logins to
// the victim's uid, each under its own address's limit. The uid backs off
// for those addresses — even a right nodeid from one is refused — but the
// member, from an address with a clean record, logs in; the backoff is
// capped; a success resets the uid.
func TestLimitLoginFailuresPerUID(t *testing.T) {
	const limit = 5
	ts, clock := limitServer(t, func(l *Limits) { l.LoginFailuresPerUID = limit })
	_, victim := ts.register()
	// The victim's own stale device, behind an address that fails too.
	staleIP := "127.0.0.9"
	for i := range 40 {
		ip := fmt.Sprintf("127.0.1.%d", i+1)
		if f := ts.requestFrom(ip, loginReq(victim.UID, wrongNode)); !isQuit(f, "login failed") {
			t.Fatalf("stranger %s: %s", ip, f.Raw)
		}
	}
	if f := ts.requestFrom(staleIP, loginReq(victim.UID, wrongNode)); !isQuit(f, "login failed") {
		t.Fatal(f.Raw)
	}
	// From an address that has failed, the right nodeid is refused too.
	if f := ts.requestFrom(staleIP, loginReq(victim.UID, victim.NodeID)); !isQuit(f, "login failed") {
		t.Fatalf("the right nodeid from a failing address during the uid's backoff: %s", f.Raw)
	}
	// From a clean address, and from an exempt one, the member gets in.
	if f := ts.requestFrom("127.0.0.3", loginReq(victim.UID, victim.NodeID)); f.Op() != "info" {
		t.Fatalf("the victim from a clean address: %s", f.Raw)
	}
	ts.login(victim.UID, victim.NodeID)
	if n := ts.countLogs("login refused: the uid is backing off"); n != 1 {
		t.Errorf("%d refusal lines, want 1:\n%s", n, ts.logs)
	}
	if !strings.Contains(ts.logs.String(), "login backoff: failed logins to the uid") {
		t.Errorf("the uid's backoff is not logged")
	}

	// More failures, then the backoff's cap: the stale address gets in
	// after uidBackoffMax whatever the strangers did.
	for i := range 20 {
		ts.requestFrom(fmt.Sprintf("127.0.2.%d", i+1), loginReq(victim.UID, wrongNode))
	}
	clock.Advance(uidBackoffMax)
	if f := ts.requestFrom(staleIP, loginReq(victim.UID, victim.NodeID)); f.Op() != "info" {
		t.Fatalf("the right nodeid after the capped backoff: %s", f.Raw)
	}
	// That success reset the uid: a stranger's next failures start over.
	if f := ts.requestFrom("127.0.1.1", loginReq(victim.UID, wrongNode)); !isQuit(f, "login failed") {
		t.Fatal(f.Raw)
	}
	if f := ts.requestFrom(staleIP, loginReq(victim.UID, victim.NodeID)); f.Op() != "info" {
		t.Fatalf("one failure after a success backs the uid off: %s", f.Raw)
	}
	ts.victimWorks()
}

// aliasUser registers a member with an alias and logs it in.
func (ts *testServer) aliasUser(alias string) (*testclient.Client, testclient.Registration) {
	ts.t.Helper()
	c, reg := ts.register()
	if err := ts.dir.AddAlias(reg.UID, alias); err != nil {
		ts.t.Fatal(err)
	}
	return c, reg
}

// sendFlood makes n requests with send, whose argument counts them from 0,
// and returns how many were stored: each must be stored or refused with the
// ack error refusal, and anything else fails the test; what names a request
// in the failure.
func sendFlood(t *testing.T, what string, n int, refusal string, send func(i int) (testclient.Ack, error)) (stored int) {
	t.Helper()
	for i := range n {
		ack, err := send(i)
		if err != nil {
			t.Fatalf("%s %d: %v", what, i+1, err)
		}
		switch ack.Error {
		case "":
			stored++
		case refusal:
		default:
			t.Fatalf("%s %d: %s", what, i+1, ack.Frame.Raw)
		}
	}
	return stored
}

// TestLimitPings: a member pinging without end gets PingsPerDay through,
// then the ack error "ping limit reached: N per 24 hours" with the link
// open; the recipient's queue holds only those; another member pings the
// same recipient as usual; the bucket refills.
func TestLimitPings(t *testing.T) {
	const limit, flood = 4, 30
	ts, clock := limitServer(t, func(l *Limits) { l.PingsPerDay = limit })
	spammer, _ := ts.aliasUser("spammer one")
	_, target := ts.register()
	ts.dir.AddAlias(target.UID, "target person")
	sent := sendFlood(t, "ping", flood, "ping limit reached: 4 per 24 hours", func(int) (testclient.Ack, error) {
		return spammer.Ping("spammer one", "target person", "buy now")
	})
	// The target does not ack, so its queue holds every ping stored.
	if n := ts.store.Len(target.UID + ".0"); sent != limit || n != limit {
		t.Fatalf("%d pings acked and %d queued, want %d", sent, n, limit)
	}
	if n := ts.countLogs("ping refused: limit reached"); n != 1 {
		t.Errorf("%d log lines for %d refusals, want 1", n, flood-limit)
	}
	// The link is up, and posts are not pings.
	if ack, err := spammer.Post([]testclient.Recipient{{ID: target.UID, Type: testclient.ToUser}}, []byte("p")); err != nil || ack.Error != "" {
		t.Fatalf("a post after the ping limit: %v %+v", err, ack)
	}
	friend, _ := ts.aliasUser("friend of target")
	mustStore(t)(friend.Ping("friend of target", "target person", "hello"))
	clock.Advance(day / limit)
	mustStore(t)(spammer.Ping("spammer one", "target person", "again"))
	if ack, _ := spammer.Ping("spammer one", "target person", "and again"); ack.Error == "" {
		t.Fatal("two pings back after 6 hours")
	}
	ts.victimWorks()
}

// TestLimitInvitations: as pings, for group invitations.
func TestLimitInvitations(t *testing.T) {
	const limit, flood = 3, 20
	ts, _ := limitServer(t, func(l *Limits) { l.InvitesPerDay = limit },
		func(c *Config) { c.Directory = groupDir{c.Directory.(*fakeDir)} })
	spammer, _ := ts.aliasUser("spammer one")
	ts.aliasUser("target person")
	sent := sendFlood(t, "invitation", flood, "invitation limit reached: 3 per 24 hours", func(i int) (testclient.Ack, error) {
		return spammer.GroupInvite(fmt.Sprintf("group %08d", i), "spammer one", "target person", "join")
	})
	if sent != limit {
		t.Fatalf("%d invitations stored, want %d", sent, limit)
	}
	if n := ts.countLogs("invitation refused: limit reached"); n != 1 {
		t.Errorf("%d log lines for %d refusals, want 1", n, flood-limit)
	}
	friend, _ := ts.aliasUser("friend of target")
	mustStore(t)(friend.GroupInvite("friends club", "friend of target", "target person", "hi"))
	ts.victimWorks()
}

// TestLimitQueueBytes: a member flooding an offline device's queue is
// refused once the queue holds QueueBytesPerDevice, with the ack error
// "recipient queue full: <uid>"; a refused post stores nothing for anyone,
// pings and invitations to the device are refused too; every post acked
// reaches the device when it comes back, and then posts are accepted
// again. Another member's queue is unaffected.
func TestLimitQueueBytes(t *testing.T) {
	const limit = 64 << 10
	ts, _ := limitServer(t, func(l *Limits) { l.QueueBytesPerDevice = limit },
		func(c *Config) { c.Directory = groupDir{c.Directory.(*fakeDir)} })
	spammer, _ := ts.aliasUser("spammer one")
	target, reg := ts.aliasUser("target person")
	target.Close() // offline: its queue grows
	_, other := ts.register()
	otherDev := other.UID + ".0"
	targetDev := reg.UID + ".0"
	waitFor(t, "two devices logged in", func() bool { return ts.srv.Stats().Devices == 2 })

	data := bytes.Repeat([]byte("x"), 4<<10)
	to := []testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}
	both := append(to, testclient.Recipient{ID: other.UID, Type: testclient.ToUser})
	want := fmt.Sprintf("recipient queue full: %s", reg.UID)
	acked := fillQueue(t, spammer, to, data, limit, want)
	qb := ts.store.QueueBytes(targetDev)
	if qb < limit || qb >= limit+int64(len(data))+1024 {
		t.Fatalf("refused at %d queued bytes, want the first post at or over %d", qb, limit)
	}
	// All or nothing: the post to both stores nothing for the other.
	before := ts.store.Len(otherDev)
	if ack, err := spammer.Post(both, data); err != nil || ack.Error != want {
		t.Fatalf("post to both: %v %+v, want %q", err, ack, want)
	}
	if ack, err := spammer.PostNotify(to, nil, []byte("n"), []byte("p"), false); err != nil || ack.Error != want {
		t.Fatalf("postnotify: %v %+v, want %q", err, ack, want)
	}
	if ack, err := spammer.Ping("spammer one", "target person", "hi"); err != nil || ack.Error != want {
		t.Fatalf("ping: %v %+v, want %q", err, ack, want)
	}
	if ack, err := spammer.GroupInvite("spam group", "spammer one", "target person", "hi"); err != nil || ack.Error != want {
		t.Fatalf("invitation: %v %+v, want %q", err, ack, want)
	}
	if n := ts.store.Len(otherDev); n != before {
		t.Fatalf("a refused post stored %d messages for another recipient", n-before)
	}
	if got := ts.store.QueueBytes(targetDev); got != qb {
		t.Fatalf("refusals changed the full queue: %d bytes, was %d", got, qb)
	}
	if n := ts.countLogs("message refused: recipient queue full"); n != 1 {
		t.Errorf("%d log lines for 5 refusals, want 1:\n%s", n, ts.logs)
	}
	// The other member gets posts as usual.
	mustStore(t)(spammer.Post([]testclient.Recipient{{ID: other.UID, Type: testclient.ToUser}}, data))

	// Every acked post reaches the device, in order; then it has room.
	back, _, err := testclient.Login(ts.addr, reg.UID, reg.NodeID, testclient.Options{AutoAck: true, Buffer: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	for i := 0; i < len(acked); {
		f := nextMessage(t, back)
		if f.Op() != "delivery" {
			continue // the login notice
		}
		if f.Str("id") != acked[i] {
			t.Fatalf("delivery %d is %s, want %s", i, f.Str("id"), acked[i])
		}
		i++
	}
	waitFor(t, "the queue below its limit", func() bool { return ts.store.QueueBytes(targetDev) < limit })
	mustStore(t)(spammer.Post(to, data))
}

// fillQueue posts data to `to` from sender until a post is refused with
// want, the queue-full error, and returns the ids of the posts acked before
// it. More than twice limit octets without a refusal fails the test.
func fillQueue(t *testing.T, sender *testclient.Client, to []testclient.Recipient, data []byte, limit int, want string) []string {
	t.Helper()
	var acked []string
	for i := 0; ; i++ {
		if i > 2*limit/len(data) {
			t.Fatal("no refusal at twice the limit")
		}
		ack, err := sender.Post(to, data)
		if err != nil {
			t.Fatal(err)
		}
		if ack.Error == want {
			return acked
		}
		if ack.Error != "" {
			t.Fatalf("post %d: %s", i+1, ack.Frame.Raw)
		}
		acked = append(acked, ack.MsgID)
	}
}

package qlib

import (
	"net"
	"testing"
	"time"

	"mnm/testclient"
)

// dialRaw opens a plain TCP connection to the server that never starts
// TLS: the cheapest link a stranger can hold open.
func (ts *testServer) dialRaw() net.Conn {
	ts.t.Helper()
	c, err := net.DialTimeout("tcp", ts.addr, 10*time.Second)
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { c.Close() })
	return c
}

// expectRawClosed waits for the server to close c.
func expectRawClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if n, err := c.Read(b[:]); err == nil || !isClosedErr(err) {
		t.Fatalf("read %d octets, err %v; want the link closed", n, err)
	}
}

// TestPreLoginLinksCap is the attack of issue #10 item 1 on memory as a
// whole: strangers holding links open without logging in. The links not
// logged in are bounded all together (Limits.PreLoginLinks): while the
// oldest is young, a newcomer is refused at the door; once the oldest has
// had preLoginEvictAge to log in, it is closed to make room, so a real
// client still gets in. Logged-in members are never counted or closed.
func TestPreLoginLinksCap(t *testing.T) {
	const limit = 3
	ts, clock := limitServer(t, func(l *Limits) { l.PreLoginLinks = limit }, func(c *Config) {
		c.LoginTimeout = time.Hour // the strangers' links must outlive the test
	})
	member, reg := ts.register()

	strangers := make([]net.Conn, limit)
	for i := range strangers {
		strangers[i] = ts.dialRaw()
	}
	waitFor(t, "the links not logged in at the limit", func() bool { return ts.srv.Stats().PreLoginLinks == limit })

	// The oldest is young: the newcomer is refused.
	expectRawClosed(t, ts.dialRaw())
	if st := ts.srv.Stats(); st.PreLoginLinks != limit || st.Evicted != 0 {
		t.Fatalf("after a refusal: %d links not logged in, %d evicted; want %d, 0", st.PreLoginLinks, st.Evicted, limit)
	}
	if n := ts.countLogs("link refused: too many links not logged in"); n != 1 {
		t.Errorf("refusal logged %d times, want 1:\n%s", n, ts.logs)
	}

	// The oldest has had its chance: a real client registering takes its
	// place, and only the oldest goes.
	clock.Advance(preLoginEvictAge)
	newcomer, _ := ts.register()
	expectRawClosed(t, strangers[0])
	st := ts.srv.Stats()
	if st.Evicted != 1 || st.PreLoginLinks != limit-1 {
		t.Fatalf("after the newcomer's login: %d evicted, %d links not logged in; want 1, %d", st.Evicted, st.PreLoginLinks, limit-1)
	}
	for _, c := range strangers[1:] {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		var b [1]byte
		if _, err := c.Read(b[:]); isClosedErr(err) {
			t.Fatal("a younger stranger was closed too")
		}
	}

	// The members, old and new, are unaffected.
	ack, err := newcomer.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte("hello"))
	if err != nil || ack.Error != "" {
		t.Fatalf("newcomer's post: %v %+v", err, ack)
	}
	if f := nextMessage(t, member); f.Str("id") != ack.MsgID {
		t.Errorf("member got %s, want the post %s", f.Raw, ack.MsgID)
	}
}

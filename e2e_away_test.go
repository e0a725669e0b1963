package main

// End-to-end tests of the "away" extension (Protocol.md, Extensions): the
// away sweep over TLS against the real user database and store, driven with
// a fake clock (the time handed to SweepAway), never by waiting.

import (
	"testing"
	"time"

	"mnm/testclient"
)

// startAway serves a site whose away policy is days days.
func startAway(t *testing.T, dir string, days int) *e2eServer {
	t.Helper()
	cfg := testConfig(t, dir, "127.0.0.1:0")
	if days > 0 {
		cfg["awayAfterDays"] = days
	}
	return serveE2E(t, dir, writeConfigFile(t, dir, cfg))
}

// sweep runs the away sweep at now and checks how many devices it dropped.
func sweep(t *testing.T, s *e2eServer, now time.Time, want int) {
	t.Helper()
	n, err := s.d.srv.SweepAway(now)
	if err != nil || n != want {
		t.Fatalf("sweep at %v: %d dropped, %v; want %d", now, n, err, want)
	}
}

// deviceAway reports the away mark of uid's device num in the userdb.
func deviceAway(t *testing.T, s *e2eServer, uid string, num int) bool {
	t.Helper()
	_, rec := s.d.users.lookup(uid)
	for _, d := range rec.Devices {
		if d.Num == num {
			return d.Away
		}
	}
	t.Fatalf("no device %d", num)
	return false
}

// TestE2EAway: a member with two devices, A online and B never logged in
// with a post queued. Before the policy's period nothing is dropped; after
// it B's queue is dropped and replaced by the resync notice, A (online, so
// never swept however old its login) is told, the mark survives a restart,
// a second sweep drops nothing more, and B logging in gets the resync
// notice first, its mark cleared, and later posts as usual.
func TestE2EAway(t *testing.T) {
	dir := t.TempDir()
	s := startAway(t, dir, 2)
	a := s.member("alice away")
	p := s.member("peter the poster")
	uid := a.reg.UID
	bNode := addDevice(t, a, "phone")
	bDev := uid + ".1"
	need(t)(p.c.Post([]testclient.Recipient{{ID: uid, Type: testclient.ToUser}}, []byte("while b is away")))
	queued := s.d.store.Len(bDev)
	if queued == 0 {
		t.Fatal("nothing queued for B")
	}
	start := time.Now()

	sweep(t, s, start.Add(47*time.Hour), 0)
	if n := s.d.store.Len(bDev); n != queued || deviceAway(t, s, uid, 1) {
		t.Fatalf("swept early: %d queued, away %v", n, deviceAway(t, s, uid, 1))
	}

	// p's device 0 is online too: only B is swept.
	sweep(t, s, start.Add(3*24*time.Hour), 1)
	if n := s.d.store.Len(bDev); n != 1 {
		t.Fatalf("B keeps %d queued, want the resync notice only", n)
	}
	if !deviceAway(t, s, uid, 1) || deviceAway(t, s, uid, 0) {
		t.Fatal("away marks wrong")
	}
	u := nextUser(t, a.c, "away")
	if u.Str("away") != "1" || u.Str("label") != "phone" || u.Str("from") != uid {
		t.Fatalf("away notice %s", u.Raw)
	}
	sweep(t, s, start.Add(4*24*time.Hour), 0) // B is away already

	// The mark survives a restart; the other devices log in at once, so
	// that none of them is due when the clock runs on.
	s.stop()
	s.start()
	if !deviceAway(t, s, uid, 1) {
		t.Fatal("away mark lost in a restart")
	}
	s.login(uid, a.reg.NodeID)
	s.login(p.reg.UID, p.reg.NodeID)
	sweep(t, s, start.Add(4*24*time.Hour), 0)

	b := s.login(uid, bNode)
	if f := next(t, b, "user"); f.Int("resync") != 1 || f.Str("from") != uid {
		t.Fatalf("B's first message %s, want the resync notice", f.Raw)
	}
	if deviceAway(t, s, uid, 1) {
		t.Fatal("login kept the away mark")
	}
	pc := s.login(p.reg.UID, p.reg.NodeID)
	post := need(t)(pc.Post([]testclient.Recipient{{ID: uid, Type: testclient.ToUser}}, []byte("after b is back")))
	if f := next(t, b, "delivery"); f.Str("id") != post.MsgID {
		t.Fatalf("B after its return: %s", f.Raw)
	}
}

// TestE2EAwayOff: with the default config (no policy) the sweep drops
// nothing, however far the clock runs.
func TestE2EAwayOff(t *testing.T) {
	s := startAway(t, t.TempDir(), 0)
	a := s.member("alice stays")
	p := s.member("peter the poster")
	addDevice(t, a, "phone")
	need(t)(p.c.Post([]testclient.Recipient{{ID: a.reg.UID, Type: testclient.ToUser}}, []byte("kept")))
	queued := s.d.store.Len(a.reg.UID + ".1")
	a.c.Close()
	sweep(t, s, time.Now().Add(100*365*24*time.Hour), 0)
	if n := s.d.store.Len(a.reg.UID + ".1"); n != queued || queued == 0 {
		t.Fatalf("policy off: %d queued, had %d", n, queued)
	}
}

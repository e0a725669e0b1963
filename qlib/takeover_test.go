package qlib

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"mnm/testclient"
)

// TestDeviceTakeover: a device whose old link went silent (a laptop that
// slept, a phone that changed networks: the connection stays open, nothing
// more is sent) logs in again and takes over at once. The old link is
// closed, the message it had in flight comes to the new link first, and
// what is posted next follows.
func TestDeviceTakeover(t *testing.T) {
	ts := startServer(t, nil)
	sender, _ := ts.register()
	_, reg := ts.register()
	nodeid, _ := ts.dir.device(reg.UID)

	old := ts.login(reg.UID, nodeid)
	post := func(text string) string {
		t.Helper()
		ack, err := sender.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte(text))
		if err != nil || ack.Error != "" {
			t.Fatalf("post: %v %s", err, ack.Error)
		}
		return ack.MsgID
	}
	// The old link receives a message and never acks it: it has gone
	// silent with the message in flight.
	first := post("in flight")
	for f := nextMessage(t, old); f.Str("id") != first; f = nextMessage(t, old) {
		old.Ack(f.Str("id")) // its own login notice
	}

	start := time.Now()
	c, _, err := testclient.Login(ts.addr, reg.UID, nodeid, testclient.Options{AutoAck: true})
	if err != nil {
		t.Fatalf("login while the old link is open: %v", err)
	}
	defer c.Close()
	select {
	case <-old.Done():
		t.Logf("old link closed %v after the new login began", time.Since(start))
	case <-time.After(10 * time.Second):
		t.Fatal("old link still open 10s after the device logged in again")
	}
	second := post("after the takeover")

	var got []string
	for len(got) < 2 {
		f := nextMessage(t, c)
		if f.Op() == "delivery" {
			got = append(got, fmt.Sprintf("%s %s", f.Str("id"), f.Data))
		}
	}
	want := []string{first + " in flight", second + " after the takeover"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("new link received %v, want %v", got, want)
	}
	if !strings.Contains(ts.logs.String(), "device taken over") {
		t.Error("takeover not logged")
	}
	// The sender, the user's first device and this one: the old link is
	// gone from the count.
	waitFor(t, "three devices logged in", func() bool { return ts.srv.Stats().Devices == 3 })
}

// TestTakeoverKeepsPresence: a takeover is not a logout; the user stays
// online, so nobody is told it went offline.
func TestTakeoverKeepsPresence(t *testing.T) {
	ts := startServer(t, nil)
	watcher, wreg := ts.register()
	a, reg := ts.register() // the user's only device
	if ack, err := a.OhiEdit("add", []string{wreg.UID}); err != nil || ack.Error != "" {
		t.Fatalf("ohiedit: %v %s", err, ack.Error)
	}
	waitOhi(t, watcher, reg.UID, 1)
	links := ts.srv.Stats().Links
	b := ts.login(reg.UID, reg.NodeID)
	<-a.Done()
	waitFor(t, "the old link gone", func() bool { return ts.srv.Stats().Links == links }) // the old link is gone
	// Nothing went offline: the next notice is the status 1 of this add,
	// not a status 2 from the takeover, and the list was kept.
	if ack, err := b.OhiEdit("add", []string{wreg.UID}); err != nil || ack.Error != "" {
		t.Fatalf("ohiedit: %v %s", err, ack.Error)
	}
	waitOhi(t, watcher, reg.UID, 1)
	if err := b.Quit(); err != nil {
		t.Fatal(err)
	}
	waitOhi(t, watcher, reg.UID, 2)
}

// waitOhi waits for an ohi notice about uid and checks its status.
func waitOhi(t *testing.T, c *testclient.Client, uid string, status int64) {
	t.Helper()
	for {
		select {
		case f := <-c.Others():
			if f.Op() != "ohi" {
				continue
			}
			if f.Str("from") != uid || f.Int("status") != status {
				t.Fatalf("got %s, want ohi from %s status %d", f.Raw, uid, status)
			}
			return
		case <-time.After(10 * time.Second):
			t.Fatalf("no ohi status %d within 10s", status)
		}
	}
}

// slowCloseConn is a connection whose Close blocks until released, as a TLS
// connection's does while its close_notify waits on a peer that does not
// read; NetConn is the connection beneath, which closes at once.
type slowCloseConn struct {
	net.Conn
	release chan struct{}
}

func (c *slowCloseConn) Close() error {
	<-c.release
	return c.Conn.Close()
}

func (c *slowCloseConn) NetConn() net.Conn { return c.Conn }

// TestNoSlowCloseUnderServerLock: a link that stops reading is closed when
// presence notices from too many senders pile up for it, while the notifying
// link holds Server.mu. The close must not wait on the peer (a TLS close_notify to a
// peer that does not read can take up to WriteTimeout), or every link that
// needs Server.mu (logins, presence, logouts) waits with it.
func TestNoSlowCloseUnderServerLock(t *testing.T) {
	ts := startServer(t, nil)
	_, reg := ts.register()
	nodeid, _ := ts.dir.device(reg.UID)

	srvSide, cliSide := net.Pipe() // writes block until the other side reads
	release := make(chan struct{})
	defer close(release)
	ts.loginPipe(&slowCloseConn{Conn: srvSide, release: release}, cliSide, reg.UID, nodeid)
	// From here the client reads nothing: the login notice's delivery
	// blocks in its write, and presence notices pile up. Notices are
	// coalesced per sender (sendOhi), so it takes many senders: they
	// notify as editOhi does, holding Server.mu.
	overflowed := make(chan struct{})
	go func() {
		defer close(overflowed)
		for i := 0; i < 2*maxOhiPending; i++ { // some may go into the write that blocks
			ts.srv.mu.Lock()
			ts.srv.notifyLocked(reg.UID, fmt.Sprintf("sender %d", i), ohiOnline)
			ts.srv.mu.Unlock()
		}
	}()
	select {
	case <-overflowed:
	case <-time.After(10 * time.Second):
		t.Fatal("presence edits stalled: Server.mu held by a slow close")
	}
	done := make(chan struct{})
	go func() {
		ts.srv.Stats() // takes Server.mu
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Server.mu still held by a slow close")
	}
	if !strings.Contains(ts.logs.String(), "link not reading; closing") {
		t.Error("the notices never overflowed: the test did not exercise the close")
	}
}

package main

// End-to-end tests of the "revoke" extension (Protocol.md, Extensions):
// revoking a device over TLS against the real user database and store.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
	"mnm/testclient"
)

// addDevice gives m another device labelled label and returns its nodeid;
// the "user" message with the nodeid is acked on m's first device.
func addDevice(t *testing.T, m member, label string) string {
	t.Helper()
	need(t)(m.c.NewNode(label))
	return nextUser(t, m.c, "nodeid").Str("nodeid")
}

// expectLoginFailed checks that a Login of uid with nodeid is refused with
// the quit "login failed".
func expectLoginFailed(t *testing.T, s *e2eServer, uid, nodeid string) {
	t.Helper()
	c, _, err := testclient.Login(s.addr, uid, nodeid, testclient.Options{})
	if err == nil {
		c.Close()
		t.Fatal("a revoked device logged in")
	}
	var q *testclient.QuitError
	if !errors.As(err, &q) || q.Reason != "login failed" {
		t.Fatalf("login of a revoked device: %v, want quit login failed", err)
	}
}

// expectClosed waits for c's link to end.
func expectClosed(t *testing.T, c *testclient.Client) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("link of a revoked device not closed")
	}
}

// TestE2ERevoke: a member with four devices — A asking, B and D online, C
// offline with messages queued — lists them and drops B and C: B's link is
// closed, B's and C's nodeids log in no more, their queues are gone, D and
// A are told, and a later post reaches the live devices only.
func TestE2ERevoke(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice liddell")
	p := s.member("peter the poster")
	uid := a.reg.UID
	bNode := addDevice(t, a, "phone")
	cNode := addDevice(t, a, "tablet <old>")
	dNode := addDevice(t, a, "desk")
	b := s.login(uid, bNode)
	d := s.login(uid, dNode)
	bDev, cDev := uid+".1", uid+".2"

	// C is offline: a post waits in its queue.
	need(t)(p.c.Post([]testclient.Recipient{{ID: uid, Type: testclient.ToUser}}, []byte("for all of alice")))
	if n := s.d.store.Len(cDev); n == 0 {
		t.Fatal("nothing queued for the offline device")
	}

	// The list, self marked, exactly as written.
	ack := need(t)(a.c.ListNodes())
	want := fmt.Sprintf(`{"id":%q,"node":[{"label":"laptop","node":"0","self":1},{"label":"phone","node":"1"},`+
		`{"label":"tablet \u003cold\u003e","node":"2"},{"label":"desk","node":"3"}],"op":"ack"}`, ack.ID)
	if string(ack.Frame.Raw) != want {
		t.Fatalf("listnode ack\n%s\nwant\n%s", ack.Frame.Raw, want)
	}
	got := need(t)(b.ListNodes()).NodeList()
	wantNodes := []testclient.Node{{Node: "0", Label: "laptop"}, {Node: "1", Label: "phone", Self: true},
		{Node: "2", Label: "tablet <old>"}, {Node: "3", Label: "desk"}}
	if !slices.Equal(got, wantNodes) {
		t.Fatalf("listed on B: %+v", got)
	}

	// Refusals: itself, unknown, not a number as listed, another's.
	ack, err := a.c.DropNode("0")
	ackErr(t, ack, err, "dropnode: cannot drop this device")
	for _, bad := range []string{"4", "99", "x", "01", "+1", "-1", " 1", "1.0", "1e0", "18446744073709551617"} {
		ack, err := a.c.DropNode(bad)
		ackErr(t, ack, err, "dropnode: no such device")
	}
	ack, err = p.c.DropNode("1") // p's numbers are p's: it has only 0
	ackErr(t, ack, err, "dropnode: no such device")
	if n := len(need(t)(a.c.ListNodes()).NodeList()); n != 4 {
		t.Fatalf("refusals changed the list: %d devices", n)
	}

	// Drop B, online: its link closes at once, its nodeid fails.
	ack = need(t)(a.c.DropNode("1"))
	if ack.MsgID != "" || ack.Posted != "" {
		t.Fatalf("dropnode ack carries a msgid: %s", ack.Frame.Raw)
	}
	expectClosed(t, b)
	expectLoginFailed(t, s, uid, bNode)
	if n := s.d.store.Len(bDev); n != 0 {
		t.Fatalf("revoked device keeps %d queued", n)
	}
	for _, c := range []*testclient.Client{a.c, d} {
		u := nextUser(t, c, "dropnode")
		if u.Str("dropnode") != "1" || u.Str("label") != "phone" || u.Str("from") != uid || u.Has("newnode") {
			t.Fatalf("announcement %s", u.Raw)
		}
	}
	ack, err = a.c.DropNode("1")
	ackErr(t, ack, err, "dropnode: no such device")

	// Drop C, offline with its queue: the queue is gone.
	if n := s.d.store.Len(cDev); n < 2 { // the post, B's announcement
		t.Fatalf("offline device has %d queued", n)
	}
	need(t)(d.DropNode("2")) // any device may drop another
	if n := s.d.store.Len(cDev); n != 0 {
		t.Fatalf("revoked offline device keeps %d queued", n)
	}
	expectLoginFailed(t, s, uid, cNode)
	// A commit that read the devices before the drop and lands after it:
	// the dead queue is drained as the entry comes.
	env := func(store.ID, time.Time, []store.ID) []byte { return tmtp.AppendFrame(nil, tmtp.String("op", "late")) }
	if _, err := s.d.store.Draft().Commit(store.Message{To: []string{cDev}, Envelope: env}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the late entry drained", func() bool { return s.d.store.Len(cDev) == 0 })
	for _, c := range []*testclient.Client{a.c, d} {
		if u := nextUser(t, c, "dropnode"); u.Str("dropnode") != "2" || u.Str("label") != "tablet <old>" {
			t.Fatalf("announcement %s", u.Raw)
		}
	}
	if got := need(t)(d.ListNodes()).NodeList(); !slices.Equal(got, []testclient.Node{{Node: "0", Label: "laptop"}, {Node: "3", Label: "desk", Self: true}}) {
		t.Fatalf("after the drops listed %+v", got)
	}

	// A later post is stored for the live devices only.
	post := need(t)(p.c.Post([]testclient.Recipient{{ID: uid, Type: testclient.ToUser}}, []byte("after")))
	for _, c := range []*testclient.Client{a.c, d} {
		for f := next(t, c, "delivery"); f.Str("id") != post.MsgID; f = next(t, c, "delivery") {
		}
	}
	for _, dev := range []string{bDev, cDev} {
		if n := s.d.store.Len(dev); n != 0 {
			t.Fatalf("post queued for revoked %s: %d", dev, n)
		}
	}
}

// TestE2ERevokeRestart: a revoked device stays revoked across a restart.
func TestE2ERevokeRestart(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice liddell")
	bNode := addDevice(t, a, "phone")
	need(t)(a.c.DropNode("1"))
	a.c.Close()
	s.stop()
	s.start()
	expectLoginFailed(t, s, a.reg.UID, bNode)
	ac := s.login(a.reg.UID, a.reg.NodeID)
	if got := need(t)(ac.ListNodes()).NodeList(); !slices.Equal(got, []testclient.Node{{Node: "0", Label: "laptop", Self: true}}) {
		t.Fatalf("after restart listed %+v", got)
	}
	ack, err := ac.DropNode("1")
	ackErr(t, ack, err, "dropnode: no such device")
	// The number is never reused.
	need(t)(ac.NewNode("new phone"))
	if got := need(t)(ac.ListNodes()).NodeList(); len(got) != 2 || got[1].Node != "2" {
		t.Fatalf("new device listed %+v", got)
	}
}

// TestE2ERevokeLongLabels: a hundred devices with labels that JSON writes
// six times longer fit the listnode ack beside the longest id, cut.
func TestE2ERevokeLongLabels(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice liddell")
	label := strings.Repeat("<", 200)
	for range 99 {
		need(t)(a.c.NewNode(label))
	}
	// The longest id, escaped six-fold too; on a raw link, since the
	// client picks its own ids.
	a.c.Close()
	conn, err := testclient.DialTimeout(s.addr, nil, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadTimeout(15 * time.Second)
	id := strings.Repeat("<", 4096)
	for _, h := range []map[string]any{
		{"Op": 0, "Id": "1"},
		{"Op": 2, "Uid": a.reg.UID, "Node": a.reg.NodeID},
		{"Op": 3, "Id": id, "ListNode": 1},
	} {
		if err := conn.WriteFrame(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	for {
		f, err := conn.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if f.Op() != "ack" {
			continue // tmtprev, info, the first stored message (not acked)
		}
		if f.Str("id") != id || f.Has("error") {
			t.Fatalf("listnode ack %.200s", f.Raw)
		}
		nodes := testclient.Ack{Frame: f}.NodeList()
		if len(nodes) != 100 {
			t.Fatalf("listed %d devices", len(nodes))
		}
		// 300 escaped octets: 50 of "<".
		if nodes[1].Label != strings.Repeat("<", 50) || nodes[0].Label != "laptop" || !nodes[0].Self {
			t.Fatalf("labels listed %q, %q", nodes[0].Label, nodes[1].Label)
		}
		return
	}
}

func TestE2ERevokeMalformed(t *testing.T) {
	s := startE2E(t, t.TempDir())
	for _, head := range []map[string]any{
		{"Op": 3, "Id": "1", "DropNode": "1", "ListNode": 1},
		{"Op": 3, "Id": "1", "DropNode": "1", "NewNode": "phone"},
		{"Op": 3, "Id": "1", "DropNode": "1", "Block": "someone long"},
		{"Op": 3, "Id": "1", "ListNode": 1, "ListBlock": 1},
		{"Op": 3, "Id": "1", "ListNode": 1, "NewAlias": "something long"},
		{"Op": 3, "Id": "1", "ListNode": 2},
		{"Op": 3, "Id": "1", "ListNode": "1"},
		{"Op": 3, "Id": "1", "ListNode": 0},
		{"Op": 3, "Id": "1", "DropNode": 1},
		{"Op": 3, "Id": "1", "DropNode": ""}, // empty is absent: no field at all
		{"Op": 3, "Id": "1", "DropNode": "1", "Once": 1},
		{"Op": 3, "Id": "1", "DropNode": strings.Repeat("1", 4097)},
	} {
		c, _ := s.register("_")
		if err := c.Conn().WriteFrame(head, nil); err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(head)[:min(60, len(fmt.Sprint(head)))], func(t *testing.T) { expectLinkQuit(t, c, "invalid header") })
	}
}

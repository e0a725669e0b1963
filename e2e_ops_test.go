package main

// End-to-end tests of the operations beyond posting: UserEdit, presence,
// groups, PostNotify and Ping, against the real user database.

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/testclient"
)

// member is a registered user with one logged-in device.
type member struct {
	c     *testclient.Client
	reg   testclient.Registration
	alias string
}

func (s *e2eServer) member(alias string) member {
	s.t.Helper()
	c, reg := s.register(alias)
	if reg.AliasError != "" {
		s.t.Fatalf("alias %q refused: %s", alias, reg.AliasError)
	}
	return member{c: c, reg: reg, alias: alias}
}

// next returns the next stored message on c with op, acking everything up to
// it; other ops are skipped (login notices and the like).
func next(t *testing.T, c *testclient.Client, op string) *testclient.Frame {
	t.Helper()
	for {
		f := recv(t, c)
		if err := c.Ack(f.Str("id")); err != nil {
			t.Fatal(err)
		}
		if !f.HeadsumOK() {
			t.Fatalf("bad headsum: %s", f.Raw)
		}
		if f.Op() == op {
			return f
		}
	}
}

// other returns the next non-stored frame on c (ohi notices).
func other(t *testing.T, c *testclient.Client) *testclient.Frame {
	t.Helper()
	select {
	case f, ok := <-c.Others():
		if !ok {
			t.Fatalf("link ended: %v", c.Err())
		}
		return f
	case <-time.After(15 * time.Second):
		t.Fatal("no frame within 15s")
	}
	return nil
}

func mustAck(t *testing.T, ack testclient.Ack, err error) testclient.Ack {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if ack.Error != "" {
		t.Fatalf("ack error %q", ack.Error)
	}
	return ack
}

// need is mustAck for a call's two results: need(t)(c.Post(...)).
func need(t *testing.T) func(testclient.Ack, error) testclient.Ack {
	return func(ack testclient.Ack, err error) testclient.Ack {
		t.Helper()
		return mustAck(t, ack, err)
	}
}

func ackErr(t *testing.T, ack testclient.Ack, err error, want string) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if ack.Error != want {
		t.Fatalf("ack error %q, want %q", ack.Error, want)
	}
}

func expectLinkQuit(t *testing.T, c *testclient.Client, reason string) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("link not closed")
	}
	if q, ok := c.Err().(*testclient.QuitError); !ok || q.Reason != reason {
		t.Fatalf("link ended with %v, want quit %q", c.Err(), reason)
	}
}

func TestE2EUserEditAlias(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("_")
	b := s.member("_")
	ack, err := a.c.NewAlias("short")
	ackErr(t, ack, err, "newalias must be 8+ characters")
	ack, err = a.c.NewAlias("tab\there!")
	ackErr(t, ack, err, "newalias must be printable characters")
	ack, err = a.c.NewAlias("alice liddell")
	if ack = mustAck(t, ack, err); ack.MsgID != "" {
		t.Fatalf("useredit ack carries a msgid: %s", ack.Frame.Raw)
	}
	u := next(t, a.c, "user")
	if u.Str("newalias") != "alice liddell" || u.Str("from") != a.reg.UID {
		t.Fatalf("user message %s", u.Raw)
	}
	need(t)(a.c.NewAlias("alice liddell")) // idempotent
	ack, err = b.c.NewAlias("alice liddell")
	ackErr(t, ack, err, "newalias already taken")
}

// TestE2ENewNodeCopiesQueue: a new device starts with a copy of the queue of
// the device that made it, gets the "user" message first, then new messages
// in order.
func TestE2ENewNodeCopiesQueue(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("_")
	b := s.member("_")
	to := []testclient.Recipient{{ID: b.reg.UID, Type: 1}}
	for i := range 3 {
		need(t)(a.c.Post(to, fmt.Appendf(nil, "old %d", i)))
	}
	// b holds its first delivery unacked, so its queue has all three.
	first := recv(t, b.c)
	if string(first.Data) != "old 0" {
		t.Fatalf("first delivery %s %q", first.Raw, first.Data)
	}
	need(t)(b.c.NewNode("tablet"))
	b.c.Ack(first.Str("id"))
	u := next(t, b.c, "user") // ahead of "old 1": higher priority
	if u.Str("newnode") != "tablet" || len(u.Str("nodeid")) != 40 {
		t.Fatalf("user message %s", u.Raw)
	}
	for i := 1; i < 3; i++ {
		if f := next(t, b.c, "delivery"); string(f.Data) != fmt.Sprintf("old %d", i) {
			t.Fatalf("b got %q", f.Data)
		}
	}

	need(t)(a.c.Post(to, []byte("new")))
	b2 := s.login(b.reg.UID, u.Str("nodeid"))
	if f := recv(t, b2); f.Op() != "user" {
		t.Fatalf("new device's first message %s, want the user message", f.Raw)
	} else {
		b2.Ack(f.Str("id"))
	}
	for _, want := range []string{"old 0", "old 1", "old 2", "new"} {
		if f := next(t, b2, "delivery"); string(f.Data) != want {
			t.Fatalf("new device got %q, want %q", f.Data, want)
		}
	}
}

// TestE2EPresence: two users with two devices each; ohi notices for add, drop,
// login replies, and going offline (abruptly) only with the last device.
func TestE2EPresence(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a1, ra := s.register("_")
	b1, rb := s.register("_")
	a2node, _, err := s.d.users.AddDevice(ra.UID, "a2")
	if err != nil {
		t.Fatal(err)
	}
	b2node, _, err := s.d.users.AddDevice(rb.UID, "b2")
	if err != nil {
		t.Fatal(err)
	}
	a2 := s.login(ra.UID, a2node)
	b2 := s.login(rb.UID, b2node)

	ack, err := a1.OhiEdit("add", []string{"nobody"})
	ackErr(t, ack, err, "recipient not found: nobody")

	need(t)(a1.OhiEdit("add", []string{rb.UID}))
	for _, c := range []*testclient.Client{b1, b2} {
		if f := other(t, c); f.Op() != "ohi" || f.Str("from") != ra.UID || f.Int("status") != 1 {
			t.Fatalf("ohi %s", f.Raw)
		}
	}
	for _, c := range []*testclient.Client{a1, a2} {
		f := next(t, c, "ohiedit")
		if f.Str("type") != "add" || !strings.Contains(string(f.Raw), `"for":[{"Id":"`+rb.UID+`","Type":0}]`) {
			t.Fatalf("ohiedit %s", f.Raw)
		}
	}
	// A device of b logging in now learns that a is online.
	b3node, _, err := s.d.users.AddDevice(rb.UID, "b3")
	if err != nil {
		t.Fatal(err)
	}
	b3, info, err := testclient.Login(s.addr, rb.UID, b3node, testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b3.Close()
	if !slices.Equal(info.Ohi, []string{ra.UID}) {
		t.Fatalf("login ohi %v, want [%s]", info.Ohi, ra.UID)
	}

	need(t)(a1.OhiEdit("drop", []string{rb.UID}))
	for _, c := range []*testclient.Client{b1, b2, b3} {
		if f := other(t, c); f.Int("status") != 2 {
			t.Fatalf("ohi after drop %s", f.Raw)
		}
	}
	need(t)(a1.OhiEdit("init", []string{rb.UID}))
	for _, c := range []*testclient.Client{b1, b2, b3} {
		if f := other(t, c); f.Int("status") != 1 {
			t.Fatalf("ohi after init %s", f.Raw)
		}
	}
	// a's first device drops abruptly: a is still online on a2.
	a1.Close()
	// a2 is the last: b hears that a went offline.
	a2.Close()
	for _, c := range []*testclient.Client{b1, b2, b3} {
		if f := other(t, c); f.Int("status") != 2 || f.Str("from") != ra.UID {
			t.Fatalf("ohi after a went offline %s", f.Raw)
		}
	}
	// And exactly once: a later notice from b's own list would come next.
	need(t)(b1.OhiEdit("add", []string{rb.UID}))
	for _, c := range []*testclient.Client{b1, b2, b3} {
		if f := other(t, c); f.Int("status") != 1 || f.Str("from") != rb.UID {
			t.Fatalf("got %s, want b's own ohi (no second offline notice for a)", f.Raw)
		}
	}
}

// TestE2EGroupLifecycle: invite → join → alias → posts of type 2 and 3 →
// leave → re-invite → bar → re-invite, with every member notice.
func TestE2EGroupLifecycle(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice liddell")
	b := s.member("bob the builder")
	c := s.member("carol singer")
	const gid = "book club"

	ack, err := a.c.GroupInvite("short", a.alias, b.alias, "hi")
	ackErr(t, ack, err, "gid must be 8+ characters")
	ack, err = a.c.GroupInvite(gid, b.alias, b.alias, "hi")
	ackErr(t, ack, err, "from must identify sender")
	ack, err = a.c.GroupInvite(gid, a.alias, "nobody at all", "hi")
	ackErr(t, ack, err, "alias not found")
	ack, err = a.c.GroupInvite(b.alias, a.alias, c.alias, "hi")
	ackErr(t, ack, err, "gid already taken")

	inv := need(t)(a.c.GroupInvite(gid, a.alias, b.alias, "join us"))
	f := next(t, b.c, "invite")
	if f.Str("gid") != gid || f.Str("alias") != a.alias || f.Str("to") != b.alias || string(f.Data) != "join us" || f.Str("id") != inv.MsgID {
		t.Fatalf("invite %s %q", f.Raw, f.Data)
	}
	if f := next(t, a.c, "member"); f.Str("act") != "invite" || f.Str("alias") != b.alias || f.Str("gid") != gid {
		t.Fatalf("member notice %s", f.Raw)
	}
	ack, err = a.c.GroupInvite(gid, a.alias, b.alias, "again")
	mustAck(t, ack, err) // re-inviting an invited user is accepted
	next(t, b.c, "invite")
	next(t, a.c, "member")
	ack, err = c.c.GroupInvite(gid, c.alias, a.alias, "")
	ackErr(t, ack, err, "not a member of the group")

	group := func(typ int) []testclient.Recipient { return []testclient.Recipient{{ID: gid, Type: typ}} }
	ack, err = c.c.Post(group(2), []byte("x"))
	ackErr(t, ack, err, "not a member of the group: "+gid)
	ack, err = c.c.Post([]testclient.Recipient{{ID: "no such group", Type: 2}}, []byte("x"))
	ackErr(t, ack, err, "group not found: no such group")

	need(t)(b.c.GroupEdit("join", gid, "", ""))
	for _, m := range []member{a, b} {
		if f := next(t, m.c, "member"); f.Str("act") != "join" || f.Str("alias") != b.alias || f.Has("newalias") {
			t.Fatalf("join notice %s", f.Raw)
		}
	}
	ack, err = b.c.GroupInvite(gid, b.alias, a.alias, "")
	ackErr(t, ack, err, "already a member of the group")

	// Type 2 reaches every joined member, the sender's device too.
	need(t)(a.c.Post(group(2), []byte("to all")))
	for _, m := range []member{a, b} {
		if f := next(t, m.c, "delivery"); string(f.Data) != "to all" {
			t.Fatalf("type 2 delivery %q", f.Data)
		}
	}
	// Type 3 leaves the sender out.
	need(t)(b.c.Post(group(3), []byte("to others")))
	if f := next(t, a.c, "delivery"); string(f.Data) != "to others" {
		t.Fatalf("type 3 delivery %q", f.Data)
	}

	need(t)(b.c.NewAlias("bob the second"))
	next(t, b.c, "user")
	ack, err = b.c.GroupEdit("alias", gid, a.alias, "")
	ackErr(t, ack, err, "newalias must identify sender")
	need(t)(b.c.GroupEdit("alias", gid, "bob the second", ""))
	for _, m := range []member{a, b} {
		if f := next(t, m.c, "member"); f.Str("act") != "alias" || f.Str("alias") != b.alias || f.Str("newalias") != "bob the second" {
			t.Fatalf("alias notice %s", f.Raw)
		}
	}

	// b leaves: back to invited, no more posts.
	need(t)(b.c.GroupEdit("drop", gid, "", "bob the second"))
	for _, m := range []member{a, b} {
		if f := next(t, m.c, "member"); f.Str("act") != "drop" || f.Str("alias") != "bob the second" {
			t.Fatalf("leave notice %s", f.Raw)
		}
	}
	need(t)(a.c.Post(group(3), []byte("b is gone")))
	need(t)(b.c.Post([]testclient.Recipient{{ID: b.reg.UID, Type: 1}}, []byte("marker")))
	if f := next(t, b.c, "delivery"); string(f.Data) != "marker" {
		t.Fatalf("b got %q after leaving, want only its own marker", f.Data)
	}
	// An invited user may rejoin; then a bars b.
	need(t)(b.c.GroupEdit("join", gid, "", ""))
	next(t, a.c, "member")
	next(t, b.c, "member")
	need(t)(a.c.GroupEdit("drop", gid, "", "bob the second"))
	for _, m := range []member{a, b} {
		if f := next(t, m.c, "member"); f.Str("act") != "drop" || f.Str("from") != a.reg.UID {
			t.Fatalf("bar notice %s", f.Raw)
		}
	}
	ack, err = b.c.GroupEdit("join", gid, "", "")
	ackErr(t, ack, err, "not invited to the group")
	need(t)(a.c.GroupInvite(gid, a.alias, b.alias, "come back"))
	next(t, b.c, "invite")
	need(t)(b.c.GroupEdit("join", gid, "", ""))
}

func TestE2EPostNotify(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("_")
	b := s.member("_")
	c := s.member("_")
	a2node, _, err := s.d.users.AddDevice(a.reg.UID, "a2")
	if err != nil {
		t.Fatal(err)
	}
	a2 := s.login(a.reg.UID, a2node)

	to := []testclient.Recipient{{ID: b.reg.UID, Type: 1}}
	notefor := []testclient.Recipient{{ID: c.reg.UID, Type: 1}}
	ack := need(t)(a.c.PostNotify(to, notefor, []byte("note"), []byte("the post"), false))
	for _, m := range []*testclient.Client{b.c, a2} {
		p := next(t, m, "delivery")
		if string(p.Data) != "the post" || p.Int("notify") != 3 || p.Str("id") != ack.MsgID {
			t.Fatalf("delivery %s %q", p.Raw, p.Data)
		}
		n := next(t, m, "notify")
		if string(n.Data) != "note" || n.Str("postid") != ack.MsgID {
			t.Fatalf("notify %s %q", n.Raw, n.Data)
		}
	}
	n := next(t, c.c, "notify")
	if string(n.Data) != "note" || n.Str("postid") != ack.MsgID {
		t.Fatalf("notefor notify %s", n.Raw)
	}

	// fornotself: the sender's other device gets the notification, not the
	// post (SPEC §4 op 8).
	ack = need(t)(a.c.PostNotify(to, nil, []byte("n2"), []byte("p2"), true))
	next(t, b.c, "notify")
	need(t)(a.c.Post([]testclient.Recipient{{ID: a.reg.UID, Type: 1}}, []byte("marker")))
	if f := next(t, a2, "notify"); string(f.Data) != "n2" || f.Str("postid") != ack.MsgID {
		t.Fatalf("sender's other device got %s %q, want the notification", f.Raw, f.Data)
	}
	if f := recv(t, a2); f.Op() != "delivery" || string(f.Data) != "marker" {
		t.Fatalf("sender's other device got %s %q with fornotself, want the marker", f.Raw, f.Data)
	}

	// Data no longer than the note is a quit.
	a.c.Conn().WriteFrame(map[string]any{"Op": 8, "Id": "x", "For": to, "Datalen": 4, "Notelen": 4}, []byte("abcd"))
	expectLinkQuit(t, a.c, "data too short for request type")
	a2.Conn().WriteFrame(map[string]any{"Op": 8, "Id": "x", "For": []any{}, "Fornotself": true, "Datalen": 5, "Notelen": 4}, []byte("abcde"))
	expectLinkQuit(t, a2, "recipient list empty")
}

func TestE2EPing(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice liddell")
	b := s.member("bob the builder")
	ack := need(t)(a.c.Ping(a.alias, b.alias, "hello × 2"))
	f := next(t, b.c, "ping")
	if string(f.Data) != "hello × 2" || f.Str("alias") != a.alias || f.Str("to") != b.alias || f.Str("id") != ack.MsgID {
		t.Fatalf("ping %s %q", f.Raw, f.Data)
	}
	ack, err := a.c.Ping(b.alias, b.alias, "x")
	ackErr(t, ack, err, "from must identify sender")
	ack, err = a.c.Ping(a.alias, "nobody at all", "x")
	ackErr(t, ack, err, "alias not found: nobody at all")

	a.c.Conn().WriteFrame(map[string]any{"Op": 9, "Id": "1", "From": a.alias, "To": b.alias, "Datalen": 141},
		[]byte(strings.Repeat("x", 141)))
	expectLinkQuit(t, a.c, "data too long for request type")
	b.c.Conn().WriteFrame(map[string]any{"Op": 9, "Id": "1", "From": b.alias, "To": a.alias, "Datalen": 3},
		[]byte{'A', 0xff, 'Z'})
	expectLinkQuit(t, b.c, "data not valid UTF8")
}

// TestE2EConcurrentGroupPosts: many members post to their group at once;
// every member receives every post, in order per sender.
func TestE2EConcurrentGroupPosts(t *testing.T) {
	s := startE2E(t, t.TempDir())
	const members, posts = 8, 40
	const gid = "the whole crowd"
	var ms []member
	for i := range members {
		ms = append(ms, s.member(fmt.Sprintf("member number %d", i)))
	}
	for _, m := range ms[1:] {
		need(t)(ms[0].c.GroupInvite(gid, ms[0].alias, m.alias, ""))
		need(t)(m.c.GroupEdit("join", gid, "", ""))
	}
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range posts {
				ack, err := m.c.Post([]testclient.Recipient{{ID: gid, Type: 2}}, fmt.Appendf(nil, "%s %d", m.reg.UID, i))
				if err != nil || ack.Error != "" {
					t.Errorf("post: %v %s", err, ack.Error)
					return
				}
			}
		}()
	}
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := map[string]int{}
			for got := 0; got < members*posts; {
				var f *testclient.Frame
				select {
				case f = <-m.c.Messages():
				case <-time.After(30 * time.Second):
					t.Errorf("%s: %d of %d posts", m.alias, got, members*posts)
					return
				}
				m.c.Ack(f.Str("id"))
				if f.Op() != "delivery" {
					continue
				}
				var from string
				var n int
				fmt.Sscanf(string(f.Data), "%s %d", &from, &n)
				if prev, ok := last[from]; ok && n != prev+1 || !ok && n != 0 {
					t.Errorf("%s: post %d from %s after %d", m.alias, n, from, prev)
					return
				}
				last[from] = n
				got++
			}
		}()
	}
	wg.Wait()
}

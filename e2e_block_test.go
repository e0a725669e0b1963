package main

// End-to-end tests of the "block" extension (Protocol.md, Extensions): block
// lists over TLS against the real user database.
//
// That something was not delivered is shown as e2e_sent_test.go shows it:
// a member who is not blocked posts a marker afterwards, and every device
// receives its queue in id order (SPEC §5), so whatever a request stored
// for a device arrives before the marker.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"mnm/testclient"
)

// ackKeys returns the keys of an ack frame, sorted, for comparing the
// shape of two acks.
func ackKeys(t *testing.T, a testclient.Ack) []string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.Frame.Raw, &m); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// sameShape checks that two acks, one of a request to a blocker and one of
// the same request to a member who blocks nobody, carry the same fields and
// no error.
func sameShape(t *testing.T, what string, blocked, free testclient.Ack) {
	t.Helper()
	if blocked.Error != "" || free.Error != "" {
		t.Fatalf("%s: errors %q, %q", what, blocked.Error, free.Error)
	}
	if b, f := ackKeys(t, blocked), ackKeys(t, free); !slices.Equal(b, f) {
		t.Fatalf("%s: blocked ack %s, free ack %s", what, blocked.Frame.Raw, free.Frame.Raw)
	}
	if blocked.MsgID == "" || blocked.Posted == "" {
		t.Fatalf("%s: no msgid or posted: %s", what, blocked.Frame.Raw)
	}
}

// nextUserOn returns the next "user" message carrying key on each of devs.
func nextUserOn(t *testing.T, key string, devs ...*testclient.Client) []*testclient.Frame {
	t.Helper()
	var out []*testclient.Frame
	for _, c := range devs {
		out = append(out, nextUser(t, c, key))
	}
	return out
}

func TestE2EBlock(t *testing.T) {
	s := startE2E(t, t.TempDir())
	b := s.household("bob the blocker", 2) // blocks a
	a := s.household("alice the pest", 2)  // blocked
	c := s.household("carol the bystander", 1)
	all := []*household{a, b, c}
	const gid = "the shared group"
	user := func(h *household) []testclient.Recipient {
		return []testclient.Recipient{{ID: h.uid, Type: testclient.ToUser}}
	}
	// a's group with b and c joined, set up before the block.
	need(t)(a.devs[0].GroupInvite(gid, a.alias, b.alias, "join"))
	need(t)(a.devs[0].GroupInvite(gid, a.alias, c.alias, "join"))
	need(t)(b.devs[0].GroupEdit("join", gid, "", ""))
	need(t)(c.devs[0].GroupEdit("join", gid, "", ""))
	drain := func() {
		marker := c.mark(t, a, b)
		for _, h := range all {
			for _, d := range h.devs {
				upToMarker(t, d, marker)
			}
		}
	}
	drain()

	// Block by uid: both of b's devices are told.
	ack := need(t)(b.devs[0].Block(a.uid))
	if ack.MsgID != "" {
		t.Fatalf("block ack carries a msgid: %s", ack.Frame.Raw)
	}
	for _, u := range nextUserOn(t, "block", b.devs...) {
		if u.Str("block") != a.uid || u.Str("from") != b.uid || u.Int("datalen") != 0 {
			t.Fatalf("block announcement %s", u.Raw)
		}
	}
	if got := need(t)(b.devs[0].ListBlocks()).BlockList(); !slices.Equal(got, []string{a.uid}) {
		t.Fatalf("listed %q", got)
	}

	// Everything a sends b is acked as if b blocked nobody: the same
	// request to c (who blocks nobody) gets an ack of the same shape.
	sd := a.devs[0]
	sameShape(t, "post", need(t)(sd.Post(user(b), []byte("direct"))), need(t)(sd.Post(user(c), []byte("direct c"))))
	g2 := []testclient.Recipient{{ID: gid, Type: testclient.ToGroup}}
	g3 := []testclient.Recipient{{ID: gid, Type: testclient.ToGroupOthers}}
	need(t)(sd.Post(g2, []byte("group 2")))
	need(t)(sd.Post(g3, []byte("group 3")))
	sameShape(t, "postnotify",
		need(t)(sd.PostNotify(user(b), user(b), []byte("note"), []byte("noted post"), false)),
		need(t)(sd.PostNotify(user(c), user(c), []byte("note c"), []byte("noted post c"), false)))
	sameShape(t, "ping", need(t)(sd.Ping(a.alias, b.alias, "ping b")), need(t)(sd.Ping(a.alias, c.alias, "ping c")))
	sameShape(t, "invite",
		need(t)(sd.GroupInvite("a second group", a.alias, b.alias, "invite b")),
		need(t)(sd.GroupInvite("a third group", a.alias, c.alias, "invite c")))

	marker := c.mark(t, a, b)
	byOp := receive(t, marker,
		sentCheck{"blocker's device 0", b.devs[0], nil},
		sentCheck{"blocker's device 1", b.devs[1], nil},
		// c: direct, both group posts, the post and the note, the ping and
		// the invitation.
		sentCheck{"bystander", c.devs[0], []string{"delivery", "delivery", "delivery", "delivery", "notify", "ping", "invite"}},
		// a's other device keeps what a sent: the direct posts (to b and
		// to c), the group posts, both PostNotifies' posts and notes, both
		// pings, both invitations (with the member notices of its groups).
		sentCheck{"sender's other device", a.devs[1], []string{
			"delivery", "delivery", "delivery", "delivery",
			"delivery", "notify", "delivery", "notify",
			"ping", "ping", "invite", "member", "invite", "member"}},
	)
	var pinged []string
	for _, f := range byOp["ping"] {
		pinged = append(pinged, f.Str("to"))
	}
	if !slices.Contains(pinged, b.alias) {
		t.Fatalf("the sender's other device has no copy of the ping to the blocker: %q", pinged)
	}
	// The group records the invitation to b as any other: b may join.
	need(t)(b.devs[0].GroupEdit("join", "a second group", "", ""))

	// Unblock by alias (the entry was made by uid): both devices are told,
	// naming the entry as listed, and delivery resumes.
	need(t)(b.devs[0].Unblock(a.alias))
	for _, u := range nextUserOn(t, "unblock", b.devs...) {
		if u.Str("unblock") != a.uid || u.Str("from") != b.uid {
			t.Fatalf("unblock announcement %s", u.Raw)
		}
	}
	if got := need(t)(b.devs[0].ListBlocks()).BlockList(); got == nil || len(got) != 0 {
		t.Fatalf("listed %q after unblock, want []", got)
	}
	drain()
	pack := need(t)(sd.Ping(a.alias, b.alias, "after unblock"))
	need(t)(sd.Post(g3, []byte("group after")))
	marker = c.mark(t, b)
	for _, d := range b.devs {
		got := upToMarker(t, d, marker)
		if len(got) != 2 || got[0].Op() != "ping" || got[0].Str("id") != pack.MsgID || string(got[1].Data) != "group after" {
			t.Fatalf("after unblock got %v", got)
		}
	}

	// Block by alias: listed as given; blocking the same member again by
	// uid is acked OK and changes nothing.
	need(t)(b.devs[0].Block(a.alias))
	for _, u := range nextUserOn(t, "block", b.devs...) {
		if u.Str("block") != a.alias {
			t.Fatalf("block announcement %s", u.Raw)
		}
	}
	need(t)(b.devs[0].Block(a.uid))
	if got := need(t)(b.devs[0].ListBlocks()).BlockList(); !slices.Equal(got, []string{a.alias}) {
		t.Fatalf("listed %q", got)
	}
	need(t)(sd.Ping(a.alias, b.alias, "blocked by alias"))
	need(t)(sd.Post(g2, []byte("group while blocked")))
	marker = c.mark(t, b)
	for _, d := range b.devs {
		if got := upToMarker(t, d, marker); len(got) != 0 {
			t.Fatalf("blocked by alias, got %v", got)
		}
	}

	// The list is private: a learns nothing of it, its own list is empty,
	// and unblocking something it never blocked is acked OK.
	if got := need(t)(sd.ListBlocks()).BlockList(); got == nil || len(got) != 0 {
		t.Fatalf("a lists %q", got)
	}
	need(t)(sd.Unblock(b.uid))
	need(t)(sd.Unblock("never existed at all"))
}

func TestE2EBlockRefusals(t *testing.T) {
	s := startE2E(t, t.TempDir())
	b := s.member("bob the blocker")
	a := s.member("alice liddell")
	need(t)(a.c.NewOnceAlias("alice once only"))
	unknownUID := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" // a uid's form, nobody's
	for _, c := range []struct{ name, want string }{
		{b.reg.UID, "block: cannot block yourself"},
		{b.alias, "block: cannot block yourself"},
		{unknownUID, "recipient not found: " + unknownUID},
		{"never existed", "alias not found: never existed"},
		// A single-use alias is only an address to reach its owner by.
		{"alice once only", "alias not found: alice once only"},
		// A gid is no member.
		{"a group of ours", "alias not found: a group of ours"},
	} {
		if c.name == "a group of ours" {
			need(t)(b.c.GroupInvite(c.name, b.alias, a.alias, "x"))
		}
		ack, err := b.c.Block(c.name)
		ackErr(t, ack, err, c.want)
	}
	if got := need(t)(b.c.ListBlocks()).BlockList(); len(got) != 0 {
		t.Fatalf("refusals listed %q", got)
	}
	// Unblocking what is not blocked, or nothing at all, is acked OK.
	for _, name := range []string{a.reg.UID, a.alias, unknownUID, "never existed"} {
		need(t)(b.c.Unblock(name))
	}
}

// TestE2EBlockBound: a list of long names fills before MaxBlocks, when its
// listing would no longer fit the listblock ack beside the longest id; the
// full list is still listed.
func TestE2EBlockBound(t *testing.T) {
	s := startE2E(t, t.TempDir())
	b := s.member("bob the blocker")
	// Aliases of 200 octets of '<', which the frame writer escapes to six
	// octets each: some 33 of them fill the 40,000 octets.
	var names []string
	for i := range 40 {
		name := fmt.Sprintf("%s%05d", strings.Repeat("<", 195), i)
		uid := fmt.Sprintf("u%07d", i)
		if _, err := s.d.users.CreateFixture(uid, []string{"phone"}, []string{name}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	blocked := 0
	for _, name := range names {
		ack, err := b.c.Block(name)
		if err != nil {
			t.Fatal(err)
		}
		if ack.Error != "" {
			if ack.Error != "block list full" {
				t.Fatalf("block %d: %q", blocked, ack.Error)
			}
			break
		}
		blocked++
	}
	if blocked == 0 || blocked == len(names) {
		t.Fatalf("%d of %d blocked", blocked, len(names))
	}
	// Listed in full even with the longest id there is.
	id := strings.Repeat("<", 4096)
	if err := b.c.Conn().WriteFrame(map[string]any{"Op": 3, "Id": id, "ListBlock": 1}, nil); err != nil {
		t.Fatal(err)
	}
	for {
		f := other(t, b.c)
		if f.Str("id") != id {
			continue
		}
		if got := f.Strings("block"); len(got) != blocked || f.Has("error") {
			t.Fatalf("listed %d of %d: %.200s", len(got), blocked, f.Raw)
		}
		break
	}
	// Unblocking one makes room again.
	need(t)(b.c.Unblock(names[0]))
	need(t)(b.c.Block(names[0]))
}

// TestE2EBlockMalformed: invalid UserEdit combinations and wrong types end
// the link with "invalid header".
func TestE2EBlockMalformed(t *testing.T) {
	s := startE2E(t, t.TempDir())
	for _, head := range []map[string]any{
		{"Op": 3, "Id": "1", "Block": "someone long", "NewAlias": "something long"},
		{"Op": 3, "Id": "1", "Block": "someone long", "Unblock": "someone long"},
		{"Op": 3, "Id": "1", "Block": "someone long", "ListBlock": 1},
		{"Op": 3, "Id": "1", "Unblock": "someone long", "ListOnce": 1},
		{"Op": 3, "Id": "1", "Block": "someone long", "Once": 1},
		{"Op": 3, "Id": "1", "ListBlock": 2},
		{"Op": 3, "Id": "1", "ListBlock": "1"},
		{"Op": 3, "Id": "1", "ListBlock": 0},
		{"Op": 3, "Id": "1", "Block": 7},
		{"Op": 3, "Id": "1", "Unblock": []string{"x"}},
		{"Op": 3, "Id": "1", "Block": ""}, // empty is absent: no field at all
		{"Op": 3, "Id": "1", "Unblock": ""},
		{"Op": 3, "Id": "1", "Block": strings.Repeat("x", 4097)},
	} {
		c, _ := s.register("_")
		if err := c.Conn().WriteFrame(head, nil); err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(head)[:min(60, len(fmt.Sprint(head)))], func(t *testing.T) { expectLinkQuit(t, c, "invalid header") })
	}
}

// TestE2EBlockRestart: a block list survives a restart, and still keeps the
// blocked member's pings from the blocker.
func TestE2EBlockRestart(t *testing.T) {
	s := startE2E(t, t.TempDir())
	b := s.member("bob the blocker")
	a := s.member("alice liddell")
	c := s.member("carol the bystander")
	need(t)(b.c.Block(a.alias))
	need(t)(b.c.Block(c.reg.UID))
	need(t)(b.c.Unblock(c.reg.UID))
	for _, m := range []member{a, b, c} {
		m.c.Close()
	}
	s.stop()
	s.start()
	bc := s.login(b.reg.UID, b.reg.NodeID)
	ac := s.login(a.reg.UID, a.reg.NodeID)
	cc := s.login(c.reg.UID, c.reg.NodeID)
	if got := need(t)(bc.ListBlocks()).BlockList(); !slices.Equal(got, []string{a.alias}) {
		t.Fatalf("after restart listed %q", got)
	}
	need(t)(ac.Ping(a.alias, b.alias, "still blocked"))
	mark := need(t)(cc.Ping(c.alias, b.alias, "marker"))
	for {
		f := next(t, bc, "ping")
		if f.Str("id") == mark.MsgID {
			break
		}
		t.Fatalf("blocked ping delivered after restart: %s", f.Raw)
	}
}

// TestE2EBlockPresence: a blocked member's presence notices do not reach
// the blocker; another's do.
func TestE2EBlockPresence(t *testing.T) {
	s := startE2E(t, t.TempDir())
	b := s.member("bob the blocker")
	a := s.member("alice liddell")
	c := s.member("carol the bystander")
	need(t)(b.c.Block(a.reg.UID))
	// Each OhiEdit is applied before its link reads its next request, so
	// an answered ListBlocks after it says the list is in place.
	for _, m := range []member{a, c} {
		need(t)(m.c.OhiEdit("add", []string{b.reg.UID}))
		need(t)(m.c.ListBlocks())
	}
	b.c.Close()
	<-b.c.Done()
	login := func() []string {
		t.Helper()
		bc, info, err := testclient.Login(s.addr, b.reg.UID, b.reg.NodeID, testclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		bc.Close()
		<-bc.Done()
		return info.Ohi
	}
	if got := login(); !slices.Equal(got, []string{c.reg.UID}) {
		t.Fatalf("login ohi %q, want only %s", got, c.reg.UID)
	}
	// Unblocked, a's presence is told again.
	bc := s.login(b.reg.UID, b.reg.NodeID)
	need(t)(bc.Unblock(a.reg.UID))
	bc.Close()
	<-bc.Done()
	if got := login(); !slices.Contains(got, a.reg.UID) || !slices.Contains(got, c.reg.UID) {
		t.Fatalf("login ohi %q after unblock", got)
	}
}

// TestE2EBlockOnceAlias: a blocked member's ping to one of the blocker's
// single-use aliases consumes it, as it would otherwise; the blocker's
// devices learn that the alias was used, but get no ping.
func TestE2EBlockOnceAlias(t *testing.T) {
	s := startE2E(t, t.TempDir())
	b := s.member("bob the blocker")
	a := s.member("alice liddell")
	c := s.member("carol the bystander")
	need(t)(b.c.NewOnceAlias("bob once only"))
	need(t)(b.c.Block(a.reg.UID))
	need(t)(a.c.Ping(a.alias, "bob once only", "let me in"))
	ack, err := c.c.Ping(c.alias, "bob once only", "me too")
	ackErr(t, ack, err, "alias not found: bob once only")
	if u := nextUser(t, b.c, "aliasused"); u.Str("by") != a.reg.UID {
		t.Fatalf("aliasused %s", u.Raw)
	}
	mark := need(t)(c.c.Ping(c.alias, b.alias, "marker"))
	if f := next(t, b.c, "ping"); f.Str("id") != mark.MsgID {
		t.Fatalf("blocked ping delivered: %s", f.Raw)
	}
}

package main

// End-to-end tests of the "aliasonce" extension (Protocol.md, Extensions):
// single-use aliases over TLS against the real user database.

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"mnm/testclient"
)

// secondDevice gives m a second device and returns it logged in. The
// "user" messages of the new device are acked on m's first device.
func (s *e2eServer) secondDevice(m member) *testclient.Client {
	s.t.Helper()
	need(s.t)(m.c.NewNode("phone"))
	u := next(s.t, m.c, "user")
	c := s.login(m.reg.UID, u.Str("nodeid"))
	next(s.t, c, "user") // its own announcement
	return c
}

// nextUser returns the next "user" message on c that carries key.
func nextUser(t *testing.T, c *testclient.Client, key string) *testclient.Frame {
	t.Helper()
	for {
		if f := next(t, c, "user"); f.Has(key) {
			return f
		}
	}
}

func TestE2EAliasOnceAdvertised(t *testing.T) {
	s := startE2E(t, t.TempDir())
	// Without ext: exactly today's reply.
	c, _, err := testclient.Register(s.addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := string(c.Site().Raw); got != `{"id":"1","name":"e2e","op":"tmtprev"}` {
		t.Fatalf("tmtprev without ext: %s", got)
	}
	// With ext: the list.
	c2, _, err := testclient.Register(s.addr, "laptop", "_", testclient.Options{Ext: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := string(c2.Site().Raw); got != `{"ext":["aliasonce","block","revoke","opengroup","receiveonly","dropalias","away"],"id":"1","name":"e2e","op":"tmtprev"}` {
		t.Fatalf("tmtprev with ext: %s", got)
	}
	if !slices.Equal(c2.Extensions(), []string{"aliasonce", "block", "revoke", "opengroup", "receiveonly", "dropalias", "away"}) {
		t.Fatalf("extensions %q", c2.Extensions())
	}
	// "ext":null is as if absent; any other value asks.
	for _, ext := range []any{nil, "yes", []any{"aliasonce"}, false} {
		conn, err := testclient.DialTimeout(s.addr, nil, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.WriteFrame(map[string]any{"Op": 0, "Id": "1", "Ext": ext}, nil)
		f, err := conn.ReadFrame()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if f.Has("ext") != (ext != nil) {
			t.Errorf("ext %v: reply %s", ext, f.Raw)
		}
	}
}

func TestE2EAliasOnce(t *testing.T) {
	s := startE2E(t, t.TempDir())
	owner := s.member("owner regular")
	owner2 := s.secondDevice(owner)
	a := s.member("alice liddell")
	b := s.member("bob the builder")

	ack := need(t)(owner.c.NewOnceAlias("once for alice"))
	if ack.MsgID != "" {
		t.Fatalf("ack carries a msgid: %s", ack.Frame.Raw)
	}
	for _, c := range []*testclient.Client{owner.c, owner2} {
		u := nextUser(t, c, "newalias")
		if u.Str("newalias") != "once for alice" || u.Int("once") != 1 || u.Str("from") != owner.reg.UID {
			t.Fatalf("announcement %s", u.Raw)
		}
	}
	// Adding it again succeeds again, as newalias does.
	need(t)(owner.c.NewOnceAlias("once for alice"))
	need(t)(owner.c.NewOnceAlias("another single"))
	ack = need(t)(owner.c.ListOnceAliases())
	if got := ack.OnceList(); !slices.Equal(got, []string{"another single", "once for alice"}) {
		t.Fatalf("listed %q in %s", got, ack.Frame.Raw)
	}
	if ack.Frame.Has("msgid") {
		t.Fatalf("listonce stored something: %s", ack.Frame.Raw)
	}
	// A single-use alias is not one to send from.
	ack, err := owner.c.Ping("another single", a.alias, "x")
	ackErr(t, ack, err, "from must identify sender")

	// The first ping is delivered, and the owner's devices learn by whom.
	// The notice is high priority: it comes before the ping.
	pack := need(t)(a.c.Ping(a.alias, "once for alice", "hi"))
	for _, c := range []*testclient.Client{owner.c, owner2} {
		u := nextUser(t, c, "aliasused")
		if u.Str("aliasused") != "once for alice" || u.Str("by") != a.reg.UID ||
			u.Str("byalias") != a.alias || u.Str("from") != owner.reg.UID || u.Int("datalen") != 0 {
			t.Fatalf("aliasused %s", u.Raw)
		}
	}
	f := next(t, owner.c, "ping")
	if string(f.Data) != "hi" || f.Str("to") != "once for alice" || f.Str("id") != pack.MsgID {
		t.Fatalf("ping %s %q", f.Raw, f.Data)
	}
	// Then it resolves for nobody, exactly as an unknown alias.
	for _, sender := range []member{a, b} {
		ack, err := sender.c.Ping(sender.alias, "once for alice", "again")
		ackErr(t, ack, err, "alias not found: once for alice")
	}
	ack, err = b.c.Ping(b.alias, "never existed", "x")
	ackErr(t, ack, err, "alias not found: never existed")
	ack = need(t)(owner.c.ListOnceAliases())
	if got := ack.OnceList(); !slices.Equal(got, []string{"another single"}) {
		t.Fatalf("listed %q after use", got)
	}
	// Reserved for ever: nobody claims it, the owner included, as an
	// alias, a single-use alias or a gid.
	for _, m := range []member{owner, b} {
		ack, err := m.c.NewAlias("once for alice")
		ackErr(t, ack, err, "newalias already taken")
		ack, err = m.c.NewOnceAlias("once for alice")
		ackErr(t, ack, err, "newalias already taken")
		ack, err = m.c.GroupInvite("once for alice", m.alias, a.alias, "join")
		ackErr(t, ack, err, "gid already taken")
	}
	// Nor can it be withdrawn: it is as unknown.
	ack, err = owner.c.DropAlias("once for alice")
	ackErr(t, ack, err, "alias not found: once for alice")

	// Invitations: the first consumes it, the second gets what an unknown
	// alias gets.
	need(t)(owner.c.NewOnceAlias("once for groups"))
	iack := need(t)(a.c.GroupInvite("a fine group", a.alias, "once for groups", "come"))
	u := nextUser(t, owner.c, "aliasused")
	if u.Str("aliasused") != "once for groups" {
		t.Fatalf("aliasused %s", u.Raw)
	}
	inv := next(t, owner.c, "invite")
	if inv.Str("gid") != "a fine group" || inv.Str("to") != "once for groups" || inv.Str("id") != iack.MsgID {
		t.Fatalf("invite %s", inv.Raw)
	}
	u = nextUser(t, owner2, "aliasused")
	if u.Str("aliasused") != "once for groups" || u.Str("by") != a.reg.UID || u.Str("byalias") != a.alias {
		t.Fatalf("aliasused %s", u.Raw)
	}
	ack, err = b.c.GroupInvite("other group", b.alias, "once for groups", "come")
	ackErr(t, ack, err, "alias not found")
	ack, err = b.c.GroupInvite("other group", b.alias, "never existed", "come")
	ackErr(t, ack, err, "alias not found")
	// The owner joins under a regular alias of its own.
	need(t)(owner.c.GroupEdit("join", "a fine group", owner.alias, ""))

	// A refused invitation leaves the alias unused: b is not a member of
	// a fine group, so it may not invite into it.
	need(t)(owner.c.NewOnceAlias("once for refusal"))
	ack, err = b.c.GroupInvite("a fine group", b.alias, "once for refusal", "x")
	ackErr(t, ack, err, "not a member of the group")
	ack, err = b.c.Ping("not b's alias", "once for refusal", "x")
	ackErr(t, ack, err, "from must identify sender")
	ack = need(t)(owner.c.ListOnceAliases())
	if !slices.Contains(ack.OnceList(), "once for refusal") {
		t.Fatalf("a refused request used the alias: %q", ack.OnceList())
	}
}

func TestE2EAliasOnceDrop(t *testing.T) {
	s := startE2E(t, t.TempDir())
	owner := s.member("owner regular")
	owner2 := s.secondDevice(owner)
	a := s.member("alice liddell")
	need(t)(owner.c.NewOnceAlias("to be dropped"))
	need(t)(a.c.NewOnceAlias("alice's single"))

	need(t)(owner.c.DropAlias("to be dropped"))
	for _, c := range []*testclient.Client{owner.c, owner2} {
		u := nextUser(t, c, "dropalias")
		if u.Str("dropalias") != "to be dropped" || u.Str("from") != owner.reg.UID {
			t.Fatalf("dropalias announcement %s", u.Raw)
		}
	}
	ack, err := a.c.Ping(a.alias, "to be dropped", "x")
	ackErr(t, ack, err, "alias not found: to be dropped")
	ack, err = owner.c.NewAlias("to be dropped")
	ackErr(t, ack, err, "newalias already taken")
	ack = need(t)(owner.c.ListOnceAliases())
	if got := ack.OnceList(); got == nil || len(got) != 0 {
		t.Fatalf("listed %q in %s, want []", got, ack.Frame.Raw)
	}

	// Withdrawn already, someone else's, unknown: what an unknown alias gets.
	for _, name := range []string{"to be dropped", "alice's single", "never existed"} {
		ack, err := owner.c.DropAlias(name)
		ackErr(t, ack, err, "alias not found: "+name)
	}
	// The only regular alias: kept (the "dropalias" extension).
	ack, err = owner.c.DropAlias(owner.alias)
	ackErr(t, ack, err, "dropalias: cannot drop the last alias")
	// Alice's is untouched.
	need(t)(owner.c.Ping(owner.alias, "alice's single", "still works"))
}

// TestE2EAliasOnceRace: eight senders ping one fresh single-use alias at
// once; exactly one gets through.
func TestE2EAliasOnceRace(t *testing.T) {
	s := startE2E(t, t.TempDir())
	owner := s.member("owner regular")
	const senders = 8
	var ms []member
	for i := range senders {
		ms = append(ms, s.member(fmt.Sprintf("sender number %d", i)))
	}
	for round := range 3 {
		alias := fmt.Sprintf("race alias %d", round)
		need(t)(owner.c.NewOnceAlias(alias))
		var wg sync.WaitGroup
		acks := make([]testclient.Ack, senders)
		errs := make([]error, senders)
		start := make(chan struct{})
		for i, m := range ms {
			wg.Go(func() {
				<-start
				acks[i], errs[i] = m.c.Ping(m.alias, alias, "me first")
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i := range ms {
			switch {
			case errs[i] != nil:
				t.Fatal(errs[i])
			case acks[i].Error == "":
				if winner >= 0 {
					t.Fatalf("round %d: senders %d and %d both got through", round, winner, i)
				}
				winner = i
			case acks[i].Error != "alias not found: "+alias:
				t.Fatalf("round %d: sender %d got %q", round, i, acks[i].Error)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody got through", round)
		}
		// The owner gets exactly the winner's ping: the aliasused notice
		// (high priority) and then that ping, and nothing after it but
		// the marker sent last.
		u := nextUser(t, owner.c, "aliasused")
		if u.Str("by") != ms[winner].reg.UID {
			t.Fatalf("aliasused by %s, want %s", u.Str("by"), ms[winner].reg.UID)
		}
		if f := next(t, owner.c, "ping"); f.Str("to") != alias || f.Str("from") != ms[winner].reg.UID {
			t.Fatalf("ping %s", f.Raw)
		}
		need(t)(owner.c.Post([]testclient.Recipient{{ID: owner.reg.UID, Type: 1}}, []byte("marker")))
		for {
			f := recv(t, owner.c)
			owner.c.Ack(f.Str("id"))
			if f.Op() == "ping" || f.Has("aliasused") {
				t.Fatalf("round %d: a second ping or notice: %s", round, f.Raw)
			}
			if f.Op() == "delivery" && string(f.Data) == "marker" {
				break
			}
		}
	}
}

func TestE2EAliasOnceBound(t *testing.T) {
	s := startE2E(t, t.TempDir())
	owner := s.member("owner regular")
	c := owner.c // the announcements wait in its queue, one in its buffer
	// Name rules as for newalias.
	need(t)(c.NewAlias("regular still fine"))
	ack, err := c.NewOnceAlias("short")
	ackErr(t, ack, err, "newalias must be 8+ characters")
	ack, err = c.NewOnceAlias("regular still fine")
	ackErr(t, ack, err, "newalias already taken")
	for i := range 100 {
		need(t)(c.NewOnceAlias(fmt.Sprintf("single use %03d", i)))
	}
	ack, err = c.NewOnceAlias("one too many")
	ackErr(t, ack, err, "too many single-use aliases")
	// Regular aliases have their own bound.
	need(t)(c.NewAlias("regular again fine"))
	// A withdrawn one makes room.
	need(t)(c.DropAlias("single use 000"))
	need(t)(c.NewOnceAlias("one too many"))
	ack = need(t)(c.ListOnceAliases())
	if n := len(ack.OnceList()); n != 100 {
		t.Fatalf("listed %d", n)
	}
}

// TestE2EAliasOnceMalformed: invalid UserEdit combinations and wrong types
// end the link with "invalid header", as today's invalid UserEdit does.
func TestE2EAliasOnceMalformed(t *testing.T) {
	s := startE2E(t, t.TempDir())
	for _, head := range []map[string]any{
		{"Op": 3, "Id": "1", "NewNode": "tablet", "Once": 1},
		{"Op": 3, "Id": "1", "Once": 1},
		{"Op": 3, "Id": "1", "NewNode": "tablet", "DropAlias": "something long"},
		{"Op": 3, "Id": "1", "NewAlias": "something long", "DropAlias": "other long one"},
		{"Op": 3, "Id": "1", "NewAlias": "something long", "ListOnce": 1},
		{"Op": 3, "Id": "1", "DropAlias": "something long", "ListOnce": true},
		{"Op": 3, "Id": "1", "ListOnce": 0},
		{"Op": 3, "Id": "1", "NewAlias": "something long", "Once": "1"},
		{"Op": 3, "Id": "1", "NewAlias": "something long", "Once": 2},
		{"Op": 3, "Id": "1", "ListOnce": []int{1}},
		{"Op": 3, "Id": "1", "DropAlias": 7},
	} {
		c, _ := s.register("_")
		if err := c.Conn().WriteFrame(head, nil); err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(head), func(t *testing.T) { expectLinkQuit(t, c, "invalid header") })
	}
}

// TestE2EAliasOnceRestart: unused single-use aliases survive a restart,
// and used ones stay dead and reserved.
func TestE2EAliasOnceRestart(t *testing.T) {
	s := startE2E(t, t.TempDir())
	owner := s.member("owner regular")
	a := s.member("alice liddell")
	need(t)(owner.c.NewOnceAlias("used before"))
	need(t)(owner.c.NewOnceAlias("dropped before"))
	need(t)(owner.c.NewOnceAlias("unused across"))
	need(t)(a.c.Ping(a.alias, "used before", "x"))
	need(t)(owner.c.DropAlias("dropped before"))
	owner.c.Close()
	a.c.Close()

	s.stop()
	s.start()
	oc := s.login(owner.reg.UID, owner.reg.NodeID)
	ac := s.login(a.reg.UID, a.reg.NodeID)
	ack := need(t)(oc.ListOnceAliases())
	if got := ack.OnceList(); !slices.Equal(got, []string{"unused across"}) {
		t.Fatalf("after restart listed %q", got)
	}
	for _, name := range []string{"used before", "dropped before"} {
		ack, err := ac.Ping(a.alias, name, "x")
		ackErr(t, ack, err, "alias not found: "+name)
		ack, err = ac.NewAlias(name)
		ackErr(t, ack, err, "newalias already taken")
	}
	need(t)(ac.Ping(a.alias, "unused across", "x"))
	ack, err := ac.Ping(a.alias, "unused across", "x")
	ackErr(t, ack, err, "alias not found: unused across")
}

package main

// End-to-end tests of the "dropalias" extension (Protocol.md, Extensions):
// withdrawing a regular alias over TLS against the real user database.

import (
	"testing"

	"mnm/testclient"
)

// aliasNotice reads c's next member notice of an alias change and checks it.
func aliasNotice(t *testing.T, c *testclient.Client, gid, alias, newalias string) {
	t.Helper()
	for {
		f := next(t, c, "member")
		if f.Str("act") != "alias" {
			continue
		}
		if f.Str("gid") != gid || f.Str("alias") != alias || f.Str("newalias") != newalias || f.Int("datalen") != 0 {
			t.Fatalf("alias notice %s, want gid %q alias %q newalias %q", f.Raw, gid, alias, newalias)
		}
		return
	}
}

func TestE2EDropAlias(t *testing.T) {
	s := startE2E(t, t.TempDir())
	m := s.member("mallory first")
	b := s.member("bob the member")
	const spare, one, two = "mallory second", "group one here", "group two here"
	need(t)(m.c.NewAlias(spare))
	need(t)(m.c.GroupInvite(one, m.alias, b.alias, "join"))
	need(t)(b.c.GroupEdit("join", one, "", ""))
	need(t)(b.c.GroupInvite(two, b.alias, m.alias, "join"))
	need(t)(m.c.GroupEdit("join", two, "", ""))

	// Someone else's alias, an unknown one: what an unknown alias gets.
	for _, name := range []string{b.alias, "never existed"} {
		ack, err := m.c.DropAlias(name)
		ackErr(t, ack, err, "alias not found: "+name)
	}

	if ack := need(t)(m.c.DropAlias(m.alias)); ack.MsgID != "" {
		t.Fatalf("dropalias ack carries a msgid: %s", ack.Frame.Raw)
	}
	if f := nextUser(t, m.c, "dropalias"); f.Str("dropalias") != m.alias {
		t.Fatalf("user notice %s", f.Raw)
	}
	// Both groups list the member under its oldest remaining alias, and
	// their joined members are told.
	for _, c := range []*testclient.Client{b.c, m.c} {
		aliasNotice(t, c, one, m.alias, spare)
		aliasNotice(t, c, two, m.alias, spare)
	}

	// Posts still reach the member, and its GroupEdit still works.
	need(t)(b.c.Post(groupTo(one, testclient.ToGroupOthers), []byte("still here")))
	nextDelivery(t, m.c, "still here")
	need(t)(m.c.GroupEdit("alias", two, spare, ""))
	need(t)(m.c.Post(groupTo(two, testclient.ToGroupOthers), []byte("me too")))
	nextDelivery(t, b.c, "me too")

	gone := func(mc, bc *testclient.Client) {
		t.Helper()
		ack, err := bc.Ping(b.alias, m.alias, "x")
		ackErr(t, ack, err, "alias not found: "+m.alias)
		ack, err = bc.GroupInvite(one, b.alias, m.alias, "back")
		ackErr(t, ack, err, "alias not found")
		ack, err = mc.Ping(m.alias, b.alias, "x")
		ackErr(t, ack, err, "from must identify sender")
		for _, c := range []*testclient.Client{mc, bc} {
			ack, err = c.NewAlias(m.alias)
			ackErr(t, ack, err, "newalias already taken")
		}
		ack, err = bc.GroupInvite(m.alias, b.alias, spare, "as a gid")
		ackErr(t, ack, err, "gid already taken")
		ack, err = mc.GroupEdit("alias", one, m.alias, "")
		ackErr(t, ack, err, "newalias must identify sender")
		ack, err = mc.DropAlias(m.alias)
		ackErr(t, ack, err, "alias not found: "+m.alias)
		// The last alias stays.
		ack, err = mc.DropAlias(spare)
		ackErr(t, ack, err, "dropalias: cannot drop the last alias")
		need(t)(bc.Ping(b.alias, spare, "via the spare"))
	}
	gone(m.c, b.c)
	next(t, m.c, "ping")

	m.c.Close()
	b.c.Close()
	s.stop()
	s.start()
	mc := s.login(m.reg.UID, m.reg.NodeID)
	bc := s.login(b.reg.UID, b.reg.NodeID)
	gone(mc, bc)
	need(t)(bc.Post(groupTo(one, testclient.ToGroupOthers), []byte("after restart")))
	nextDelivery(t, mc, "after restart")
}

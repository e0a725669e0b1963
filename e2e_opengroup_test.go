package main

// End-to-end tests of the "opengroup" extension (Protocol.md, Extensions):
// groups by subscription over TLS against the real user database.
//
// That something was not delivered is shown as e2e_block_test.go shows it:
// a later post to the device arrives first, since a device receives its
// queue in id order (SPEC §5).

import (
	"fmt"
	"testing"

	"mnm/testclient"
)

// memberNotice reads c's next member notice and checks its act, gid and
// alias, and its post flag.
func memberNotice(t *testing.T, c *testclient.Client, act, gid, alias string, post bool) *testclient.Frame {
	t.Helper()
	f := next(t, c, "member")
	if f.Str("act") != act || f.Str("gid") != gid || f.Str("alias") != alias || f.Has("post") != post ||
		(post && f.Int("post") != 1) || f.Has("newalias") || f.Int("datalen") != 0 {
		t.Fatalf("member notice %s, want act %s gid %q alias %q post %v", f.Raw, act, gid, alias, post)
	}
	return f
}

// groupTo addresses gid as a post recipient of type typ.
func groupTo(gid string, typ int) []testclient.Recipient {
	return []testclient.Recipient{{ID: gid, Type: typ}}
}

// nextDelivery reads c's next delivery and checks its data.
func nextDelivery(t *testing.T, c *testclient.Client, data string) {
	t.Helper()
	if f := next(t, c, "delivery"); string(f.Data) != data {
		t.Fatalf("delivery %q, want %q", f.Data, data)
	}
}

func TestE2EOpenGroup(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice the opener")
	b := s.member("bob the member")
	c := s.member("carol the invitee") // invited, never joins
	x := s.member("xavier the stranger")
	y := s.member("yolanda the poster")
	const gid = "the open group"
	need(t)(a.c.GroupInvite(gid, a.alias, b.alias, "join"))
	need(t)(a.c.GroupInvite(gid, a.alias, c.alias, "join"))
	need(t)(b.c.GroupEdit("join", gid, "", ""))
	memberNotice(t, a.c, "invite", gid, b.alias, false)
	memberNotice(t, a.c, "invite", gid, c.alias, false)
	memberNotice(t, a.c, "join", gid, b.alias, false)
	memberNotice(t, b.c, "join", gid, b.alias, false)

	// Closed: a stranger's join is refused as today, and so is its post.
	ack, err := x.c.GroupEdit("join", gid, x.alias, "")
	ackErr(t, ack, err, "not invited to the group")
	ack, err = y.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("closed"))
	ackErr(t, ack, err, "not a member of the group: "+gid)

	// Only a joined member opens or closes, and only a group that exists.
	for _, m := range []member{x, c} {
		ack, err = m.c.OpenGroup(gid, false)
		ackErr(t, ack, err, "not a member of the group")
		ack, err = m.c.CloseGroup(gid)
		ackErr(t, ack, err, "not a member of the group")
	}
	ack, err = a.c.OpenGroup("no such group here", true)
	ackErr(t, ack, err, "group not found")
	ack, err = x.c.GroupEdit("join", "no such group here", x.alias, "")
	ackErr(t, ack, err, "group not found")

	// Opened: the joined members are told, under the opener's alias.
	if ack = need(t)(a.c.OpenGroup(gid, false)); ack.MsgID != "" {
		t.Fatalf("open ack carries a msgid: %s", ack.Frame.Raw)
	}
	memberNotice(t, a.c, "open", gid, a.alias, false)
	memberNotice(t, b.c, "open", gid, a.alias, false)

	// A stranger joins under an alias of its own, which it must give.
	ack, err = x.c.GroupEdit("join", gid, "", "")
	ackErr(t, ack, err, "newalias required to join an open group")
	ack, err = x.c.GroupEdit("join", gid, a.alias, "")
	ackErr(t, ack, err, "newalias must identify sender")
	need(t)(x.c.GroupEdit("join", gid, x.alias, ""))
	for _, m := range []member{a, b, x} {
		memberNotice(t, m.c, "join", gid, x.alias, false)
	}
	// Now a member, it gets the group's posts and may post.
	need(t)(a.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("welcome")))
	nextDelivery(t, x.c, "welcome")
	need(t)(x.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("thanks")))
	nextDelivery(t, a.c, "thanks") // a's own type 3 post is not a's
	nextDelivery(t, b.c, "welcome")
	nextDelivery(t, b.c, "thanks")

	// Open without the post flag: a stranger still may not post.
	ack, err = y.c.Post(groupTo(gid, testclient.ToGroup), []byte("not yet"))
	ackErr(t, ack, err, "not a member of the group: "+gid)

	// Open for posting: a stranger's post reaches the joined members only
	// (not c, who is invited), type 2 as type 3.
	need(t)(b.c.OpenGroup(gid, true))
	for _, m := range []member{a, b, x} {
		memberNotice(t, m.c, "open", gid, b.alias, true)
	}
	for _, typ := range []int{testclient.ToGroup, testclient.ToGroupOthers} {
		text := fmt.Sprintf("helpdesk %d", typ)
		need(t)(y.c.Post(groupTo(gid, typ), []byte(text)))
		for _, m := range []member{a, b, x} {
			nextDelivery(t, m.c, text)
		}
	}
	need(t)(y.c.PostNotify(groupTo(gid, testclient.ToGroupOthers), nil, []byte("note"), []byte("noted"), false))
	for _, m := range []member{a, b, x} {
		if f := next(t, m.c, "delivery"); string(f.Data) != "noted" {
			t.Fatalf("postnotify delivered %q", f.Data)
		}
		if f := next(t, m.c, "notify"); string(f.Data) != "note" {
			t.Fatalf("postnotify notified %q", f.Data)
		}
	}
	// c got none of it: a's direct post to c is the first delivery there.
	need(t)(a.c.Post([]testclient.Recipient{{ID: c.reg.UID, Type: testclient.ToUser}}, []byte("to carol")))
	nextDelivery(t, c.c, "to carol")

	// A member the group bars stays barred, open or not: its join and its
	// post are refused as in a closed group.
	need(t)(a.c.GroupEdit("drop", gid, "", b.alias))
	for _, m := range []member{a, x, b} {
		if f := next(t, m.c, "member"); f.Str("act") != "drop" || f.Str("alias") != b.alias {
			t.Fatalf("drop notice %s", f.Raw)
		}
	}
	ack, err = b.c.GroupEdit("join", gid, b.alias, "")
	ackErr(t, ack, err, "not invited to the group")
	ack, err = b.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("barred"))
	ackErr(t, ack, err, "not a member of the group: "+gid)
	ack, err = b.c.OpenGroup(gid, true)
	ackErr(t, ack, err, "not a member of the group")

	// The stranger leaves as any member does, by dropping its own alias.
	need(t)(x.c.GroupEdit("drop", gid, "", x.alias))
	for _, m := range []member{a, x} {
		if f := next(t, m.c, "member"); f.Str("act") != "drop" || f.Str("alias") != x.alias {
			t.Fatalf("leave notice %s", f.Raw)
		}
	}
	need(t)(a.c.Post(groupTo(gid, testclient.ToGroup), []byte("after x left")))
	need(t)(a.c.Post([]testclient.Recipient{{ID: x.reg.UID, Type: testclient.ToUser}}, []byte("to x")))
	nextDelivery(t, x.c, "to x")

	// Closed again: a new stranger's join and post are refused as today.
	need(t)(a.c.CloseGroup(gid))
	memberNotice(t, a.c, "close", gid, a.alias, false)
	ack, err = y.c.GroupEdit("join", gid, y.alias, "")
	ackErr(t, ack, err, "not invited to the group")
	ack, err = y.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("closed again"))
	ackErr(t, ack, err, "not a member of the group: "+gid)
	// Invitations into an open group stay the joined members'.
	need(t)(a.c.OpenGroup(gid, false))
	memberNotice(t, a.c, "open", gid, a.alias, false)
	ack, err = y.c.GroupInvite(gid, y.alias, c.alias, "come")
	ackErr(t, ack, err, "not a member of the group")
}

// TestE2EOpenGroupBlock: a stranger's post to a group open for posting does
// not reach a member who blocks it; the other members get it.
func TestE2EOpenGroupBlock(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice the opener")
	b := s.member("bob the blocker")
	y := s.member("yolanda the pest")
	const gid = "the help desk"
	need(t)(a.c.GroupInvite(gid, a.alias, b.alias, "join"))
	need(t)(b.c.GroupEdit("join", gid, "", ""))
	need(t)(a.c.OpenGroup(gid, true))
	need(t)(b.c.Block(y.alias))
	need(t)(y.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("spam")))
	nextDelivery(t, a.c, "spam")
	need(t)(a.c.Post([]testclient.Recipient{{ID: b.reg.UID, Type: testclient.ToUser}}, []byte("marker")))
	nextDelivery(t, b.c, "marker")
}

// TestE2EOpenGroupRestart: the open and post flags, and a subscriber, survive
// a restart; so does closing.
func TestE2EOpenGroupRestart(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice the opener")
	b := s.member("bob the member")
	x := s.member("xavier the stranger")
	y := s.member("yolanda the poster")
	const gid = "the lasting group"
	need(t)(a.c.GroupInvite(gid, a.alias, b.alias, "join"))
	need(t)(b.c.GroupEdit("join", gid, "", ""))
	need(t)(a.c.OpenGroup(gid, true))
	need(t)(x.c.GroupEdit("join", gid, x.alias, ""))
	restart := func() {
		for _, m := range []*member{&a, &b, &x, &y} {
			m.c.Close()
		}
		s.stop()
		s.start()
		for _, m := range []*member{&a, &b, &x, &y} {
			m.c = s.login(m.reg.UID, m.reg.NodeID)
		}
	}
	restart()
	need(t)(y.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("after restart")))
	nextDelivery(t, x.c, "after restart")
	ack, err := y.c.GroupEdit("join", gid, "", "")
	ackErr(t, ack, err, "newalias required to join an open group")

	need(t)(b.c.CloseGroup(gid))
	restart()
	ack, err = y.c.GroupEdit("join", gid, y.alias, "")
	ackErr(t, ack, err, "not invited to the group")
	ack, err = y.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("closed"))
	ackErr(t, ack, err, "not a member of the group: "+gid)
	// The subscriber stays a member of the closed group.
	need(t)(x.c.Post(groupTo(gid, testclient.ToGroupOthers), []byte("still here")))
	need(t)(a.c.Post([]testclient.Recipient{{ID: a.reg.UID, Type: testclient.ToUser}}, []byte("self")))
	for {
		f := next(t, a.c, "delivery")
		if string(f.Data) == "still here" {
			break
		}
		if string(f.Data) == "self" {
			t.Fatal("the subscriber's post did not arrive")
		}
	}
}

// TestE2EOpenGroupMalformed: GroupEdit open and close with a field missing,
// a flag of the wrong type or the post flag on another act end the link
// with "invalid header".
func TestE2EOpenGroupMalformed(t *testing.T) {
	s := startE2E(t, t.TempDir())
	for _, head := range []map[string]any{
		{"Op": 6, "Id": "1", "Act": "open"},
		{"Op": 6, "Id": "1", "Act": "close", "Gid": ""},
		{"Op": 6, "Id": "1", "Act": "open", "Gid": "some group", "Post": "1"},
		{"Op": 6, "Id": "1", "Act": "open", "Gid": "some group", "Post": 2},
		{"Op": 6, "Id": "1", "Act": "open", "Gid": "some group", "Post": []int{1}},
		{"Op": 6, "Id": "1", "Act": "close", "Gid": "some group", "Post": 1},
		{"Op": 6, "Id": "1", "Act": "join", "Gid": "some group", "Post": true},
		{"Op": 6, "Id": "1", "Act": "subscribe", "Gid": "some group"},
		{"Op": 6, "Id": "1", "Act": "Open", "Gid": "some group"},
	} {
		c, _ := s.register("_")
		if err := c.Conn().WriteFrame(head, nil); err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(head)[:min(60, len(fmt.Sprint(head)))], func(t *testing.T) { expectLinkQuit(t, c, "invalid header") })
	}
}

package main

// Attacks that make one member's frame cost the server, or another member,
// far more than it should (issue #10 items 3 and 4), against the daemon with
// its real user database: a post naming a large group 2,000 times, and an
// OhiEdit naming another member 1,400 times.

import (
	"fmt"
	"slices"
	"testing"

	"mnm/testclient"
)

// writeLimitsConfig writes the test config of writeTestConfig with limits
// set as given.
func writeLimitsConfig(t *testing.T, dir string, limits map[string]any) string {
	t.Helper()
	cfg := testConfig(t, dir, "127.0.0.1:0")
	cfg["limits"] = limits
	return writeConfigFile(t, dir, cfg)
}

// fixtureGroup creates n users with one device each (offline), and the
// group gid of them and the sender, all joined. It returns the users'
// devices.
func (s *e2eServer) fixtureGroup(gid, prefix string, n int, sender member) []string {
	s.t.Helper()
	members := map[string]string{sender.reg.UID: sender.alias}
	joined := map[string]bool{sender.reg.UID: true}
	var devs []string
	for i := range n {
		uid := fmt.Sprintf("%s%05d", prefix, i)
		alias := fmt.Sprintf("%s member %d", prefix, i)
		if _, err := s.d.users.CreateFixture(uid, []string{"phone"}, []string{alias}); err != nil {
			s.t.Fatal(err)
		}
		members[uid], joined[uid] = alias, true
		d, err := s.d.users.Devices(uid)
		if err != nil {
			s.t.Fatal(err)
		}
		devs = append(devs, d...)
	}
	if err := s.d.users.CreateGroupFixture(gid, members, joined); err != nil {
		s.t.Fatal(err)
	}
	return devs
}

// TestAttackFanoutRepeatedGroup: a member names a group 2,000 times in one
// post, types 2 and 3 mixed, as one 64 KiB frame allows. The post is stored
// once for each member's device and reaches the sender once; a group with
// more devices than limits.devicesPerPost (set in the config file) is
// refused however it is named, and nothing is stored for its members. The
// server stays up and serves a new member.
func TestAttackFanoutRepeatedGroup(t *testing.T) {
	const limit = 400
	dir := t.TempDir()
	s := serveE2E(t, dir, writeLimitsConfig(t, dir, map[string]any{"devicesPerPost": limit}))
	sender := s.member("sender person")
	smallDevs := s.fixtureGroup("small club", "s", limit-1, sender)
	bigDevs := s.fixtureGroup("large club", "b", limit+100, sender)

	named := func(gid string) []testclient.Recipient {
		to := make([]testclient.Recipient, 2000)
		for i := range to {
			to[i] = testclient.Recipient{ID: gid, Type: testclient.ToGroupOthers}
			if i%2 == 1 {
				to[i].Type = testclient.ToGroup
			}
		}
		return to
	}
	want := fmt.Sprintf("too many recipients: over %d devices", limit)
	ack, err := sender.c.Post(named("large club"), []byte("x"))
	ackErr(t, ack, err, want)
	for _, d := range bigDevs {
		if n := s.d.store.Len(d); n != 0 {
			t.Fatalf("a refused post left %d messages for %s", n, d)
		}
	}

	// The small group and the sender's device: exactly the limit.
	post := need(t)(sender.c.Post(named("small club"), []byte("once")))
	for _, d := range smallDevs {
		if n := s.d.store.Len(d); n != 1 {
			t.Fatalf("%s holds %d messages, want the post once", d, n)
		}
	}
	// A second post marks the end: the first arrives once before it.
	second := need(t)(sender.c.Post([]testclient.Recipient{{ID: sender.reg.UID, Type: testclient.ToUser}}, []byte("end")))
	var got []string
	for {
		f := next(t, sender.c, "delivery")
		if f.Str("id") == second.MsgID {
			break
		}
		got = append(got, f.Str("id"))
	}
	if !slices.Equal(got, []string{post.MsgID}) {
		t.Fatalf("the sender's device got %v before its second post, want the first once (%s)", got, post.MsgID)
	}

	a := s.member("alice liddell")
	b := s.member("bob the builder")
	need(t)(a.c.Post([]testclient.Recipient{{ID: b.reg.UID, Type: testclient.ToUser}}, []byte("hi")))
	if f := next(t, b.c, "delivery"); string(f.Data) != "hi" {
		t.Fatalf("new member got %q", f.Data)
	}
}

// TestAttackOhiRepeatedUID: a member's OhiEdit init names a reading victim
// 1,400 times, again and again (as a client could at every reconnect of the
// victim). The victim gets one notice each time and its link stays up;
// before, the 1,400 notices overflowed its outbox and the link was dropped
// within a second.
func TestAttackOhiRepeatedUID(t *testing.T) {
	s := startE2E(t, t.TempDir())
	attacker := s.member("attacker person")
	victim := s.member("victim person")
	marker := s.member("marker person")

	list := make([]string, 1400)
	for i := range list {
		list[i] = victim.reg.UID
	}
	for round := range 3 {
		need(t)(attacker.c.OhiEdit("init", list))
		// Handled after the attacker's init, so its notice is queued
		// after the attacker's.
		need(t)(attacker.c.OhiEdit("add", []string{marker.reg.UID}))
		need(t)(marker.c.OhiEdit("add", []string{victim.reg.UID}))
		var fromAttacker []int64
		for {
			f := other(t, victim.c)
			if f.Op() != "ohi" {
				continue
			}
			if f.Str("from") == marker.reg.UID {
				break
			}
			fromAttacker = append(fromAttacker, f.Int("status"))
		}
		if !slices.Equal(fromAttacker, []int64{1}) {
			t.Fatalf("round %d: the victim got statuses %v from the attacker, want one online", round, fromAttacker)
		}
	}
	need(t)(victim.c.Post([]testclient.Recipient{{ID: marker.reg.UID, Type: testclient.ToUser}}, []byte("still here")))
	if f := next(t, marker.c, "delivery"); string(f.Data) != "still here" {
		t.Fatalf("marker got %q", f.Data)
	}
}

package qlib

// The copies of what a member sent that its other devices get (SPEC §4 ops
// 5, 8, 9), counted in the store's queues. Every device but the sending one
// and a recipient's first stays offline, and a device's queue empties only
// when the device acks, so once the request's ack has come each queue holds
// exactly what the request stored for it: a count of 0 proves that nothing
// was stored, and a count of 1 for a device named twice proves one copy.

import (
	"testing"

	"mnm/testclient"
)

// groupDir is the fake directory with just enough of GroupInvite for these
// tests: every invitation is accepted, into a group whose only joined member
// is the inviter.
type groupDir struct{ *fakeDir }

func (d groupDir) GroupInvite(uid, gid, from, to string) (GroupChange, error) {
	if owner, ok := d.AliasUID(from); !ok || owner != uid {
		return GroupChange{}, ErrFromNotSender
	}
	invitee, ok := d.AliasUID(to)
	if !ok {
		return GroupChange{}, ErrAliasUnknown
	}
	if invitee == uid {
		return GroupChange{}, ErrAlreadyMember // the inviter is joined
	}
	return GroupChange{Alias: to, Invitee: invitee, Notify: []string{uid}}, nil
}

// sentUser is a registered user whose first device (dev[0]) is logged in
// and whose other devices are offline.
type sentUser struct {
	c     *testclient.Client
	uid   string
	alias string
	dev   []string
}

// sentUser registers a user with alias and n devices.
func (ts *testServer) sentUser(alias string, n int) sentUser {
	ts.t.Helper()
	c, reg := ts.register()
	if err := ts.dir.AddAlias(reg.UID, alias); err != nil {
		ts.t.Fatal(err)
	}
	u := sentUser{c: c, uid: reg.UID, alias: alias, dev: []string{reg.UID + ".0"}}
	for range n - 1 {
		_, dev := ts.dir.device(reg.UID)
		u.dev = append(u.dev, dev)
	}
	return u
}

// queueWant is the number of messages a device must have queued.
type queueWant struct {
	name string
	dev  string
	n    int
}

// checkQueues compares the devices' queue lengths with want.
func (ts *testServer) checkQueues(t *testing.T, want ...queueWant) {
	t.Helper()
	for _, w := range want {
		if n := ts.store.Len(w.dev); n != w.n {
			t.Errorf("%s has %d messages queued, want %d", w.name, n, w.n)
		}
	}
}

// mustStore checks that a request was acked with a msgid:
// mustStore(t)(c.Ping(...)).
func mustStore(t *testing.T) func(testclient.Ack, error) testclient.Ack {
	return func(ack testclient.Ack, err error) testclient.Ack {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if ack.Error != "" || ack.MsgID == "" {
			t.Fatalf("ack %s, want a msgid", ack.Frame.Raw)
		}
		return ack
	}
}

// TestPingSenderCopies: a ping is queued once for every device of the
// recipient and every other device of the sender, never for the sending
// device, and the queued message is the one acked.
func TestPingSenderCopies(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.sentUser("alice liddell", 3)
	b := ts.sentUser("bob the builder", 2)
	ack := mustStore(t)(a.c.Ping(a.alias, b.alias, "hello"))
	ts.checkQueues(t,
		queueWant{"sending device", a.dev[0], 0},
		queueWant{"sender's device 1", a.dev[1], 1},
		queueWant{"sender's device 2", a.dev[2], 1},
		queueWant{"recipient's device 0", b.dev[0], 1},
		queueWant{"recipient's device 1", b.dev[1], 1},
	)
	for _, dev := range []string{a.dev[1], a.dev[2], b.dev[1]} {
		if id, ok := ts.store.Head(dev); !ok || id.String() != ack.MsgID {
			t.Errorf("%s queues %v, want the ping %s", dev, id, ack.MsgID)
		}
	}
	if f := nextMessage(t, b.c); f.Op() != "ping" || f.Str("id") != ack.MsgID || string(f.Data) != "hello" {
		t.Errorf("recipient got %s %q, want the ping", f.Raw, f.Data)
	}
}

// TestPingOwnAlias: a ping to one's own alias reaches each of the sender's
// devices once, the sending device too (it is the recipient's); a member
// with one device gets no copy of a ping to someone else.
func TestPingOwnAlias(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.sentUser("alice liddell", 2)
	c := ts.sentUser("carol singer", 1)
	mustStore(t)(a.c.Ping(a.alias, a.alias, "note to self"))
	ts.checkQueues(t,
		queueWant{"sending device", a.dev[0], 1},
		queueWant{"sender's device 1", a.dev[1], 1},
	)
	mustStore(t)(c.c.Ping(c.alias, a.alias, "hi"))
	ts.checkQueues(t,
		queueWant{"one-device sender", c.dev[0], 0},
		queueWant{"recipient's device 0", a.dev[0], 2},
		queueWant{"recipient's device 1", a.dev[1], 2},
	)
}

// TestInviteSenderCopies: the invitation is queued for the invitee and the
// inviter's other devices; the member notice for the joined members (here
// the inviter) as before. Inviting oneself stores nothing.
func TestInviteSenderCopies(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Directory = groupDir{c.Directory.(*fakeDir)} })
	a := ts.sentUser("alice liddell", 3)
	b := ts.sentUser("bob the builder", 2)
	ack := mustStore(t)(a.c.GroupInvite("book club", a.alias, b.alias, "join us"))
	ts.checkQueues(t,
		queueWant{"sending device", a.dev[0], 1}, // the member notice
		queueWant{"sender's device 1", a.dev[1], 2},
		queueWant{"sender's device 2", a.dev[2], 2},
		queueWant{"invitee's device 0", b.dev[0], 1},
		queueWant{"invitee's device 1", b.dev[1], 1},
	)
	// The invitation comes first (its id is the commit's first).
	for _, dev := range []string{a.dev[1], a.dev[2], b.dev[1]} {
		if id, ok := ts.store.Head(dev); !ok || id.String() != ack.MsgID {
			t.Errorf("%s queues %v first, want the invitation %s", dev, id, ack.MsgID)
		}
	}
	if id, ok := ts.store.Head(a.dev[0]); !ok || id.String() == ack.MsgID {
		t.Errorf("sending device queues the invitation %s", ack.MsgID)
	}

	ack, err := a.c.GroupInvite("book club", a.alias, a.alias, "me")
	if err != nil || ack.Error != ErrAlreadyMember.Error() {
		t.Fatalf("inviting oneself: %v %+v, want %q", err, ack, ErrAlreadyMember)
	}
	ts.checkQueues(t,
		queueWant{"sending device", a.dev[0], 1},
		queueWant{"sender's device 1", a.dev[1], 2},
	)
}

// TestPostNotifySenderCopies: the notification always reaches the sender's
// other devices, fornotself or not; fornotself keeps only the post from
// them. A device named in for or notefor as well gets one copy of each.
func TestPostNotifySenderCopies(t *testing.T) {
	cases := []struct {
		name       string
		fornotself bool
		forSelf    bool // for lists the sender's uid too
		noteSelf   bool // notefor lists the sender's uid
		sending    int  // messages for the sending device
		others     int  // messages for each other device of the sender
		notify     int64
	}{
		{name: "post and note", sending: 0, others: 2, notify: 3},
		{name: "fornotself", fornotself: true, sending: 0, others: 1, notify: 2},
		{name: "fornotself, notefor self", fornotself: true, noteSelf: true, sending: 1, others: 1, notify: 3},
		{name: "for self", forSelf: true, sending: 2, others: 2, notify: 4},
		{name: "fornotself, for self", fornotself: true, forSelf: true, sending: 2, others: 2, notify: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			a := ts.sentUser("alice liddell", 3)
			b := ts.sentUser("bob the builder", 1)
			c := ts.sentUser("carol singer", 2)
			to := []testclient.Recipient{{ID: b.uid, Type: testclient.ToUser}}
			if tc.forSelf {
				to = append(to, testclient.Recipient{ID: a.uid, Type: testclient.ToUser})
			}
			notefor := []testclient.Recipient{{ID: c.uid, Type: testclient.ToUser}}
			if tc.noteSelf {
				notefor = append(notefor, testclient.Recipient{ID: a.uid, Type: testclient.ToUser})
			}
			ack := mustStore(t)(a.c.PostNotify(to, notefor, []byte("note"), []byte("post"), tc.fornotself))
			ts.checkQueues(t,
				queueWant{"sending device", a.dev[0], tc.sending},
				queueWant{"sender's device 1", a.dev[1], tc.others},
				queueWant{"sender's device 2", a.dev[2], tc.others},
				queueWant{"for", b.dev[0], 2},
				queueWant{"notefor device 1", c.dev[1], 1},
			)
			// Without the post the other devices' notification is not
			// the acked message (that is the post's id).
			if id, ok := ts.store.Head(a.dev[1]); !ok || (id.String() == ack.MsgID) != (tc.others == 2) {
				t.Errorf("sender's device 1 queues %v first; the post is %s", id, ack.MsgID)
			}
			p := nextMessage(t, b.c)
			if p.Op() != "delivery" || p.Str("id") != ack.MsgID || p.Int("notify") != tc.notify {
				t.Errorf("delivery %s, want id %s notify %d", p.Raw, ack.MsgID, tc.notify)
			}
		})
	}
}

package main

// End-to-end tests of what a member's other devices get of what the member
// sent (SPEC §4 ops 5, 8, 9): one copy of each ping, invitation and
// notification, which the deployed client keeps on every device, and none on
// the sending device itself unless it is a recipient.
//
// "Exactly one" and "none" are proved without waiting for silence: after the
// request under test the sender posts a marker to itself and the other
// members watched, and every device receives its queue in id order (SPEC
// §5), so what the request stored for a device arrives before the marker.
// Whatever a device got before the marker, and only that, is what the
// request stored for it.

import (
	"bytes"
	"fmt"
	"testing"

	"mnm/testclient"
)

// household is a member with several logged-in devices; devs[0] sends.
type household struct {
	uid   string
	alias string
	devs  []*testclient.Client
}

// household registers a member with alias and gives it n-1 more devices
// through UserEdit newnode, each logged in.
func (s *e2eServer) household(alias string, n int) *household {
	s.t.Helper()
	c, reg := s.register(alias)
	if reg.AliasError != "" {
		s.t.Fatalf("alias %q refused: %s", alias, reg.AliasError)
	}
	h := &household{uid: reg.UID, alias: alias, devs: []*testclient.Client{c}}
	for i := 1; i < n; i++ {
		label := fmt.Sprintf("device %d", i)
		need(s.t)(c.NewNode(label))
		u := next(s.t, c, "user")
		if u.Str("newnode") != label {
			s.t.Fatalf("user message %s, want newnode %q", u, label)
		}
		h.devs = append(h.devs, s.login(reg.UID, u.Str("nodeid")))
	}
	return h
}

// mark posts a marker from h's sending device to h (so to all of its
// devices) and to others, and returns its msgid.
func (h *household) mark(t *testing.T, others ...*household) string {
	t.Helper()
	to := []testclient.Recipient{{ID: h.uid, Type: testclient.ToUser}}
	for _, o := range others {
		to = append(to, testclient.Recipient{ID: o.uid, Type: testclient.ToUser})
	}
	return need(t)(h.devs[0].Post(to, []byte("marker"))).MsgID
}

// upToMarker acks c's stored messages up to the delivery with id marker and
// returns those before it, except login notices and "user" messages (the
// setting up of devices). Every message must carry a valid headsum.
func upToMarker(t *testing.T, c *testclient.Client, marker string) []*testclient.Frame {
	t.Helper()
	var out []*testclient.Frame
	for {
		f := recv(t, c)
		if err := c.Ack(f.Str("id")); err != nil {
			t.Fatal(err)
		}
		if !f.HeadsumOK() {
			t.Fatalf("bad headsum: %s", f.Raw)
		}
		switch {
		case f.Op() == "delivery" && f.Str("id") == marker:
			return out
		case f.Op() != "login" && f.Op() != "user":
			out = append(out, f)
		}
	}
}

// sentCheck is what one device must have received of a request: the ops of
// its messages, in queue order.
type sentCheck struct {
	name string
	c    *testclient.Client
	ops  []string
}

// receive reads every device's messages up to marker and checks their ops
// against the checks. It returns them by op, across devices, so that the
// caller can check their fields and that every device got the same message.
func receive(t *testing.T, marker string, checks ...sentCheck) map[string][]*testclient.Frame {
	t.Helper()
	byOp := map[string][]*testclient.Frame{}
	for _, ch := range checks {
		got := upToMarker(t, ch.c, marker)
		var ops []string
		for _, f := range got {
			ops = append(ops, f.Op())
			byOp[f.Op()] = append(byOp[f.Op()], f)
		}
		if fmt.Sprint(ops) != fmt.Sprint(ch.ops) {
			t.Errorf("%s got %v, want %v", ch.name, ops, ch.ops)
		}
	}
	return byOp
}

// sameMessage checks that frames are one stored message referenced from
// several queues: byte for byte the same header and data.
func sameMessage(t *testing.T, frames []*testclient.Frame) {
	t.Helper()
	for _, f := range frames[1:] {
		if !bytes.Equal(f.Raw, frames[0].Raw) || !bytes.Equal(f.Data, frames[0].Data) {
			t.Errorf("%s differs from %s", f, frames[0])
		}
	}
}

// checkStored checks the standard fields of a stored message against the ack
// of the request that stored it.
func checkStored(t *testing.T, f *testclient.Frame, from string, ack testclient.Ack, data string) {
	t.Helper()
	if f.Str("from") != from || f.Str("id") != ack.MsgID || f.Str("posted") != ack.Posted ||
		f.Int("datalen") != int64(len(data)) || string(f.Data) != data {
		t.Errorf("%s %q, want from %s id %s posted %s data %q", f, f.Data, from, ack.MsgID, ack.Posted, data)
	}
}

// TestE2ESentPing: a ping from a member with three devices reaches each of
// its other devices once, as the same message the recipient's two devices
// get; the sending device gets none.
func TestE2ESentPing(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.household("alice liddell", 3)
	b := s.household("bob the builder", 2)
	ack := need(t)(a.devs[0].Ping(a.alias, b.alias, "hello × 2"))
	got := receive(t, a.mark(t, b),
		sentCheck{"sending device", a.devs[0], nil},
		sentCheck{"sender's device 1", a.devs[1], []string{"ping"}},
		sentCheck{"sender's device 2", a.devs[2], []string{"ping"}},
		sentCheck{"recipient's device 0", b.devs[0], []string{"ping"}},
		sentCheck{"recipient's device 1", b.devs[1], []string{"ping"}},
	)
	if pings := got["ping"]; len(pings) == 4 {
		sameMessage(t, pings)
		p := pings[0]
		checkStored(t, p, a.uid, ack, "hello × 2")
		if p.Str("alias") != a.alias || p.Str("to") != b.alias {
			t.Errorf("ping %s, want alias %q to %q", p, a.alias, b.alias)
		}
	}

	// The other way round: b's sending device is its second.
	b.devs[0], b.devs[1] = b.devs[1], b.devs[0]
	ack = need(t)(b.devs[0].Ping(b.alias, a.alias, "hi"))
	got = receive(t, b.mark(t, a),
		sentCheck{"sending device", b.devs[0], nil},
		sentCheck{"sender's other device", b.devs[1], []string{"ping"}},
		sentCheck{"recipient's device 0", a.devs[0], []string{"ping"}},
		sentCheck{"recipient's device 1", a.devs[1], []string{"ping"}},
		sentCheck{"recipient's device 2", a.devs[2], []string{"ping"}},
	)
	if pings := got["ping"]; len(pings) == 4 {
		sameMessage(t, pings)
		checkStored(t, pings[0], b.uid, ack, "hi")
	}
}

// TestE2ESentPingSelf: a ping to one's own alias reaches every device of the
// member once, the sending device too, as the recipient's; a member with one
// device gets no copy of its ping to another.
func TestE2ESentPingSelf(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.household("alice liddell", 2)
	need(t)(a.devs[0].NewAlias("alice in wonderland"))
	c := s.household("carol singer", 1)
	ack := need(t)(a.devs[0].Ping(a.alias, "alice in wonderland", "note to self"))
	got := receive(t, a.mark(t, c),
		sentCheck{"sending device", a.devs[0], []string{"ping"}},
		sentCheck{"sender's device 1", a.devs[1], []string{"ping"}},
		sentCheck{"other member", c.devs[0], nil},
	)
	if pings := got["ping"]; len(pings) == 2 {
		sameMessage(t, pings)
		checkStored(t, pings[0], a.uid, ack, "note to self")
	}

	ack = need(t)(c.devs[0].Ping(c.alias, a.alias, "one device"))
	got = receive(t, c.mark(t, a),
		sentCheck{"one-device sender", c.devs[0], nil},
		sentCheck{"recipient's device 0", a.devs[0], []string{"ping"}},
		sentCheck{"recipient's device 1", a.devs[1], []string{"ping"}},
	)
	if pings := got["ping"]; len(pings) == 2 {
		sameMessage(t, pings)
		checkStored(t, pings[0], c.uid, ack, "one device")
	}
}

// TestE2ESentInvite: an invitation reaches the invitee's devices and the
// inviter's other devices; the member notices go to the joined members as
// before, the sending device included. Inviting oneself stores nothing.
func TestE2ESentInvite(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.household("alice liddell", 3)
	b := s.household("bob the builder", 2)
	c := s.household("carol singer", 1)
	const gid = "book club"

	// A new group: a is its only joined member.
	ack := need(t)(a.devs[0].GroupInvite(gid, a.alias, c.alias, "join us"))
	got := receive(t, a.mark(t, c),
		sentCheck{"sending device", a.devs[0], []string{"member"}},
		sentCheck{"sender's device 1", a.devs[1], []string{"invite", "member"}},
		sentCheck{"sender's device 2", a.devs[2], []string{"invite", "member"}},
		sentCheck{"invitee", c.devs[0], []string{"invite"}},
	)
	if invs := got["invite"]; len(invs) == 3 {
		sameMessage(t, invs)
		checkStored(t, invs[0], a.uid, ack, "join us")
		if f := invs[0]; f.Str("gid") != gid || f.Str("alias") != a.alias || f.Str("to") != c.alias {
			t.Errorf("invitation %s, want gid %q alias %q to %q", f, gid, a.alias, c.alias)
		}
	}
	if notes := got["member"]; len(notes) == 3 {
		sameMessage(t, notes)
		if f := notes[0]; f.Str("act") != "invite" || f.Str("alias") != c.alias || f.Str("id") <= ack.MsgID {
			t.Errorf("member notice %s, want act invite alias %q after %s", f, c.alias, ack.MsgID)
		}
	}

	// c joins; then b's invitation goes to b, a's other devices, and the
	// member notice to a and c.
	need(t)(c.devs[0].GroupEdit("join", gid, "", ""))
	receive(t, a.mark(t, c),
		sentCheck{"sending device", a.devs[0], []string{"member"}},
		sentCheck{"sender's device 1", a.devs[1], []string{"member"}},
		sentCheck{"sender's device 2", a.devs[2], []string{"member"}},
		sentCheck{"joiner", c.devs[0], []string{"member"}},
	)
	ack = need(t)(a.devs[0].GroupInvite(gid, a.alias, b.alias, ""))
	got = receive(t, a.mark(t, b, c),
		sentCheck{"sending device", a.devs[0], []string{"member"}},
		sentCheck{"sender's device 1", a.devs[1], []string{"invite", "member"}},
		sentCheck{"sender's device 2", a.devs[2], []string{"invite", "member"}},
		sentCheck{"invitee's device 0", b.devs[0], []string{"invite"}},
		sentCheck{"invitee's device 1", b.devs[1], []string{"invite"}},
		sentCheck{"joined member", c.devs[0], []string{"member"}},
	)
	if invs := got["invite"]; len(invs) == 4 {
		sameMessage(t, invs)
		checkStored(t, invs[0], a.uid, ack, "")
	}

	// Inviting oneself is refused, into the group or into a new one, and
	// stores nothing for anyone.
	ack, err := a.devs[0].GroupInvite(gid, a.alias, a.alias, "me")
	ackErr(t, ack, err, "already a member of the group")
	ack, err = a.devs[0].GroupInvite("a new group", a.alias, a.alias, "me")
	ackErr(t, ack, err, "already a member of the group")
	receive(t, a.mark(t),
		sentCheck{"sending device", a.devs[0], nil},
		sentCheck{"sender's device 1", a.devs[1], nil},
		sentCheck{"sender's device 2", a.devs[2], nil},
	)
}

// TestE2ESentNotify: a PostNotify's notification reaches the sender's other
// devices with and without fornotself; fornotself keeps only the post from
// them. The sending device gets neither unless the sender listed itself.
func TestE2ESentNotify(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.household("alice liddell", 3)
	b := s.household("bob the builder", 2)
	c := s.household("carol singer", 1)
	user := func(h *household) testclient.Recipient {
		return testclient.Recipient{ID: h.uid, Type: testclient.ToUser}
	}
	post, note := []string{"delivery", "notify"}, []string{"notify"}
	cases := []struct {
		name          string
		to, notefor   []testclient.Recipient
		fornotself    bool
		sending, rest []string // the sending device's and the other devices' messages
		forC          []string // the third member's
		notify        int64
	}{
		{name: "post and note", to: []testclient.Recipient{user(b)}, notefor: []testclient.Recipient{user(c)},
			sending: nil, rest: post, forC: note, notify: 3},
		{name: "fornotself", to: []testclient.Recipient{user(b)}, notefor: []testclient.Recipient{user(c)},
			fornotself: true, sending: nil, rest: note, forC: note, notify: 2},
		{name: "fornotself, notefor names the sender", to: []testclient.Recipient{user(b)}, notefor: []testclient.Recipient{user(a)},
			fornotself: true, sending: note, rest: note, forC: nil, notify: 2},
		{name: "for names the sender", to: []testclient.Recipient{user(b), user(a)},
			sending: post, rest: post, forC: nil, notify: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ack := need(t)(a.devs[0].PostNotify(tc.to, tc.notefor, []byte("the note"), []byte("the post"), tc.fornotself))
			got := receive(t, a.mark(t, b, c),
				sentCheck{"sending device", a.devs[0], tc.sending},
				sentCheck{"sender's device 1", a.devs[1], tc.rest},
				sentCheck{"sender's device 2", a.devs[2], tc.rest},
				sentCheck{"for's device 0", b.devs[0], post},
				sentCheck{"for's device 1", b.devs[1], post},
				sentCheck{"third member", c.devs[0], tc.forC},
			)
			if ps := got["delivery"]; len(ps) > 0 {
				sameMessage(t, ps)
				checkStored(t, ps[0], a.uid, ack, "the post")
				if n := ps[0].Int("notify"); n != tc.notify {
					t.Errorf("delivery %s: notify %d, want %d", ps[0], n, tc.notify)
				}
			}
			if ns := got["notify"]; len(ns) > 0 {
				sameMessage(t, ns)
				n := ns[0]
				if n.Str("from") != a.uid || n.Str("postid") != ack.MsgID || n.Str("id") <= ack.MsgID ||
					n.Str("posted") != ack.Posted || string(n.Data) != "the note" {
					t.Errorf("notify %s %q, want postid %s and the note", n, n.Data, ack.MsgID)
				}
			}
		})
	}
}

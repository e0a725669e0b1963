package main

// End-to-end tests of the "receiveonly" extension (Protocol.md,
// Extensions): receive-only members over TLS against the real user
// database, promoted and demoted with mnm member between runs.

import (
	"bytes"
	"strings"
	"testing"

	"mnm/testclient"
)

// Names the site lets a receive-only member reach.
const (
	roHelpdesk = "the helpdesk desk"
	roSupport  = "support group gid"
)

// startReceiveOnly serves a site whose new members are receive-only and
// may reach roHelpdesk and roSupport.
func startReceiveOnly(t *testing.T) *e2eServer {
	t.Helper()
	dir := t.TempDir()
	cfg := testConfig(t, dir, "127.0.0.1:0")
	cfg["receiveOnly"] = map[string]any{"newMembers": true, "mayReach": []string{roHelpdesk, roSupport}}
	return serveE2E(t, dir, writeConfigFile(t, dir, cfg))
}

// memberCmd runs mnm member on s's config and returns its exit code and
// output.
func memberCmd(s *e2eServer, args ...string) (int, string) {
	var out, errOut bytes.Buffer
	code := run(append([]string{"member", "-config", s.cfg}, args...), &out, &errOut)
	return code, out.String() + errOut.String()
}

// restartAs stops s, runs mnm member with each of cmds ("promote UID",
// "demote UID") on its data, and starts it again.
func (s *e2eServer) restartAs(cmds ...string) {
	s.t.Helper()
	s.stop()
	for _, c := range cmds {
		if code, out := memberCmd(s, strings.Fields(c)...); code != exitOK {
			s.t.Fatalf("mnm member %s: exit %d: %s", c, code, out)
		}
	}
	s.start()
}

func TestE2EReceiveOnly(t *testing.T) {
	s := startReceiveOnly(t)
	h := s.member(roHelpdesk)
	o := s.member("other member ok")
	r := s.member("restricted member")

	// Everyone signed up receive-only; the operator cannot change that
	// while the server runs.
	if code, out := memberCmd(s, "promote", h.reg.UID); code != exitFailure || !strings.Contains(out, "another mnm is using this data directory") {
		t.Fatalf("promote while running: exit %d: %s", code, out)
	}
	ack, err := o.c.Post([]testclient.Recipient{{ID: r.reg.UID, Type: 1}}, []byte("x"))
	ackErr(t, ack, err, "receive-only member")
	for _, m := range []member{h, o, r} {
		m.c.Close()
	}

	s.restartAs("promote "+h.reg.UID, "promote "+o.reg.UID)
	if code, out := memberCmd(s, "list"); code != exitFailure {
		t.Fatalf("list while running: exit %d: %s", code, out)
	}
	hc, oc, rc := s.login(h.reg.UID, h.reg.NodeID), s.login(o.reg.UID, o.reg.NodeID), s.login(r.reg.UID, r.reg.NodeID)

	// The helpdesk's groups: one the site names, one it does not.
	const other = "another group gid"
	for _, gid := range []string{roSupport, other} {
		need(t)(hc.GroupInvite(gid, roHelpdesk, r.alias, "join"))
		need(t)(rc.GroupEdit("join", gid, "", ""))
	}

	// What a receive-only member may not do.
	toO := []testclient.Recipient{{ID: o.reg.UID, Type: 1}}
	ack, err = rc.Post(toO, []byte("spam"))
	ackErr(t, ack, err, "receive-only member")
	ack, err = rc.Post(groupTo(other, testclient.ToGroup), []byte("spam"))
	ackErr(t, ack, err, "receive-only member")
	ack, err = rc.Post(append(groupTo(roSupport, testclient.ToGroup), toO...), []byte("spam"))
	ackErr(t, ack, err, "receive-only member")
	ack, err = rc.PostNotify(groupTo(roSupport, testclient.ToGroupOthers), toO, []byte("n"), []byte("spam"), false)
	ackErr(t, ack, err, "receive-only member")
	ack, err = rc.Ping(r.alias, o.alias, "spam")
	ackErr(t, ack, err, "receive-only member")
	ack, err = rc.GroupInvite(roSupport, r.alias, o.alias, "spam")
	ackErr(t, ack, err, "receive-only member")
	ack, err = rc.GroupInvite("a brand new group", r.alias, roHelpdesk, "spam")
	ackErr(t, ack, err, "receive-only member")

	// What it may: the helpdesk alias, its holder, the support group, and
	// receiving. The helpdesk gets these first: nothing refused reached it.
	need(t)(rc.Ping(r.alias, roHelpdesk, "help"))
	if f := next(t, hc, "ping"); string(f.Data) != "help" {
		t.Fatalf("ping %s %q", f.Raw, f.Data)
	}
	need(t)(rc.Post(groupTo(roSupport, testclient.ToGroupOthers), []byte("to support")))
	nextDelivery(t, hc, "to support")
	need(t)(rc.Post([]testclient.Recipient{{ID: h.reg.UID, Type: 1}}, []byte("to the desk")))
	nextDelivery(t, hc, "to the desk")
	need(t)(rc.PostNotify(groupTo(roSupport, testclient.ToGroupOthers), nil, []byte("n"), []byte("noted"), false))
	nextDelivery(t, hc, "noted")
	need(t)(rc.Post(nil, []byte("to myself")))
	need(t)(rc.Post([]testclient.Recipient{{ID: r.reg.UID, Type: 1}}, []byte("to me")))
	nextDelivery(t, rc, "to me")
	need(t)(oc.Post([]testclient.Recipient{{ID: r.reg.UID, Type: 1}}, []byte("hello r")))
	nextDelivery(t, rc, "hello r")
	// Its account is its own to edit, and its groups to leave.
	need(t)(rc.NewAlias("restricted second"))
	need(t)(rc.GroupEdit("drop", other, "", r.alias))

	// Promoted, it posts to anyone; demoted again, it is refused again.
	s.restartAs("promote " + r.reg.UID)
	oc, rc = s.login(o.reg.UID, o.reg.NodeID), s.login(r.reg.UID, r.reg.NodeID)
	need(t)(rc.Post(toO, []byte("now I may")))
	nextDelivery(t, oc, "now I may")
	need(t)(rc.Ping(r.alias, o.alias, "hi"))
	s.restartAs("demote " + r.reg.UID)
	rc = s.login(r.reg.UID, r.reg.NodeID)
	ack, err = rc.Post(toO, []byte("spam"))
	ackErr(t, ack, err, "receive-only member")
	s.stop()
	if code, out := memberCmd(s, "list"); code != exitOK || out != r.reg.UID+"\n" {
		t.Fatalf("list: exit %d: %q", code, out)
	}
	s.start()
}

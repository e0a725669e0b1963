package qlib

// Presence under attack (issue #10 item 4): a member naming another in its
// presence list over and over, in one OhiEdit or in a loop of them, must not
// be able to overflow the other's link and have it dropped.

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"mnm/testclient"
)

// ohiFrom reads the presence notices arriving on next until one from marker,
// and returns the statuses of those from uid, in order. Notices are queued in
// order for each link, so when the marker's notice was queued after uid's,
// all of uid's have arrived with it.
func ohiFrom(t *testing.T, next func() *testclient.Frame, uid, marker string) []int64 {
	t.Helper()
	var got []int64
	for {
		f := next()
		if f.Op() != "ohi" {
			continue
		}
		switch f.Str("from") {
		case uid:
			got = append(got, f.Int("status"))
		case marker:
			return got
		default:
			t.Fatalf("unexpected notice %s", f.Raw)
		}
	}
}

// othersOf returns a next for ohiFrom that reads c's non-stored frames.
func othersOf(t *testing.T, c *testclient.Client) func() *testclient.Frame {
	return func() *testclient.Frame {
		select {
		case f := <-c.Others():
			return f
		case <-c.Done():
			t.Fatalf("link ended: %v", c.Err())
		case <-time.After(10 * time.Second):
			t.Fatal("no frame within 10s")
		}
		return nil
	}
}

// TestOhiRepeatedUID: an OhiEdit init naming a reading victim 1,400 times
// (what a 64 KiB frame holds) looks the uid up once and gives the victim one
// notice, not 1,400; the victim's link stays up, every time the attacker
// does it. Another member's notices are unaffected.
func TestOhiRepeatedUID(t *testing.T) {
	ts, dir := fanoutServer(t, nil)
	attacker, _ := ts.register()
	victim, vreg := ts.register()
	bystander, breg := ts.register()

	list := make([]string, 1400)
	for i := range list {
		list[i] = vreg.UID
	}
	for round := range 3 {
		dir.resetCounts()
		if ack, err := attacker.OhiEdit("init", list); err != nil || ack.Error != "" {
			t.Fatalf("round %d: ohiedit: %v %+v", round, err, ack)
		}
		if n := dir.devices.Load(); n != 1 {
			t.Errorf("round %d: %d lookups for one uid named 1,400 times, want 1", round, n)
		}
		// The attacker's edit is applied before its next request is read:
		// once that is answered, the bystander's notice is queued after
		// the attacker's.
		if ack, err := attacker.OhiEdit("add", []string{breg.UID}); err != nil || ack.Error != "" {
			t.Fatalf("round %d: second ohiedit: %v %+v", round, err, ack)
		}
		typ := "add"
		if round%2 == 1 {
			typ = "drop"
		}
		if ack, err := bystander.OhiEdit(typ, []string{vreg.UID}); err != nil || ack.Error != "" {
			t.Fatalf("round %d: bystander's ohiedit: %v %+v", round, err, ack)
		}
		if got := ohiFrom(t, othersOf(t, victim), attacker.UID(), bystander.UID()); !slices.Equal(got, []int64{ohiOnline}) {
			t.Fatalf("round %d: the victim got statuses %v from the attacker, want one online", round, got)
		}
	}
	// The victim's link is up and works.
	mustStore(t)(victim.Post([]testclient.Recipient{{ID: breg.UID, Type: testclient.ToUser}}, []byte("still here")))
	if strings.Contains(ts.logs.String(), "link not reading") {
		t.Error("a link was closed as not reading")
	}
	ts.victimWorks()
}

// TestOhiToggleCoalesced: a member toggling another on and off its list in
// a loop, 600 edits (more than twice what the old outbox held), while the
// victim's link reads nothing (its writes stall). The notices waiting for
// the victim stay at one, the latest, throughout; when the victim reads
// again it gets at most that one and one caught in the stalled write, ending
// with the attacker's latest status, and its link is still up.
func TestOhiToggleCoalesced(t *testing.T) {
	ts := startServer(t, nil)
	attacker, _ := ts.register()
	bystander, _ := ts.register()
	uid, nodeid, dev, err := ts.dir.Register("victim", nil)
	if err != nil {
		t.Fatal(err)
	}

	srvSide, cliSide := net.Pipe() // writes block until the victim reads
	c := ts.loginPipe(srvSide, cliSide, uid, nodeid)
	ts.srv.mu.Lock()
	vl := ts.srv.devices[dev]
	ts.srv.mu.Unlock()
	pending := func() int {
		vl.dmu.Lock()
		defer vl.dmu.Unlock()
		return len(vl.ohiOrder)
	}

	// From here the victim reads nothing until the loop is over.
	const edits = 600
	most := 0
	for i := range edits {
		typ := "drop"
		if i%2 == 1 {
			typ = "add" // the last edit: the attacker's latest status is online
		}
		if ack, err := attacker.OhiEdit(typ, []string{uid}); err != nil || ack.Error != "" {
			t.Fatalf("edit %d: %v %+v", i, err, ack)
		}
		most = max(most, pending())
	}
	// The last edit is applied before the attacker's next request is read:
	// once that is answered, the bystander's notice is queued after it.
	if ack, err := attacker.OhiEdit("add", []string{bystander.UID()}); err != nil || ack.Error != "" {
		t.Fatalf("attacker's last ohiedit: %v %+v", err, ack)
	}
	if most = max(most, pending()); most > 1 {
		t.Errorf("up to %d notices waited for the victim from one sender, want 1", most)
	}
	if ack, err := bystander.OhiEdit("add", []string{uid}); err != nil || ack.Error != "" {
		t.Fatalf("bystander's ohiedit: %v %+v", err, ack)
	}

	next := func() *testclient.Frame { return mustRead(t, c) }
	got := ohiFrom(t, next, attacker.UID(), bystander.UID())
	if len(got) == 0 || len(got) > 2 || got[len(got)-1] != ohiOnline {
		t.Fatalf("after %d edits the victim got statuses %v from the attacker, want at most 2 ending online", edits, got)
	}
	// The link is up: a request is answered.
	if err := c.WriteFrame(map[string]any{"Op": 4, "Id": "x", "For": []map[string]string{{"Id": attacker.UID()}}, "Type": "add"}, nil); err != nil {
		t.Fatal(err)
	}
	for {
		f := mustRead(t, c)
		if f.Op() == "ack" {
			if f.Str("error") != "" {
				t.Fatalf("victim's request: %s", f.Raw)
			}
			break
		}
	}
	if strings.Contains(ts.logs.String(), "link not reading") {
		t.Error("the victim's link was closed as not reading")
	}
	ts.victimWorks()
}

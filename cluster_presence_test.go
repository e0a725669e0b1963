package main

// Presence across frontends (cluster/DESIGN.md, "Presence across
// frontends"; SPEC §6): two frontends, each a real qlib.Server with its own
// bus and a cluster.Presence over it, sharing one store and user database
// in process. A member's list lives site-wide, its notices reach the
// listed users' devices on either frontend, and it is online while any
// frontend holds one of its devices.

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"mnm/cluster/natstest"
	"mnm/qlib/store"
	"mnm/testclient"
)

// presenceWait bounds each wait of these tests for a frame or a condition.
const presenceWait = 15 * time.Second

// presenceSite starts two frontends with presence over a shared store.
func presenceSite(t *testing.T, ttl time.Duration) (*UserDB, []*frontend) {
	t.Helper()
	c := natstest.Start(t, natstest.Options{})
	st, err := store.Open(store.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	users := siteUsers(t)
	return users, startFrontends(t, c, 2, users, sharedStore(st), ttl, withPresence())
}

// presenceMember is a registered user and its first device's credentials.
type presenceMember struct {
	uid, nodeid string
}

// register registers a member on fe and logs its device out.
func register(t *testing.T, fe *frontend) presenceMember {
	t.Helper()
	c, reg, err := testclient.Register(fe.addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-c.Done()
	return presenceMember{reg.UID, reg.NodeID}
}

// login logs m's device nodeid in on fe and returns the link and the login
// reply's ohi list.
func login(t *testing.T, fe *frontend, uid, nodeid string) (*testclient.Client, []string) {
	t.Helper()
	c, info, err := testclient.Login(fe.addr, uid, nodeid, testclient.Options{AutoAck: true})
	if err != nil {
		t.Fatalf("login of %s: %v", uid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, info.Ohi
}

// loginUntil logs m in on fe again and again until its login reply's ohi
// list is want: the other frontend's changes reach this one's memory a
// moment after they are made.
func loginUntil(t *testing.T, fe *frontend, m presenceMember, want ...string) *testclient.Client {
	t.Helper()
	deadline := time.Now().Add(presenceWait)
	for {
		c, ohi := login(t, fe, m.uid, m.nodeid)
		if slices.Equal(ohi, want) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("login reply of %s lists %q, want %q", m.uid, ohi, want)
		}
		c.Close()
		<-c.Done()
		time.Sleep(10 * time.Millisecond) // a retry interval, not a synchronisation
	}
}

// ohiEdit sends an OhiEdit and checks its ack.
func ohiEdit(t *testing.T, c *testclient.Client, typ string, uids ...string) {
	t.Helper()
	if ack, err := c.OhiEdit(typ, uids); err != nil || ack.Error != "" {
		t.Fatalf("ohiedit %s %q: %v %+v", typ, uids, err, ack)
	}
}

// nextOhi returns the next presence notice on c as (from, status).
func nextOhi(t *testing.T, c *testclient.Client) (string, int64) {
	t.Helper()
	for {
		select {
		case f, ok := <-c.Others():
			if !ok {
				t.Fatalf("link ended: %v", c.Err())
			}
			if f.Op() == "ohi" {
				return f.Str("from"), f.Int("status")
			}
		case <-time.After(presenceWait):
			t.Fatal("no presence notice in time")
		}
	}
}

// ohiUntil reads c's presence notices until one from marker, and returns
// those before it as "from:status".
func ohiUntil(t *testing.T, c *testclient.Client, marker string) []string {
	t.Helper()
	var got []string
	for {
		from, status := nextOhi(t, c)
		if from == marker {
			return got
		}
		got = append(got, fmt.Sprintf("%s:%d", from, status))
	}
}

// TestClusterPresenceAcrossFrontends: U on frontend 0 names V in its list;
// V, on frontend 1, is told U is online, and U's devices get the stored
// echo of the edit. V logging in again on frontend 1 finds U in its login
// reply. When U's device leaves, V is told U is offline; U back online has
// an empty list: V's next login reply lists nobody.
func TestClusterPresenceAcrossFrontends(t *testing.T) {
	_, fes := presenceSite(t, 2*time.Second)
	u, v := register(t, fes[0]), register(t, fes[1])

	vc, ohi := login(t, fes[1], v.uid, v.nodeid)
	if len(ohi) != 0 {
		t.Fatalf("V's first login reply lists %q", ohi)
	}
	uc, _ := login(t, fes[0], u.uid, u.nodeid)
	ohiEdit(t, uc, "add", v.uid)
	if from, status := nextOhi(t, vc); from != u.uid || status != 1 {
		t.Fatalf("V got %s:%d, want %s:1", from, status, u.uid)
	}
	// U's devices get the edit as a stored message (SPEC §4 op 4).
	for {
		f := recv(t, uc)
		if f.Op() != "ohiedit" {
			continue
		}
		if f.Str("type") != "add" || fmt.Sprint(f.Head["for"]) != fmt.Sprintf("[map[Id:%s Type:0]]", v.uid) {
			t.Fatalf("U's echo of its edit: %s", f.Raw)
		}
		break
	}

	vc.Close()
	<-vc.Done()
	vc = loginUntil(t, fes[1], v, u.uid)

	uc.Close()
	if from, status := nextOhi(t, vc); from != u.uid || status != 2 {
		t.Fatalf("V got %s:%d, want %s:2", from, status, u.uid)
	}
	login(t, fes[0], u.uid, u.nodeid)
	vc.Close()
	<-vc.Done()
	loginUntil(t, fes[1], v)
}

// TestClusterPresenceSeveralFrontends: U has devices on both frontends and
// stays online, its list alive, until the last one leaves: V, on frontend
// 0, is told U is offline once, when U's device on frontend 1 leaves.
func TestClusterPresenceSeveralFrontends(t *testing.T) {
	users, fes := presenceSite(t, 2*time.Second)
	u, v, w := register(t, fes[0]), register(t, fes[0]), register(t, fes[0])
	phone, _, err := users.AddDevice(u.uid, "phone")
	if err != nil {
		t.Fatal(err)
	}

	pc, _ := login(t, fes[1], u.uid, phone)
	ohiEdit(t, pc, "add", v.uid)
	// Once V's login reply on frontend 0 lists U, frontend 0 knows U is
	// online on frontend 1.
	vc := loginUntil(t, fes[0], v, u.uid)

	lc, _ := login(t, fes[0], u.uid, u.nodeid)
	lc.Close()
	<-lc.Done()
	waitCond(t, "frontend 0 to drop U's laptop", func() bool { return fes[0].srv.Stats().Devices == 1 })
	// W's notice, made on frontend 0 after U's laptop left, marks the
	// point: an offline notice for U's leaving would have come before.
	wc, _ := login(t, fes[0], w.uid, w.nodeid)
	ohiEdit(t, wc, "add", v.uid)
	if got := ohiUntil(t, vc, w.uid); len(got) != 0 {
		t.Fatalf("V got %q while U was online on frontend 1", got)
	}
	// U is still online, its list alive: V's login reply lists U and W.
	vc.Close()
	<-vc.Done()
	vc = loginUntil(t, fes[0], v, sorted(u.uid, w.uid)...)

	pc.Close()
	if from, status := nextOhi(t, vc); from != u.uid || status != 2 {
		t.Fatalf("V got %s:%d, want %s:2", from, status, u.uid)
	}
}

// TestClusterPresenceFrontendDies: frontend 0, holding U, dies without a
// word (its NATS connection closed, its links cut). V on frontend 1 is told
// U is offline once frontend 0's liveness has run out.
func TestClusterPresenceFrontendDies(t *testing.T) {
	const ttl = time.Second
	_, fes := presenceSite(t, ttl)
	u, v := register(t, fes[0]), register(t, fes[1])
	vc, _ := login(t, fes[1], v.uid, v.nodeid)
	uc, _ := login(t, fes[0], u.uid, u.nodeid)
	ohiEdit(t, uc, "add", v.uid)
	if from, status := nextOhi(t, vc); from != u.uid || status != 1 {
		t.Fatalf("V got %s:%d, want %s:1", from, status, u.uid)
	}

	killed := time.Now()
	fes[0].nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	fes[0].srv.Shutdown(ctx)
	cancel()
	<-uc.Done()
	if from, status := nextOhi(t, vc); from != u.uid || status != 2 {
		t.Fatalf("V got %s:%d, want %s:2", from, status, u.uid)
	}
	t.Logf("V told U is offline %v after U's frontend died (liveness %v)", time.Since(killed).Round(time.Millisecond), ttl)
	vc.Close()
	<-vc.Done()
	loginUntil(t, fes[1], v)
}

// TestClusterPresenceBlocked: V blocks U. U's edit on frontend 0 naming V
// gives V on frontend 1 no notice, V's login reply does not list U, and
// U's leaving tells V nothing; W, unblocked, is heard throughout.
func TestClusterPresenceBlocked(t *testing.T) {
	users, fes := presenceSite(t, 2*time.Second)
	u, v, w := register(t, fes[0]), register(t, fes[1]), register(t, fes[0])
	if _, _, err := users.Block(v.uid, u.uid); err != nil {
		t.Fatal(err)
	}
	vc, _ := login(t, fes[1], v.uid, v.nodeid)
	uc, _ := login(t, fes[0], u.uid, u.nodeid)
	wc, _ := login(t, fes[0], w.uid, w.nodeid)
	ohiEdit(t, uc, "add", v.uid)
	ohiEdit(t, wc, "add", v.uid)
	// Both notices are made on frontend 0 and travel in order.
	if got := ohiUntil(t, vc, w.uid); len(got) != 0 {
		t.Fatalf("V, blocking U, got %q", got)
	}
	vc.Close()
	<-vc.Done()
	vc = loginUntil(t, fes[1], v, w.uid)

	uc.Close()
	<-uc.Done()
	waitCond(t, "frontend 0 to drop U", func() bool { return fes[0].srv.Stats().Users == 1 })
	ohiEdit(t, wc, "drop", v.uid)
	if got := ohiUntil(t, vc, w.uid); len(got) != 0 {
		t.Fatalf("V, blocking U, got %q when U left", got)
	}
}

// waitCond polls cond until it holds or presenceWait passes.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(presenceWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sorted returns uids sorted, as a login reply lists them.
func sorted(uids ...string) []string {
	slices.Sort(uids)
	return uids
}

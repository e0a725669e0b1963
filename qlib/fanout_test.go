package qlib

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
	"mnm/testclient"
)

// fanoutDir is fakeDir with groups whose members a test sets, counting
// the calls that expand a post's recipients: the work a for list makes the
// server do, counted rather than timed.
type fanoutDir struct {
	*fakeDir
	gmu    sync.Mutex
	groups map[string][]string // gid → joined members; every listed uid is a member

	groupMembers atomic.Int64
	devices      atomic.Int64
}

func newFanoutDir(d *fakeDir) *fanoutDir {
	return &fanoutDir{fakeDir: d, groups: make(map[string][]string)}
}

// setGroup makes gid a group of members, all joined.
func (d *fanoutDir) setGroup(gid string, members []string) {
	d.gmu.Lock()
	defer d.gmu.Unlock()
	d.groups[gid] = slices.Clone(members)
}

func (d *fanoutDir) GroupMembers(uid, gid string) ([]string, error) {
	d.groupMembers.Add(1)
	d.gmu.Lock()
	defer d.gmu.Unlock()
	members, ok := d.groups[gid]
	if !ok {
		return nil, ErrNoGroup
	}
	if !slices.Contains(members, uid) {
		return nil, ErrNotMember
	}
	return slices.Clone(members), nil
}

func (d *fanoutDir) Devices(uid string) ([]string, error) {
	d.devices.Add(1)
	return d.fakeDir.Devices(uid)
}

// resetCounts zeroes the call counts.
func (d *fanoutDir) resetCounts() {
	d.groupMembers.Store(0)
	d.devices.Store(0)
}

// repeatFor is a for list naming r n times.
func repeatFor(r tmtp.Recipient, n int) []tmtp.Recipient {
	list := make([]tmtp.Recipient, n)
	for i := range list {
		list[i] = r
	}
	return list
}

// fanoutLink is a link of the first member of a group of n members, one
// device each, on a server that is not serving: enough to call recipients
// directly.
func fanoutLink(tb testing.TB, n int, lim Limits) (*link, *fanoutDir) {
	tb.Helper()
	st, err := store.Open(store.Options{Dir: tb.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	dir := newFanoutDir(newFakeDir())
	members := make([]string, n)
	for i := range members {
		uid, _, _, err := dir.Register("dev", nil)
		if err != nil {
			tb.Fatal(err)
		}
		members[i] = uid
	}
	dir.setGroup("big group", members)
	srv, err := NewServer(Config{Directory: dir, Store: st, Logger: slog.New(slog.DiscardHandler), Limits: &lim})
	if err != nil {
		tb.Fatal(err)
	}
	l := &link{srv: srv, log: srv.log, uid: members[0], dev: members[0] + ".0"}
	return l, dir
}

// BenchmarkRecipientsRepeatedGroup is the fan-out amplification of issue
// #10: a post naming a 5,000-member group 2,000 times, as one 64 KiB frame
// may. /once names it once, the cost of an honest post to the group.
func BenchmarkRecipientsRepeatedGroup(b *testing.B) {
	const members = 5000
	for _, times := range []int{1, 2000} {
		b.Run(fmt.Sprintf("times=%d", times), func(b *testing.B) {
			l, _ := fanoutLink(b, members, DefaultLimits())
			list := repeatFor(tmtp.Recipient{ID: "big group", Type: tmtp.ForGroup}, times)
			b.ResetTimer()
			for b.Loop() {
				to, err := l.recipients(list, nil, true)
				if err != nil {
					b.Fatal(err)
				}
				if len(to) != members {
					b.Fatalf("%d devices, want %d", len(to), members)
				}
			}
		})
	}
}

// TestDistinct: repeats go, first appearances keep their order, a group
// named with and without the sender is kept once as type 2 (reaching the
// sender), and a uid and a group of the same name stay apart.
func TestDistinct(t *testing.T) {
	u := func(id string) tmtp.Recipient { return tmtp.Recipient{ID: id, Type: tmtp.ForUser} }
	g := func(id string) tmtp.Recipient { return tmtp.Recipient{ID: id, Type: tmtp.ForGroup} }
	x := func(id string) tmtp.Recipient { return tmtp.Recipient{ID: id, Type: tmtp.ForGroupExSender} }
	cases := []struct {
		in, want []tmtp.Recipient
	}{
		{nil, []tmtp.Recipient{}},
		{[]tmtp.Recipient{u("a"), u("b"), u("a"), u("a")}, []tmtp.Recipient{u("a"), u("b")}},
		{repeatFor(g("big"), 2000), []tmtp.Recipient{g("big")}},
		{[]tmtp.Recipient{x("big"), u("a"), x("big")}, []tmtp.Recipient{x("big"), u("a")}},
		// Type 3 first, type 2 later: the group keeps its place and
		// includes the sender.
		{[]tmtp.Recipient{x("big"), u("a"), g("big"), x("big")}, []tmtp.Recipient{g("big"), u("a")}},
		{[]tmtp.Recipient{g("big"), x("big")}, []tmtp.Recipient{g("big")}},
		{[]tmtp.Recipient{u("same"), g("same"), x("same"), u("same")}, []tmtp.Recipient{u("same"), g("same")}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.in), func(t *testing.T) {
			if got := distinct(c.in); !slices.Equal(got, c.want) {
				t.Errorf("distinct(%v) = %v, want %v", c.in, got, c.want)
			}
		})
	}
}

// fanoutServer starts a server whose directory has groups and counts the
// calls that expand recipients; mod changes the default limits.
func fanoutServer(t *testing.T, mod func(*Limits)) (*testServer, *fanoutDir) {
	t.Helper()
	var fd *fanoutDir
	ts, _ := limitServer(t, mod, func(c *Config) {
		fd = newFanoutDir(c.Directory.(*fakeDir))
		c.Directory = fd
	})
	return ts, fd
}

// offlineMembers registers n users that never log in, the first extra of
// them with a second device, and returns their uids and all their devices.
func (ts *testServer) offlineMembers(n, extra int) (uids, devs []string) {
	ts.t.Helper()
	for i := range n {
		uid, _, dev, err := ts.dir.Register("dev", nil)
		if err != nil {
			ts.t.Fatal(err)
		}
		uids, devs = append(uids, uid), append(devs, dev)
		if i < extra {
			_, dev := ts.dir.device(uid)
			devs = append(devs, dev)
		}
	}
	return uids, devs
}

// queued returns how many of devs have exactly n messages queued, and the
// first that has not.
func (ts *testServer) queued(devs []string, n int) (ok int, bad string) {
	for _, d := range devs {
		if ts.store.Len(d) == n {
			ok++
		} else if bad == "" {
			bad = d
		}
	}
	return ok, bad
}

// TestFanoutRepeatedGroup: the attack of issue #10 item 3, a post naming a
// large group 2,000 times (types 2 and 3 mixed) in one frame. The group is
// expanded once and each member's devices looked up once, however often it
// is named; the post is stored once per device; the sender's sending device
// gets it (type 2 includes the sender); another member is unaffected and
// the server stays up.
func TestFanoutRepeatedGroup(t *testing.T) {
	const members = 300
	ts, dir := fanoutServer(t, nil)
	sender, reg := ts.register()
	uids, devs := ts.offlineMembers(members, 50)
	dir.setGroup("big group", append([]string{reg.UID}, uids...))

	var to []testclient.Recipient
	for i := range 2000 {
		typ := testclient.ToGroupOthers
		if i%2 == 1 {
			typ = testclient.ToGroup
		}
		to = append(to, testclient.Recipient{ID: "big group", Type: typ})
	}
	dir.resetCounts()
	ack := mustStore(t)(sender.Post(to, []byte("x")))
	if n := dir.groupMembers.Load(); n != 1 {
		t.Errorf("the group was expanded %d times, want once", n)
	}
	if n := dir.devices.Load(); n != members+1 {
		t.Errorf("%d device lookups for %d members and the sender, want one each", n, members+1)
	}
	if ok, bad := ts.queued(devs, 1); ok != len(devs) {
		t.Fatalf("%d of %d member devices hold the post once; %s holds %d", ok, len(devs), bad, ts.store.Len(bad))
	}
	if f := nextMessage(t, sender); f.Str("id") != ack.MsgID {
		t.Fatalf("the sending device got %s, want its post %s (type 2 includes the sender)", f.Raw, ack.MsgID)
	}
	ts.victimWorks()
}

// TestFanoutPostNotifyAcrossLists: PostNotify concatenates notefor and for
// to address the notification; a group named in both, as type 3 in for and
// type 2 in notefor, is expanded once per message (twice in all) and each
// device gets one post and one notification. The post leaves out the
// sending device (type 3), the notification reaches it (type 2).
func TestFanoutPostNotifyAcrossLists(t *testing.T) {
	const members = 200
	ts, dir := fanoutServer(t, nil)
	sender, reg := ts.register()
	_, other := ts.dir.device(reg.UID) // the sender's other device, offline
	uids, devs := ts.offlineMembers(members, 20)
	dir.setGroup("big group", append([]string{reg.UID}, uids...))

	postTo := repeatFor(tmtp.Recipient{ID: "big group", Type: tmtp.ForGroupExSender}, 1000)
	noteTo := repeatFor(tmtp.Recipient{ID: "big group", Type: tmtp.ForGroup}, 1000)
	dir.resetCounts()
	ack := mustStore(t)(sender.PostNotify(toClient(postTo), toClient(noteTo), []byte("n"), []byte("p"), false))
	if n := dir.groupMembers.Load(); n != 2 {
		t.Errorf("the group was expanded %d times, want once for the post and once for the notification", n)
	}
	if n := dir.devices.Load(); n > 2*(members+1) {
		t.Errorf("%d device lookups, want at most one per member and message", n)
	}
	if ok, bad := ts.queued(append(devs, other), 2); ok != len(devs)+1 {
		t.Fatalf("%d of %d devices hold one post and one notification; %s holds %d", ok, len(devs)+1, bad, ts.store.Len(bad))
	}
	f := nextMessage(t, sender)
	if f.Op() != "notify" || f.Str("postid") != ack.MsgID {
		t.Fatalf("the sending device got %s, want the notification of %s", f.Raw, ack.MsgID)
	}
	if n := ts.store.Len(reg.UID + ".0"); n != 1 {
		t.Fatalf("the sending device holds %d messages, want the notification only", n)
	}
}

// toClient converts a for list for testclient.
func toClient(rs []tmtp.Recipient) []testclient.Recipient {
	out := make([]testclient.Recipient, len(rs))
	for i, r := range rs {
		out[i] = testclient.Recipient{ID: r.ID, Type: r.Type}
	}
	return out
}

// TestFanoutDevicesPerPost: a post whose recipients have more devices than
// DevicesPerPost is refused with "too many recipients: over N devices",
// stores nothing for anyone, and stops expanding once over the limit; the
// refusal is logged once. A post at the limit is accepted, and other
// members are unaffected.
func TestFanoutDevicesPerPost(t *testing.T) {
	const limit = 100
	ts, dir := fanoutServer(t, func(l *Limits) { l.DevicesPerPost = limit })
	sender, reg := ts.register()
	bigUIDs, bigDevs := ts.offlineMembers(300, 0)
	dir.setGroup("big group", append([]string{reg.UID}, bigUIDs...))
	// The sender and 99 others, one device each: with the sending device
	// (type 2) the post reaches exactly the limit.
	smallUIDs, smallDevs := ts.offlineMembers(limit-1, 0)
	dir.setGroup("small group", append([]string{reg.UID}, smallUIDs...))

	want := fmt.Sprintf("too many recipients: over %d devices", limit)
	big := repeatFor(tmtp.Recipient{ID: "big group", Type: tmtp.ForGroup}, 2000)
	dir.resetCounts()
	if ack, err := sender.Post(toClient(big), []byte("x")); err != nil || ack.Error != want {
		t.Fatalf("post to the big group: %v %+v, want %q", err, ack, want)
	}
	if n := dir.devices.Load(); n > limit+2 {
		t.Errorf("%d device lookups for a refused post, want expansion to stop at the limit of %d", n, limit)
	}
	// Over the limit through notefor, with for within it.
	small := []testclient.Recipient{{ID: "small group", Type: testclient.ToGroup}}
	if ack, err := sender.PostNotify(small, toClient(big[:1]), []byte("n"), []byte("p"), false); err != nil || ack.Error != want {
		t.Fatalf("postnotify with the big group in notefor: %v %+v, want %q", err, ack, want)
	}
	// Over the limit through users with many devices.
	heavy, _ := ts.offlineMembers(1, 0)
	for range limit {
		ts.dir.device(heavy[0])
	}
	if ack, err := sender.Post([]testclient.Recipient{{ID: heavy[0], Type: testclient.ToUser}}, []byte("x")); err != nil || ack.Error != want {
		t.Fatalf("post to a user with %d devices: %v %+v, want %q", limit+1, err, ack, want)
	}
	if ok, bad := ts.queued(append(bigDevs, smallDevs...), 0); ok != len(bigDevs)+len(smallDevs) {
		t.Fatalf("a refused post stored messages: %s holds %d", bad, ts.store.Len(bad))
	}
	if n := ts.countLogs("post refused: too many recipient devices"); n != 1 {
		t.Errorf("%d log lines for 3 refusals, want 1", n)
	}

	ack := mustStore(t)(sender.Post(small, []byte("x")))
	if ok, bad := ts.queued(smallDevs, 1); ok != len(smallDevs) {
		t.Fatalf("the post at the limit is missing from %s", bad)
	}
	if f := nextMessage(t, sender); f.Str("id") != ack.MsgID {
		t.Fatalf("the sending device got %s, want %s", f.Raw, ack.MsgID)
	}
	ts.victimWorks()
}

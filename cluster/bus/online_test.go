package bus

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"mnm/cluster/natstest"
)

// Uids with the characters subjects and KV keys reserve.
const (
	uidU = "u.1%2B+"
	uidV = "v.2*>"
	uidW = "w"
)

func (f *frontend) setOnline(t *testing.T, uid string, online bool) {
	t.Helper()
	if err := f.bus.SetOnline(uid, online); err != nil {
		t.Fatalf("%s: set %q online %v: %v", f.name, uid, online, err)
	}
}

func (f *frontend) edit(t *testing.T, uid string, add ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	err := f.bus.Edit(ctx, uid, func(l map[string]bool) {
		for _, v := range add {
			l[v] = true
		}
	})
	if err != nil {
		t.Fatalf("%s: edit %q: %v", f.name, uid, err)
	}
}

// naming waits until f's Naming(uid) is want.
func (f *frontend) naming(t *testing.T, uid string, want ...string) {
	t.Helper()
	waitFor(t, f.name+" naming "+uid+" "+fmtList(want), func() bool {
		return slices.Equal(f.bus.Naming(uid), want)
	})
}

func fmtList(l []string) string {
	if len(l) == 0 {
		return "nobody"
	}
	return "[" + l[0] + "…]"
}

func nextGone(t *testing.T, f *frontend) goneNote {
	t.Helper()
	select {
	case g := <-f.gone:
		return g
	case <-time.After(testTimeout):
		t.Fatalf("%s: no user gone", f.name)
		return goneNote{}
	}
}

func nextNotice(t *testing.T, f *frontend) presenceNote {
	t.Helper()
	select {
	case p := <-f.presence:
		return p
	case <-time.After(testTimeout):
		t.Fatalf("%s: no presence notice", f.name)
		return presenceNote{}
	}
}

// noGone checks that f reported no user gone so far.
func noGone(t *testing.T, f *frontend) {
	t.Helper()
	select {
	case g := <-f.gone:
		t.Fatalf("%s: user gone %+v", f.name, g)
	default:
	}
}

// TestPresenceAcrossFrontends: U online on a with a list naming V, V on b.
// b sees U online and its list (Naming); a notice for V from a reaches b
// only; when U leaves a, both a and b report U gone with its list, and the
// list is deleted from the bucket.
func TestPresenceAcrossFrontends(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	cc := startFrontend(t, c, "fe.c", testTTL)

	a.setOnline(t, uidU, true)
	b.setOnline(t, uidV, true)
	a.edit(t, uidU, uidV)
	for _, f := range []*frontend{a, b, cc} {
		f.naming(t, uidV, uidU)
	}
	// A notice for V goes to b, which holds V; c drops it, a skips its own.
	waitFor(t, "a to see V online on b", func() bool {
		a.bus.p.mu.Lock()
		defer a.bus.p.mu.Unlock()
		return a.bus.p.elsewhereLocked(uidV)
	})
	if err := a.bus.Notify(uidV, uidU, 1); err != nil {
		t.Fatal(err)
	}
	if p := nextNotice(t, b); p != (presenceNote{uidV, uidU, 1}) {
		t.Fatalf("b got %+v", p)
	}
	// A notice for a user online nowhere else is not sent at all.
	if err := a.bus.Notify(uidW, uidU, 1); err != nil {
		t.Fatal(err)
	}

	a.setOnline(t, uidU, false)
	want := goneNote{uidU, "[" + uidV + "]"}
	for _, f := range []*frontend{a, b, cc} {
		if g := nextGone(t, f); g != want {
			t.Fatalf("%s: gone %+v, want %+v", f.name, g, want)
		}
		f.naming(t, uidV)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	waitFor(t, "U's list deleted", func() bool {
		v, _, err := b.bus.lastValue(ctx, b.bus.p.ohiStream, b.bus.p.ohi.Bucket(), encode(uidU))
		return err == nil && v == nil
	})
	for _, f := range []*frontend{a, cc} {
		select {
		case p := <-f.presence:
			t.Fatalf("%s got notice %+v", f.name, p)
		default:
		}
	}
}

// TestPresenceSeveralFrontends: U online on a and b stays online until
// its last frontend lets it go.
func TestPresenceSeveralFrontends(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)

	a.setOnline(t, uidU, true)
	b.setOnline(t, uidU, true)
	b.edit(t, uidU, uidV)
	a.naming(t, uidV, uidU)
	a.setOnline(t, uidU, false)
	// b's view of a has U gone once a's announcement is in: a later
	// announcement of a (W) marks the point.
	a.setOnline(t, uidW, true)
	waitFor(t, "b to see W online on a", func() bool {
		b.bus.p.mu.Lock()
		defer b.bus.p.mu.Unlock()
		return b.bus.p.elsewhereLocked(uidW)
	})
	noGone(t, a)
	noGone(t, b)
	a.naming(t, uidV, uidU)
	b.naming(t, uidV, uidU)

	b.setOnline(t, uidU, false)
	for _, f := range []*frontend{a, b} {
		if g := nextGone(t, f); g.uid != uidU {
			t.Fatalf("%s: gone %+v", f.name, g)
		}
	}
}

// TestPresenceSnapshotAtStart: a frontend started after others learns at
// start who is online where (a snapshot of each) and the lists, and follows
// the announcements from then on.
func TestPresenceSnapshotAtStart(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	a.setOnline(t, uidU, true)
	a.edit(t, uidU, uidV)
	late := startFrontend(t, c, "fe.late", testTTL)
	// U's announcement went out before late started: only the snapshot
	// can tell late that U is online.
	late.naming(t, uidV, uidU)
	a.setOnline(t, uidU, false)
	if g := nextGone(t, late); g.uid != uidU {
		t.Fatalf("gone %+v", g)
	}
}

// TestPresenceFrontendDies: a frontend holding U dies without a word; once
// its liveness key expires, the others report U gone with its list.
func TestPresenceFrontendDies(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	a.setOnline(t, uidU, true)
	a.edit(t, uidU, uidV)
	b.naming(t, uidV, uidU)
	killed := time.Now()
	a.kill()
	g := nextGone(t, b)
	if g != (goneNote{uidU, "[" + uidV + "]"}) {
		t.Fatalf("gone %+v", g)
	}
	took := time.Since(killed)
	if took > testTTL+expirySlack+2*testTTL/renewDivisor+time.Second {
		t.Errorf("U gone %s after its frontend died, TTL %s", took, testTTL)
	}
	t.Logf("U gone %s after its frontend died (TTL %s)", took.Round(time.Millisecond), testTTL)
	b.naming(t, uidV)
}

// TestPresenceBadInput: announcements, notices and lists that do not
// parse are dropped; a forged frontend that skips a sequence number is
// resynced, found without a liveness key and dropped, its users gone.
func TestPresenceBadInput(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	raw := c.Connect(t)
	announce := func(uidTok, data string, hdr map[string]string) {
		t.Helper()
		m := nats.NewMsg(DefaultPrefix + ".user." + uidTok)
		for k, v := range hdr {
			m.Header.Set(k, v)
		}
		m.Data = []byte(data)
		if err := raw.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	good := func(seq string) map[string]string {
		return map[string]string{frontendHeader: "fe.x", instanceHeader: "i1", incHeader: "inc1", seqHeader: seq}
	}
	announce("!!", statusOnline, good("1"))                   // bad uid
	announce(encode(uidU), "yes", good("1"))                  // bad status
	announce(encode(uidU), statusOnline, good("0"))           // bad sequence
	announce(encode(uidU), statusOnline, good("x"))           // bad sequence
	announce(encode(uidU), statusOnline, map[string]string{}) // no headers
	for _, m := range []*nats.Msg{
		{Subject: DefaultPrefix + ".ohi.!!", Data: []byte("1 " + encode(uidU))},
		{Subject: DefaultPrefix + ".ohi." + encode(uidV), Data: []byte("online")},
		{Subject: DefaultPrefix + ".ohi." + encode(uidV), Data: []byte("1 !!")},
	} {
		if err := raw.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	// A list that does not parse is ignored, and overwritten by an edit.
	if _, err := b.bus.p.ohi.Put(context.Background(), encode(uidW), []byte("{not a list")); err != nil {
		t.Fatal(err)
	}
	b.setOnline(t, uidW, true)
	b.edit(t, uidW, uidV)
	a.naming(t, uidV, uidW)

	// The forged frontend's first word counts; its third, after a gap,
	// starts a snapshot that finds it dead.
	announce(encode(uidU), statusOnline, good("1"))
	waitFor(t, "b to see U online on fe.x", func() bool {
		b.bus.p.mu.Lock()
		defer b.bus.p.mu.Unlock()
		return b.bus.p.elsewhereLocked(uidU)
	})
	b.setOnline(t, uidV, true)
	if err := a.bus.Edit(context.Background(), uidU, func(l map[string]bool) { l[uidV] = true }); err != nil {
		t.Fatal(err)
	}
	b.naming(t, uidV, uidU, uidW)
	announce(encode(uidW), statusOnline, good("3"))
	for {
		g := nextGone(t, b)
		if g.uid == uidU {
			if g.list != "["+uidV+"]" {
				t.Fatalf("gone %+v", g)
			}
			break
		}
	}
	b.naming(t, uidV, uidW)
	// The good notice after the bad ones arrives.
	waitFor(t, "a to see V online on b", func() bool {
		a.bus.p.mu.Lock()
		defer a.bus.p.mu.Unlock()
		return a.bus.p.elsewhereLocked(uidV)
	})
	if err := a.bus.Notify(uidV, uidW, 2); err != nil {
		t.Fatal(err)
	}
	if p := nextNotice(t, b); p != (presenceNote{uidV, uidW, 2}) {
		t.Fatalf("b got %+v", p)
	}
	// Bad names and an overlong list are refused.
	if err := a.bus.SetOnline("", true); !errors.Is(err, ErrBadName) {
		t.Fatalf("set online of an empty uid: %v", err)
	}
	if err := a.bus.Notify("", uidU, 1); !errors.Is(err, ErrBadName) {
		t.Fatalf("notify of an empty uid: %v", err)
	}
	err := a.bus.Edit(context.Background(), uidU, func(l map[string]bool) {
		for i := range maxListLen + 1 {
			l[encode(string(rune(i+0x100)))] = true
		}
	})
	if !errors.Is(err, ErrListTooLong) {
		t.Fatalf("overlong list: %v", err)
	}
}

package main

// The user database's side of the "away" extension (Protocol.md,
// Extensions): last logins, kept to awayGranularity, and the away mark,
// with a fake clock.

import (
	"slices"
	"testing"
	"time"

	"mnm/qlib"
)

// fakeNow is a clock a test moves by hand.
type fakeNow struct{ t time.Time }

func (c *fakeNow) Now() time.Time { return c.t }

// udbRev returns the revision of uid's record: how many writes it has had.
func udbRev(db *UserDB, uid string) uint64 {
	_, rec := db.lookup(uid)
	return rec.Rev
}

// TestUserDBAwayLastLogin: with a policy, a login writes the device's last
// login only when it moved by awayGranularity or more; without one, logins
// write nothing.
func TestUserDBAwayLastLogin(t *testing.T) {
	clock := &fakeNow{time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	db, _ := udbOpen(t, t.TempDir(), func(o *UserDBOptions) { o.Now, o.AwayAfter = clock.Now, 30*24*time.Hour })
	uid, node, dev := udbRegister(t, db, "laptop")
	rev := udbRev(db, uid)
	udbLogin(t, db, uid, node, dev) // the first: no time stored yet
	if udbRev(db, uid) != rev+1 {
		t.Fatalf("first login: rev %d, want %d", udbRev(db, uid), rev+1)
	}
	clock.t = clock.t.Add(awayGranularity - time.Second)
	udbLogin(t, db, uid, node, dev)
	if udbRev(db, uid) != rev+1 {
		t.Fatal("a login within the granularity wrote the record")
	}
	clock.t = clock.t.Add(time.Second)
	udbLogin(t, db, uid, node, dev)
	if _, rec := db.lookup(uid); rec.Rev != rev+2 || !rec.Devices[0].LastLogin.Equal(clock.t) {
		t.Fatalf("a login a day later: rev %d, last login %v", rec.Rev, rec.Devices[0].LastLogin)
	}

	off, _ := udbOpen(t, t.TempDir(), func(o *UserDBOptions) { o.Now = clock.Now })
	uid, node, dev = udbRegister(t, off, "laptop")
	rev = udbRev(off, uid)
	udbLogin(t, off, uid, node, dev)
	if udbRev(off, uid) != rev {
		t.Fatal("a login without a policy wrote the record")
	}
	if due := off.AwayDue(clock.t.Add(100 * 365 * 24 * time.Hour)); due != nil {
		t.Fatalf("due without a policy: %v", due)
	}
	if _, _, _, ok, err := off.MarkAway(dev, clock.t.Add(100*365*24*time.Hour)); ok || err != nil {
		t.Fatalf("marked without a policy: %v, %v", ok, err)
	}
}

// TestUserDBAwayMark: a device is due once the policy's period has passed
// since its last login (or its creation); MarkAway marks it durably and
// names the member's other devices; a second mark, a device not due and an
// unknown one change nothing; a login clears the mark and makes it not due.
func TestUserDBAwayMark(t *testing.T) {
	dir := t.TempDir()
	const period = 10 * 24 * time.Hour
	clock := &fakeNow{time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	opts := func(o *UserDBOptions) { o.Now, o.AwayAfter = clock.Now, period }
	db, _ := udbOpen(t, dir, opts)
	uid, node, dev := udbRegister(t, db, "laptop")
	phoneNode, phone, err := db.AddDevice(uid, "phone")
	if err != nil {
		t.Fatal(err)
	}
	_, tablet, err := db.AddDevice(uid, "tablet")
	if err != nil {
		t.Fatal(err)
	}
	start := clock.t
	clock.t = start.Add(5 * 24 * time.Hour)
	udbLogin(t, db, uid, node, dev) // the laptop is used; phone and tablet are not

	if due := db.AwayDue(start.Add(period - time.Second)); len(due) != 0 {
		t.Fatalf("due early: %v", due)
	}
	now := start.Add(period)
	if due := db.AwayDue(now); !slices.Equal(due, []string{phone, tablet}) {
		t.Fatalf("due %v, want phone and tablet", due)
	}
	if _, _, _, ok, err := db.MarkAway(dev, now); ok || err != nil {
		t.Fatalf("the laptop, not due, marked: %v, %v", ok, err)
	}
	for _, bad := range []string{"nobody.0", uid + ".9", uid, uid + ".x"} {
		if _, _, _, ok, err := db.MarkAway(bad, now); ok || err != nil {
			t.Fatalf("MarkAway(%q): %v, %v", bad, ok, err)
		}
	}
	num, label, others, ok, err := db.MarkAway(tablet, now)
	if err != nil || !ok || num != "2" || label != "tablet" || !slices.Equal(others, []string{dev, phone}) {
		t.Fatalf("MarkAway(tablet) = %q, %q, %v, %v, %v", num, label, others, ok, err)
	}
	num, _, others, ok, err = db.MarkAway(phone, now)
	if err != nil || !ok || num != "1" || !slices.Equal(others, []string{dev}) { // the tablet is away: not told
		t.Fatalf("MarkAway(phone) = %q, %v, %v, %v", num, others, ok, err)
	}
	if _, _, _, ok, _ := db.MarkAway(phone, now); ok {
		t.Fatal("marked twice")
	}

	// The marks survive a reopen; away devices are live and log in.
	db.Close()
	db, _ = udbOpen(t, dir, opts)
	if due := db.AwayDue(now.Add(period)); !slices.Equal(due, []string{dev}) {
		t.Fatalf("after a reopen due %v, want the laptop only", due)
	}
	if devs, err := db.Devices(uid); err != nil || len(devs) != 3 {
		t.Fatalf("away devices not live: %v, %v", devs, err)
	}
	clock.t = now.Add(time.Hour)
	udbLogin(t, db, uid, phoneNode, phone)
	_, rec := db.lookup(uid)
	if rec.Devices[1].Away || !rec.Devices[2].Away {
		t.Fatal("the login cleared the wrong mark")
	}
	if due := db.AwayDue(clock.t.Add(period - time.Second)); slices.Contains(due, phone) {
		t.Fatal("a device just logged in is due")
	}
	if _, _, _, ok, _ := db.MarkAway(phone, now.Add(period)); ok {
		t.Fatal("a login before the mark did not stop it")
	}
	if _, err := db.Login(uid, make([]byte, nodeidBytes)); err != qlib.ErrLoginFailed {
		t.Fatalf("a wrong nodeid: %v", err)
	}
}

// TestUserDBAwayCountsFromOpen: a device without a stored last login
// (created before the policy, or imported) counts from the opening of the
// database, not from its creation, so turning the policy on drops nothing
// for a whole period.
func TestUserDBAwayCountsFromOpen(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeNow{time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	db, _ := udbOpen(t, dir, func(o *UserDBOptions) { o.Now = clock.Now })
	_, _, dev := udbRegister(t, db, "laptop")
	db.Close()
	clock.t = clock.t.Add(365 * 24 * time.Hour)
	const period = 24 * time.Hour
	db, _ = udbOpen(t, dir, func(o *UserDBOptions) { o.Now, o.AwayAfter = clock.Now, period })
	if due := db.AwayDue(clock.t.Add(period - time.Second)); len(due) != 0 {
		t.Fatalf("due from its creation: %v", due)
	}
	if due := db.AwayDue(clock.t.Add(period)); !slices.Equal(due, []string{dev}) {
		t.Fatalf("due %v a period after the open", due)
	}
}

// TestUserDBPowerLossAway: the away mark is a whole durable write.
func TestUserDBPowerLossAway(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		db.awayAfter = time.Hour // the crash harness opens without options
		_, _, _, ok, err := db.MarkAway("u100001.0", time.Now().Add(2*time.Hour))
		if err == nil && !ok {
			t.Fatal("not marked")
		}
		return err
	}, func(t *testing.T, db *UserDB) bool {
		_, rec := db.lookup("u100001")
		if rec == nil {
			t.Fatal("the user is gone")
		}
		return rec.Devices[0].Away
	})
}

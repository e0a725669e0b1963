package main

// The user database's side of the "opengroup" extension (Protocol.md,
// Extensions): opening and closing a group, joins without invitation, and
// posts from users the group does not list.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mnm/qlib"
)

func TestUserDBOpenGroup(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	c := udbUser(t, db, "carol c1")
	x := udbUser(t, db, "xavier x1", "xavier x2")
	y := udbUser(t, db, "yolanda y1")
	const gid = "the open club"
	type gc = qlib.GroupChange
	if _, err := db.GroupInvite(a, gid, "alice one", "bob smith"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupInvite(a, gid, "alice one", "carol c1"); err != nil {
		t.Fatal(err)
	}

	// Closed, as every group starts: no join, no post from outside.
	if _, err := db.GroupEdit(x, qlib.GroupJoin, gid, "xavier x1", ""); err != qlib.ErrNotInvited {
		t.Errorf("join of a closed group = %v, want ErrNotInvited", err)
	}
	// Only a joined member opens or closes, an invited one no more than a
	// stranger; and only a group that exists.
	for _, act := range []qlib.GroupAct{qlib.GroupOpen, qlib.GroupOpenPost, qlib.GroupClose} {
		for _, uid := range []string{x, b} {
			if _, err := db.GroupEdit(uid, act, gid, "", ""); err != qlib.ErrNotMember {
				t.Errorf("%s by %s = %v, want ErrNotMember", act, uid, err)
			}
		}
		if _, err := db.GroupEdit(a, act, "no such group", "", ""); err != qlib.ErrNoGroup {
			t.Errorf("%s of no group = %v, want ErrNoGroup", act, err)
		}
	}

	rev := udbGroupRev(db, gid)
	ch, err := db.GroupEdit(a, qlib.GroupOpen, gid, "", "")
	udbWantChange(t, "open", ch, err, gc{Alias: "alice one", Notify: []string{a}})
	if udbGroupRev(db, gid) != rev+1 {
		t.Error("opening did not write the record")
	}
	ch, err = db.GroupEdit(a, qlib.GroupOpen, gid, "", "")
	udbWantChange(t, "open again", ch, err, gc{Alias: "alice one", Notify: []string{a}})
	if udbGroupRev(db, gid) != rev+1 {
		t.Error("a repeated open rewrote the record")
	}
	if _, err := db.GroupMembers(y, gid); err != qlib.ErrNotMember {
		t.Errorf("post from outside an open group = %v, want ErrNotMember", err)
	}

	// A stranger joins under an alias of its own, which it must give.
	if _, err := db.GroupEdit(x, qlib.GroupJoin, gid, "", ""); err != qlib.ErrJoinAlias {
		t.Errorf("join without alias = %v, want ErrJoinAlias", err)
	}
	if _, err := db.GroupEdit(x, qlib.GroupJoin, gid, "alice one", ""); err != qlib.ErrNewAliasNotOwn {
		t.Errorf("join under another's alias = %v, want ErrNewAliasNotOwn", err)
	}
	ch, err = db.GroupEdit(x, qlib.GroupJoin, gid, "xavier x2", "")
	udbWantChange(t, "subscription", ch, err, gc{Alias: "xavier x2", Notify: []string{a, x}})
	if m := udbMember(t, db, gid, x); m.Alias != "xavier x2" || m.Status != memberJoined {
		t.Errorf("subscriber listed as %+v", m)
	}
	if _, err := db.GroupEdit(x, qlib.GroupJoin, gid, "xavier x1", ""); err != qlib.ErrNotInvited {
		t.Errorf("joining twice = %v, want ErrNotInvited", err)
	}
	// It leaves as any member does, and may join again while it is open.
	ch, err = db.GroupEdit(x, qlib.GroupDrop, gid, "", "xavier x2")
	udbWantChange(t, "subscriber leaves", ch, err, gc{Alias: "xavier x2", Notify: []string{a, x}})
	ch, err = db.GroupEdit(x, qlib.GroupJoin, gid, "", "")
	udbWantChange(t, "subscriber back", ch, err, gc{Alias: "xavier x2", Notify: []string{a, x}})

	// A barred member stays barred: it cannot join, nor post.
	ch, err = db.GroupEdit(a, qlib.GroupDrop, gid, "", "carol c1")
	udbWantChange(t, "bar carol", ch, err, gc{Alias: "carol c1", Notify: []string{a, x, c}})
	if _, err := db.GroupEdit(c, qlib.GroupJoin, gid, "carol c1", ""); err != qlib.ErrNotInvited {
		t.Errorf("barred join = %v, want ErrNotInvited", err)
	}

	// Open for posting: an outsider's post reaches the joined members; a
	// barred member's is refused still.
	ch, err = db.GroupEdit(x, qlib.GroupOpenPost, gid, "", "")
	udbWantChange(t, "open for posting", ch, err, gc{Alias: "xavier x2", Notify: []string{a, x}})
	udbWantMembers(t, db, y, gid, a, x)
	if _, err := db.GroupMembers(c, gid); err != qlib.ErrNotMember {
		t.Errorf("barred post = %v, want ErrNotMember", err)
	}
	db.Close()

	// Both flags survive a reopen, in the record as written.
	db, _ = udbOpen(t, dir)
	udbWantMembers(t, db, y, gid, a, x)
	if rec := db.groups[gid].rec.Load(); !rec.Open || !rec.OpenPost {
		t.Errorf("reopened as open %v, post %v", rec.Open, rec.OpenPost)
	}
	ch, err = db.GroupEdit(a, qlib.GroupOpen, gid, "", "")
	udbWantChange(t, "open without posting", ch, err, gc{Alias: "alice one", Notify: []string{a, x}})
	if _, err := db.GroupMembers(y, gid); err != qlib.ErrNotMember {
		t.Errorf("post after posting closed = %v, want ErrNotMember", err)
	}
	ch, err = db.GroupEdit(a, qlib.GroupClose, gid, "", "")
	udbWantChange(t, "close", ch, err, gc{Alias: "alice one", Notify: []string{a, x}})
	db.Close()

	db, _ = udbOpen(t, dir)
	if _, err := db.GroupEdit(y, qlib.GroupJoin, gid, "yolanda y1", ""); err != qlib.ErrNotInvited {
		t.Errorf("join after close and reopen = %v, want ErrNotInvited", err)
	}
	// The subscriber stays a member of the closed group.
	udbWantMembers(t, db, x, gid, a, x)
	// A closed group's record is as one written before the extension.
	data, err := os.ReadFile(filepath.Join(dir, groupSubdir, groupFileStem(gid)+recordSuffix))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), `"open`) {
		t.Errorf("closed group record holds open flags:\n%s", data)
	}
}

// TestUserDBOpenGroupFull: a subscription counts against the bound on a
// group's member list like an invitation.
func TestUserDBOpenGroupFull(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir(), func(o *UserDBOptions) { o.MaxGroupMembers = 2 })
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	x := udbUser(t, db, "xavier x1")
	const gid = "the small club"
	if _, err := db.GroupInvite(a, gid, "alice one", "bob smith"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupEdit(a, qlib.GroupOpen, gid, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupEdit(x, qlib.GroupJoin, gid, "xavier x1", ""); err != qlib.ErrGroupFull {
		t.Errorf("join of a full group = %v, want ErrGroupFull", err)
	}
	// The invited member still joins.
	if _, err := db.GroupEdit(b, qlib.GroupJoin, gid, "", ""); err != nil {
		t.Errorf("invited join of a full group: %v", err)
	}
}

// TestUserDBPowerLossOpenGroup: a group being opened for posting is open
// with both flags or closed, never half.
func TestUserDBPowerLossOpenGroup(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		_, err := db.GroupEdit("u100001", qlib.GroupOpenPost, "the crash group", "", "")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		_, err := db.GroupMembers("u100003", "the crash group")
		rec := db.groups["the crash group"].rec.Load()
		switch {
		case err == qlib.ErrNotMember && !rec.Open && !rec.OpenPost:
			return false
		case err == nil && rec.Open && rec.OpenPost:
			return true
		default:
			t.Errorf("open %v, post %v, outsider's post %v: neither the old record nor the new", rec.Open, rec.OpenPost, err)
		}
		return false
	})
}

// TestUserDBPowerLossSubscribe: a stranger joining an open group is joined
// or not listed at all.
func TestUserDBPowerLossSubscribe(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		if _, err := db.CreateFixture("u100003", []string{"tablet"}, []string{"third member"}); err != nil {
			return err
		}
		if _, err := db.GroupEdit("u100001", qlib.GroupOpen, "the crash group", "", ""); err != nil {
			return err
		}
		_, err := db.GroupEdit("u100003", qlib.GroupJoin, "the crash group", "third member", "")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		joined, err := db.GroupMembers("u100001", "the crash group")
		switch {
		case err != nil:
			t.Errorf("the group is gone: %v", err)
		case slices.Equal(joined, []string{"u100001", "u100003"}):
			return true
		case slices.Equal(joined, []string{"u100001"}):
			if i := db.groups["the crash group"].rec.Load().member("u100003"); i >= 0 {
				t.Errorf("the stranger is listed but not joined")
			}
			return false
		default:
			t.Errorf("joined %q: neither the old record nor the new", joined)
		}
		return false
	})
}

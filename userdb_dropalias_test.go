package main

// Withdrawing a regular alias (the "dropalias" extension) in the user
// database: the groups relisted, the alias reserved for everyone, the last
// alias kept, persistence, a race with renames, and power loss at every cut
// of the multi-record change.

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"mnm/qlib"
)

// udbListedAs returns the alias gid lists uid under, or "" if it does not.
func udbListedAs(t *testing.T, db *UserDB, gid, uid string) string {
	t.Helper()
	db.mu.RLock()
	g := db.groups[gid]
	db.mu.RUnlock()
	if g == nil {
		t.Fatalf("group %q is gone", gid)
	}
	rec := g.rec.Load()
	if i := rec.member(uid); i >= 0 {
		return rec.Members[i].Alias
	}
	return ""
}

func TestUserDBDropAlias(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	udbOnceSetup(t, db) // u100001 "first member", u100002 "second member"
	for _, a := range []string{"first spare", "first third"} {
		if err := db.AddAlias("u100001", a); err != nil {
			t.Fatal(err)
		}
	}
	// g one: created by u100001 as "first member"; g two: u100001
	// invited as "first member" and joined; g three: listed as "first third".
	steps := []func() error{
		func() error {
			_, err := db.GroupInvite("u100001", "group one", "first member", "second member")
			return err
		},
		func() error {
			_, err := db.GroupInvite("u100002", "group two", "second member", "first member")
			return err
		},
		func() error { _, err := db.GroupEdit("u100001", qlib.GroupJoin, "group two", "", ""); return err },
		func() error {
			_, err := db.GroupInvite("u100002", "group three", "second member", "first third")
			return err
		},
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}

	for _, c := range []struct {
		uid, alias string
		want       error
	}{
		{"u100002", "first member", qlib.ErrAliasUnknown}, // another's
		{"u100001", "never existed", qlib.ErrAliasUnknown},
		{"u100001", "group one", qlib.ErrAliasUnknown}, // a gid
		{"u100002", "second member", qlib.ErrLastAlias},
		{"nobody", "first member", qlib.ErrAliasUnknown},
	} {
		if _, err := db.DropAlias(c.uid, c.alias); !errors.Is(err, c.want) {
			t.Errorf("DropAlias(%s, %q) = %v, want %v", c.uid, c.alias, err, c.want)
		}
	}

	moves, err := db.DropAlias("u100001", "first member")
	if err != nil {
		t.Fatal(err)
	}
	want := []qlib.AliasMove{
		{Gid: "group one", Alias: "first member", NewAlias: "first spare", Notify: []string{"u100001"}},
		{Gid: "group two", Alias: "first member", NewAlias: "first spare", Notify: []string{"u100002", "u100001"}},
	}
	if !slices.EqualFunc(moves, want, func(a, b qlib.AliasMove) bool {
		return a.Gid == b.Gid && a.Alias == b.Alias && a.NewAlias == b.NewAlias && slices.Equal(a.Notify, b.Notify)
	}) {
		t.Errorf("moves %+v, want %+v", moves, want)
	}

	check := func(db *UserDB) {
		t.Helper()
		for gid, as := range map[string]string{"group one": "first spare", "group two": "first spare", "group three": "first third"} {
			if got := udbListedAs(t, db, gid, "u100001"); got != as {
				t.Errorf("%s lists u100001 as %q, want %q", gid, got, as)
			}
		}
		if got, _ := db.Aliases("u100001"); !slices.Equal(got, []string{"first spare", "first third"}) {
			t.Errorf("aliases %q", got)
		}
		if _, ok := db.AliasUID("first member"); ok {
			t.Error("the withdrawn alias resolves as a sender")
		}
		if _, _, ok := db.RecipientUID("first member"); ok {
			t.Error("the withdrawn alias resolves as a recipient")
		}
		// Reserved for everyone, its owner included, as alias, single-use
		// alias or gid.
		for _, uid := range []string{"u100001", "u100002"} {
			if err := db.AddAlias(uid, "first member"); !errors.Is(err, qlib.ErrAliasTaken) {
				t.Errorf("AddAlias(%s) = %v", uid, err)
			}
			if err := db.AddOnceAlias(uid, "first member"); !errors.Is(err, qlib.ErrAliasTaken) {
				t.Errorf("AddOnceAlias(%s) = %v", uid, err)
			}
		}
		if _, err := db.GroupInvite("u100002", "first member", "second member", "first spare"); !errors.Is(err, qlib.ErrGidTaken) {
			t.Errorf("gid claim: %v", err)
		}
		if _, err := db.DropAlias("u100001", "first member"); !errors.Is(err, qlib.ErrAliasUnknown) {
			t.Errorf("dropped again: %v", err)
		}
		// Nobody can be listed under it.
		if _, err := db.GroupEdit("u100001", qlib.GroupAlias, "group one", "first member", ""); !errors.Is(err, qlib.ErrNewAliasNotOwn) {
			t.Errorf("rename to the withdrawn alias: %v", err)
		}
		if _, err := db.GroupInvite("u100002", "group three", "second member", "first member"); !errors.Is(err, qlib.ErrAliasUnknown) {
			t.Errorf("invite to the withdrawn alias: %v", err)
		}
	}
	check(db)
	db.Close()
	again, _ := udbOpen(t, dir)
	check(again)

	// Down to the last alias, which stays.
	if _, err := again.DropAlias("u100001", "first third"); err != nil {
		t.Fatal(err)
	}
	if got := udbListedAs(t, again, "group three", "u100001"); got != "first spare" {
		t.Errorf("group three lists %q", got)
	}
	if _, err := again.DropAlias("u100001", "first spare"); !errors.Is(err, qlib.ErrLastAlias) {
		t.Errorf("last alias: %v", err)
	}
}

// TestUserDBDropAliasRace: renames to the alias being withdrawn, and
// invitations to it, race the withdrawal; afterwards no group lists it.
func TestUserDBDropAliasRace(t *testing.T) {
	for round := range 20 {
		db, _ := udbOpen(t, t.TempDir())
		udbOnceSetup(t, db)
		if err := db.AddAlias("u100001", "first spare"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.GroupInvite("u100001", "group one", "first spare", "second member"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.GroupInvite("u100002", "group two", "second member", "first spare"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for range 20 {
				db.GroupEdit("u100001", qlib.GroupAlias, "group one", "first member", "")
				db.GroupEdit("u100001", qlib.GroupAlias, "group one", "first spare", "")
			}
		})
		wg.Go(func() {
			for range 20 {
				db.GroupInvite("u100002", "group two", "second member", "first member")
				db.GroupInvite("u100002", "group two", "second member", "first spare")
			}
		})
		wg.Go(func() {
			if _, err := db.DropAlias("u100001", "first member"); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		for _, gid := range []string{"group one", "group two"} {
			if got := udbListedAs(t, db, gid, "u100001"); got != "first spare" {
				t.Fatalf("round %d: %s lists u100001 as %q", round, gid, got)
			}
		}
	}
}

// TestUserDBPowerLossDropAlias: a second alias added, a second group listing
// the member, then the first alias withdrawn (two group writes and a user
// write); at every cut no group lists a retired alias and the member stays
// listed in every group it was in.
func TestUserDBPowerLossDropAlias(t *testing.T) {
	groups := []string{"the crash group", "second crash group"}
	udbCrashEveryCut(t, func(db *UserDB) error {
		if err := db.AddAlias("u100001", "crash spare"); err != nil {
			return err
		}
		if _, err := db.GroupInvite("u100002", groups[1], "second member", "first member"); err != nil {
			return err
		}
		_, err := db.DropAlias("u100001", "first member")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		aliases, err := db.Aliases("u100001")
		if err != nil {
			t.Fatalf("the user is gone: %v", err)
		}
		for _, gid := range groups {
			db.mu.RLock()
			g := db.groups[gid]
			db.mu.RUnlock()
			if g == nil {
				continue // not created yet
			}
			as := udbListedAs(t, db, gid, "u100001")
			if !slices.Contains(aliases, as) {
				t.Errorf("%s lists u100001 as %q, not one of its aliases %q", gid, as, aliases)
			}
		}
		switch {
		case slices.Equal(aliases, []string{"crash spare"}):
			if _, _, ok := db.RecipientUID("first member"); ok {
				t.Error("the withdrawn alias resolves")
			}
			if err := db.AddAlias("u100002", "first member"); !errors.Is(err, qlib.ErrAliasTaken) {
				t.Errorf("the withdrawn alias is free: %v", err)
			}
			return true
		case aliases[0] == "first member":
			if owner, ok := db.AliasUID("first member"); !ok || owner != "u100001" {
				t.Errorf("the alias kept resolves to %q, %v", owner, ok)
			}
		default:
			t.Errorf("aliases %q", aliases)
		}
		return false
	})
}

package main

// The single-use aliases of the "aliasonce" extension in the user database:
// the rules, the bounds, the race of two users, persistence, and power loss
// in each of their writes.

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"mnm/qlib"
)

// udbOnceSetup makes two fixture users, each with an alias.
func udbOnceSetup(t *testing.T, db *UserDB) {
	t.Helper()
	for _, u := range [][2]string{{"u100001", "first member"}, {"u100002", "second member"}} {
		if _, err := db.CreateFixture(u[0], []string{"laptop"}, []string{u[1]}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUserDBOnceAliases(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	udbOnceSetup(t, db)

	for _, c := range []struct {
		alias string
		want  error
	}{
		{"short", qlib.ErrAliasShort},
		{"tab\there!", qlib.ErrAliasInvalid},
		{"first member", qlib.ErrAliasTaken},  // its own regular alias
		{"second member", qlib.ErrAliasTaken}, // another's
	} {
		if err := db.AddOnceAlias("u100001", c.alias); !errors.Is(err, c.want) {
			t.Errorf("AddOnceAlias(%q) = %v, want %v", c.alias, err, c.want)
		}
	}
	if err := db.AddOnceAlias("nobody", "a fine alias"); !errors.Is(err, qlib.ErrNoUser) {
		t.Errorf("unknown user: %v", err)
	}
	for _, a := range []string{"zulu single", "alpha single", "zulu single"} {
		if err := db.AddOnceAlias("u100001", a); err != nil {
			t.Fatalf("AddOnceAlias(%q): %v", a, err)
		}
	}
	if got, _ := db.OnceAliases("u100001"); !slices.Equal(got, []string{"alpha single", "zulu single"}) {
		t.Fatalf("OnceAliases = %q", got)
	}
	// Not an alias to send from, nor a regular alias to claim.
	if _, ok := db.AliasUID("alpha single"); ok {
		t.Error("AliasUID resolves a single-use alias")
	}
	for _, uid := range []string{"u100001", "u100002"} {
		if err := db.AddAlias(uid, "alpha single"); !errors.Is(err, qlib.ErrAliasTaken) {
			t.Errorf("AddAlias of a single-use alias by %s: %v", uid, err)
		}
	}
	if uid, once, ok := db.RecipientUID("alpha single"); uid != "u100001" || !once || !ok {
		t.Fatalf("RecipientUID = %q %v %v", uid, once, ok)
	}
	if uid, once, ok := db.RecipientUID("first member"); uid != "u100001" || once || !ok {
		t.Fatalf("RecipientUID of an alias = %q %v %v", uid, once, ok)
	}

	// Use: once.
	if uid, err := db.UseAlias("alpha single"); err != nil || uid != "u100001" {
		t.Fatalf("UseAlias = %q, %v", uid, err)
	}
	for _, a := range []string{"alpha single", "first member", "never existed"} {
		if _, err := db.UseAlias(a); !errors.Is(err, qlib.ErrAliasUnknown) {
			t.Errorf("UseAlias(%q) = %v, want ErrAliasUnknown", a, err)
		}
	}
	if _, _, ok := db.RecipientUID("alpha single"); ok {
		t.Error("a used alias resolves")
	}
	// The check under the owner's write lock, which decides a race whose
	// racers all read the index before the winner changed it.
	if err := db.spendOnce("u100001", "alpha single"); !errors.Is(err, qlib.ErrAliasUnknown) {
		t.Errorf("spending a spent alias: %v", err)
	}
	// Drop.
	for _, c := range []struct {
		uid, alias string
		want       error
	}{
		{"u100001", "first member", qlib.ErrNotOnceAlias},
		{"u100001", "alpha single", qlib.ErrAliasUnknown}, // used
		{"u100002", "zulu single", qlib.ErrAliasUnknown},  // another's
		{"u100001", "never existed", qlib.ErrAliasUnknown},
		{"nobody", "zulu single", qlib.ErrAliasUnknown},
	} {
		if err := db.DropOnceAlias(c.uid, c.alias); !errors.Is(err, c.want) {
			t.Errorf("DropOnceAlias(%s, %q) = %v, want %v", c.uid, c.alias, err, c.want)
		}
	}
	if err := db.DropOnceAlias("u100001", "zulu single"); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.OnceAliases("u100001"); len(got) != 0 {
		t.Errorf("OnceAliases = %q, want none", got)
	}
	check := func(db *UserDB) {
		t.Helper()
		for _, a := range []string{"alpha single", "zulu single"} {
			if _, _, ok := db.RecipientUID(a); ok {
				t.Errorf("%q resolves", a)
			}
			for _, uid := range []string{"u100001", "u100002"} {
				if err := db.AddAlias(uid, a); !errors.Is(err, qlib.ErrAliasTaken) {
					t.Errorf("AddAlias(%s, %q) = %v, want taken", uid, a, err)
				}
				if err := db.AddOnceAlias(uid, a); !errors.Is(err, qlib.ErrAliasTaken) {
					t.Errorf("AddOnceAlias(%s, %q) = %v, want taken", uid, a, err)
				}
			}
			if _, err := db.GroupInvite("u100002", a, "second member", "first member"); !errors.Is(err, qlib.ErrGidTaken) {
				t.Errorf("a group named %q: %v", a, err)
			}
		}
	}
	check(db)
	if err := db.AddOnceAlias("u100001", "kept unused"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, _ = udbOpen(t, dir)
	check(db)
	if got, _ := db.OnceAliases("u100001"); !slices.Equal(got, []string{"kept unused"}) {
		t.Fatalf("after reopening OnceAliases = %q", got)
	}
	if uid, once, ok := db.RecipientUID("kept unused"); uid != "u100001" || !once || !ok {
		t.Fatalf("after reopening RecipientUID = %q %v %v", uid, once, ok)
	}
}

func TestUserDBOnceAliasBounds(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	udbOnceSetup(t, db)
	for i := range maxOnceAliases {
		if err := db.AddOnceAlias("u100001", fmt.Sprintf("single %04d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.AddOnceAlias("u100001", "one too many"); !errors.Is(err, qlib.ErrTooManyOnceAliases) {
		t.Fatalf("over the bound: %v", err)
	}
	if err := db.AddAlias("u100001", "regular is apart"); err != nil {
		t.Fatalf("regular alias: %v", err)
	}
	// Spend and replace them until the record holds maxReservedAliases.
	next := maxOnceAliases
	for i := range maxReservedAliases - maxOnceAliases {
		if _, err := db.UseAlias(fmt.Sprintf("single %04d", i)); err != nil {
			t.Fatal(err)
		}
		if err := db.AddOnceAlias("u100001", fmt.Sprintf("single %04d", next)); err != nil {
			t.Fatalf("alias %d: %v", next, err)
		}
		next++
	}
	if err := db.DropOnceAlias("u100001", fmt.Sprintf("single %04d", next-1)); err != nil {
		t.Fatal(err)
	}
	if err := db.AddOnceAlias("u100001", "one too many"); !errors.Is(err, qlib.ErrOnceAliasesUsedUp) {
		t.Fatalf("over the reserved bound: %v", err)
	}
	if got := qlib.ErrOnceAliasesUsedUp.Error(); got != "single-use aliases used up: 1000 reserved" {
		t.Errorf("error text %q", got)
	}
}

// TestUserDBOnceAliasRace: of many concurrent users of one alias, exactly
// one succeeds, whether by a Ping's UseAlias or an invitation.
func TestUserDBOnceAliasRace(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	udbOnceSetup(t, db)
	const racers = 16
	for round := range 5 {
		alias := fmt.Sprintf("race alias %d", round)
		if err := db.AddOnceAlias("u100002", alias); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, racers)
		start := make(chan struct{})
		for i := range racers {
			wg.Go(func() {
				<-start
				if i%2 == 0 {
					_, errs[i] = db.UseAlias(alias)
				} else {
					_, errs[i] = db.GroupInvite("u100001", fmt.Sprintf("race group %d %d", round, i), "first member", alias)
				}
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for i, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, qlib.ErrAliasUnknown):
				t.Fatalf("racer %d: %v", i, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d racers won", round, won)
		}
		// The losers' groups were not created.
		groups := 0
		for i := 1; i < racers; i += 2 {
			if _, err := db.GroupMembers("u100001", fmt.Sprintf("race group %d %d", round, i)); err == nil {
				groups++
			}
		}
		if groups > 1 {
			t.Fatalf("round %d: %d groups created", round, groups)
		}
	}
}

// TestUserDBOnceAliasInviteRefused: an invitation refused by the group
// leaves the single-use alias unused; an accepted one consumes it.
func TestUserDBOnceAliasInviteRefused(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	udbOnceSetup(t, db)
	if err := db.AddOnceAlias("u100002", "for invites"); err != nil {
		t.Fatal(err)
	}
	if err := db.AddOnceAlias("u100001", "own single"); err != nil {
		t.Fatal(err)
	}
	// Into a group it is not a member of, and as its own invitee.
	if _, err := db.GroupInvite("u100002", "created first", "second member", "first member"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupInvite("u100001", "created first", "first member", "for invites"); !errors.Is(err, qlib.ErrNotMember) {
		t.Fatalf("not a member: %v", err)
	}
	if _, err := db.GroupInvite("u100001", "a new group", "first member", "own single"); !errors.Is(err, qlib.ErrAlreadyMember) {
		t.Fatalf("own invitee: %v", err)
	}
	if _, err := db.GroupInvite("u100001", "short", "first member", "for invites"); !errors.Is(err, qlib.ErrGidShort) {
		t.Fatalf("short gid: %v", err)
	}
	if _, err := db.GroupInvite("u100001", "second member", "first member", "for invites"); !errors.Is(err, qlib.ErrGidTaken) {
		t.Fatalf("gid taken: %v", err)
	}
	for uid, a := range map[string]string{"u100002": "for invites", "u100001": "own single"} {
		if got, _ := db.OnceAliases(uid); !slices.Equal(got, []string{a}) {
			t.Fatalf("a refused invitation used %s's alias: %q", uid, got)
		}
	}
	ch, err := db.GroupInvite("u100001", "a new group", "first member", "for invites")
	if err != nil || !ch.Once || ch.Invitee != "u100002" || ch.Alias != "for invites" {
		t.Fatalf("GroupInvite = %+v, %v", ch, err)
	}
	if got, _ := db.OnceAliases("u100002"); len(got) != 0 {
		t.Fatalf("after the invitation: %q", got)
	}
	// The invitee is listed under the spent alias until it joins under
	// one of its own.
	if _, err := db.GroupEdit("u100002", qlib.GroupJoin, "a new group", "second member", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupInvite("u100001", "a new group", "first member", "for invites"); !errors.Is(err, qlib.ErrAliasUnknown) {
		t.Fatalf("second invitation: %v", err)
	}
}

// TestUserDBPowerLossOnceAlias: adding a single-use alias.
func TestUserDBPowerLossOnceAlias(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		return db.AddOnceAlias("u100001", "single use")
	}, func(t *testing.T, db *UserDB) bool {
		once, _ := db.OnceAliases("u100001")
		uid, isOnce, ok := db.RecipientUID("single use")
		switch {
		case len(once) == 0:
			if ok {
				t.Error("the old record is back but the alias resolves")
			}
			return false
		case slices.Equal(once, []string{"single use"}):
			if uid != "u100001" || !isOnce || !ok {
				t.Errorf("the new record is back but the alias resolves to %q %v %v", uid, isOnce, ok)
			}
			return true
		default:
			t.Errorf("single-use aliases %q", once)
		}
		return false
	})
}

// onceState says what became of a single-use alias after a power loss:
// absent, unused or spent (reserved, resolving for nobody).
func onceState(t *testing.T, db *UserDB, uid, alias string) string {
	t.Helper()
	once, _ := db.OnceAliases(uid)
	_, isOnce, ok := db.RecipientUID(alias)
	db.mu.RLock()
	e := db.names[alias]
	db.mu.RUnlock()
	switch {
	case e == nil && len(once) == 0 && !ok:
		return "absent"
	case slices.Equal(once, []string{alias}) && ok && isOnce:
		return "unused"
	case e != nil && e.kind == nameRetired && e.owner == uid && len(once) == 0 && !ok:
		return "spent"
	}
	t.Errorf("alias %q in an impossible state: listed %q, resolves %v %v, index %+v", alias, once, isOnce, ok, e)
	return ""
}

// TestUserDBPowerLossUseAlias: a single-use alias added and used; a crash
// leaves it absent, unused or spent, never half of one.
func TestUserDBPowerLossUseAlias(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		if err := db.AddOnceAlias("u100002", "single use"); err != nil {
			return err
		}
		_, err := db.UseAlias("single use")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		return onceState(t, db, "u100002", "single use") == "spent"
	})
}

// TestUserDBPowerLossInviteOnce: an invitation through a single-use alias
// writes the invitee's record, then the group's: a crash may leave the
// alias spent without the invitation, never the invitation with the alias
// still usable.
func TestUserDBPowerLossInviteOnce(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		if err := db.AddOnceAlias("u100002", "single use"); err != nil {
			return err
		}
		_, err := db.GroupInvite("u100001", "group by once", "first member", "single use")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		state := onceState(t, db, "u100002", "single use")
		_, err := db.GroupMembers("u100001", "group by once")
		switch {
		case err == nil && state != "spent":
			t.Errorf("the group exists but the alias is %s", state)
		case err == nil:
			return true
		case !errors.Is(err, qlib.ErrNoGroup):
			t.Errorf("GroupMembers: %v", err)
		}
		return false
	})
}

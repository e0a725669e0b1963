package main

// Block lists (the "block" extension) in the user database: resolution,
// the rules and bounds, persistence, and power loss in their writes.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"mnm/qlib"
)

// udbBlockSetup makes three fixture users, each with an alias, the third
// with a single-use alias too.
func udbBlockSetup(t *testing.T, db *UserDB) {
	t.Helper()
	for _, u := range [][2]string{{"u100001", "first member"}, {"u100002", "second member"}, {"u100003", "third member"}} {
		if _, err := db.CreateFixture(u[0], []string{"laptop"}, []string{u[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.AddOnceAlias("u100003", "third single"); err != nil {
		t.Fatal(err)
	}
}

func TestUserDBBlock(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	udbBlockSetup(t, db)
	uidForm := strings.Repeat("A", uidChars)
	for _, c := range []struct {
		name string
		want error
	}{
		{"u100001", qlib.ErrBlockSelf},
		{"first member", qlib.ErrBlockSelf},
		{uidForm, qlib.ErrNoUser},
		{"nobody at all", qlib.ErrAliasUnknown},
		{"third single", qlib.ErrAliasUnknown}, // single-use: not an alias
	} {
		if _, _, err := db.Block("u100001", c.name); !errors.Is(err, c.want) {
			t.Errorf("Block(%q) = %v, want %v", c.name, err, c.want)
		}
	}
	if _, _, err := db.Block("nobody", "second member"); !errors.Is(err, qlib.ErrNoUser) {
		t.Errorf("Block by an unknown user: %v", err)
	}

	entry, added, err := db.Block("u100001", "second member")
	if err != nil || !added || entry != "second member" {
		t.Fatalf("Block by alias = %q %v %v", entry, added, err)
	}
	// The same member again, under any name: no change, listed as before.
	for _, name := range []string{"second member", "u100002"} {
		if entry, added, err := db.Block("u100001", name); err != nil || added || entry != "second member" {
			t.Fatalf("Block(%q) again = %q %v %v", name, entry, added, err)
		}
	}
	if _, _, err := db.Block("u100001", "u100003"); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.Blocks("u100001"); !slices.Equal(got, []string{"second member", "u100003"}) {
		t.Fatalf("Blocks = %q", got)
	}
	for _, c := range []struct {
		recipient, sender string
		want              bool
	}{
		{"u100001", "u100002", true},
		{"u100001", "u100003", true},
		{"u100002", "u100001", false}, // not symmetric
		{"u100001", "u100001", false},
		{"nobody", "u100001", false},
		{"u100001", "nobody", false},
		{"../x", "u100002", false},
	} {
		if got := db.Blocked(c.recipient, c.sender); got != c.want {
			t.Errorf("Blocked(%s, %s) = %v", c.recipient, c.sender, got)
		}
	}

	// Persistence, index included.
	db.Close()
	db, _ = udbOpen(t, dir)
	if got, _ := db.Blocks("u100001"); !slices.Equal(got, []string{"second member", "u100003"}) {
		t.Fatalf("after reopening Blocks = %q", got)
	}
	if !db.Blocked("u100001", "u100002") || !db.Blocked("u100001", "u100003") {
		t.Fatal("after reopening the index lost an entry")
	}

	// Unblock by another name of the member, by the listed name, and of
	// what is not blocked.
	if entry, removed, err := db.Unblock("u100001", "u100002"); err != nil || !removed || entry != "second member" {
		t.Fatalf("Unblock by uid = %q %v %v", entry, removed, err)
	}
	if entry, removed, err := db.Unblock("u100001", "u100003"); err != nil || !removed || entry != "u100003" {
		t.Fatalf("Unblock by listed name = %q %v %v", entry, removed, err)
	}
	for _, name := range []string{"u100003", "second member", "nobody at all", uidForm, ""} {
		if _, removed, err := db.Unblock("u100001", name); err != nil || removed {
			t.Errorf("Unblock(%q) of nothing = %v %v", name, removed, err)
		}
	}
	if got, err := db.Blocks("u100001"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("Blocks after unblocking = %q %v", got, err)
	}
	if db.Blocked("u100001", "u100002") {
		t.Fatal("still blocked")
	}
	if _, err := db.Blocks("nobody"); !errors.Is(err, qlib.ErrNoUser) {
		t.Errorf("Blocks of nobody: %v", err)
	}
}

// TestUserDBBlockBound: MaxBlocks entries, then ErrTooManyBlocks; a removal
// makes room.
func TestUserDBBlockBound(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	udbBlockSetup(t, db)
	for i := range maxBlocks + 1 {
		if _, err := db.CreateFixture(fmt.Sprintf("b%07d", i), []string{"phone"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range maxBlocks {
		if _, _, err := db.Block("u100001", fmt.Sprintf("b%07d", i)); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	last := fmt.Sprintf("b%07d", maxBlocks)
	if _, _, err := db.Block("u100001", last); !errors.Is(err, qlib.ErrTooManyBlocks) {
		t.Fatalf("block past the bound: %v", err)
	}
	// A member blocked already is no new entry.
	if _, added, err := db.Block("u100001", "b0000000"); err != nil || added {
		t.Fatalf("block again at the bound: %v %v", added, err)
	}
	if _, _, err := db.Unblock("u100001", "b0000000"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.Block("u100001", last); err != nil {
		t.Fatalf("block after a removal: %v", err)
	}
	if got, _ := db.Blocks("u100001"); len(got) != maxBlocks {
		t.Fatalf("%d listed", len(got))
	}
}

// TestUserDBPowerLossBlock: a block added to an existing user; a crash
// leaves it blocked, with its index, or not, never in between.
func TestUserDBPowerLossBlock(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		_, _, err := db.Block("u100001", "second member")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		got, _ := db.Blocks("u100001")
		blocked := db.Blocked("u100001", "u100002")
		switch {
		case len(got) == 0 && !blocked:
			return false
		case slices.Equal(got, []string{"second member"}) && blocked:
			return true
		default:
			t.Errorf("listed %q, blocked %v", got, blocked)
		}
		return false
	})
}

// TestUserDBPowerLossUnblock: the removal of a block. The write blocks
// first (the crash setup is shared); a cut in that write leaves no entry,
// which is what the unblock leaves too, so it counts as the new state.
func TestUserDBPowerLossUnblock(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		if _, _, err := db.Block("u100001", "u100002"); err != nil {
			return err
		}
		_, _, err := db.Unblock("u100001", "second member")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		got, _ := db.Blocks("u100001")
		blocked := db.Blocked("u100001", "u100002")
		switch {
		case slices.Equal(got, []string{"u100002"}) && blocked:
			return false
		case len(got) == 0 && !blocked:
			return true
		default:
			t.Errorf("listed %q, blocked %v", got, blocked)
		}
		return false
	})
}

// TestUserDBBlockedAllocs: Blocked runs for every recipient of every post,
// so it must not allocate, blocked or not.
func TestUserDBBlockedAllocs(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	udbBlockSetup(t, db)
	if _, _, err := db.Block("u100001", "u100002"); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{"u100001", "u100002"}, {"u100001", "u100003"}, {"u100002", "u100001"}, {"nobody", "u100001"}} {
		if n := testing.AllocsPerRun(100, func() { db.Blocked(c[0], c[1]) }); n != 0 {
			t.Errorf("Blocked(%s, %s): %v allocations", c[0], c[1], n)
		}
	}
}

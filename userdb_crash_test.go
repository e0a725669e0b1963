package main

// Power loss in the middle of a user database write, on a MemFS: at every
// file system operation of the write, with the directory's entries durable
// or not at that moment, and with every kind of torn tail for what was
// written but not yet synced, the reopened database holds the record as it
// was or as the write made it: never neither, never torn.

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"mnm/durable"
	"mnm/qlib"
)

const udbCrashDir = "/data/userdb"

var errCut = errors.New("injected: power lost")

// udbTails are what of the bytes written since a file's last fsync reach the
// disk in a power loss.
var udbTails = []struct {
	name string
	keep func(b []byte) []byte
}{
	{"none", func([]byte) []byte { return nil }},
	{"half", func(b []byte) []byte { return b[:len(b)/2] }},
	{"all", func(b []byte) []byte { return b }},
	{"garbage", func(b []byte) []byte { return []byte(strings.Repeat("\xff", len(b))) }},
}

// udbCrashSetup makes two fixture users, each with an alias, and a group
// that the first created by inviting the second.
func udbCrashSetup(t *testing.T, db *UserDB) {
	t.Helper()
	if _, err := db.CreateFixture("u100001", []string{"laptop"}, []string{"first member"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateFixture("u100002", []string{"phone"}, []string{"second member"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupInvite("u100001", "the crash group", "first member", "second member"); err != nil {
		t.Fatal(err)
	}
}

// udbCrashRun sets up a database on a new MemFS, then runs write, losing
// power just before the write's cut'th file system operation (never, if cut
// is past its last one; then just after it returns). If dirSynced, the
// directories' entries are made durable first, as another write's directory
// fsync or a file system that orders its metadata would. It returns the
// database reopened on what survived, the log of that open, and write's
// error.
func udbCrashRun(t *testing.T, write func(db *UserDB) error, cut int, dirSynced bool, tail func([]byte) []byte) (*UserDB, string, error) {
	t.Helper()
	fsys := durable.NewMemFS()
	db, _ := udbOpen(t, udbCrashDir, udbMemFS(fsys))
	udbCrashSetup(t, db)
	var crashed *durable.MemFS
	crash := func() {
		if dirSynced {
			fsys.SyncDir(db.userDir)
			fsys.SyncDir(db.groupDir)
		}
		crashed = fsys.Crash(func(_ string, b []byte) []byte { return tail(b) })
	}
	n, cutting := 0, false
	fsys.SetHook(func(durable.Op, string) error {
		if cutting {
			return nil // crash's own directory syncs
		}
		if n++; n != cut {
			return nil
		}
		cutting = true
		crash()
		return errCut
	})
	err := write(db)
	if crashed == nil {
		cutting = true
		crash()
	}
	db.Close()
	again, logs := udbOpen(t, udbCrashDir, udbMemFS(crashed))
	for _, dir := range []string{again.userDir, again.groupDir} {
		names, rerr := crashed.ReadDir(dir)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if i := slices.IndexFunc(names, func(n string) bool { return strings.HasSuffix(n, recordTmpSuffix) }); i >= 0 {
			t.Errorf("temp file %s left after open", names[i])
		}
	}
	return again, logs.String(), err
}

// udbCountOps returns the number of file system operations write makes.
func udbCountOps(t *testing.T, write func(db *UserDB) error) int {
	t.Helper()
	fsys := durable.NewMemFS()
	db, _ := udbOpen(t, udbCrashDir, udbMemFS(fsys))
	udbCrashSetup(t, db)
	n := 0
	fsys.SetHook(func(durable.Op, string) error { n++; return nil })
	if err := write(db); err != nil {
		t.Fatal(err)
	}
	fsys.SetHook(nil)
	return n
}

// udbCrashEveryCut runs write cut at every operation, with and without
// the directory synced, with every tail, and has judge check the reopened
// database: judge returns whether it holds the write's result (true) or
// what was there before (false), and fails the test if neither.
func udbCrashEveryCut(t *testing.T, write func(db *UserDB) error, judge func(t *testing.T, db *UserDB) bool) {
	ops := udbCountOps(t, write)
	if ops < 5 {
		t.Fatalf("the write made %d file system operations; expected a whole durable write", ops)
	}
	seen := map[bool]int{}
	completed, discarded := 0, 0
	for cut := 1; cut <= ops+1; cut++ {
		for _, dirSynced := range []bool{false, true} {
			for _, tail := range udbTails {
				db, logs, err := udbCrashRun(t, write, cut, dirSynced, tail.keep)
				completed += strings.Count(logs, "completed interrupted write")
				discarded += strings.Count(logs, "discarded interrupted write")
				if t.Failed() {
					t.Fatalf("cut %d of %d, dirSynced %v, tail %s", cut, ops, dirSynced, tail.name)
				}
				isNew := judge(t, db)
				if err == nil && !isNew {
					t.Errorf("cut %d of %d, dirSynced %v, tail %s: the write succeeded but its record was lost", cut, ops, dirSynced, tail.name)
				}
				if t.Failed() {
					t.Fatalf("cut %d of %d, dirSynced %v, tail %s (write: %v)", cut, ops, dirSynced, tail.name, err)
				}
				seen[isNew]++
			}
		}
	}
	if seen[false] == 0 || seen[true] == 0 {
		t.Errorf("old record seen %d times, new %d; want both", seen[false], seen[true])
	}
	// Both ways out of an interrupted write must have been taken.
	if completed == 0 || discarded == 0 {
		t.Errorf("temp files completed %d times, discarded %d; want both", completed, discarded)
	}
}

// TestUserDBPowerLossUserWrite: an alias added to an existing user.
func TestUserDBPowerLossUserWrite(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		return db.AddAlias("u100001", "wanted alias")
	}, func(t *testing.T, db *UserDB) bool {
		aliases, err := db.Aliases("u100001")
		switch {
		case err != nil:
			t.Errorf("the user is gone: %v", err)
		case slices.Equal(aliases, []string{"first member"}):
			if _, ok := db.AliasUID("wanted alias"); ok {
				t.Error("the old record is back but the new alias resolves")
			}
			return false
		case slices.Equal(aliases, []string{"first member", "wanted alias"}):
			if owner, ok := db.AliasUID("wanted alias"); !ok || owner != "u100001" {
				t.Errorf("the new record is back but its alias resolves to %q, %v", owner, ok)
			}
			return true
		default:
			t.Errorf("aliases %q: neither the old record nor the new", aliases)
		}
		return false
	})
}

// TestUserDBPowerLossGroupWrite: an invited member joining a group.
func TestUserDBPowerLossGroupWrite(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		_, err := db.GroupEdit("u100002", qlib.GroupJoin, "the crash group", "", "")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		joined, err := db.GroupMembers("u100001", "the crash group")
		switch {
		case err != nil:
			t.Errorf("the group is gone: %v", err)
		case slices.Equal(joined, []string{"u100001"}):
			return false
		case slices.Equal(joined, []string{"u100001", "u100002"}):
			return true
		default:
			t.Errorf("joined %q: neither the old record nor the new", joined)
		}
		return false
	})
}

// TestUserDBPowerLossRegister: a new user is there whole, with the device
// it was registered with, or not at all.
func TestUserDBPowerLossRegister(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		_, err := db.CreateFixture("u100003", []string{"tablet"}, []string{"third member"})
		return err
	}, func(t *testing.T, db *UserDB) bool {
		devs, err := db.Devices("u100003")
		switch {
		case errors.Is(err, qlib.ErrNoUser):
			if _, ok := db.AliasUID("third member"); ok {
				t.Error("the user is missing but its alias resolves")
			}
			return false
		case err != nil:
			t.Errorf("Devices: %v", err)
		case !slices.Equal(devs, []string{"u100003.0"}):
			t.Errorf("devices %q, want the one it was made with", devs)
		default:
			if owner, _ := db.AliasUID("third member"); owner != "u100003" {
				t.Errorf("the user is there but its alias resolves to %q", owner)
			}
			return true
		}
		return false
	})
}

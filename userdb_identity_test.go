package main

// Attacks on the user database through what a member may add: many accounts
// from one sign-up identity, many aliases for one member, and writes made
// while the process is out of file descriptors. Each is bounded or refused
// cleanly, the victim (another member) is unaffected and the database stays
// usable.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mnm/durable"
	"mnm/qlib"
	"mnm/v0site"
)

// udbClaims are the claims of a verified token for subject sub, with the
// extras a real token carries.
func udbClaims(sub string) map[string]any {
	return map[string]any{
		"iss": "https://issuer.example", "sub": sub, "aud": "mnm",
		"email": sub + "@example.com", "iat": 1.7e9, "exp": 1.7e9 + 3600,
	}
}

// udbUserFiles counts the user record files in db's directory.
func udbUserFiles(t *testing.T, db *UserDB) int {
	t.Helper()
	entries, err := db.fs.ReadDir(db.userDir)
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// TestUserDBAccountsPerIdentity: one token's identity registering 20
// accounts gets one; the rest are refused with ErrIdentityUsed and create
// nothing. Another identity and users without claims register as before.
// The bound holds after a reopen (the index is rebuilt from the records),
// and UserDBOptions.AccountsPerIdentity raises it or (NoAccountBound)
// removes it.
func TestUserDBAccountsPerIdentity(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	const attempts = 20
	var first string
	for i := range attempts {
		uid, _, _, err := db.Register("laptop", udbClaims("attacker"))
		switch {
		case i == 0 && err != nil:
			t.Fatalf("first registration: %v", err)
		case i == 0:
			first = uid
		case !errors.Is(err, qlib.ErrIdentityUsed) || uid != "":
			t.Fatalf("registration %d: uid %q, err %v; want %v", i+1, uid, err, qlib.ErrIdentityUsed)
		}
	}
	if n := udbUserFiles(t, db); n != 1 {
		t.Errorf("%d record files after %d attempts, want 1", n, attempts)
	}
	victim, nodeid, dev, err := db.Register("phone", udbClaims("victim"))
	if err != nil {
		t.Fatalf("another identity: %v", err)
	}
	udbLogin(t, db, victim, nodeid, dev)
	udbRegister(t, db, "no claims")
	udbRegister(t, db, "no claims again")
	// A second device is how one person gets more: it is not refused.
	if _, _, err := db.AddDevice(first, "second device"); err != nil {
		t.Errorf("AddDevice of the identity's account: %v", err)
	}
	db.Close()

	db, _ = udbOpen(t, dir)
	if _, _, _, err := db.Register("laptop", udbClaims("attacker")); !errors.Is(err, qlib.ErrIdentityUsed) {
		t.Fatalf("after reopen: err %v, want %v", err, qlib.ErrIdentityUsed)
	}
	db.Close()
	db, _ = udbOpen(t, dir, func(o *UserDBOptions) { o.AccountsPerIdentity = 2 })
	if _, _, _, err := db.Register("laptop", udbClaims("attacker")); err != nil {
		t.Fatalf("second account under a bound of 2: %v", err)
	}
	if _, _, _, err := db.Register("laptop", udbClaims("attacker")); !errors.Is(err, qlib.ErrIdentityUsed) {
		t.Fatalf("third account under a bound of 2: err %v", err)
	}
	db.Close()
	db, _ = udbOpen(t, dir, func(o *UserDBOptions) { o.AccountsPerIdentity = NoAccountBound })
	for range 3 {
		if _, _, _, err := db.Register("laptop", udbClaims("attacker")); err != nil {
			t.Fatalf("no bound: %v", err)
		}
	}
}

// TestUserDBAccountsPerIdentityConcurrent: registrations racing with one
// identity create exactly one account, whatever the interleaving.
func TestUserDBAccountsPerIdentityConcurrent(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	const racers = 16
	var wg sync.WaitGroup
	errs := make(chan error, racers)
	for range racers {
		wg.Go(func() {
			_, _, _, err := db.Register("laptop", udbClaims("racer"))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, qlib.ErrIdentityUsed):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 || udbUserFiles(t, db) != 1 {
		t.Errorf("%d registrations succeeded, %d records; want 1 and 1", ok, udbUserFiles(t, db))
	}
}

// udbMkUserDir makes the user directory of a database in dir, for records
// written straight into it (udbWriteRecord) as an older version or the
// importer would have left them.
func udbMkUserDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, userSubdir), userDirPerm); err != nil {
		t.Fatal(err)
	}
}

// TestUserDBIdentityGrandfathered: records that already hold more accounts
// of one identity than the bound (imported, or made under another bound)
// open, log in and are kept; only new registrations are refused. Their
// extra claims (an e-mail address) are dropped when the record is next
// written, and the identity is kept.
func TestUserDBIdentityGrandfathered(t *testing.T) {
	dir := t.TempDir()
	udbMkUserDir(t, dir)
	node := make([]byte, nodeidBytes)
	var uids []string
	for i := range 3 {
		uid := fmt.Sprintf("U%d", i)
		udbWriteRecord(t, dir, &userRecord{
			UID: uid, Rev: 1, Created: time.Now().UTC(), NextDevice: 1,
			Devices: []deviceRecord{{Num: 0, Label: "old", Created: time.Now().UTC(), NodeHash: nodeHash(uid, node)}},
			Claims:  udbClaims("shared"),
		})
		uids = append(uids, uid)
	}
	db, _ := udbOpen(t, dir)
	for _, uid := range uids {
		if _, err := db.Login(uid, node); err != nil {
			t.Errorf("grandfathered %s cannot log in: %v", uid, err)
		}
	}
	if _, _, _, err := db.Register("new", udbClaims("shared")); !errors.Is(err, qlib.ErrIdentityUsed) {
		t.Fatalf("a fourth account: err %v, want %v", err, qlib.ErrIdentityUsed)
	}

	data, _ := os.ReadFile(db.recordPath(uids[0]))
	if !bytes.Contains(data, []byte("shared@example.com")) {
		t.Fatalf("test setup: the old record has no e-mail:\n%s", data)
	}
	if err := db.AddAlias(uids[0], "grandfathered one"); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(db.recordPath(uids[0]))
	if bytes.Contains(data, []byte("@example.com")) {
		t.Errorf("the rewritten record keeps the e-mail address:\n%s", data)
	}
	claims, err := db.Claims(uids[0])
	if err != nil || len(claims) != 2 || claims["iss"] != "https://issuer.example" || claims["sub"] != "shared" {
		t.Errorf("claims after the rewrite = %v, %v; want iss and sub only", claims, err)
	}
	db.Close()
	db, _ = udbOpen(t, dir)
	if _, _, _, err := db.Register("new", udbClaims("shared")); !errors.Is(err, qlib.ErrIdentityUsed) {
		t.Errorf("after the rewrite and a reopen: err %v, want %v", err, qlib.ErrIdentityUsed)
	}
}

// TestUserDBAliasLimit: a member adding aliases of the longest kind gets
// maxAliases of them; the rest are refused with ErrTooManyAliases, reserve
// nothing (another member can take them) and leave the record bounded.
// Re-adding an alias the member has is still a no-op. A record already
// over the bound (imported) opens and keeps its aliases.
func TestUserDBAliasLimit(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	attacker := udbUser(t, db)
	victim := udbUser(t, db, "victim alias")
	alias := func(i int) string {
		a := fmt.Sprintf("alias %06d ", i)
		return a + strings.Repeat("x", maxAliasBytes-len(a))
	}
	const flood = maxAliases + 50
	refused := 0
	for i := range flood {
		err := db.AddAlias(attacker, alias(i))
		switch {
		case i < maxAliases && err != nil:
			t.Fatalf("alias %d: %v", i+1, err)
		case i >= maxAliases && errors.Is(err, qlib.ErrTooManyAliases):
			refused++
		case i >= maxAliases:
			t.Fatalf("alias %d: err %v, want %v", i+1, err, qlib.ErrTooManyAliases)
		}
	}
	if refused != flood-maxAliases {
		t.Errorf("%d refused, want %d", refused, flood-maxAliases)
	}
	if err := db.AddAlias(attacker, alias(0)); err != nil {
		t.Errorf("re-adding an alias the member has: %v", err)
	}
	fi, err := os.Stat(db.recordPath(attacker))
	if err != nil {
		t.Fatal(err)
	}
	// Each alias takes its bytes plus quotes and a comma in the record.
	if max := int64(maxAliases*(maxAliasBytes+3) + 2048); fi.Size() > max {
		t.Errorf("record of %d bytes, want at most %d", fi.Size(), max)
	}
	if _, ok := db.AliasUID(alias(maxAliases)); ok {
		t.Error("a refused alias resolves")
	}
	if err := db.AddAlias(victim, alias(maxAliases)); err != nil {
		t.Errorf("another member cannot take an alias refused to the attacker: %v", err)
	}
	if err := db.AddAlias(victim, "victim second"); err != nil {
		t.Errorf("victim's alias: %v", err)
	}
	db.Close()

	// An imported record over the bound.
	rec := &userRecord{UID: "Uimported", Rev: 1, Created: time.Now().UTC()}
	for i := range maxAliases + 5 {
		rec.Aliases = append(rec.Aliases, fmt.Sprintf("imported %04d", i))
	}
	udbWriteRecord(t, dir, rec)
	db, _ = udbOpen(t, dir)
	if owner, ok := db.AliasUID("imported 0104"); !ok || owner != "Uimported" {
		t.Errorf("imported alias over the bound resolves to %q, %v", owner, ok)
	}
	if err := db.AddAlias("Uimported", "one more alias"); !errors.Is(err, qlib.ErrTooManyAliases) {
		t.Errorf("adding to a record over the bound: err %v, want %v", err, qlib.ErrTooManyAliases)
	}
}

// udbFailOpens makes the opens on fsys of paths for which fail returns true
// fail as they do when the process is out of file descriptors; nil fail
// lets every open through again.
func udbFailOpens(fsys *durable.MemFS, errno syscall.Errno, fail func(name string) bool) {
	if fail == nil {
		fsys.SetHook(nil)
		return
	}
	fsys.SetHook(func(op durable.Op, name string) error {
		if op == durable.OpOpen && fail(name) {
			return errno
		}
		return nil
	})
}

// udbMemFS has a database opened on fsys.
func udbMemFS(fsys *durable.MemFS) func(*UserDBOptions) {
	return func(o *UserDBOptions) { o.FS = fsys }
}

// TestUserDBOutOfFilesIsTemporary: a write that cannot open its directory or
// its temp file for want of file descriptors (EMFILE, ENFILE) is refused,
// leaving the disk and memory as they were; the database is not stopped and
// the same writes succeed once descriptors are back.
func TestUserDBOutOfFilesIsTemporary(t *testing.T) {
	const dir = "/data/userdb"
	isDir := func(name string) bool { return !strings.HasSuffix(name, recordSuffix+recordTmpSuffix) }
	for _, tc := range []struct {
		name  string
		errno syscall.Errno
		fail  func(name string) bool // nil: every open, by the MemFS's file limit
	}{
		{"directory EMFILE", syscall.EMFILE, isDir},
		{"directory ENFILE", syscall.ENFILE, isDir},
		{"temp file EMFILE", syscall.EMFILE, func(name string) bool { return strings.HasSuffix(name, recordTmpSuffix) }},
		{"file limit", syscall.EMFILE, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := durable.NewMemFS()
			db, _ := udbOpen(t, dir, udbMemFS(fsys))
			var fatal []error
			db.SetOnFatal(func(err error) { fatal = append(fatal, err) })
			uid, nodeid, dev := udbRegister(t, db, "laptop")
			if err := db.AddAlias(uid, "first member"); err != nil {
				t.Fatal(err)
			}
			other := udbUser(t, db, "other member")
			before := udbUserFiles(t, db)

			if tc.fail == nil {
				// Every descriptor in use: one held here, the limit at what is open.
				held, err := fsys.OpenFile(dir+"/held", os.O_RDWR|os.O_CREATE, 0o600)
				if err != nil {
					t.Fatal(err)
				}
				defer held.Close()
				fsys.SetFileLimit(fsys.OpenFiles())
			} else {
				udbFailOpens(fsys, tc.errno, tc.fail)
			}
			if err := db.AddAlias(uid, "wanted alias"); !errors.Is(err, tc.errno) {
				t.Errorf("AddAlias: err %v, want %v", err, tc.errno)
			}
			if _, _, _, err := db.Register("new", udbClaims("newcomer")); !errors.Is(err, tc.errno) {
				t.Errorf("Register: err %v, want %v", err, tc.errno)
			}
			if _, _, err := db.AddDevice(uid, "phone"); !errors.Is(err, tc.errno) {
				t.Errorf("AddDevice: err %v, want %v", err, tc.errno)
			}
			if _, err := db.GroupInvite(other, "the new group", "other member", "first member"); !errors.Is(err, tc.errno) {
				t.Errorf("GroupInvite: err %v, want %v", err, tc.errno)
			}
			if len(fatal) != 0 {
				t.Fatalf("running out of descriptors was fatal: %v", fatal)
			}
			if _, ok := db.AliasUID("wanted alias"); ok {
				t.Error("the refused alias resolves")
			}
			if n := udbUserFiles(t, db); n != before {
				t.Errorf("%d record files, had %d", n, before)
			}
			udbLogin(t, db, uid, nodeid, dev) // reads go on

			// Descriptors are back.
			fsys.SetFileLimit(0)
			udbFailOpens(fsys, 0, nil)
			if err := db.AddAlias(uid, "wanted alias"); err != nil {
				t.Fatalf("AddAlias afterwards: %v", err)
			}
			// The identity's place freed by the refused Register is free.
			if _, _, _, err := db.Register("new", udbClaims("newcomer")); err != nil {
				t.Fatalf("Register afterwards: %v", err)
			}
			if _, err := db.GroupInvite(other, "the new group", "other member", "first member"); err != nil {
				t.Fatalf("GroupInvite afterwards: %v", err)
			}
			db.Close()
			db, _ = udbOpen(t, dir, udbMemFS(fsys))
			if owner, ok := db.AliasUID("wanted alias"); !ok || owner != uid {
				t.Errorf("after reopen the alias resolves to %q, %v", owner, ok)
			}
		})
	}
}

// TestImportV0KeepsIdentityOnly: a deployed server's sign-up claims are
// pruned to iss and sub at import; claims in another shape, which name no
// identity, are kept as they were (they decide whether logins need a token).
func TestImportV0KeepsIdentityOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		auth string
		want map[string]any
	}{
		{"token claims", `{"iss":"https://issuer.example","sub":"42","email":"jane@example.com","name":"Jane"}`,
			map[string]any{"iss": "https://issuer.example", "sub": "42"}},
		{"no identity", `{"provider":"x","email":"jane@example.com"}`,
			map[string]any{"provider": "x", "email": "jane@example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := userFromV0(v0site.User{UID: "U1", Auth: []byte(tc.auth)}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(rec.Claims, tc.want) {
				t.Errorf("claims %v, want %v", rec.Claims, tc.want)
			}
		})
	}
}

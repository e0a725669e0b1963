package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mnm/qlib"
	"mnm/qlib/tmtp"
)

// TestV0NodeHashVector checks the deployed server's derivation against a
// device of its own site (../shared/tmtp/v0-site): the nodeid its client was
// given, and the key its user record holds.
func TestV0NodeHashVector(t *testing.T) {
	const nodeid = "V%5673ZLRB9283+%B2KLFVM6WQ77Y5P76T6LCYZV"
	const stored = "Z%LZVP+7137835Z5BKQ1YWC4738HWVQ5DK7FRS32Z5J6+2Z%Q9NH"
	raw, err := tmtp.Base32.DecodeString(nodeid)
	if err != nil {
		t.Fatal(err)
	}
	if got := tmtp.Base32.WithPadding(-1).EncodeToString(v0NodeHash(raw)); got != stored {
		t.Errorf("v0NodeHash = %s, want %s", got, stored)
	}
}

// udbWriteRecord writes rec as a durable record in the database in dir.
func udbWriteRecord(t *testing.T, dir string, rec *userRecord) {
	t.Helper()
	data, err := encodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, userSubdir, rec.UID+recordSuffix), data, recordPerm); err != nil {
		t.Fatal(err)
	}
}

// TestUserDBImportedDevices: a user whose devices carry the deployed
// server's derivation logs in with the old nodeids, beside a device of ours,
// and a device's hash of one kind does not let the other kind in.
func TestUserDBImportedDevices(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	db.Close()
	const uid = "V0USER"
	old1, raw1 := newID(nodeidBytes)
	old2, raw2 := newID(nodeidBytes)
	gone, rawGone := newID(nodeidBytes)
	rec := &userRecord{UID: uid, Rev: 1, NextDevice: 4, Devices: []deviceRecord{
		{Num: 1, Label: "a", NodeHash: v0NodeHash(raw1), HashV0: true},
		{Num: 2, Label: "b", NodeHash: v0NodeHash(raw2), HashV0: true},
		{Num: 3, Label: "c", NodeHash: v0NodeHash(rawGone), HashV0: true, Defunct: true},
	}}
	udbWriteRecord(t, dir, rec)
	db, _ = udbOpen(t, dir)
	udbLogin(t, db, uid, old1, uid+".1")
	udbLogin(t, db, uid, old2, uid+".2")
	if _, err := db.Login(uid, udbMustDecode(gone)); !errors.Is(err, qlib.ErrLoginFailed) {
		t.Errorf("defunct imported device logged in: %v", err)
	}
	// A device added here gets our derivation and logs in beside them.
	nodeid, dev, err := db.AddDevice(uid, "new")
	if err != nil {
		t.Fatal(err)
	}
	udbLogin(t, db, uid, nodeid, dev)
	udbLogin(t, db, uid, old1, uid+".1")
	// The v0 hash is not accepted as if it were the nodeid, nor ours as v0.
	if _, err := db.Login(uid, v0NodeHash(raw1)[:nodeidBytes]); !errors.Is(err, qlib.ErrLoginFailed) {
		t.Errorf("login with a prefix of the stored hash: %v", err)
	}
	db.Close()
	recs := db.users[uid].rec.Load()
	mixed := recs.clone()
	mixed.Devices[0].HashV0 = false // the same bytes read as our derivation
	mixed.Rev++
	udbWriteRecord(t, dir, mixed)
	db, _ = udbOpen(t, dir)
	if _, err := db.Login(uid, raw1); !errors.Is(err, qlib.ErrLoginFailed) {
		t.Errorf("v0 hash accepted as ours: %v", err)
	}
}

// TestUserDBRetiredAliases: a retired alias resolves for nobody, stays
// reserved against everyone, and may still be what a group lists its owner
// under; a record listing an alias as both live and retired is corrupt.
func TestUserDBRetiredAliases(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	if _, err := db.CreateFixture("u1", []string{"a"}, []string{"current-alias"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateFixture("u2", []string{"a"}, []string{"someone-else"}); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateGroupFixture("grp", map[string]string{"u1": "current-alias", "u2": "someone-else"}, map[string]bool{"u1": true, "u2": true}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	rec := db.users["u1"].rec.Load().clone()
	rec.Aliases, rec.RetiredAliases = []string{"renamed-alias"}, []string{"current-alias"}
	rec.Rev++
	udbWriteRecord(t, dir, rec)

	db, _ = udbOpen(t, dir)
	if uid, ok := db.AliasUID("current-alias"); ok {
		t.Errorf("retired alias resolves to %s", uid)
	}
	if uid, ok := db.AliasUID("renamed-alias"); !ok || uid != "u1" {
		t.Errorf("live alias resolves to %q %v", uid, ok)
	}
	for _, uid := range []string{"u1", "u2"} {
		if err := db.AddAlias(uid, "current-alias"); !errors.Is(err, qlib.ErrAliasTaken) {
			t.Errorf("%s claiming the retired alias: %v, want ErrAliasTaken", uid, err)
		}
	}
	if _, err := db.GroupInvite("u1", "grp", "current-alias", "someone-else"); !errors.Is(err, qlib.ErrFromNotSender) {
		t.Errorf("inviting under a retired alias: %v, want ErrFromNotSender", err)
	}
	if got, _ := db.Aliases("u1"); len(got) != 1 || got[0] != "renamed-alias" {
		t.Errorf("Aliases = %v, want only the live one", got)
	}
	db.Close()

	both := rec.clone()
	both.RetiredAliases = append(both.RetiredAliases, "renamed-alias")
	both.Rev++
	udbWriteRecord(t, dir, both)
	if _, err := OpenUserDB(UserDBOptions{Dir: dir}); err == nil || !strings.Contains(err.Error(), "u1.json") {
		t.Errorf("alias live and retired: %v, want an error naming u1.json", err)
	}
}

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"mnm/qlib"
	"mnm/qlib/tmtp"
)

// udbOpen opens the database in dir, with options changed by mod, failing
// the test on error, and returns it with its log output.
func udbOpen(t testing.TB, dir string, mod ...func(*UserDBOptions)) (*UserDB, *lockedBuffer) {
	t.Helper()
	logs := newLockedBuffer()
	opts := UserDBOptions{Dir: dir, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, m := range mod {
		m(&opts)
	}
	db, err := OpenUserDB(opts)
	if err != nil {
		t.Fatalf("OpenUserDB: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db, logs
}

func udbDecodeNode(t testing.TB, nodeid string) []byte {
	t.Helper()
	b, err := tmtp.Base32.DecodeString(nodeid)
	if err != nil {
		t.Fatalf("nodeid %q is not base32: %v", nodeid, err)
	}
	return b
}

func udbRegister(t testing.TB, db *UserDB, label string) (uid, nodeid, dev string) {
	t.Helper()
	uid, nodeid, dev, err := db.Register(label, nil)
	if err != nil {
		t.Fatalf("Register(%q): %v", label, err)
	}
	return uid, nodeid, dev
}

func udbLogin(t testing.TB, db *UserDB, uid, nodeid, wantDev string) {
	t.Helper()
	dev, err := db.Login(uid, udbDecodeNode(t, nodeid))
	if err != nil || dev != wantDev {
		t.Fatalf("Login(%s) = %q, %v; want %q", uid, dev, err, wantDev)
	}
}

func TestUserDBRegisterLogin(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	uid, nodeid, dev := udbRegister(t, db, "laptop")

	if len(uid) != 32 || len(nodeid) != 40 {
		t.Errorf("uid %q (%d chars), nodeid has %d chars; want 32 and 40", uid, len(uid), len(nodeid))
	}
	if raw, err := tmtp.Base32.DecodeString(uid); err != nil || len(raw) != uidBytes {
		t.Errorf("uid %q does not decode to %d bytes: %v", uid, uidBytes, err)
	}
	if len(udbDecodeNode(t, nodeid)) != nodeidBytes {
		t.Errorf("nodeid does not decode to %d bytes", nodeidBytes)
	}
	if dev != uid+".0" {
		t.Errorf("dev = %q, want %q", dev, uid+".0")
	}
	udbLogin(t, db, uid, nodeid, dev)
	if !db.Exists(uid) {
		t.Error("Exists(uid) = false after Register")
	}
	if devs, err := db.Devices(uid); err != nil || !slices.Equal(devs, []string{dev}) {
		t.Errorf("Devices = %v, %v; want [%s]", devs, err, dev)
	}

	uid2, nodeid2, _ := udbRegister(t, db, "phone")
	if uid2 == uid || nodeid2 == nodeid {
		t.Error("two registrations produced the same uid or nodeid")
	}
}

func TestUserDBLoginRefused(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, nodeid, _ := udbRegister(t, db, "laptop")
	_, otherNode, _ := udbRegister(t, db, "other")
	node := udbDecodeNode(t, nodeid)

	flipped := slices.Clone(node)
	flipped[nodeidBytes-1] ^= 1
	cases := []struct {
		name string
		uid  string
		node []byte
	}{
		{"wrong nodeid", uid, flipped},
		{"another user's nodeid", uid, udbDecodeNode(t, otherNode)},
		{"short nodeid", uid, node[:nodeidBytes-1]},
		{"long nodeid", uid, append(slices.Clone(node), 0)},
		{"nil nodeid", uid, nil},
		{"unknown uid", strings.Repeat("B", 32), node},
		{"empty uid", "", node},
		{"path uid", "../x", node},
		{"path to real user", "../" + userSubdir + "/" + uid, node},
		{"dot uid", ".", node},
		{"long uid", strings.Repeat("B", 10000), node},
		{"uid with nul", uid + "\x00", node},
		{"uid with slash", uid[:4] + "/" + uid[4:], node},
		{"lower-cased uid", strings.ToLower(uid), node},
	}
	for _, c := range cases {
		dev, err := db.Login(c.uid, c.node)
		if !errors.Is(err, qlib.ErrLoginFailed) || err != qlib.ErrLoginFailed || dev != "" {
			t.Errorf("%s: Login = %q, %v; want ErrLoginFailed", c.name, dev, err)
		}
		if c.uid != uid && db.Exists(c.uid) {
			t.Errorf("%s: Exists = true", c.name)
		}
		if _, err := db.Devices(c.uid); c.uid != uid && err != qlib.ErrNoUser {
			t.Errorf("%s: Devices error = %v, want ErrNoUser", c.name, err)
		}
	}
	// No request may have created anything outside the record directories.
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 2 || entries[0].Name() != groupSubdir || entries[1].Name() != userSubdir {
		t.Errorf("userdb dir holds %v (%v), want only %q and %q", entries, err, groupSubdir, userSubdir)
	}
}

// TestUserDBNodeidNotOnDisk checks that no form of a nodeid is written: not
// its base32 text, its bytes, nor their base64 or hex.
func TestUserDBNodeidNotOnDisk(t *testing.T) {
	dir := t.TempDir()
	db, logs := udbOpen(t, dir)
	uid, nodeid, _ := udbRegister(t, db, "laptop")
	nodeid2, _, err := db.AddDevice(uid, "phone")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.AddAlias(uid, "someone nice"); err != nil {
		t.Fatal(err)
	}
	fixtureNodes, err := db.CreateFixture("u100002", []string{"a", "b"}, []string{"test1"})
	if err != nil {
		t.Fatal(err)
	}

	var secrets [][]byte
	for _, n := range append([]string{nodeid, nodeid2}, fixtureNodes...) {
		raw := udbDecodeNode(t, n)
		secrets = append(secrets, []byte(n), raw,
			[]byte(base64.StdEncoding.EncodeToString(raw)),
			[]byte(base64.RawURLEncoding.EncodeToString(raw)),
			[]byte(hex.EncodeToString(raw)))
	}
	files := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if bytes.Contains(data, s) {
				t.Errorf("%s contains a nodeid (%q)", path, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files != 2 {
		t.Errorf("found %d files, want 2 records", files)
	}
	for _, s := range secrets {
		if strings.Contains(logs.String(), string(s)) {
			t.Errorf("log contains a nodeid (%q)", s)
		}
	}
}

func TestUserDBReopen(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, nodeid, dev := udbRegister(t, db, "laptop")
	nodeid2, dev2, err := db.AddDevice(uid, "phone ☎")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"alice smith", "ålice ßmith"} {
		if err := db.AddAlias(uid, a); err != nil {
			t.Fatalf("AddAlias(%q): %v", a, err)
		}
	}
	uidB, nodeB, devB := udbRegister(t, db, "desktop")
	db.Close()

	db2, _ := udbOpen(t, dir)
	udbLogin(t, db2, uid, nodeid, dev)
	udbLogin(t, db2, uid, nodeid2, dev2)
	udbLogin(t, db2, uidB, nodeB, devB)
	if devs, err := db2.Devices(uid); err != nil || !slices.Equal(devs, []string{dev, dev2}) {
		t.Errorf("Devices = %v, %v; want [%s %s]", devs, err, dev, dev2)
	}
	if got, err := db2.Aliases(uid); err != nil || !slices.Equal(got, []string{"alice smith", "ålice ßmith"}) {
		t.Errorf("Aliases = %q, %v", got, err)
	}
	for _, a := range []string{"alice smith", "ålice ßmith"} {
		if got, ok := db2.AliasUID(a); !ok || got != uid {
			t.Errorf("AliasUID(%q) = %q, %v; want %s", a, got, ok, uid)
		}
	}
	rec := db2.users[uid].rec.Load()
	if rec.Devices[0].Label != "laptop" || rec.Devices[1].Label != "phone ☎" {
		t.Errorf("labels = %q, %q", rec.Devices[0].Label, rec.Devices[1].Label)
	}
	if rec.Devices[1].Created.IsZero() || rec.Created.IsZero() {
		t.Error("creation times lost")
	}
	// Device numbers continue after a reopen.
	if _, dev3, err := db2.AddDevice(uid, "tablet"); err != nil || dev3 != uid+".2" {
		t.Errorf("AddDevice after reopen = %q, %v; want %s.2", dev3, err, uid)
	}
}

func TestUserDBAliasRules(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	uid, _, _ := udbRegister(t, db, "laptop")
	other, _, _ := udbRegister(t, db, "other")
	if err := db.AddAlias(other, "taken alias"); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		alias string
		want  error
	}{
		{"", qlib.ErrAliasShort},
		{"seven77", qlib.ErrAliasShort},
		{"ééééééé", qlib.ErrAliasShort},       // 14 bytes but 7 characters
		{"日本語の名前です", nil},                     // 8 characters
		{"eight888", nil},                     // exactly 8
		{"with\x00nul", qlib.ErrAliasInvalid}, // control character
		{"tab\there!", qlib.ErrAliasInvalid},
		{"newline\nhere", qlib.ErrAliasInvalid},
		{"bad utf8 \xff\xfe", qlib.ErrAliasInvalid},
		{"bidi \u202e override", qlib.ErrAliasInvalid}, // format character, not printable
		{strings.Repeat("a", maxAliasBytes), nil},
		{strings.Repeat("a", maxAliasBytes+1), ErrAliasLong},
		{strings.Repeat("é", maxAliasBytes/2+1), ErrAliasLong},
		{"taken alias", qlib.ErrAliasTaken},
		{"Taken Alias", nil}, // case-sensitive
	}
	for _, c := range cases {
		err := db.AddAlias(uid, c.alias)
		if c.want == nil && err != nil || c.want != nil && err != c.want {
			t.Errorf("AddAlias(%q) = %v, want %v", c.alias, err, c.want)
		}
		owner, ok := db.AliasUID(c.alias)
		switch {
		case c.want == nil && (!ok || owner != uid):
			t.Errorf("AliasUID(%q) = %q, %v after success", c.alias, owner, ok)
		case c.want != nil && c.want != qlib.ErrAliasTaken && ok:
			t.Errorf("refused alias %q resolves to %q", c.alias, owner)
		}
	}
	if !errors.Is(ErrAliasLong, qlib.ErrAliasInvalid) {
		t.Error("ErrAliasLong does not match qlib.ErrAliasInvalid")
	}
	if owner, _ := db.AliasUID("taken alias"); owner != other {
		t.Errorf("taken alias now owned by %q, want %q", owner, other)
	}

	// Adding an alias the user already has is a no-op success.
	before, _ := db.Aliases(uid)
	if err := db.AddAlias(uid, "eight888"); err != nil {
		t.Errorf("re-adding own alias: %v", err)
	}
	if after, _ := db.Aliases(uid); !slices.Equal(before, after) {
		t.Errorf("re-adding own alias changed aliases: %q -> %q", before, after)
	}
	if err := db.AddAlias("no such user", "a fine alias"); err != qlib.ErrNoUser {
		t.Errorf("AddAlias for unknown user = %v, want ErrNoUser", err)
	}
	if err := db.AddAlias("../etc", "a fine alias"); err != qlib.ErrNoUser {
		t.Errorf("AddAlias for hostile uid = %v, want ErrNoUser", err)
	}
	if _, ok := db.AliasUID("a fine alias"); ok {
		t.Error("alias of an unknown user resolves")
	}
	if _, err := db.Aliases("nobody"); err != qlib.ErrNoUser {
		t.Errorf("Aliases(unknown) = %v, want ErrNoUser", err)
	}
}

func TestUserDBLabelRules(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	uid, _, _ := udbRegister(t, db, strings.Repeat("l", maxLabelBytes))
	for _, label := range []string{"", strings.Repeat("l", maxLabelBytes+1), "bad \xff"} {
		if _, _, _, err := db.Register(label, nil); err != qlib.ErrLabelInvalid {
			t.Errorf("Register(%.20q) = %v, want ErrLabelInvalid", label, err)
		}
		if _, _, err := db.AddDevice(uid, label); err != qlib.ErrLabelInvalid {
			t.Errorf("AddDevice(%.20q) = %v, want ErrLabelInvalid", label, err)
		}
	}
	if _, _, err := db.AddDevice("nobody", "label"); err != qlib.ErrNoUser {
		t.Errorf("AddDevice(unknown) = %v, want ErrNoUser", err)
	}
	if devs, _ := db.Devices(uid); len(devs) != 1 {
		t.Errorf("refused labels left devices: %v", devs)
	}
}

func TestUserDBDeviceLimit(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, firstNode, firstDev := udbRegister(t, db, "device 0")
	nodes := map[string]string{firstDev: firstNode}
	for i := 1; i < maxDevices; i++ {
		nodeid, dev, err := db.AddDevice(uid, fmt.Sprint("device ", i))
		if err != nil {
			t.Fatalf("AddDevice #%d: %v", i, err)
		}
		if dev != devKey(uid, i) {
			t.Fatalf("AddDevice #%d: dev %q, want %q", i, dev, devKey(uid, i))
		}
		nodes[dev] = nodeid
	}
	if _, _, err := db.AddDevice(uid, "one too many"); err != qlib.ErrTooManyDevices || err.Error() != "too many devices" {
		t.Fatalf("AddDevice #%d = %v, want ErrTooManyDevices", maxDevices, err)
	}
	for dev, nodeid := range nodes {
		udbLogin(t, db, uid, nodeid, dev)
	}

	// A defunct device cannot log in, is not listed and frees a slot; its
	// number is not reused.
	victim := devKey(uid, 42)
	if err := db.RetireDevice(victim); err != nil {
		t.Fatal(err)
	}
	if err := db.RetireDevice(victim); err != nil {
		t.Errorf("retiring twice: %v", err)
	}
	if dev, err := db.Login(uid, udbDecodeNode(t, nodes[victim])); err != qlib.ErrLoginFailed {
		t.Errorf("defunct device logged in as %q, %v", dev, err)
	}
	devs, _ := db.Devices(uid)
	if len(devs) != maxDevices-1 || slices.Contains(devs, victim) {
		t.Errorf("Devices after retire: %d devices, contains victim: %v", len(devs), slices.Contains(devs, victim))
	}
	nodeid, dev, err := db.AddDevice(uid, "replacement")
	if err != nil || dev != devKey(uid, maxDevices) {
		t.Fatalf("AddDevice after retire = %q, %v; want %s", dev, err, devKey(uid, maxDevices))
	}
	if _, _, err := db.AddDevice(uid, "again too many"); err != qlib.ErrTooManyDevices {
		t.Errorf("AddDevice past the limit again = %v", err)
	}
	for _, bad := range []string{"", uid, uid + ".x", uid + ".999", "nobody.1", "../x.1"} {
		if err := db.RetireDevice(bad); err != ErrNoDevice {
			t.Errorf("RetireDevice(%q) = %v, want ErrNoDevice", bad, err)
		}
	}
	db.Close()

	db2, _ := udbOpen(t, dir)
	if _, err := db2.Login(uid, udbDecodeNode(t, nodes[victim])); err != qlib.ErrLoginFailed {
		t.Errorf("defunct device logs in after reopen: %v", err)
	}
	udbLogin(t, db2, uid, nodeid, dev)
	if devs2, _ := db2.Devices(uid); len(devs2) != maxDevices || slices.Contains(devs2, victim) {
		t.Errorf("Devices after reopen: %d, contains victim %v", len(devs2), slices.Contains(devs2, victim))
	}
}

// udbWriteTemp writes rec as an interrupted write would have left it.
func udbWriteTemp(t *testing.T, dir string, rec *userRecord, data []byte) string {
	t.Helper()
	if data == nil {
		var err error
		if data, err = encodeRecord(rec); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, userSubdir, rec.UID+recordSuffix+recordTmpSuffix)
	if err := os.WriteFile(path, data, recordPerm); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUserDBTempCompleted(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, nodeid, dev := udbRegister(t, db, "laptop")

	// An AddAlias that crashed between fsync and rename: the record as it
	// was before, the new one in the temp file.
	final := db.recordPath(uid)
	before, err := os.ReadFile(final)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.AddAlias(uid, "completed alias"); err != nil {
		t.Fatal(err)
	}
	tmpA := final + recordTmpSuffix
	if err := os.Rename(final, tmpA); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(final, before, recordPerm); err != nil {
		t.Fatal(err)
	}

	// A Register that crashed the same way: no record yet.
	fresh := &userRecord{UID: "u100009", Rev: 1, Created: time.Now().UTC(), NextDevice: 1}
	d, freshNode := db.newDevice("u100009", 0, "fresh")
	fresh.Devices = append(fresh.Devices, d)
	tmpB := udbWriteTemp(t, dir, fresh, nil)
	db.Close()

	db2, logs := udbOpen(t, dir)
	if owner, ok := db2.AliasUID("completed alias"); !ok || owner != uid {
		t.Errorf("completed alias resolves to %q, %v", owner, ok)
	}
	udbLogin(t, db2, uid, nodeid, dev)
	udbLogin(t, db2, "u100009", freshNode, "u100009.0")
	for _, p := range []string{tmpA, tmpB} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still exists: %v", p, err)
		}
		if !strings.Contains(logs.String(), "completed interrupted write") || !strings.Contains(logs.String(), p) {
			t.Errorf("no log of completing %s:\n%s", p, logs)
		}
	}
	db2.Close()

	// The completion is durable in its own right.
	db3, _ := udbOpen(t, dir)
	if _, ok := db3.AliasUID("completed alias"); !ok {
		t.Error("completed alias lost on the next open")
	}
}

func TestUserDBTempDiscarded(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, nodeid, dev := udbRegister(t, db, "laptop")
	other, _, _ := udbRegister(t, db, "other")
	if err := db.AddAlias(other, "other's alias"); err != nil {
		t.Fatal(err)
	}
	current := db.users[uid].rec.Load()
	db.Close()

	newer := current.clone()
	newer.Rev++
	newer.Aliases = []string{"discarded alias"}
	whole, err := encodeRecord(newer)
	if err != nil {
		t.Fatal(err)
	}
	conflict := current.clone()
	conflict.Rev++
	conflict.Aliases = []string{"other's alias"}

	cases := []struct {
		name string
		rec  *userRecord
		data []byte
	}{
		{"truncated", newer, whole[:len(whole)/2]},
		{"missing last byte", newer, whole[:len(whole)-2]},
		{"empty", newer, []byte{}},
		{"garbage", newer, []byte("\x00\x17garbage that is not json")},
		{"zeroed", newer, make([]byte, len(whole))},
		{"stale", current, nil}, // same rev as the record
		{"alias held by another user", conflict, nil},
		{"orphan garbage", &userRecord{UID: "u100005"}, []byte("{")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmp := udbWriteTemp(t, dir, c.rec, c.data)
			db, logs := udbOpen(t, dir)
			if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("temp file still exists: %v", err)
			}
			if !strings.Contains(logs.String(), "discarded interrupted write") || !strings.Contains(logs.String(), tmp) {
				t.Errorf("no log of discarding %s:\n%s", tmp, logs)
			}
			udbLogin(t, db, uid, nodeid, dev)
			if _, ok := db.AliasUID("discarded alias"); ok {
				t.Error("alias of a discarded write resolves")
			}
			if owner, _ := db.AliasUID("other's alias"); owner != other {
				t.Errorf("other's alias now owned by %q", owner)
			}
			if db.Exists("u100005") {
				t.Error("orphan garbage created a user")
			}
		})
	}
}

// TestUserDBCorruptRecord flips each byte of a record in turn: every flip must
// stop OpenUserDB with an error naming the file.
func TestUserDBCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, _, _ := udbRegister(t, db, "laptop")
	if err := db.AddAlias(uid, "corruptible"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	path := filepath.Join(dir, userSubdir, uid+recordSuffix)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := slices.Clone(good)
	for i := range bad {
		bad[i] ^= 1
		if err := os.WriteFile(path, bad, recordPerm); err != nil {
			t.Fatal(err)
		}
		db, err := OpenUserDB(UserDBOptions{Dir: dir})
		if err == nil {
			db.Close()
			t.Fatalf("flipping byte %d (%q) went unnoticed", i, good[i])
		}
		if !strings.Contains(err.Error(), path) {
			t.Fatalf("flipping byte %d: error %q does not name %s", i, err, path)
		}
		bad[i] = good[i]
	}

	// Restored, it opens again.
	if err := os.WriteFile(path, good, recordPerm); err != nil {
		t.Fatal(err)
	}
	db2, _ := udbOpen(t, dir)
	if !db2.Exists(uid) {
		t.Error("user missing after restoring the record")
	}
}

func TestUserDBCorruptRecordContents(t *testing.T) {
	rec := &userRecord{UID: "u100002", Rev: 1, NextDevice: 1, Aliases: []string{"test1"},
		Devices: []deviceRecord{{Num: 0, Label: "a", NodeHash: make([]byte, 32)}}}
	// Each mutation yields a well-checksummed record that is still wrong.
	cases := map[string]func(r *userRecord){
		"uid differs from file name": func(r *userRecord) { r.UID = "u100003" },
		"device number reused":       func(r *userRecord) { r.Devices = append(r.Devices, r.Devices[0]); r.NextDevice = 2 },
		"device beyond NextDevice":   func(r *userRecord) { r.NextDevice = 0 },
		"short node hash":            func(r *userRecord) { r.Devices[0].NodeHash = []byte{1} },
		"empty label":                func(r *userRecord) { r.Devices[0].Label = "" },
		"duplicate alias":            func(r *userRecord) { r.Aliases = []string{"test1", "test1"} },
		"empty alias":                func(r *userRecord) { r.Aliases = []string{""} },
		"block of an invalid uid":    func(r *userRecord) { r.Blocks = []blockRecord{{UID: "../u1", By: "x"}} },
		"block of itself":            func(r *userRecord) { r.Blocks = []blockRecord{{UID: "u100002", By: "x"}} },
		"block without its name":     func(r *userRecord) { r.Blocks = []blockRecord{{UID: "u100001"}} },
		"uid blocked twice": func(r *userRecord) {
			r.Blocks = []blockRecord{{UID: "u100001", By: "x"}, {UID: "u100001", By: "y"}}
		},
	}
	for name, mutate := range cases {
		r := rec.clone()
		r.Devices = slices.Clone(rec.Devices)
		mutate(r)
		data, err := encodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseRecord[userRecord](data, "u100002"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	data, _ := encodeRecord(rec)
	if _, err := parseRecord[userRecord](data, "u100002"); err != nil {
		t.Errorf("unmutated record refused: %v", err)
	}
	if _, err := parseRecord[userRecord](bytes.Replace(data, []byte(`"v":1`), []byte(`"v":2`), 1), "u100002"); err == nil {
		t.Error("unknown version accepted")
	}
}

func TestUserDBAliasInTwoRecords(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	if _, err := db.CreateFixture("u1", []string{"a"}, []string{"shared"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateFixture("u2", []string{"a"}, []string{"mine"}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	// Rewrite u2's record, correctly checksummed, to claim u1's alias.
	rec := db.users["u2"].rec.Load().clone()
	rec.Aliases = []string{"shared"}
	data, _ := encodeRecord(rec)
	if err := os.WriteFile(filepath.Join(dir, userSubdir, "u2.json"), data, recordPerm); err != nil {
		t.Fatal(err)
	}
	_, err := OpenUserDB(UserDBOptions{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "u1.json") || !strings.Contains(err.Error(), "u2.json") {
		t.Errorf("OpenUserDB = %v, want an error naming both records", err)
	}
}

func TestUserDBUnexpectedFiles(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, nodeid, dev := udbRegister(t, db, "laptop")
	db.Close()
	if err := os.WriteFile(filepath.Join(dir, userSubdir, "README"), []byte("hi"), recordPerm); err != nil {
		t.Fatal(err)
	}
	db2, logs := udbOpen(t, dir)
	udbLogin(t, db2, uid, nodeid, dev)
	if !strings.Contains(logs.String(), "ignoring unexpected file") {
		t.Errorf("stray file not logged:\n%s", logs)
	}
}

// TestUserDBConcurrent registers users, claims a small pool of aliases, adds
// devices to one shared user and logs in, all at once; every alias must end
// with exactly one owner, in memory and after reopening.
func TestUserDBConcurrent(t *testing.T) {
	const (
		workers        = 8
		usersPerWorker = 4
		devicesPerUser = 3
	)
	pool := make([]string, 10)
	for i := range pool {
		pool[i] = fmt.Sprintf("pool alias %02d", i)
	}
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	shared, sharedNode, sharedDev := udbRegister(t, db, "shared 0")

	type result struct {
		uid     string
		won     []string
		devices map[string]string // dev -> nodeid on the shared user
	}
	results := make([]result, workers*usersPerWorker)
	errs := make(chan error, len(results)*(len(pool)+devicesPerUser+2))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range usersPerWorker {
				r := &results[w*usersPerWorker+i]
				r.devices = map[string]string{}
				uid, nodeid, dev, err := db.Register("laptop", nil)
				if err != nil {
					errs <- err
					return
				}
				r.uid = uid
				for j := range pool {
					a := pool[(j+w)%len(pool)] // workers start at different aliases
					switch err := db.AddAlias(uid, a); err {
					case nil:
						r.won = append(r.won, a)
					case qlib.ErrAliasTaken:
					default:
						errs <- fmt.Errorf("AddAlias: %w", err)
					}
				}
				if got, err := db.Login(uid, udbMustDecode(nodeid)); err != nil || got != dev {
					errs <- fmt.Errorf("Login %s = %q, %v", uid, got, err)
				}
				for range devicesPerUser {
					nodeid, dev, err := db.AddDevice(shared, "extra")
					if err != nil {
						errs <- fmt.Errorf("AddDevice: %w", err)
						continue
					}
					r.devices[dev] = nodeid
				}
				if got, err := db.Login(shared, udbMustDecode(sharedNode)); err != nil || got != sharedDev {
					errs <- fmt.Errorf("Login shared = %q, %v", got, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	check := func(db *UserDB) {
		t.Helper()
		owners := map[string]string{}
		for _, r := range results {
			for _, a := range r.won {
				if prev, ok := owners[a]; ok {
					t.Errorf("alias %q won by both %s and %s", a, prev, r.uid)
				}
				owners[a] = r.uid
			}
			got, err := db.Aliases(r.uid)
			slices.Sort(got)
			want := slices.Sorted(slices.Values(r.won))
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("Aliases(%s) = %q, %v; want %q", r.uid, got, err, want)
			}
		}
		for _, a := range pool {
			owner, ok := db.AliasUID(a)
			if !ok || owner != owners[a] {
				t.Errorf("AliasUID(%q) = %q, %v; winner was %q", a, owner, ok, owners[a])
			}
		}
		devs, err := db.Devices(shared)
		if want := 1 + workers*usersPerWorker*devicesPerUser; err != nil || len(devs) != want {
			t.Fatalf("shared user has %d devices (%v), want %d", len(devs), err, want)
		}
		for _, r := range results {
			for dev, nodeid := range r.devices {
				if !slices.Contains(devs, dev) {
					t.Errorf("device %s missing", dev)
				}
				udbLogin(t, db, shared, nodeid, dev)
			}
		}
	}
	check(db)
	db.Close()
	db2, _ := udbOpen(t, dir)
	check(db2)
}

func udbMustDecode(nodeid string) []byte {
	b, _ := tmtp.Base32.DecodeString(nodeid)
	return b
}

func TestUserDBFixture(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	nodes, err := db.CreateFixture("u100002", []string{"sendnode", "node 1"}, []string{"test1", "test11"})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 {
		t.Fatalf("got %d nodeids, want 2", len(nodes))
	}
	udbLogin(t, db, "u100002", nodes[0], "u100002.0")
	udbLogin(t, db, "u100002", nodes[1], "u100002.1")
	for _, a := range []string{"test1", "test11"} {
		if owner, ok := db.AliasUID(a); !ok || owner != "u100002" {
			t.Errorf("AliasUID(%q) = %q, %v", a, owner, ok)
		}
	}
	// Ordinary requests still refuse short aliases, and fixture aliases are
	// taken for everyone else.
	if err := db.AddAlias("u100002", "test3"); err != qlib.ErrAliasShort {
		t.Errorf("AddAlias(short) = %v, want ErrAliasShort", err)
	}
	if _, err := db.CreateFixture("u100003", []string{"recvnode"}, []string{"test1"}); err != qlib.ErrAliasTaken {
		t.Errorf("fixture with a taken alias = %v, want ErrAliasTaken", err)
	}
	if db.Exists("u100003") {
		t.Error("refused fixture exists")
	}
	if _, err := db.CreateFixture("u100002", []string{"x"}, nil); err != ErrUserExists {
		t.Errorf("second fixture with the same uid = %v, want ErrUserExists", err)
	}
	for _, bad := range []string{"", "../u1", "u 1", strings.Repeat("u", maxUIDLen+1)} {
		if _, err := db.CreateFixture(bad, []string{"x"}, nil); err == nil {
			t.Errorf("CreateFixture(%.20q) accepted", bad)
		}
	}
	if _, err := db.CreateFixture("u100004", []string{"x"}, []string{"bad\x00"}); !errors.Is(err, qlib.ErrAliasInvalid) {
		t.Errorf("fixture with an invalid alias = %v", err)
	}
	if _, err := db.CreateFixture("u100004", []string{"x"}, []string{"same", "other", "same"}); err != nil {
		t.Errorf("fixture with a repeated alias = %v", err)
	}
	db.Close()

	db2, _ := udbOpen(t, dir)
	udbLogin(t, db2, "u100002", nodes[0], "u100002.0")
	if got, _ := db2.Aliases("u100002"); !slices.Equal(got, []string{"test1", "test11"}) {
		t.Errorf("fixture aliases after reopen = %q", got)
	}
	if got, _ := db2.Aliases("u100004"); !slices.Equal(got, []string{"same", "other"}) {
		t.Errorf("repeated fixture alias stored as %q", got)
	}
}

// TestUserDBWriteFailure makes a write fail before its rename, which must
// leave everything as it was, and then after its temp file was fsynced (the
// rename fails), which must stop all further writes.
func TestUserDBWriteFailure(t *testing.T) {
	dir := t.TempDir()
	db, logs := udbOpen(t, dir)
	var fatal []error
	db.SetOnFatal(func(err error) { fatal = append(fatal, err) })
	uid, nodeid, dev := udbRegister(t, db, "laptop")
	other, _, _ := udbRegister(t, db, "other")
	final := db.recordPath(uid)

	// A directory in place of the temp file: the create fails cleanly.
	if err := os.Mkdir(final+recordTmpSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := db.AddAlias(uid, "first try alias"); err == nil {
		t.Fatal("AddAlias succeeded with its temp file blocked")
	}
	if len(fatal) != 0 {
		t.Errorf("a clean failure was reported as fatal: %v", fatal)
	}
	if _, ok := db.AliasUID("first try alias"); ok {
		t.Error("alias of a failed write resolves")
	}
	if err := db.AddAlias(other, "first try alias"); err != nil {
		t.Errorf("alias released by a clean failure cannot be claimed: %v", err)
	}

	// A non-empty directory in place of the record: the rename fails.
	if err := os.Remove(final); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(final, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := db.AddAlias(uid, "doubtful alias"); err == nil {
		t.Fatal("AddAlias succeeded with its record blocked")
	}
	if !strings.Contains(logs.String(), "refusing further writes") {
		t.Errorf("no log of refusing writes:\n%s", logs)
	}
	if len(fatal) != 1 {
		t.Errorf("a doubtful write was reported %d times, want once: %v", len(fatal), fatal)
	}
	if _, ok := db.AliasUID("doubtful alias"); ok {
		t.Error("alias of a doubtful write resolves")
	}
	if err := db.AddAlias(other, "doubtful alias"); err == nil {
		t.Error("another user claimed an alias whose write is in doubt")
	}
	if _, _, _, err := db.Register("new", nil); err == nil {
		t.Error("Register succeeded after a doubtful write")
	}
	if _, _, err := db.AddDevice(other, "new"); err == nil {
		t.Error("AddDevice succeeded after a doubtful write")
	}
	udbLogin(t, db, uid, nodeid, dev) // reads go on
	if len(fatal) != 1 {
		t.Errorf("fatal reported %d times after later refusals, want once", len(fatal))
	}
}

func TestUserDBClose(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	uid, nodeid, dev := udbRegister(t, db, "laptop")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := db.Register("x", nil); err != ErrClosed {
		t.Errorf("Register after Close = %v", err)
	}
	if err := db.AddAlias(uid, "after close"); err != ErrClosed {
		t.Errorf("AddAlias after Close = %v", err)
	}
	if _, _, err := db.AddDevice(uid, "x"); err != ErrClosed {
		t.Errorf("AddDevice after Close = %v", err)
	}
	udbLogin(t, db, uid, nodeid, dev)
}

func TestUserDBOpenErrors(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, recordPerm); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenUserDB(UserDBOptions{Dir: blocker}); err == nil {
		t.Error("OpenUserDB under a regular file succeeded")
	}
}

// FuzzUserDBParseRecord feeds arbitrary file contents to the record parser:
// it must never panic, and what it accepts must re-encode to a record it
// accepts again, byte for byte the same.
func FuzzUserDBParseRecord(f *testing.F) {
	rec := &userRecord{UID: "u100002", Rev: 3, NextDevice: 2, Aliases: []string{"test1", "ålias ☎"},
		Claims:  map[string]any{"iss": "https://example.com", "n": 1.5},
		Devices: []deviceRecord{{Num: 0, Label: "a", NodeHash: make([]byte, 32)}, {Num: 1, Label: "b", NodeHash: make([]byte, 32), Defunct: true}}}
	good, err := encodeRecord(rec)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)                                                                                                    // a valid record
	f.Add(good[:len(good)/2])                                                                                      // torn write
	f.Add([]byte{})                                                                                                // empty file
	f.Add([]byte(`{}`))                                                                                            // envelope without fields
	f.Add([]byte(`{"v":1,"crc32c":"00000000","user":{}}`))                                                         // wrong checksum
	f.Add(fmt.Appendf(nil, `{"v":1,"crc32c":"%08x","user":null}`, crc32.Checksum([]byte("null"), recordCRCTable))) // valid checksum, no user
	f.Add(bytes.Replace(good, []byte("u100002"), []byte("u100003"), 1))                                            // uid changed
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := parseRecord[userRecord](data, "u100002")
		if err != nil {
			return
		}
		again, err := encodeRecord(rec)
		if err != nil {
			t.Fatalf("accepted record does not encode: %v", err)
		}
		rec2, err := parseRecord[userRecord](again, "u100002")
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		third, _ := encodeRecord(rec2)
		if !bytes.Equal(again, third) {
			t.Fatalf("encoding not stable:\n%s\n%s", again, third)
		}
	})
}

// FuzzUserDBAlias checks the alias rules against their definition.
func FuzzUserDBAlias(f *testing.F) {
	f.Add("eight888")                         // shortest valid ASCII
	f.Add("seven77")                          // one short
	f.Add("ééééééé")                          // 7 characters in 14 bytes
	f.Add("with\x00nul")                      // control character
	f.Add("bad \xff utf8")                    // invalid UTF-8
	f.Add(strings.Repeat("x", maxAliasBytes)) // longest valid
	f.Fuzz(func(t *testing.T, alias string) {
		err := checkAlias(alias, minAliasChars)
		valid := utf8.ValidString(alias) && !strings.ContainsFunc(alias, func(r rune) bool { return !unicode.IsPrint(r) })
		switch {
		case len(alias) > maxAliasBytes:
			if err != ErrAliasLong {
				t.Fatalf("%q: %v, want ErrAliasLong", alias, err)
			}
		case !valid:
			if err != qlib.ErrAliasInvalid {
				t.Fatalf("%q: %v, want ErrAliasInvalid", alias, err)
			}
		case utf8.RuneCountInString(alias) < minAliasChars:
			if err != qlib.ErrAliasShort {
				t.Fatalf("%q: %v, want ErrAliasShort", alias, err)
			}
		case err != nil:
			t.Fatalf("%q: %v, want nil", alias, err)
		}
	})
}

func BenchmarkUserDBLogin(b *testing.B) {
	db, _ := udbOpen(b, b.TempDir())
	uid, nodeid, _ := udbRegister(b, db, "laptop")
	node := udbDecodeNode(b, nodeid)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := db.Login(uid, node); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkUserDBRegister(b *testing.B) {
	db, _ := udbOpen(b, b.TempDir())
	for b.Loop() {
		udbRegister(b, db, "laptop")
	}
}

func BenchmarkUserDBRegisterParallel(b *testing.B) {
	db, _ := udbOpen(b, b.TempDir())
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, _, err := db.Register("laptop", nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestUserDBClaims(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	claims := map[string]any{
		"iss": "https://example.com", "sub": "12345", "email_verified": true,
		"aud": []any{"a", "b"}, "exp": 1.7e9, "nested": map[string]any{"k": "v"},
		"email": "jane@example.com",
	}
	// Only the identity is kept: the e-mail address and the rest are not
	// the site's to store (keptClaims).
	want := map[string]any{"iss": "https://example.com", "sub": "12345"}
	uid, _, _, err := db.Register("laptop", claims)
	if err != nil {
		t.Fatal(err)
	}
	got, err := db.Claims(uid)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Claims = %v, %v; want %v", got, err, want)
	}

	// Neither the caller's map nor the returned one reaches the record.
	claims["iss"] = "changed"
	claims["aud"].([]any)[0] = "changed"
	got["sub"] = "changed"
	if again, _ := db.Claims(uid); !reflect.DeepEqual(again, want) {
		t.Errorf("Claims after the caller changed maps = %v, want %v", again, want)
	}

	data, err := os.ReadFile(db.recordPath(uid))
	if err != nil || bytes.Contains(data, []byte("jane@")) || bytes.Contains(data, []byte("nested")) {
		t.Errorf("record keeps more than the identity (%v):\n%s", err, data)
	}

	// Claims that name no identity are kept whole, and take their JSON
	// form at once, not only after a reopen.
	numUID, _, _, err := db.Register("laptop", map[string]any{"n": 3, "nested": map[string]any{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := db.Claims(numUID); got["n"] != 3.0 {
		t.Errorf("integer claim returned as %#v, want float64 3", got["n"])
	} else {
		got["nested"].(map[string]any)["k"] = "changed"
		if again, _ := db.Claims(numUID); again["nested"].(map[string]any)["k"] != "v" {
			t.Error("a change to the returned claims reached the record")
		}
	}

	plain, _, _ := udbRegister(t, db, "laptop")
	empty, _, _, err := db.Register("laptop", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{plain, empty} {
		if got, err := db.Claims(u); err != nil || got != nil {
			t.Errorf("Claims of a user without claims = %v, %v; want nil", got, err)
		}
		data, err := os.ReadFile(db.recordPath(u))
		if err != nil || bytes.Contains(data, []byte("claims")) {
			t.Errorf("record of a user without claims mentions them (%v):\n%s", err, data)
		}
	}
	for _, bad := range []string{"nobody", "", "../x"} {
		if got, err := db.Claims(bad); err != qlib.ErrNoUser || got != nil {
			t.Errorf("Claims(%q) = %v, %v; want ErrNoUser", bad, got, err)
		}
	}

	// Claims JSON cannot hold are refused before any user is made.
	before, _ := os.ReadDir(db.userDir)
	if _, _, _, err := db.Register("laptop", map[string]any{"f": func() {}}); err == nil {
		t.Error("Register with unencodable claims succeeded")
	}
	if after, _ := os.ReadDir(db.userDir); len(after) != len(before) {
		t.Errorf("refused Register left %d files, had %d", len(after), len(before))
	}

	// Later writes of the record keep the claims.
	if err := db.AddAlias(uid, "claimed alias"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.AddDevice(uid, "phone"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db2, _ := udbOpen(t, dir)
	if got, err := db2.Claims(uid); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Claims after reopen = %v, %v; want %v", got, err, want)
	}
	if got, _ := db2.Claims(plain); got != nil {
		t.Errorf("Claims of plain user after reopen = %v", got)
	}
}

// udbUser registers a user with the given aliases and returns its uid.
func udbUser(t testing.TB, db *UserDB, aliases ...string) string {
	t.Helper()
	uid, _, _ := udbRegister(t, db, "laptop")
	for _, a := range aliases {
		if err := db.AddAlias(uid, a); err != nil {
			t.Fatalf("AddAlias(%q): %v", a, err)
		}
	}
	return uid
}

// udbWantChange checks the result of a group call that must succeed.
func udbWantChange(t *testing.T, what string, got qlib.GroupChange, err error, want qlib.GroupChange) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if got.Alias != want.Alias || got.NewAlias != want.NewAlias || got.Invitee != want.Invitee || !slices.Equal(got.Notify, want.Notify) {
		t.Errorf("%s = %+v, want %+v", what, got, want)
	}
}

// udbWantMembers checks GroupMembers(uid, gid).
func udbWantMembers(t *testing.T, db *UserDB, uid, gid string, want ...string) {
	t.Helper()
	if got, err := db.GroupMembers(uid, gid); err != nil || !slices.Equal(got, want) {
		t.Errorf("GroupMembers(%s, %q) = %v, %v; want %v", uid, gid, got, err, want)
	}
}

// udbMember returns uid's entry in gid's published record.
func udbMember(t *testing.T, db *UserDB, gid, uid string) memberRecord {
	t.Helper()
	rec := db.groups[gid].rec.Load()
	if i := rec.member(uid); i >= 0 {
		return rec.Members[i]
	}
	return memberRecord{}
}

func udbGroupRev(db *UserDB, gid string) uint64 {
	db.mu.RLock()
	defer db.mu.RUnlock()
	return db.groups[gid].rec.Load().Rev
}

// TestUserDBGroupLifeCycle takes a group through every transition, checking
// each change's notice fields and the member list, then reopens.
func TestUserDBGroupLifeCycle(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one", "alice two")
	b := udbUser(t, db, "bob smith", "bobby b2")
	c := udbUser(t, db, "carol c1", "carol two")
	d := udbUser(t, db, "dave dave")
	const gid = "the club"
	type gc = qlib.GroupChange

	ch, err := db.GroupInvite(a, gid, "alice one", "bob smith")
	udbWantChange(t, "invite creating the group", ch, err, gc{Alias: "bob smith", Invitee: b, Notify: []string{a}})
	udbWantMembers(t, db, a, gid, a)
	udbWantMembers(t, db, b, gid, a) // an invited user may post to the group
	if _, err := db.GroupMembers(c, gid); err != qlib.ErrNotMember {
		t.Errorf("GroupMembers for an outsider = %v, want ErrNotMember", err)
	}
	if m := udbMember(t, db, gid, a); m.Alias != "alice one" || m.Status != memberJoined {
		t.Errorf("creator listed as %+v", m)
	}

	ch, err = db.GroupInvite(a, gid, "alice two", "carol c1") // from any own alias
	udbWantChange(t, "invite carol", ch, err, gc{Alias: "carol c1", Invitee: c, Notify: []string{a}})
	ch, err = db.GroupInvite(a, gid, "alice one", "dave dave")
	udbWantChange(t, "invite dave", ch, err, gc{Alias: "dave dave", Invitee: d, Notify: []string{a}})
	rev := udbGroupRev(db, gid)
	ch, err = db.GroupInvite(a, gid, "alice one", "dave dave")
	udbWantChange(t, "invite dave again", ch, err, gc{Alias: "dave dave", Invitee: d, Notify: []string{a}})
	if udbGroupRev(db, gid) != rev {
		t.Error("a repeated invite rewrote the record")
	}

	ch, err = db.GroupEdit(b, qlib.GroupJoin, gid, "", "")
	udbWantChange(t, "bob joins", ch, err, gc{Alias: "bob smith", Notify: []string{a, b}})
	ch, err = db.GroupEdit(c, qlib.GroupJoin, gid, "carol two", "")
	udbWantChange(t, "carol joins under another alias", ch, err, gc{Alias: "carol c1", NewAlias: "carol two", Notify: []string{a, b, c}})
	if m := udbMember(t, db, gid, c); m.Alias != "carol two" || m.Status != memberJoined {
		t.Errorf("carol listed as %+v", m)
	}
	ch, err = db.GroupEdit(d, qlib.GroupJoin, gid, "dave dave", "")
	udbWantChange(t, "dave joins naming his listed alias", ch, err, gc{Alias: "dave dave", Notify: []string{a, b, c, d}})

	ch, err = db.GroupEdit(b, qlib.GroupAlias, gid, "bobby b2", "")
	udbWantChange(t, "bob renames", ch, err, gc{Alias: "bob smith", NewAlias: "bobby b2", Notify: []string{a, b, c, d}})

	ch, err = db.GroupEdit(b, qlib.GroupDrop, gid, "", "bobby b2")
	udbWantChange(t, "bob leaves", ch, err, gc{Alias: "bobby b2", Notify: []string{a, c, d, b}})
	if m := udbMember(t, db, gid, b); m.Status != memberInvited || m.Alias != "bobby b2" {
		t.Errorf("bob after leaving: %+v, want invited under bobby b2", m)
	}
	udbWantMembers(t, db, b, gid, a, c, d)
	if _, err := db.GroupEdit(b, qlib.GroupAlias, gid, "bob smith", ""); err != qlib.ErrNotMember {
		t.Errorf("rename after leaving = %v, want ErrNotMember", err)
	}
	ch, err = db.GroupEdit(b, qlib.GroupJoin, gid, "", "")
	udbWantChange(t, "bob re-joins", ch, err, gc{Alias: "bobby b2", Notify: []string{a, c, d, b}})

	ch, err = db.GroupEdit(a, qlib.GroupDrop, gid, "", "carol two")
	udbWantChange(t, "alice bars carol", ch, err, gc{Alias: "carol two", Notify: []string{a, d, b, c}})
	if m := udbMember(t, db, gid, c); m.Status != memberBarred {
		t.Errorf("carol after being dropped: %+v, want barred", m)
	}
	if _, err := db.GroupMembers(c, gid); err != qlib.ErrNotMember {
		t.Errorf("GroupMembers for a barred user = %v, want ErrNotMember", err)
	}
	if _, err := db.GroupEdit(c, qlib.GroupJoin, gid, "", ""); err != qlib.ErrNotInvited {
		t.Errorf("barred user joins: %v, want ErrNotInvited", err)
	}
	if _, err := db.GroupEdit(c, qlib.GroupDrop, gid, "", "carol two"); err != qlib.ErrNotMember {
		t.Errorf("barred user leaves: %v, want ErrNotMember", err)
	}
	if _, err := db.GroupInvite(c, gid, "carol c1", "alice one"); err != qlib.ErrNotMember {
		t.Errorf("barred user invites: %v, want ErrNotMember", err)
	}

	ch, err = db.GroupInvite(d, gid, "dave dave", "carol c1")
	udbWantChange(t, "dave re-invites barred carol", ch, err, gc{Alias: "carol c1", Invitee: c, Notify: []string{a, d, b}})
	ch, err = db.GroupEdit(c, qlib.GroupJoin, gid, "", "")
	udbWantChange(t, "carol joins again", ch, err, gc{Alias: "carol c1", Notify: []string{a, d, b, c}})

	rev = udbGroupRev(db, gid)
	if _, err := db.GroupInvite(a, gid, "alice one", "bobby b2"); err != qlib.ErrAlreadyMember {
		t.Errorf("inviting a joined member = %v, want ErrAlreadyMember", err)
	}
	if udbGroupRev(db, gid) != rev {
		t.Error("a refused invite rewrote the record")
	}
	udbWantMembers(t, db, a, gid, a, d, b, c)
	before := db.groups[gid].rec.Load()
	db.Close()

	db2, _ := udbOpen(t, dir)
	if after := db2.groups[gid].rec.Load(); !reflect.DeepEqual(after, before) {
		t.Errorf("group after reopen:\n%+v\nwant\n%+v", after, before)
	}
	udbWantMembers(t, db2, c, gid, a, d, b, c)
	ch, err = db2.GroupEdit(d, qlib.GroupDrop, gid, "", "dave dave")
	udbWantChange(t, "dave leaves after reopen", ch, err, gc{Alias: "dave dave", Notify: []string{a, b, c, d}})
}

func TestUserDBGroupErrors(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one", "alice two")
	b := udbUser(t, db, "bob smith")
	c := udbUser(t, db, "carol c1") // never in the group
	d := udbUser(t, db, "dave dave")
	e := udbUser(t, db, "erin erin")
	const gid = "errors group"
	for _, step := range []func() (qlib.GroupChange, error){
		func() (qlib.GroupChange, error) { return db.GroupInvite(a, gid, "alice one", "bob smith") },
		func() (qlib.GroupChange, error) { return db.GroupEdit(b, qlib.GroupJoin, gid, "", "") },
		func() (qlib.GroupChange, error) { return db.GroupInvite(a, gid, "alice one", "dave dave") },
		func() (qlib.GroupChange, error) { return db.GroupInvite(a, gid, "alice one", "erin erin") },
		func() (qlib.GroupChange, error) { return db.GroupEdit(e, qlib.GroupJoin, gid, "", "") },
		func() (qlib.GroupChange, error) { return db.GroupEdit(a, qlib.GroupDrop, gid, "", "erin erin") },
	} {
		if _, err := step(); err != nil {
			t.Fatal(err)
		}
	}
	// Now: a and b joined, d invited, e barred, c an outsider.
	rev := udbGroupRev(db, gid)

	invites := []struct {
		name               string
		uid, gid, from, to string
		want               error
	}{
		{"from another user's alias", a, gid, "bob smith", "carol c1", qlib.ErrFromNotSender},
		{"from an unknown alias", a, gid, "nobody at all", "carol c1", qlib.ErrFromNotSender},
		{"from the gid", a, gid, gid, "carol c1", qlib.ErrFromNotSender},
		{"from empty", a, gid, "", "carol c1", qlib.ErrFromNotSender},
		{"unknown sender", "nobody", gid, "alice one", "carol c1", qlib.ErrFromNotSender},
		{"to an unknown alias", a, gid, "alice one", "nobody at all", qlib.ErrAliasUnknown},
		{"to a gid", a, "another group", "alice one", gid, qlib.ErrAliasUnknown},
		{"to empty", a, gid, "alice one", "", qlib.ErrAliasUnknown},
		{"gid short", a, "short", "alice one", "carol c1", qlib.ErrGidShort},
		{"gid of 7 characters in 14 bytes", a, "ééééééé", "alice one", "carol c1", qlib.ErrGidShort},
		{"gid empty", a, "", "alice one", "carol c1", qlib.ErrGidShort},
		{"gid with nul", a, "group\x00nul", "alice one", "carol c1", qlib.ErrGidInvalid},
		{"gid with newline", a, "group\nnewline", "alice one", "carol c1", qlib.ErrGidInvalid},
		{"gid with bidi override", a, "group \u202e evil", "alice one", "carol c1", qlib.ErrGidInvalid},
		{"gid bad utf8", a, "group \xff\xfe", "alice one", "carol c1", qlib.ErrGidInvalid},
		{"gid too long", a, strings.Repeat("g", maxGidBytes+1), "alice one", "carol c1", qlib.ErrGidInvalid},
		{"gid is another's alias", a, "bob smith", "alice one", "carol c1", qlib.ErrGidTaken},
		{"gid is own alias", a, "alice two", "alice one", "carol c1", qlib.ErrGidTaken},
		{"new group inviting oneself", a, "lonely group", "alice one", "alice two", qlib.ErrAlreadyMember},
		{"outsider invites", c, gid, "carol c1", "alice one", qlib.ErrNotMember},
		{"invited member invites", d, gid, "dave dave", "carol c1", qlib.ErrNotMember},
		{"barred member invites", e, gid, "erin erin", "carol c1", qlib.ErrNotMember},
		{"inviting a joined member", a, gid, "alice one", "bob smith", qlib.ErrAlreadyMember},
		{"inviting oneself", b, gid, "bob smith", "bob smith", qlib.ErrAlreadyMember},
	}
	for _, c := range invites {
		if ch, err := db.GroupInvite(c.uid, c.gid, c.from, c.to); err != c.want || !reflect.DeepEqual(ch, qlib.GroupChange{}) {
			t.Errorf("%s: GroupInvite = %+v, %v; want %v", c.name, ch, err, c.want)
		}
	}

	edits := []struct {
		name              string
		uid               string
		act               qlib.GroupAct
		gid, newalias, to string
		want              error
	}{
		{"join unknown group", c, qlib.GroupJoin, "no such group", "", "", qlib.ErrNoGroup},
		{"rename in unknown group", a, qlib.GroupAlias, "no such group", "alice two", "", qlib.ErrNoGroup},
		{"drop in unknown group", a, qlib.GroupDrop, "no such group", "", "alice one", qlib.ErrNoGroup},
		{"join a path", c, qlib.GroupJoin, "../" + groupSubdir, "", "", qlib.ErrNoGroup},
		{"join by an outsider", c, qlib.GroupJoin, gid, "", "", qlib.ErrNotInvited},
		{"join by a joined member", b, qlib.GroupJoin, gid, "", "", qlib.ErrNotInvited},
		{"join by a barred user", e, qlib.GroupJoin, gid, "", "", qlib.ErrNotInvited},
		{"join under another's alias", d, qlib.GroupJoin, gid, "bob smith", "", qlib.ErrNewAliasNotOwn},
		{"join under an unknown alias", d, qlib.GroupJoin, gid, "nobody at all", "", qlib.ErrNewAliasNotOwn},
		{"join under the gid", d, qlib.GroupJoin, gid, gid, "", qlib.ErrNewAliasNotOwn},
		{"rename by an outsider", c, qlib.GroupAlias, gid, "carol c1", "", qlib.ErrNotMember},
		{"rename by an invited user", d, qlib.GroupAlias, gid, "dave dave", "", qlib.ErrNotMember},
		{"rename by a barred user", e, qlib.GroupAlias, gid, "erin erin", "", qlib.ErrNotMember},
		{"rename to nothing", b, qlib.GroupAlias, gid, "", "", qlib.ErrNewAliasNotOwn},
		{"rename to another's alias", b, qlib.GroupAlias, gid, "alice one", "", qlib.ErrNewAliasNotOwn},
		{"drop by an outsider", c, qlib.GroupDrop, gid, "", "bob smith", qlib.ErrNotMember},
		{"outsider drops itself", c, qlib.GroupDrop, gid, "", "carol c1", qlib.ErrNotMember},
		{"drop by an invited user", d, qlib.GroupDrop, gid, "", "bob smith", qlib.ErrNotMember},
		{"barred user drops itself", e, qlib.GroupDrop, gid, "", "erin erin", qlib.ErrNotMember},
		{"drop an unknown alias", a, qlib.GroupDrop, gid, "", "nobody at all", qlib.ErrAliasUnknown},
		{"drop a non-member", a, qlib.GroupDrop, gid, "", "carol c1", qlib.ErrAliasUnknown},
		{"drop a member's unlisted alias", b, qlib.GroupDrop, gid, "", "alice two", qlib.ErrAliasUnknown},
		{"drop nobody", a, qlib.GroupDrop, gid, "", "", qlib.ErrAliasUnknown},
		{"unknown act", a, qlib.GroupAct("leave"), gid, "", "alice one", ErrGroupAct},
	}
	for _, c := range edits {
		if ch, err := db.GroupEdit(c.uid, c.act, c.gid, c.newalias, c.to); err != c.want || !reflect.DeepEqual(ch, qlib.GroupChange{}) {
			t.Errorf("%s: GroupEdit = %+v, %v; want %v", c.name, ch, err, c.want)
		}
	}
	if m := udbMember(t, db, gid, d); m.Status != memberInvited || m.Alias != "dave dave" {
		t.Errorf("refused join changed dave to %+v", m)
	}

	for _, c := range []struct {
		name, uid, gid string
		want           error
	}{
		{"unknown group", a, "no such group", qlib.ErrNoGroup},
		{"outsider", c, gid, qlib.ErrNotMember},
		{"barred user", e, gid, qlib.ErrNotMember},
		{"unknown user", "nobody", gid, qlib.ErrNotMember},
	} {
		if got, err := db.GroupMembers(c.uid, c.gid); err != c.want || got != nil {
			t.Errorf("%s: GroupMembers = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	udbWantMembers(t, db, d, gid, a, b)

	if udbGroupRev(db, gid) != rev {
		t.Error("refused requests rewrote the group record")
	}
	if len(db.groups) != 1 {
		t.Errorf("refused invites left %d groups, want 1", len(db.groups))
	}
	if files, _ := os.ReadDir(db.groupDir); len(files) != 1 {
		t.Errorf("group directory holds %d files, want 1", len(files))
	}

	// The bounds themselves are accepted.
	for _, g := range []string{"eight888", "日本語のグループ", strings.Repeat("g", maxGidBytes)} {
		if _, err := db.GroupInvite(a, g, "alice one", "carol c1"); err != nil {
			t.Errorf("GroupInvite(%.20q) = %v", g, err)
		}
	}
}

// TestUserDBGroupNamespace checks that aliases and gids exclude each other,
// in both directions and across a reopen.
func TestUserDBGroupNamespace(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	if _, err := db.GroupInvite(a, "shared name", "alice one", "bob smith"); err != nil {
		t.Fatal(err)
	}
	check := func(db *UserDB) {
		t.Helper()
		if err := db.AddAlias(b, "shared name"); err != qlib.ErrAliasTaken {
			t.Errorf("AddAlias(gid) = %v, want ErrAliasTaken", err)
		}
		if _, err := db.CreateFixture("u100002", []string{"x"}, []string{"shared name"}); err != qlib.ErrAliasTaken {
			t.Errorf("CreateFixture with a gid alias = %v, want ErrAliasTaken", err)
		}
		if db.Exists("u100002") {
			t.Error("refused fixture exists")
		}
		if owner, ok := db.AliasUID("shared name"); ok {
			t.Errorf("AliasUID(gid) = %q", owner)
		}
		for _, g := range []string{"alice one", "bob smith"} {
			if _, err := db.GroupInvite(a, g, "alice one", "bob smith"); err != qlib.ErrGidTaken {
				t.Errorf("GroupInvite(gid %q is an alias) = %v, want ErrGidTaken", g, err)
			}
			if err := db.CreateGroupFixture(g, nil, nil); err != qlib.ErrGidTaken {
				t.Errorf("CreateGroupFixture(%q is an alias) = %v, want ErrGidTaken", g, err)
			}
			if _, err := db.GroupMembers(a, g); err != qlib.ErrNoGroup {
				t.Errorf("GroupMembers(alias %q) = %v, want ErrNoGroup", g, err)
			}
		}
	}
	check(db)
	db.Close()
	db2, _ := udbOpen(t, dir)
	check(db2)
}

func TestUserDBGroupFixture(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	if _, err := db.CreateFixture("u100002", []string{"sendnode", "node 1"}, []string{"test1", "test11"}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateFixture("u100003", []string{"recvnode", "node 1"}, []string{"test2"}); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateGroupFixture("blab", map[string]string{"u100002": "test1"}, nil); err != nil {
		t.Fatal(err)
	}
	udbWantMembers(t, db, "u100002", "blab") // invited, nobody joined
	if m := udbMember(t, db, "blab", "u100002"); m.Alias != "test1" || m.Status != memberInvited {
		t.Errorf("fixture member %+v", m)
	}

	// The group steps of reference-test.json, in order.
	const s = "u100002"
	ch, err := db.GroupEdit(s, qlib.GroupJoin, "blab", "", "")
	udbWantChange(t, "join blab", ch, err, qlib.GroupChange{Alias: "test1", Notify: []string{s}})
	ch, err = db.GroupEdit(s, qlib.GroupDrop, "blab", "", "test1")
	udbWantChange(t, "drop test1", ch, err, qlib.GroupChange{Alias: "test1", Notify: []string{s}})
	if _, err := db.GroupInvite(s, "short", "test1", "test2"); err != qlib.ErrGidShort || err.Error() != "gid must be 8+ characters" {
		t.Errorf("invite into short = %v", err)
	}
	ch, err = db.GroupInvite(s, "talktalk", "test1", "test2")
	udbWantChange(t, "invite test2 into talktalk", ch, err, qlib.GroupChange{Alias: "test2", Invitee: "u100003", Notify: []string{s}})
	ch, err = db.GroupEdit(s, qlib.GroupAlias, "talktalk", "test11", "")
	udbWantChange(t, "alias test11", ch, err, qlib.GroupChange{Alias: "test1", NewAlias: "test11", Notify: []string{s}})

	// A short fixture gid is an existing group, so joined members may invite.
	if _, err := db.GroupEdit(s, qlib.GroupJoin, "blab", "", ""); err != nil {
		t.Fatal(err)
	}
	ch, err = db.GroupInvite(s, "blab", "test11", "test2")
	udbWantChange(t, "invite into blab", ch, err, qlib.GroupChange{Alias: "test2", Invitee: "u100003", Notify: []string{s}})

	if err := db.CreateGroupFixture("pair", map[string]string{s: "test11", "u100003": "test2"}, map[string]bool{"u100003": true}); err != nil {
		t.Fatal(err)
	}
	udbWantMembers(t, db, s, "pair", "u100003")

	for _, c := range []struct {
		name    string
		gid     string
		members map[string]string
		joined  map[string]bool
		want    error // nil: any error
	}{
		{"existing group", "blab", nil, nil, ErrGroupExists},
		{"gid is an alias", "test2", nil, nil, qlib.ErrGidTaken},
		{"empty gid", "", nil, nil, qlib.ErrGidShort},
		{"gid with nul", "bad\x00", nil, nil, qlib.ErrGidInvalid},
		{"unknown member", "fixture x", map[string]string{"u100009": "test1"}, nil, nil},
		{"alias not the member's", "fixture x", map[string]string{s: "test2"}, nil, nil},
		{"joined but not a member", "fixture x", map[string]string{s: "test1"}, map[string]bool{"u100003": true}, nil},
	} {
		err := db.CreateGroupFixture(c.gid, c.members, c.joined)
		if err == nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: CreateGroupFixture = %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := db.GroupMembers(s, "fixture x"); err != qlib.ErrNoGroup {
		t.Errorf("refused fixture group exists: %v", err)
	}
	db.Close()

	db2, _ := udbOpen(t, dir)
	udbWantMembers(t, db2, s, "blab", s)
	udbWantMembers(t, db2, s, "talktalk", s)
	if m := udbMember(t, db2, "talktalk", s); m.Alias != "test11" {
		t.Errorf("talktalk lists the sender as %q after reopen", m.Alias)
	}
}

// udbGroupSetup makes two users and a group with a joined and an invited
// member, and closes the database.
func udbGroupSetup(t *testing.T, dir string) (a, b string, rec *groupRecord) {
	t.Helper()
	db, _ := udbOpen(t, dir)
	a = udbUser(t, db, "alice one", "alice two")
	b = udbUser(t, db, "bob smith")
	if _, err := db.GroupInvite(a, "corruptible", "alice one", "bob smith"); err != nil {
		t.Fatal(err)
	}
	rec = db.groups["corruptible"].rec.Load()
	db.Close()
	return a, b, rec
}

// TestUserDBGroupCorruptRecord flips each byte of a group record in turn:
// every flip must stop OpenUserDB with an error naming the file.
func TestUserDBGroupCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	udbGroupSetup(t, dir)
	sum := sha256.Sum256([]byte("corruptible"))
	path := filepath.Join(dir, groupSubdir, hex.EncodeToString(sum[:])+recordSuffix)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("group record not named by the gid's hash: %v", err)
	}
	if !bytes.Contains(good, []byte(`"gid":"corruptible"`)) {
		t.Errorf("record does not hold its gid:\n%s", good)
	}
	bad := slices.Clone(good)
	for i := range bad {
		bad[i] ^= 1
		if err := os.WriteFile(path, bad, recordPerm); err != nil {
			t.Fatal(err)
		}
		db, err := OpenUserDB(UserDBOptions{Dir: dir})
		if err == nil {
			db.Close()
			t.Fatalf("flipping byte %d (%q) went unnoticed", i, good[i])
		}
		if !strings.Contains(err.Error(), path) {
			t.Fatalf("flipping byte %d: error %q does not name %s", i, err, path)
		}
		bad[i] = good[i]
	}
	if err := os.WriteFile(path, good, recordPerm); err != nil {
		t.Fatal(err)
	}
	db, _ := udbOpen(t, dir)
	if _, err := db.GroupMembers(db.groups["corruptible"].rec.Load().Members[0].UID, "corruptible"); err != nil {
		t.Errorf("group unusable after restoring its record: %v", err)
	}
}

func TestUserDBGroupCorruptContents(t *testing.T) {
	rec := &groupRecord{GID: "a group id", Rev: 1, Members: []memberRecord{
		{UID: "u1", Alias: "one", Status: memberJoined},
		{UID: "u2", Alias: "two", Status: memberInvited},
	}}
	stem := groupFileStem(rec.GID)
	// Each mutation yields a well-checksummed record that is still wrong.
	cases := map[string]func(r *groupRecord){
		"gid differs from file name": func(r *groupRecord) { r.GID = "another group" },
		"empty gid":                  func(r *groupRecord) { r.GID = "" },
		"member repeated":            func(r *groupRecord) { r.Members[1].UID = "u1" },
		"listing alias repeated":     func(r *groupRecord) { r.Members[1].Alias = "one" },
		"empty listing alias":        func(r *groupRecord) { r.Members[1].Alias = "" },
		"bad member uid":             func(r *groupRecord) { r.Members[1].UID = "../x" },
		"empty member uid":           func(r *groupRecord) { r.Members[1].UID = "" },
		"unknown status":             func(r *groupRecord) { r.Members[1].Status = "owner" },
		"no status":                  func(r *groupRecord) { r.Members[1].Status = "" },
		"open for posting, not open": func(r *groupRecord) { r.OpenPost = true },
	}
	for name, mutate := range cases {
		r := rec.clone()
		mutate(r)
		data, err := encodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseRecord[groupRecord](data, stem); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A bad gid is refused even when the file is named after it.
	nul := rec.clone()
	nul.GID = "bad\x00gid!"
	if data, _ := encodeRecord(nul); data != nil {
		if _, err := parseRecord[groupRecord](data, groupFileStem(nul.GID)); err == nil {
			t.Error("gid with nul accepted")
		}
	}
	data, _ := encodeRecord(rec)
	if _, err := parseRecord[groupRecord](data, stem); err != nil {
		t.Errorf("unmutated record refused: %v", err)
	}
	// Neither kind of record passes for the other.
	user, _ := encodeRecord(&userRecord{UID: "u1", Rev: 1})
	if _, err := parseRecord[groupRecord](user, stem); err == nil {
		t.Error("user record accepted as a group")
	}
	if _, err := parseRecord[userRecord](data, "u1"); err == nil {
		t.Error("group record accepted as a user")
	}
}

// TestUserDBGroupInconsistent writes well-formed group records that
// contradict the user records; each must stop OpenUserDB, naming the files.
func TestUserDBGroupInconsistent(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(r *groupRecord, a, b string)
		files  func(db *UserDB, r *groupRecord, a, b string) []string
	}{
		{"gid equal to an alias", func(r *groupRecord, a, b string) { r.GID = "alice two" },
			func(db *UserDB, r *groupRecord, a, b string) []string {
				return []string{db.recordPath(a), db.groupPath("alice two")}
			}},
		{"member is not a user", func(r *groupRecord, a, b string) { r.Members[1].UID = "u100009" },
			func(db *UserDB, r *groupRecord, a, b string) []string { return []string{db.groupPath(r.GID)} }},
		{"member listed under another's alias", func(r *groupRecord, a, b string) { r.Members[1].Alias = "alice two" },
			func(db *UserDB, r *groupRecord, a, b string) []string { return []string{db.groupPath(r.GID)} }},
		{"member listed under an unknown alias", func(r *groupRecord, a, b string) { r.Members[1].Alias = "nobody's" },
			func(db *UserDB, r *groupRecord, a, b string) []string { return []string{db.groupPath(r.GID)} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b, rec := udbGroupSetup(t, dir)
			db := &UserDB{userDir: filepath.Join(dir, userSubdir), groupDir: filepath.Join(dir, groupSubdir)}
			if err := os.Remove(db.groupPath(rec.GID)); err != nil {
				t.Fatal(err)
			}
			r := rec.clone()
			c.mutate(r, a, b)
			data, err := encodeRecord(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(db.groupPath(r.GID), data, recordPerm); err != nil {
				t.Fatal(err)
			}
			_, err = OpenUserDB(UserDBOptions{Dir: dir})
			if err == nil {
				t.Fatal("OpenUserDB succeeded")
			}
			for _, f := range c.files(db, r, a, b) {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error %q does not name %s", err, f)
				}
			}
		})
	}
}

// udbWriteGroupTemp writes rec (or data) as an interrupted write of rec's
// group would have left it.
func udbWriteGroupTemp(t *testing.T, dir string, rec *groupRecord, data []byte) string {
	t.Helper()
	if data == nil {
		var err error
		if data, err = encodeRecord(rec); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, groupSubdir, groupFileStem(rec.GID)+recordSuffix+recordTmpSuffix)
	if err := os.WriteFile(path, data, recordPerm); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUserDBGroupTempCompleted(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	const gid = "temp group"
	if _, err := db.GroupInvite(a, gid, "alice one", "bob smith"); err != nil {
		t.Fatal(err)
	}

	// A join that crashed between fsync and rename.
	final := db.groupPath(gid)
	before, err := os.ReadFile(final)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupEdit(b, qlib.GroupJoin, gid, "", ""); err != nil {
		t.Fatal(err)
	}
	tmpA := final + recordTmpSuffix
	if err := os.Rename(final, tmpA); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(final, before, recordPerm); err != nil {
		t.Fatal(err)
	}

	// A creation that crashed the same way: no record yet.
	fresh := &groupRecord{GID: "fresh group", Rev: 1, Created: time.Now().UTC(),
		Members: []memberRecord{{UID: a, Alias: "alice one", Status: memberJoined}}}
	tmpB := udbWriteGroupTemp(t, dir, fresh, nil)
	db.Close()

	db2, logs := udbOpen(t, dir)
	udbWantMembers(t, db2, a, gid, a, b)
	udbWantMembers(t, db2, a, "fresh group", a)
	if err := db2.AddAlias(b, "fresh group"); err != qlib.ErrAliasTaken {
		t.Errorf("completed gid not in the namespace: AddAlias = %v", err)
	}
	for _, p := range []string{tmpA, tmpB} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still exists: %v", p, err)
		}
		if !strings.Contains(logs.String(), "completed interrupted write") || !strings.Contains(logs.String(), p) {
			t.Errorf("no log of completing %s:\n%s", p, logs)
		}
	}
	db2.Close()
	db3, _ := udbOpen(t, dir)
	udbWantMembers(t, db3, a, "fresh group", a)
}

func TestUserDBGroupTempDiscarded(t *testing.T) {
	dir := t.TempDir()
	a, b, current := udbGroupSetup(t, dir)

	newer := current.clone()
	newer.Rev++
	newer.Members[1].Status = memberJoined
	whole, err := encodeRecord(newer)
	if err != nil {
		t.Fatal(err)
	}
	aliasGid := &groupRecord{GID: "alice two", Rev: 1,
		Members: []memberRecord{{UID: a, Alias: "alice one", Status: memberJoined}}}
	misnamed, err := encodeRecord(&groupRecord{GID: "another group", Rev: 9})
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		rec  *groupRecord
		data []byte
	}{
		{"truncated", newer, whole[:len(whole)/2]},
		{"missing last byte", newer, whole[:len(whole)-2]},
		{"empty", newer, []byte{}},
		{"garbage", newer, []byte("\x00\x17garbage that is not json")},
		{"zeroed", newer, make([]byte, len(whole))},
		{"stale", current, nil}, // same rev as the record
		{"gid is an alias", aliasGid, nil},
		{"named after another gid", newer, misnamed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmp := udbWriteGroupTemp(t, dir, c.rec, c.data)
			db, logs := udbOpen(t, dir)
			if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("temp file still exists: %v", err)
			}
			if !strings.Contains(logs.String(), "discarded interrupted write") || !strings.Contains(logs.String(), tmp) {
				t.Errorf("no log of discarding %s:\n%s", tmp, logs)
			}
			udbWantMembers(t, db, b, current.GID, a) // b still only invited
			if _, err := db.GroupMembers(a, "alice two"); err != qlib.ErrNoGroup {
				t.Errorf("discarded group exists: %v", err)
			}
			if owner, ok := db.AliasUID("alice two"); !ok || owner != a {
				t.Errorf("alias alice two now resolves to %q, %v", owner, ok)
			}
		})
	}
}

// TestUserDBGroupHostileGids sends gids that are paths, huge, or not text
// through every group call; none may create a file anywhere but under a
// hashed name in the group directory.
func TestUserDBGroupHostileGids(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "userdb")
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	hostile := []struct {
		gid  string
		want error // of the creating invite
	}{
		{strings.Repeat("g", 100000), qlib.ErrGidInvalid},
		{strings.Repeat("../", maxGidBytes), qlib.ErrGidInvalid},
		{"../x", qlib.ErrGidShort},
		{"..", qlib.ErrGidShort},
		{"nul\x00in the middle", qlib.ErrGidInvalid},
		{"bad utf8 \xff\xfe\xfd", qlib.ErrGidInvalid},
		{"\xc0\xaf\xc0\xaf\xc0\xafetc", qlib.ErrGidInvalid}, // overlong "/"
		{"../../../../../../tmp/evil group", nil},
		{"/etc/passwd-group", nil},
		{"group/../../x", nil},
		{`C:\windows\group`, nil},
		{"*?<>|\"' all the rest", nil},
		{strings.Repeat("/", 12), nil},
	}
	created := 0
	for _, h := range hostile {
		_, err := db.GroupInvite(a, h.gid, "alice one", "bob smith")
		if err != h.want {
			t.Errorf("GroupInvite(%.30q) = %v, want %v", h.gid, err, h.want)
		}
		if err == nil {
			created++
			if _, err := db.GroupEdit(b, qlib.GroupJoin, h.gid, "", ""); err != nil {
				t.Errorf("join %.30q: %v", h.gid, err)
			}
			udbWantMembers(t, db, b, h.gid, a, b)
			if _, err := db.GroupEdit(b, qlib.GroupDrop, h.gid, "", "bob smith"); err != nil {
				t.Errorf("leave %.30q: %v", h.gid, err)
			}
			continue
		}
		for _, act := range []qlib.GroupAct{qlib.GroupJoin, qlib.GroupAlias, qlib.GroupDrop} {
			if _, err := db.GroupEdit(a, act, h.gid, "alice one", "alice one"); err != qlib.ErrNoGroup {
				t.Errorf("GroupEdit(%s, %.30q) = %v, want ErrNoGroup", act, h.gid, err)
			}
		}
		if _, err := db.GroupMembers(a, h.gid); err != qlib.ErrNoGroup {
			t.Errorf("GroupMembers(%.30q) = %v, want ErrNoGroup", h.gid, err)
		}
	}

	if entries, err := os.ReadDir(root); err != nil || len(entries) != 1 || entries[0].Name() != "userdb" {
		t.Errorf("test root holds %v (%v), want only userdb", entries, err)
	}
	groupFiles := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		sub, name := filepath.Split(rel)
		stem, ok := strings.CutSuffix(name, recordSuffix)
		switch {
		case sub == userSubdir+string(filepath.Separator) && ok && validUID(stem):
		case sub == groupSubdir+string(filepath.Separator) && ok && len(stem) == 2*sha256.Size && strings.Trim(stem, "0123456789abcdef") == "":
			groupFiles++
		default:
			t.Errorf("unexpected file %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if groupFiles != created {
		t.Errorf("%d group files for %d groups", groupFiles, created)
	}
	db.Close()

	db2, _ := udbOpen(t, dir)
	for _, h := range hostile {
		if h.want == nil {
			udbWantMembers(t, db2, a, h.gid, a)
		}
	}
}

// TestUserDBGroupWriteFailure makes a group write fail cleanly, which must
// leave the gid free, and then doubtfully, which must stop all writes.
func TestUserDBGroupWriteFailure(t *testing.T) {
	db, logs := udbOpen(t, t.TempDir())
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	const gid = "blocked group"

	// An empty directory in place of the temp file: the create fails, and
	// the cleanup removes it.
	if err := os.Mkdir(db.groupPath(gid)+recordTmpSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupInvite(a, gid, "alice one", "bob smith"); err == nil {
		t.Fatal("GroupInvite succeeded with its temp file blocked")
	}
	if _, err := db.GroupMembers(a, gid); err != qlib.ErrNoGroup {
		t.Errorf("group of a failed creation: GroupMembers = %v", err)
	}
	if _, err := db.GroupInvite(a, gid, "alice one", "bob smith"); err != nil {
		t.Fatalf("gid of a clean failure cannot be created: %v", err)
	}

	// An edit failing the same way leaves the group as it was.
	if err := os.Mkdir(db.groupPath(gid)+recordTmpSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupEdit(b, qlib.GroupJoin, gid, "", ""); err == nil {
		t.Fatal("join succeeded with its temp file blocked")
	}
	if m := udbMember(t, db, gid, b); m.Status != memberInvited {
		t.Errorf("failed join left bob %+v", m)
	}

	// A non-empty directory in place of a new group's record: the rename
	// fails, and nothing may be written after.
	const doubt = "doubtful group"
	if err := os.MkdirAll(filepath.Join(db.groupPath(doubt), "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GroupInvite(a, doubt, "alice one", "bob smith"); err == nil {
		t.Fatal("GroupInvite succeeded with its record blocked")
	}
	if !strings.Contains(logs.String(), "refusing further writes") {
		t.Errorf("no log of refusing writes:\n%s", logs)
	}
	if _, err := db.GroupMembers(a, doubt); err != qlib.ErrNoGroup {
		t.Errorf("group of a doubtful write: %v", err)
	}
	if err := db.AddAlias(b, doubt); err == nil {
		t.Error("alias claimed the gid of a doubtful write")
	}
	if _, err := db.GroupEdit(b, qlib.GroupJoin, gid, "", ""); err == nil {
		t.Error("GroupEdit succeeded after a doubtful write")
	}
	if _, err := db.GroupInvite(a, "another group", "alice one", "bob smith"); err == nil {
		t.Error("GroupInvite succeeded after a doubtful write")
	}
	udbWantMembers(t, db, b, gid, a) // reads go on
}

func TestUserDBGroupClose(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	if _, err := db.GroupInvite(a, "open group", "alice one", "bob smith"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := db.GroupInvite(a, "closed group", "alice one", "bob smith"); err != ErrClosed {
		t.Errorf("GroupInvite creating after Close = %v", err)
	}
	if _, err := db.GroupInvite(a, "open group", "alice one", "bob smith"); err != ErrClosed {
		t.Errorf("GroupInvite after Close = %v", err)
	}
	if _, err := db.GroupEdit(b, qlib.GroupJoin, "open group", "", ""); err != ErrClosed {
		t.Errorf("GroupEdit after Close = %v", err)
	}
	if err := db.CreateGroupFixture("fixture group", nil, nil); err != ErrClosed {
		t.Errorf("CreateGroupFixture after Close = %v", err)
	}
	udbWantMembers(t, db, b, "open group", a)
}

// TestUserDBGroupsDirMissing opens a database from before groups existed.
func TestUserDBGroupsDirMissing(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	db.Close()
	if err := os.Remove(filepath.Join(dir, groupSubdir)); err != nil {
		t.Fatal(err)
	}
	db2, _ := udbOpen(t, dir)
	if _, err := os.Stat(filepath.Join(dir, groupSubdir)); err != nil {
		t.Errorf("group directory not recreated: %v", err)
	}
	if _, err := db2.GroupInvite(a, "first group", "alice one", "bob smith"); err != nil {
		t.Errorf("GroupInvite in a database without a group directory: %v", err)
	}
	udbWantMembers(t, db2, b, "first group", a)
}

// TestUserDBGroupConcurrent races group creation against itself and against
// an alias of the same name, then invites and joins many members at once.
func TestUserDBGroupConcurrent(t *testing.T) {
	const n = 16
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uids := make([]string, n)
	aliases := make([]string, n)
	for i := range n {
		aliases[i] = fmt.Sprintf("racer %02d", i)
		uids[i] = udbUser(t, db, aliases[i])
	}
	target := udbUser(t, db, "target user")

	// Everyone creates each of the "race" groups at once, released together
	// so that some find the group created between their look and their
	// claim; a loser must be told it is not a member, as for any group.
	const rounds = 8
	creators := make([]int, rounds)
	var wg sync.WaitGroup
	for r := range rounds {
		gid := fmt.Sprintf("race group %d", r)
		inviteErrs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				_, inviteErrs[i] = db.GroupInvite(uids[i], gid, aliases[i], "target user")
			})
		}
		close(start)
		wg.Wait()
		creators[r] = -1
		for i, err := range inviteErrs {
			switch err {
			case nil:
				if creators[r] >= 0 {
					t.Errorf("%s created by both %d and %d", gid, creators[r], i)
				}
				creators[r] = i
			case qlib.ErrNotMember:
			default:
				t.Errorf("%s: racer %d: %v", gid, i, err)
			}
		}
		if creators[r] < 0 {
			t.Fatalf("nobody created %s", gid)
		}
		udbWantMembers(t, db, target, gid, uids[creators[r]])
	}
	creator := creators[0]

	// Half create "contested" while the other half claim it as an alias.
	contestErrs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			if i%2 == 0 {
				_, contestErrs[i] = db.GroupInvite(uids[i], "contested", aliases[i], "target user")
			} else {
				contestErrs[i] = db.AddAlias(uids[i], "contested")
			}
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range contestErrs {
		switch err {
		case nil:
			if winner >= 0 {
				t.Errorf("contested won by both %d and %d", winner, i)
			}
			winner = i
		case qlib.ErrNotMember, qlib.ErrGidTaken, qlib.ErrAliasTaken:
		default:
			t.Errorf("contender %d: %v", i, err)
		}
	}
	owner, isAlias := db.AliasUID("contested")
	_, groupErr := db.GroupMembers(target, "contested")
	switch {
	case winner < 0:
		t.Error("nobody won contested")
	case winner%2 == 0 && (isAlias || groupErr != nil):
		t.Errorf("group won contested, but AliasUID = %q, %v and GroupMembers error %v", owner, isAlias, groupErr)
	case winner%2 == 1 && (!isAlias || owner != uids[winner] || groupErr != qlib.ErrNoGroup):
		t.Errorf("alias won contested, but AliasUID = %q, %v and GroupMembers error %v", owner, isAlias, groupErr)
	}

	// The creator invites everyone at once; then they all join at once,
	// while readers list the members.
	errs := make(chan error, 3*n)
	for i := range n {
		if i == creator {
			continue
		}
		wg.Go(func() {
			ch, err := db.GroupInvite(uids[creator], "race group 0", aliases[creator], aliases[i])
			if err != nil || ch.Invitee != uids[i] {
				errs <- fmt.Errorf("invite %d: %+v, %v", i, ch, err)
			}
		})
	}
	wg.Wait()
	notifyLens := make(chan int, n)
	for i := range n {
		if i == creator {
			continue
		}
		wg.Go(func() {
			ch, err := db.GroupEdit(uids[i], qlib.GroupJoin, "race group 0", "", "")
			if err != nil || !slices.Contains(ch.Notify, uids[i]) || !slices.Contains(ch.Notify, uids[creator]) {
				errs <- fmt.Errorf("join %d: %+v, %v", i, ch, err)
				return
			}
			notifyLens <- len(ch.Notify)
		})
		wg.Go(func() {
			if _, err := db.GroupMembers(uids[i], "race group 0"); err != nil {
				errs <- fmt.Errorf("GroupMembers %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	close(notifyLens)
	for err := range errs {
		t.Error(err)
	}
	// Joins were applied one at a time: each saw a different member count.
	var lens []int
	for l := range notifyLens {
		lens = append(lens, l)
	}
	slices.Sort(lens)
	for i, l := range lens {
		if l != i+2 {
			t.Fatalf("join notice sizes %v, want 2..%d once each", lens, n)
		}
	}

	members, err := db.GroupMembers(target, "race group 0")
	if err != nil || len(members) != n || members[0] != uids[creator] {
		t.Fatalf("GroupMembers = %v, %v; want all %d racers, creator first", members, err, n)
	}
	if got := slices.Sorted(slices.Values(members)); !slices.Equal(got, slices.Sorted(slices.Values(uids))) {
		t.Errorf("members %v, want %v", got, uids)
	}
	db.Close()
	db2, _ := udbOpen(t, dir)
	udbWantMembers(t, db2, target, "race group 0", members...)
}

// FuzzUserDBParseGroup feeds arbitrary file contents to the group record
// parser: it must never panic, and what it accepts must be named by its
// gid's hash and re-encode to a record it accepts again, byte for byte.
func FuzzUserDBParseGroup(f *testing.F) {
	rec := &groupRecord{GID: "group ☎ one", Rev: 2, Members: []memberRecord{
		{UID: "u100002", Alias: "test1", Status: memberJoined},
		{UID: "u100003", Alias: "ålias two", Status: memberBarred},
	}}
	stem := groupFileStem(rec.GID)
	good, err := encodeRecord(rec)
	if err != nil {
		f.Fatal(err)
	}
	user, _ := encodeRecord(&userRecord{UID: "u100002", Rev: 1})
	f.Add(good)                                                                                                     // a valid record
	f.Add(good[:len(good)/2])                                                                                       // torn write
	f.Add([]byte{})                                                                                                 // empty file
	f.Add([]byte(`{}`))                                                                                             // envelope without fields
	f.Add(user)                                                                                                     // a user record
	f.Add([]byte(`{"v":1,"crc32c":"00000000","group":{}}`))                                                         // wrong checksum
	f.Add(fmt.Appendf(nil, `{"v":1,"crc32c":"%08x","group":null}`, crc32.Checksum([]byte("null"), recordCRCTable))) // valid checksum, no group
	f.Add(bytes.Replace(good, []byte("joined"), []byte("barred"), 1))                                               // status changed, checksum not
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := parseRecord[groupRecord](data, stem)
		if err != nil {
			return
		}
		if groupFileStem(rec.GID) != stem {
			t.Fatalf("accepted gid %q under another gid's file name", rec.GID)
		}
		again, err := encodeRecord(rec)
		if err != nil {
			t.Fatalf("accepted record does not encode: %v", err)
		}
		rec2, err := parseRecord[groupRecord](again, stem)
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		third, _ := encodeRecord(rec2)
		if !bytes.Equal(again, third) {
			t.Fatalf("encoding not stable:\n%s\n%s", again, third)
		}
	})
}

// FuzzUserDBGid checks the gid rules against their definition.
func FuzzUserDBGid(f *testing.F) {
	f.Add("eight888")                       // shortest valid ASCII
	f.Add("blab")                           // the fixture gid, short
	f.Add("../../etc/passwd")               // a path is a valid gid, never a file name
	f.Add("with\x00nul")                    // control character
	f.Add("bad \xff utf8")                  // invalid UTF-8
	f.Add(strings.Repeat("g", maxGidBytes)) // longest valid
	f.Fuzz(func(t *testing.T, gid string) {
		err := checkGid(gid, minGidChars)
		valid := utf8.ValidString(gid) && !strings.ContainsFunc(gid, func(r rune) bool { return !unicode.IsPrint(r) })
		switch {
		case len(gid) > maxGidBytes || !valid:
			if err != qlib.ErrGidInvalid {
				t.Fatalf("%q: %v, want ErrGidInvalid", gid, err)
			}
		case utf8.RuneCountInString(gid) < minGidChars:
			if err != qlib.ErrGidShort {
				t.Fatalf("%q: %v, want ErrGidShort", gid, err)
			}
		case err != nil:
			t.Fatalf("%q: %v, want nil", gid, err)
		}
		if stem := groupFileStem(gid); len(stem) != 2*sha256.Size || filepath.Base(stem) != stem {
			t.Fatalf("file stem %q for %q", stem, gid)
		}
	})
}

// TestUserDBTempAliasIsGid checks that an interrupted user write claiming a
// gid as an alias is discarded, not completed over the group's name.
func TestUserDBTempAliasIsGid(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	if _, err := db.GroupInvite(a, "the group", "alice one", "bob smith"); err != nil {
		t.Fatal(err)
	}
	rec := db.users[b].rec.Load().clone()
	db.Close()
	rec.Rev++
	rec.Aliases = append(rec.Aliases, "the group")
	tmp := udbWriteTemp(t, dir, rec, nil)

	db2, logs := udbOpen(t, dir)
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp file still exists: %v", err)
	}
	if !strings.Contains(logs.String(), "discarded interrupted write") {
		t.Errorf("no log of discarding %s:\n%s", tmp, logs)
	}
	if owner, ok := db2.AliasUID("the group"); ok {
		t.Errorf("gid resolves as an alias of %s", owner)
	}
	udbWantMembers(t, db2, b, "the group", a)
}

// udbWaitBlocked waits until some goroutine is blocked on a mutex inside
// the UserDB method fn, or fails the test after a deadline. It reads the
// goroutine stacks: the blocked call has no other way to say it is waiting.
func udbWaitBlocked(t *testing.T, fn string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); runtime.Gosched() {
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "sync.(*Mutex).Lock") && strings.Contains(g, ".(*UserDB)."+fn+"(") {
				return
			}
		}
	}
	t.Fatalf("no goroutine blocked in %s", fn)
}

// TestUserDBGroupCreationInProgress checks that requests for a gid whose
// creation is being written wait for it, and go on correctly whether it
// succeeds or fails. The creation is simulated by listing a group state
// without a record, its write lock held, as createGroupRecord does.
func TestUserDBGroupCreationInProgress(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	a := udbUser(t, db, "alice one")
	b := udbUser(t, db, "bob smith")
	c := udbUser(t, db, "carol c1")
	begin := func(gid string) *groupState {
		g := &groupState{}
		g.wmu.Lock()
		db.mu.Lock()
		db.groups[gid] = g
		db.names[gid] = &nameEntry{kind: nameGroup, owner: gid, pending: true}
		db.mu.Unlock()
		return g
	}

	// The creation succeeds: the waiting invite goes into the new group.
	g := begin("group one")
	if _, err := db.GroupMembers(a, "group one"); err != qlib.ErrNoGroup {
		t.Errorf("GroupMembers during creation = %v, want ErrNoGroup", err)
	}
	if err := db.AddAlias(c, "group one"); err != qlib.ErrAliasTaken {
		t.Errorf("AddAlias of a gid being created = %v, want ErrAliasTaken", err)
	}
	done := make(chan error, 1)
	go func() {
		ch, err := db.GroupInvite(a, "group one", "alice one", "carol c1")
		if err == nil && !slices.Equal(ch.Notify, []string{a, b}) {
			err = fmt.Errorf("notify %v, want [%s %s]", ch.Notify, a, b)
		}
		done <- err
	}()
	udbWaitBlocked(t, "lockGroup")
	rec := &groupRecord{GID: "group one", Rev: 1, Members: []memberRecord{
		{UID: a, Alias: "alice one", Status: memberJoined},
		{UID: b, Alias: "bob smith", Status: memberJoined},
	}}
	if err := writeRecord(db, rec); err != nil {
		t.Fatal(err)
	}
	db.mu.Lock()
	g.rec.Store(rec)
	db.names["group one"].pending = false
	db.mu.Unlock()
	g.wmu.Unlock()
	if err := <-done; err != nil {
		t.Errorf("invite waiting for a creation: %v", err)
	}
	udbWantMembers(t, db, c, "group one", a, b)

	// The creation fails: the waiting invite creates the group itself.
	g = begin("group two")
	go func() {
		ch, err := db.GroupInvite(b, "group two", "bob smith", "carol c1")
		if err == nil && !slices.Equal(ch.Notify, []string{b}) {
			err = fmt.Errorf("notify %v, want [%s]", ch.Notify, b)
		}
		done <- err
	}()
	udbWaitBlocked(t, "lockGroup")
	db.mu.Lock()
	delete(db.groups, "group two")
	delete(db.names, "group two")
	db.mu.Unlock()
	g.wmu.Unlock()
	if err := <-done; err != nil {
		t.Errorf("invite waiting for a failed creation: %v", err)
	}
	udbWantMembers(t, db, c, "group two", b)
}

// BenchmarkUserDBGroupEdit measures a membership change in a group of 100
// members: each rewrites and fsyncs the whole group record.
func BenchmarkUserDBGroupEdit(b *testing.B) {
	const members = 100
	db, _ := udbOpen(b, b.TempDir())
	owner := udbUser(b, db, "group owner")
	var last string
	for i := range members - 1 {
		alias := fmt.Sprintf("member %03d", i)
		last = udbUser(b, db, alias)
		if _, err := db.GroupInvite(owner, "bench group", "group owner", alias); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, err := db.GroupEdit(last, qlib.GroupJoin, "bench group", "", ""); err != nil {
			b.Fatal(err)
		}
		if _, err := db.GroupEdit(last, qlib.GroupDrop, "bench group", "", fmt.Sprintf("member %03d", members-2)); err != nil {
			b.Fatal(err)
		}
	}
}

func TestUserDBGroupFull(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir(), func(o *UserDBOptions) { o.MaxGroupMembers = 3 })
	var uids []string
	for i := range 4 {
		uid, _, _, err := db.Register("dev", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.AddAlias(uid, fmt.Sprintf("member %d alias", i)); err != nil {
			t.Fatal(err)
		}
		uids = append(uids, uid)
	}
	const gid = "small group"
	for i := 1; i < 3; i++ {
		if _, err := db.GroupInvite(uids[0], gid, "member 0 alias", fmt.Sprintf("member %d alias", i)); err != nil {
			t.Fatalf("invite %d: %v", i, err)
		}
	}
	if _, err := db.GroupInvite(uids[0], gid, "member 0 alias", "member 3 alias"); err != qlib.ErrGroupFull {
		t.Fatalf("fourth member: %v, want ErrGroupFull", err)
	}
	// Re-inviting someone already listed needs no room.
	if _, err := db.GroupInvite(uids[0], gid, "member 0 alias", "member 2 alias"); err != nil {
		t.Fatalf("re-invite in a full group: %v", err)
	}
}

// TestUserDBErrorTextsMatchLimits: the texts a client sees (qlib's
// Directory errors) state the limits that userdb's checks apply.
func TestUserDBErrorTextsMatchLimits(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{qlib.ErrAliasShort, fmt.Sprintf("newalias must be %d+ characters", minAliasChars)},
		{qlib.ErrGidShort, fmt.Sprintf("gid must be %d+ characters", minGidChars)},
		{qlib.ErrLabelInvalid, fmt.Sprintf("newnode must be 1 to %d bytes of UTF-8", maxLabelBytes)},
		{ErrAliasLong, fmt.Sprintf("newalias must be printable characters (at most %d bytes)", maxAliasBytes)},
	} {
		if tc.err.Error() != tc.want {
			t.Errorf("error text %q, but the check's limit gives %q", tc.err, tc.want)
		}
	}
	// And the checks refuse exactly past those limits.
	if checkAlias(strings.Repeat("a", minAliasChars), minAliasChars) != nil || checkAlias(strings.Repeat("a", minAliasChars-1), minAliasChars) != qlib.ErrAliasShort {
		t.Errorf("checkAlias does not draw the line at %d characters", minAliasChars)
	}
	if checkGid(strings.Repeat("g", minGidChars), minGidChars) != nil || checkGid(strings.Repeat("g", minGidChars-1), minGidChars) != qlib.ErrGidShort {
		t.Errorf("checkGid does not draw the line at %d characters", minGidChars)
	}
	if checkLabel(strings.Repeat("l", maxLabelBytes)) != nil || checkLabel(strings.Repeat("l", maxLabelBytes+1)) != qlib.ErrLabelInvalid {
		t.Errorf("checkLabel does not draw the line at %d bytes", maxLabelBytes)
	}
}

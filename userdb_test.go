package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
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

// udbLogBuffer collects log output from concurrent goroutines.
type udbLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *udbLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *udbLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// udbOpen opens the database in dir, failing the test on error, and
// returns it with its log output.
func udbOpen(t testing.TB, dir string) (*UserDB, *udbLogBuffer) {
	t.Helper()
	logs := &udbLogBuffer{}
	db, err := OpenUserDB(dir, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
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
	uid, nodeid, dev, err := db.Register(label)
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
	// No request may have created anything outside the user directory.
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != userSubdir {
		t.Errorf("userdb dir holds %v (%v), want only %q", entries, err, userSubdir)
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
		if _, _, _, err := db.Register(label); err != ErrLabelInvalid {
			t.Errorf("Register(%.20q) = %v, want ErrLabelInvalid", label, err)
		}
		if _, _, err := db.AddDevice(uid, label); err != ErrLabelInvalid {
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
	if _, _, err := db.AddDevice(uid, "one too many"); err != ErrTooManyDevices || err.Error() != "too many devices" {
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
	if _, _, err := db.AddDevice(uid, "again too many"); err != ErrTooManyDevices {
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
		db, err := OpenUserDB(dir, nil)
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
	}
	for name, mutate := range cases {
		r := rec.clone()
		r.Devices = slices.Clone(rec.Devices)
		mutate(r)
		data, err := encodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseRecord(data, "u100002"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	data, _ := encodeRecord(rec)
	if _, err := parseRecord(data, "u100002"); err != nil {
		t.Errorf("unmutated record refused: %v", err)
	}
	if _, err := parseRecord(bytes.Replace(data, []byte(`"v":1`), []byte(`"v":2`), 1), "u100002"); err == nil {
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
	_, err := OpenUserDB(dir, nil)
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
				uid, nodeid, dev, err := db.Register("laptop")
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
	if _, ok := db.AliasUID("doubtful alias"); ok {
		t.Error("alias of a doubtful write resolves")
	}
	if err := db.AddAlias(other, "doubtful alias"); err == nil {
		t.Error("another user claimed an alias whose write is in doubt")
	}
	if _, _, _, err := db.Register("new"); err == nil {
		t.Error("Register succeeded after a doubtful write")
	}
	if _, _, err := db.AddDevice(other, "new"); err == nil {
		t.Error("AddDevice succeeded after a doubtful write")
	}
	udbLogin(t, db, uid, nodeid, dev) // reads go on
}

func TestUserDBClose(t *testing.T) {
	db, _ := udbOpen(t, t.TempDir())
	uid, nodeid, dev := udbRegister(t, db, "laptop")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := db.Register("x"); err != ErrClosed {
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
	if _, err := OpenUserDB(blocker, nil); err == nil {
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
		rec, err := parseRecord(data, "u100002")
		if err != nil {
			return
		}
		again, err := encodeRecord(rec)
		if err != nil {
			t.Fatalf("accepted record does not encode: %v", err)
		}
		rec2, err := parseRecord(again, "u100002")
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
			if _, _, _, err := db.Register("laptop"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

package main

// The "receiveonly" extension's config, user database and mnm member
// command (Protocol.md, Extensions); e2e_receiveonly_test.go runs it over
// TLS.

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseConfigReceiveOnly(t *testing.T) {
	const base = `{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}`
	parse := func(ro string) (*Config, error) {
		if ro == "" {
			return parseConfig([]byte(base+`}`), "/d")
		}
		return parseConfig([]byte(base+`,"receiveOnly":`+ro+`}`), "/d")
	}
	// Off by default: nobody is receive-only, nothing is named.
	for _, ro := range []string{"", "null", "{}"} {
		cfg, err := parse(ro)
		if err != nil {
			t.Fatalf("receiveOnly %q: %v", ro, err)
		}
		if cfg.ReceiveOnly.NewMembers || cfg.ReceiveOnly.MayReachSet() != nil {
			t.Errorf("receiveOnly %q: %+v", ro, cfg.ReceiveOnly)
		}
	}
	cfg, err := parse(`{"newMembers": true, "mayReach": ["the helpdesk", "support group"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.ReceiveOnly.NewMembers || !reflect.DeepEqual(cfg.ReceiveOnly.MayReachSet(), map[string]bool{"the helpdesk": true, "support group": true}) {
		t.Errorf("parsed %+v", cfg.ReceiveOnly)
	}
	many := make([]string, maxMayReach+1)
	for i := range many {
		many[i] = fmt.Sprintf("%q", fmt.Sprintf("helpdesk %d", i))
	}
	if _, err := parse(`{"mayReach": [` + strings.Join(many[:maxMayReach], ",") + `]}`); err != nil {
		t.Errorf("%d entries: %v", maxMayReach, err)
	}
	for _, tc := range []struct{ ro, want string }{
		{`{"newMembers": 1}`, `field "receiveOnly.newMembers": want true or false, got a number`},
		{`{"newMembers": "yes"}`, `field "receiveOnly.newMembers": want true or false, got a string`},
		{`{"mayReach": "the helpdesk"}`, `field "receiveOnly.mayReach": want a list, got a string`},
		{`{"mayReach": [1]}`, `field "receiveOnly.mayReach[0]": want a string, got a number`},
		{`{"mayReach": [""]}`, `receiveOnly.mayReach[0]: must not be empty`},
		{`{"mayReach": ["a\tb"]}`, `receiveOnly.mayReach[0]: newalias must be printable characters`},
		{`{"mayReach": ["` + strings.Repeat("x", 201) + `"]}`, `receiveOnly.mayReach[0]: newalias must be printable characters (at most 200 bytes)`},
		{`{"mayReach": ["the helpdesk", "the helpdesk"]}`, `receiveOnly.mayReach[1]: "the helpdesk" is listed twice`},
		{`{"mayReach": [` + strings.Join(many, ",") + `]}`, fmt.Sprintf("receiveOnly.mayReach: %d entries, at most %d", maxMayReach+1, maxMayReach)},
		{`{"newmembers": true, "other": 1}`, `receiveOnly.other`},
	} {
		if _, err := parse(tc.ro); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("receiveOnly %s: %v, want %q", tc.ro, err, tc.want)
		}
	}
}

// TestUserDBReceiveOnly: the flag is set at Register when the database is
// told to, changed by SetReceiveOnly, kept across a reopen, and absent
// from the records of full members.
func TestUserDBReceiveOnly(t *testing.T) {
	dir := t.TempDir()
	db, err := OpenUserDB(UserDBOptions{Dir: dir, ReceiveOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	uid, _, _, err := db.Register("laptop", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateFixture("u100001", []string{"laptop"}, []string{"imported member"}); err != nil {
		t.Fatal(err)
	}
	if !db.ReceiveOnly(uid) || db.ReceiveOnly("u100001") || db.ReceiveOnly("no such uid") {
		t.Fatal("receive-only: a new member should be, an imported one and an unknown uid not")
	}
	if changed, err := db.SetReceiveOnly(uid, true); err != nil || changed {
		t.Errorf("demote a receive-only member: %v %v", changed, err)
	}
	if changed, err := db.SetReceiveOnly("u100009", false); err == nil || changed {
		t.Errorf("promote an unknown uid: %v %v", changed, err)
	}
	if changed, err := db.SetReceiveOnly(uid, false); err != nil || !changed || db.ReceiveOnly(uid) {
		t.Fatalf("promote: %v %v", changed, err)
	}
	if changed, err := db.SetReceiveOnly("u100001", true); err != nil || !changed {
		t.Fatalf("demote: %v %v", changed, err)
	}
	if got := db.ReceiveOnlyUIDs(); !reflect.DeepEqual(got, []string{"u100001"}) {
		t.Errorf("receive-only uids %q", got)
	}
	db.Close()

	// A full member's record carries no flag at all.
	for who, want := range map[string]bool{uid: false, "u100001": true} {
		files, _ := filepath.Glob(filepath.Join(dir, userKind.String(), who+"*"))
		if len(files) != 1 {
			t.Fatalf("%s's record files: %q", who, files)
		}
		data, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(`"receiveOnly"`)) != want {
			t.Errorf("record of %s (receive-only %v): %s", who, want, data)
		}
	}
	db, err = OpenUserDB(UserDBOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db.ReceiveOnly(uid) || !db.ReceiveOnly("u100001") {
		t.Error("the flags did not survive a reopen")
	}
	// Without the option, new members are full members.
	if uid, _, _, err := db.Register("laptop", nil); err != nil || db.ReceiveOnly(uid) {
		t.Errorf("register without the option: %v %v", db.ReceiveOnly(uid), err)
	}
}

// TestUserDBPowerLossReceiveOnly: a demotion is whole or absent after a
// power loss at any point of its write.
func TestUserDBPowerLossReceiveOnly(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		_, err := db.SetReceiveOnly("u100001", true)
		return err
	}, func(t *testing.T, db *UserDB) bool {
		if aliases, err := db.Aliases("u100001"); err != nil || !reflect.DeepEqual(aliases, []string{"first member"}) {
			t.Errorf("the user's record is damaged: %q %v", aliases, err)
		}
		return db.ReceiveOnly("u100001")
	})
}

// memberSite writes a config in a new directory, and returns its path
// and the uid of a member its user database holds.
func memberSite(t *testing.T) (cfgPath, uid string) {
	t.Helper()
	dir := t.TempDir()
	cfgPath = writeTestConfig(t, dir, "127.0.0.1:0")
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	db, err := OpenUserDB(UserDBOptions{Dir: cfg.UserDBDir()})
	if err != nil {
		t.Fatal(err)
	}
	if uid, _, _, err = db.Register("laptop", nil); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return cfgPath, uid
}

func TestMemberCommand(t *testing.T) {
	cfg, uid := memberSite(t)
	cmd := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"member", "-config", cfg}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"list"}, exitOK, "", ""},
		{[]string{"promote", uid}, exitOK, uid + " was a full member already\n", ""},
		{[]string{"demote", uid}, exitOK, uid + " is receive-only now\n", ""},
		{[]string{"demote", uid}, exitOK, uid + " was receive-only already\n", ""},
		{[]string{"list"}, exitOK, uid + "\n", ""},
		{[]string{"promote", uid}, exitOK, uid + " is a full member now\n", ""},
		{[]string{"list"}, exitOK, "", ""},
		{[]string{"promote", "u100009"}, exitFailure, "", "mnm member: u100009: no such user\n"},
		{[]string{"promote", "not even a uid"}, exitFailure, "", "mnm member: not even a uid: no such user\n"},
		{[]string{"promote"}, exitUsage, "", "usage: mnm member [-config F] promote UID | demote UID | list\n"},
		{[]string{"list", uid}, exitUsage, "", "usage: mnm member [-config F] promote UID | demote UID | list\n"},
		{[]string{"upgrade", uid}, exitUsage, "", "usage: mnm member [-config F] promote UID | demote UID | list\n"},
		{nil, exitUsage, "", "usage: mnm member [-config F] promote UID | demote UID | list\n"},
	} {
		code, out, errOut := cmd(tc.args...)
		if code != tc.code || out != tc.out || errOut != tc.err {
			t.Errorf("mnm member %q: exit %d, %q, %q; want %d, %q, %q", tc.args, code, out, errOut, tc.code, tc.out, tc.err)
		}
	}
	var errOut bytes.Buffer
	if code := run([]string{"member", "-config", filepath.Join(t.TempDir(), "none"), "list"}, &bytes.Buffer{}, &errOut); code != exitFailure || !strings.HasPrefix(errOut.String(), "mnm member: ") {
		t.Errorf("missing config: exit %d: %s", code, errOut.String())
	}
}

// TestMemberCommandRefusedWhileLocked: a holder of the data directory's
// lock (the running server) keeps mnm member out, and nothing changes.
func TestMemberCommandRefusedWhileLocked(t *testing.T) {
	cfgPath, uid := memberSite(t)
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if lock == nil {
		t.Skip("no data directory lock on this system")
	}
	var out, errOut bytes.Buffer
	code := run([]string{"member", "-config", cfgPath, "demote", uid}, &out, &errOut)
	if code != exitFailure || errOut.String() != fmt.Sprintf("mnm member: another mnm is using this data directory (pid %d): %s\n", os.Getpid(), cfg.DataDir) {
		t.Errorf("demote while locked: exit %d: %q", code, errOut.String())
	}
	if _, err := lockDataDir(cfg.DataDir); err == nil {
		t.Error("a second lock was granted")
	}
	lock.Close()
	out.Reset()
	if code := run([]string{"member", "-config", cfgPath, "list"}, &out, &bytes.Buffer{}); code != exitOK || out.String() != "" {
		t.Errorf("the refused demote changed something: exit %d, %q", code, out.String())
	}
}

// TestDaemonRefusesLockedDataDir: a second server on one data directory
// does not start, and the first one's stop releases the lock.
func TestDaemonRefusesLockedDataDir(t *testing.T) {
	s := startE2E(t, t.TempDir())
	if s.d.lock == nil {
		t.Skip("no data directory lock on this system")
	}
	if lock, err := lockDataDir(filepath.Dir(s.d.lock.Name())); !errors.Is(err, ErrDataDirInUse) {
		lock.Close()
		t.Fatalf("the running server's data directory: %v", err)
	}
	logger := slog.New(slog.DiscardHandler)
	if d, err := startDaemon(s.cfg, logger); !errors.Is(err, ErrDataDirInUse) {
		if d != nil {
			d.shutdown()
		}
		t.Fatalf("second server: %v", err)
	}
	s.stop()
	s.start() // released: the same directory serves again
}

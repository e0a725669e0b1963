package main

// Tests of mnm admin against a live server: the daemon started as the e2e
// tests start it, members registered and posting over TLS, and the command
// run as main runs it, against the daemon's admin listener.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"mnm/admin"
	"mnm/testclient"
)

// adminRun runs mnm admin with args on s's config, against its admin
// listener (the config's laddr is port 0: -addr says where it is), and
// returns the exit code and what it printed.
func (s *e2eServer) adminRun(args ...string) (code int, stdout, stderr string) {
	s.t.Helper()
	return s.adminRunConfig(s.cfg, args...)
}

func (s *e2eServer) adminRunConfig(cfg string, args ...string) (code int, stdout, stderr string) {
	s.t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"admin", "-config", cfg, "-addr", s.d.adminAddr}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// adminOK is adminRun for a command that must succeed.
func (s *e2eServer) adminOK(args ...string) string {
	s.t.Helper()
	code, out, errs := s.adminRun(args...)
	if code != exitOK {
		s.t.Fatalf("mnm admin %q: exit %d: %s%s", args, code, out, errs)
	}
	return out
}

// adminJSON runs a command with -json and decodes what it printed into v.
func (s *e2eServer) adminJSON(v any, args ...string) {
	s.t.Helper()
	out := s.adminOK(append([]string{"-json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		s.t.Fatalf("mnm admin -json %q: %v\n%s", args, err, out)
	}
}

// adminFails runs a command that must fail with exit code want, and
// returns its stderr.
func (s *e2eServer) adminFails(want int, args ...string) string {
	s.t.Helper()
	code, out, errs := s.adminRun(args...)
	if code != want {
		s.t.Fatalf("mnm admin %q: exit %d, want %d: %s%s", args, code, want, out, errs)
	}
	return errs
}

// tableRow returns the fields of the table line of out that starts with key.
func tableRow(t *testing.T, out, key string) []string {
	t.Helper()
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == key {
			return f
		}
	}
	t.Fatalf("no line for %q in\n%s", key, out)
	return nil
}

// changeLogged checks that s logged the admin change with attrs (a run of
// key=value, in the listener's order) on one line.
func (s *e2eServer) changeLogged(attrs string) {
	s.t.Helper()
	for line := range strings.Lines(s.logs.String()) {
		if strings.Contains(line, `msg="admin change" `) && strings.Contains(line, " "+attrs) {
			return
		}
	}
	s.t.Fatalf("no admin change %s in the log", attrs)
}

// toUser addresses a post to uid.
func toUser(uid string) []testclient.Recipient {
	return []testclient.Recipient{{ID: uid, Type: testclient.ToUser}}
}

// TestAdminCmdMembers drives every read of mnm admin, and the member
// changes, against a live server: alice (a laptop online, a phone
// offline), rita (one device, offline, with five posts queued) and peter,
// who posts.
func TestAdminCmdMembers(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a := s.member("alice liddell")
	phoneNode := addDevice(t, a, "phone")
	need(t)(a.c.ListNodes()) // the link's frames are handled in order: the acks before are done
	r := s.member("rita receiver")
	p := s.member("peter the poster")
	aUID, rUID, pUID := a.reg.UID, r.reg.UID, p.reg.UID
	rDev := rUID + ".0"
	r.c.Close()
	waitFor(t, "rita offline", func() bool { return !s.d.srv.Online([]string{rDev})[rDev] })
	if n := s.d.store.Len(rDev); n != 0 {
		t.Fatalf("rita has %d queued before any post", n)
	}
	for i := range 5 {
		need(t)(p.c.Post(toUser(rUID), fmt.Appendf(nil, "post %d for rita", i)))
	}
	need(t)(p.c.Post(toUser(aUID), []byte("one for alice")))

	// status: the figures the server has.
	var st admin.Status
	s.adminJSON(&st, "status")
	bl := s.d.store.Backlog()
	if st.Site != "e2e" || st.Users != 3 || st.UsersOnline != 2 || st.LinksLoggedIn != 2 || !st.Ready ||
		st.Queued != bl.Messages || st.QueuedBytes != bl.Bytes || st.BackloggedDevs != bl.Devices || st.Queued < 6 {
		t.Fatalf("status %+v, backlog %+v", st, bl)
	}
	out := s.adminOK("status")
	for _, want := range []string{"site", "e2e", "ready", "yes", "members      3, 2 online; 0 groups", "from NTP, checked",
		fmt.Sprintf("%d messages, %s, for %d devices", bl.Messages, byteSize(bl.Bytes), bl.Devices)} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}

	// users: all, ordered by uid; by match; bounded.
	var us []admin.UserSummary
	s.adminJSON(&us, "users")
	uids := []string{aUID, pUID, rUID}
	slices.Sort(uids)
	if len(us) != 3 || us[0].UID != uids[0] || us[1].UID != uids[1] || us[2].UID != uids[2] {
		t.Fatalf("users %+v, want uids %q", us, uids)
	}
	out = s.adminOK("users")
	if f := tableRow(t, out, "UID"); !slices.Equal(f, []string{"UID", "DEVICES", "ONLINE", "RECEIVE-ONLY", "ALIASES"}) {
		t.Fatalf("users header %q", f)
	}
	if f := tableRow(t, out, aUID); !slices.Equal(f, []string{aUID, "2", "1", "-", "alice", "liddell"}) {
		t.Fatalf("alice's line %q", f)
	}
	if f := tableRow(t, out, rUID); !slices.Equal(f, []string{rUID, "1", "0", "-", "rita", "receiver"}) {
		t.Fatalf("rita's line %q", f)
	}
	s.adminJSON(&us, "users", "-match", "liddell")
	if len(us) != 1 || us[0].UID != aUID || us[0].Devices != 2 || us[0].Online != 1 || !slices.Equal(us[0].Aliases, []string{"alice liddell"}) {
		t.Fatalf("users -match liddell: %+v", us)
	}
	s.adminJSON(&us, "users", "-match", pUID[3:20])
	if len(us) != 1 || us[0].UID != pUID {
		t.Fatalf("users -match by uid: %+v", us)
	}
	s.adminJSON(&us, "users", "-match", "nobody has this")
	if us == nil || len(us) != 0 {
		t.Fatalf("users matching nobody: %#v", us)
	}
	out = s.adminOK("users", "-limit", "2")
	if strings.Count(out, "\n") != 4 || !strings.Contains(out, "(the limit, 2, reached") || strings.Contains(out, uids[2]) {
		t.Fatalf("users -limit 2:\n%s", out)
	}

	// user: by alias or uid, devices with their queues.
	var u admin.UserDetail
	s.adminJSON(&u, "user", "rita receiver")
	if u.UID != rUID || len(u.Devices) != 1 {
		t.Fatalf("user rita: %+v", u)
	}
	if d := u.Devices[0]; d.Num != 0 || d.Label != "laptop" || d.Online || d.Queued != 5 || d.QueuedBytes != s.d.store.QueueBytes(rDev) || d.QueuedBytes == 0 {
		t.Fatalf("rita's device %+v, store has %d bytes", d, s.d.store.QueueBytes(rDev))
	}
	s.adminJSON(&u, "user", aUID)
	if u.UID != aUID || !slices.Equal(u.Aliases, []string{"alice liddell"}) || len(u.Devices) != 2 ||
		u.Devices[0].Label != "laptop" || !u.Devices[0].Online || u.Devices[1].Num != 1 || u.Devices[1].Label != "phone" || u.Devices[1].Online ||
		u.Devices[1].Queued != s.d.store.Len(aUID+".1") || u.Devices[1].Queued == 0 ||
		u.Devices[0].LastLogin.IsZero() || !u.Devices[1].LastLogin.IsZero() { // the phone never logged in
		t.Fatalf("user alice: %+v", u)
	}
	out = s.adminOK("user", "rita receiver")
	if f := tableRow(t, out, "uid"); f[1] != rUID {
		t.Fatalf("user rita:\n%s", out)
	}
	// Rita's laptop logged in when it registered; its last login is an age.
	if f := tableRow(t, out, "0"); len(f) < 5 || !regexp.MustCompile(`^[0-9]+s$`).MatchString(f[3]) ||
		!slices.Equal(append(f[:3:3], f[4:]...), append([]string{"0", "laptop", "offline", "ago", "5"}, strings.Fields(byteSize(s.d.store.QueueBytes(rDev)))...)) {
		t.Fatalf("rita's device line %q", f)
	}
	for _, name := range []string{"nobody here", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "a/b"} {
		errs := s.adminFails(exitFailure, "user", name)
		if !strings.Contains(errs, "no member has the uid or alias") || !strings.Contains(errs, "404") {
			t.Fatalf("user %q: %s", name, errs)
		}
	}

	// queues: deepest first.
	if n := s.d.store.Len(aUID + ".1"); n >= 5 {
		t.Fatalf("alice's phone has %d queued: rita's 5 are not the deepest", n)
	}
	var qs []admin.QueueInfo
	s.adminJSON(&qs, "queues")
	if len(qs) < 2 || qs[0].UID != rUID || qs[0].Num != 0 || qs[0].Label != "laptop" || qs[0].Queued != 5 || qs[0].Online {
		t.Fatalf("queues %+v", qs)
	}
	for i := 1; i < len(qs); i++ {
		if qs[i].Queued > qs[i-1].Queued {
			t.Fatalf("queues out of order: %+v", qs)
		}
	}
	if !slices.ContainsFunc(qs, func(q admin.QueueInfo) bool { return q.UID == aUID && q.Num == 1 && q.Label == "phone" }) {
		t.Fatalf("alice's phone not among the queues: %+v", qs)
	}
	s.adminJSON(&qs, "queues", "-top", "1")
	if len(qs) != 1 || qs[0].UID != rUID {
		t.Fatalf("queues -top 1: %+v", qs)
	}
	out = s.adminOK("queues", "-top", "1")
	if f := tableRow(t, out, rUID); f[1] != "0" || f[2] != "laptop" || f[3] != "offline" || f[4] != "5" || !strings.HasSuffix(out, "ago\n") {
		t.Fatalf("queues -top 1:\n%s", out)
	}

	// receive-only: peter's next post is refused, and allowed again after.
	if out := s.adminOK("receive-only", pUID, "on"); out != pUID+" is receive-only now\n" {
		t.Fatalf("receive-only on: %q", out)
	}
	s.changeLogged("action=receive-only by=local uid=" + pUID + " on=true changed=true")
	ack, err := p.c.Post(toUser(rUID), []byte("refused"))
	ackErr(t, ack, err, "receive-only member")
	if out := s.adminOK("receive-only", pUID, "on"); out != pUID+" was receive-only already\n" {
		t.Fatalf("receive-only on again: %q", out)
	}
	if f := tableRow(t, s.adminOK("users", "-match", pUID), pUID); f[3] != "yes" {
		t.Fatalf("peter's line %q", f)
	}
	if out := s.adminOK("-json", "receive-only", pUID, "off"); strings.Join(strings.Fields(out), "") != `{"changed":true}` {
		t.Fatalf("receive-only off -json: %q", out)
	}
	need(t)(p.c.Post(toUser(aUID), []byte("allowed again")))
	if n := s.d.store.Len(rDev); n != 5 {
		t.Fatalf("rita has %d queued after the refused post", n)
	}

	// block on rita's behalf: her devices are told, and peter's posts no
	// longer reach her; his ack is as before.
	if out := s.adminOK("block", rUID, "peter the poster"); out != rUID+` blocks "peter the poster" now`+"\n" {
		t.Fatalf("block: %q", out)
	}
	s.changeLogged("action=block by=local uid=" + rUID + ` name="peter the poster" changed=true`)
	if n := s.d.store.Len(rDev); n != 6 { // the "user" message with block
		t.Fatalf("rita has %d queued after the block, want 6", n)
	}
	need(t)(p.c.Post(toUser(rUID), []byte("blocked")))
	if n := s.d.store.Len(rDev); n != 6 {
		t.Fatalf("a blocked post was queued for rita: %d", n)
	}
	s.adminJSON(&u, "user", rUID)
	if !slices.Equal(u.Blocks, []string{"peter the poster"}) {
		t.Fatalf("rita's blocks %q", u.Blocks)
	}
	if out := s.adminOK("block", rUID, pUID); !strings.Contains(out, "already") {
		t.Fatalf("block again by uid: %q", out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"block", rUID, rUID}, "cannot block yourself (400"},
		{[]string{"block", rUID, "nobody at all"}, `no member has the uid or alias "nobody at all" (404`},
		{[]string{"block", "NOSUCHUID", pUID}, `no member has the uid "NOSUCHUID" (404`},
	} {
		if errs := s.adminFails(exitFailure, c.args...); !strings.Contains(errs, c.want) {
			t.Fatalf("%q: %s", c.args, errs)
		}
	}
	if out := s.adminOK("unblock", rUID, "peter the poster"); out != rUID+` no longer blocks "peter the poster"`+"\n" {
		t.Fatalf("unblock: %q", out)
	}
	if out := s.adminOK("unblock", rUID, "peter the poster"); !strings.Contains(out, "did not block") {
		t.Fatalf("unblock again: %q", out)
	}
	need(t)(p.c.Post(toUser(rUID), []byte("unblocked")))
	if n := s.d.store.Len(rDev); n != 8 { // the unblock notice, the post
		t.Fatalf("rita has %d queued after the unblock, want 8", n)
	}

	// revoke-device: alice's phone, online: its link closes, it logs in
	// no more, its queue is gone, and the laptop is told.
	phone := s.login(aUID, phoneNode)
	waitFor(t, "the phone online", func() bool { return s.d.srv.Online([]string{aUID + ".1"})[aUID+".1"] })
	if out := s.adminOK("revoke-device", aUID, "1"); out != "device 1 of "+aUID+" revoked\n" {
		t.Fatalf("revoke-device: %q", out)
	}
	s.changeLogged("action=revoke-device by=local uid=" + aUID + " num=1")
	expectClosed(t, phone)
	expectLoginFailed(t, s, aUID, phoneNode)
	if n := s.d.store.Len(aUID + ".1"); n != 0 {
		t.Fatalf("the revoked phone keeps %d queued", n)
	}
	if u := nextUser(t, a.c, "dropnode"); u.Str("dropnode") != "1" || u.Str("label") != "phone" || u.Str("from") != aUID {
		t.Fatalf("announcement %s", u.Raw)
	}
	if errs := s.adminFails(exitFailure, "revoke-device", aUID, "1"); !strings.Contains(errs, "has no device 1 (404") {
		t.Fatalf("revoke-device again: %s", errs)
	}
	// The operator may revoke the last device too: a stolen laptop.
	s.adminOK("revoke-device", aUID, "0")
	expectClosed(t, a.c)
	expectLoginFailed(t, s, aUID, a.reg.NodeID)
	s.adminJSON(&u, "user", "alice liddell")
	if u.UID != aUID || len(u.Devices) != 0 {
		t.Fatalf("alice after her last device: %+v", u)
	}
	need(t)(p.c.Post(toUser(aUID), []byte("to nobody"))) // accepted, stored for no one
}

// TestAdminCmdUsage: usage errors exit 2 and ask the server nothing.
func TestAdminCmdUsage(t *testing.T) {
	s := startE2E(t, t.TempDir())
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"status", "extra"},
		{"user"},
		{"user", "a", "b"},
		{"users", "-limit", "ten"},
		{"users", "-nosuchflag"},
		{"queues", "-top"},
		{"revoke-device", "UID"},
		{"revoke-device", "UID", "x"},
		{"revoke-device", "UID", "-1"},
		{"receive-only", "UID", "maybe"},
		{"block", "UID"},
		{"-nosuchflag", "status"},
	} {
		code, out, errs := s.adminRun(args...)
		if code != exitUsage || out != "" || !strings.Contains(errs, "usage: mnm admin") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	if strings.Contains(s.logs.String(), "admin change") {
		t.Fatal("a usage error reached the server")
	}
	// A listener that is not there: exit 1, saying so.
	var out, errb bytes.Buffer
	if code := run([]string{"admin", "-config", s.cfg, "-addr", freePort(t), "status"}, &out, &errb); code != exitFailure ||
		!strings.Contains(errb.String(), "is the server running") {
		t.Fatalf("no listener: exit %d: %s", code, errb.String())
	}
}

// TestAdminCmdTokens: with a token file, the command sends the first
// entry's secret, or the one -token names, and the server logs the change
// with that name; a wrong secret is refused 401.
func TestAdminCmdTokens(t *testing.T) {
	dir := t.TempDir()
	const opsSecret, auditSecret = "ops-secret-0123456789abcdef", "audit-secret-0123456789abcdef"
	tokens := "# name secret\nops " + opsSecret + "\naudit " + auditSecret + "\n"
	if err := os.WriteFile(filepath.Join(dir, "admin.tokens"), []byte(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir, "127.0.0.1:0")
	cfg["admin"] = map[string]any{"laddr": "127.0.0.1:0", "tokenFile": "admin.tokens"}
	s := serveE2E(t, dir, writeConfigFile(t, dir, cfg))
	m := s.member("tina the tester")
	uid := m.reg.UID

	s.adminOK("receive-only", uid, "on")
	s.changeLogged("action=receive-only by=ops uid=" + uid + " on=true changed=true")
	s.adminOK("-token", "audit", "receive-only", uid, "off")
	s.changeLogged("action=receive-only by=audit uid=" + uid + " on=false changed=true")
	if errs := s.adminFails(exitFailure, "-token", "nobody", "status"); !strings.Contains(errs, `no token named "nobody"`) {
		t.Fatalf("-token nobody: %s", errs)
	}

	// Another config of the same site whose token file has a wrong
	// secret under a right name.
	wrong := filepath.Join(dir, "wrong.tokens")
	if err := os.WriteFile(wrong, []byte("ops "+opsSecret+"X\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg["admin"] = map[string]any{"laddr": "127.0.0.1:0", "tokenFile": "wrong.tokens"}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wrongCfg := filepath.Join(dir, "wrong.config")
	if err := os.WriteFile(wrongCfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := s.adminRunConfig(wrongCfg, "receive-only", uid, "on")
	if code != exitFailure || out != "" || !strings.Contains(errs, "unauthorized") || !strings.Contains(errs, "(401 unauthorized)") {
		t.Fatalf("wrong token: exit %d: %s%s", code, out, errs)
	}
	var u admin.UserDetail
	s.adminJSON(&u, "user", uid)
	if u.ReceiveOnly {
		t.Fatal("a refused token made the member receive-only")
	}
	// No secret is ever logged.
	if l := s.logs.String(); strings.Contains(l, opsSecret) || strings.Contains(l, auditSecret) {
		t.Fatal("a token's secret was logged")
	}
}

// TestAdminCmdHuman pins the human output's shape: aligned columns, sizes
// and ages for a person.
func TestAdminCmdHuman(t *testing.T) {
	s := startE2E(t, t.TempDir())
	r := s.member("rita receiver")
	p := s.member("peter the poster")
	need(t)(p.c.Post(toUser(r.reg.UID), bytes.Repeat([]byte("x"), 3000)))
	out := s.adminOK("user", r.reg.UID)
	want := regexp.MustCompile(`^uid           ` + regexp.QuoteMeta(r.reg.UID) + `
aliases       rita receiver
groups        -
blocks        -
receive-only  no

DEVICE  LABEL   STATE   LAST LOGIN +QUEUED  BYTES
0       laptop  online  [0-9]+s ago +1       [0-9.]+ KiB
$`)
	if !want.MatchString(out) {
		t.Fatalf("user:\n%s", out)
	}
	out = s.adminOK("queues")
	want = regexp.MustCompile(`^UID +DEVICE  LABEL   STATE   QUEUED  BYTES +OLDEST
` + regexp.QuoteMeta(r.reg.UID) + `  0       laptop  online  1       [0-9.]+ KiB  [0-9]+s ago
$`)
	if !want.MatchString(out) {
		t.Fatalf("queues:\n%s", out)
	}
}

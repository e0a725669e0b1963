package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// editConfig rewrites the config file at path through edit.
func editConfig(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if data, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReloadLimits: a lowered pingsPerDay takes effect at once on a live server at
// reload; a broken file changes nothing; a changed name is reported as
// waiting for a restart.
func TestReloadLimits(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a, _ := s.register("reload sender")
	s.register("reload target")
	if ack, err := a.Ping("reload sender", "reload target", "1"); err != nil || ack.Error != "" {
		t.Fatalf("first ping: %v %s", err, ack.Error)
	}

	editConfig(t, s.cfg, func(m map[string]any) {
		m["limits"] = map[string]any{"pingsPerDay": 1}
		m["maxPostBytes"] = 1 << 20
		m["name"] = "renamed"
	})
	s.d.reload()
	if got := s.d.srv.Limits().PingsPerDay; got != 1 {
		t.Fatalf("pingsPerDay %d after reload, want 1", got)
	}
	if ack, err := a.Ping("reload sender", "reload target", "2"); err != nil || ack.Error != "" {
		t.Fatalf("second ping: %v %s", err, ack.Error)
	}
	// The member's bucket is capped at the new size (1): the second ping
	// spends it, the third finds it empty.
	if ack, err := a.Ping("reload sender", "reload target", "3"); err != nil || !strings.Contains(ack.Error, "limit") {
		t.Fatalf("third ping over the reloaded limit of 1: %v, ack %+v", err, ack)
	}
	logs := s.logs.String()
	if !strings.Contains(logs, `msg="config reloaded"`) || !strings.Contains(logs, "limits.pingsPerDay") || !strings.Contains(logs, "maxPostBytes") {
		t.Errorf("reload not logged with what changed:\n%s", logs)
	}
	if !strings.Contains(logs, "next restart") || !strings.Contains(logs, "settings=[name]") {
		t.Errorf("the renamed site not reported as needing a restart:\n%s", logs)
	}

	if err := os.WriteFile(s.cfg, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.d.reload()
	if got := s.d.srv.Limits().PingsPerDay; got != 1 {
		t.Errorf("pingsPerDay %d after a failed reload, want 1 kept", got)
	}
	if !strings.Contains(s.logs.String(), "config reload failed; keeping the running configuration") {
		t.Errorf("failed reload not logged:\n%s", s.logs.String())
	}
}

// TestReloadLiveSettings: the split between what reload applies and what
// waits for a restart.
func TestReloadLiveSettings(t *testing.T) {
	for path, live := range map[string]bool{
		"limits.pingsPerDay": true, "limits.exempt": true, "receiveOnly.mayReach": true, "maxPostBytes": true,
		"limits.preLoginBytes": false, "listen.laddr": false, "dataDir": false, "ntp.hosts": false,
		"admin.laddr": false, "receiveOnly.newMembers": false, "name": false,
	} {
		if isLive(path) != live {
			t.Errorf("isLive(%q) = %v, want %v", path, !live, live)
		}
	}
}

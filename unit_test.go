package main

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestUnitFile checks that contrib/mnm.service sets what README.md promises
// of it, and has systemd-analyze verify it where systemd is installed.
func TestUnitFile(t *testing.T) {
	const path = "contrib/mnm.service"
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{} // "Section.Key" → values; commented lines as "#Section.Key"
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		commented := false
		if strings.HasPrefix(line, "#") {
			line, commented = strings.TrimSpace(strings.TrimPrefix(line, "#")), true
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") && !commented {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.ContainsAny(k, " \t") {
			continue // prose
		}
		name := section + "." + k
		if commented {
			name = "#" + name
		}
		keys[name] = append(keys[name], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Service.User":                    "mnm",
		"Service.DynamicUser":             "no",
		"Service.WorkingDirectory":        "/var/lib/mnm",
		"Service.ExecStart":               "/usr/local/bin/mnm",
		"Service.ExecReload":              "/bin/kill -HUP $MAINPID",
		"Service.Restart":                 "on-failure",
		"Service.LimitNOFILE":             "65536",
		"Service.ProtectSystem":           "strict",
		"Service.ReadWritePaths":          "/var/lib/mnm",
		"Service.ProtectHome":             "yes",
		"Service.PrivateTmp":              "yes",
		"Service.NoNewPrivileges":         "yes",
		"Service.ProtectKernelTunables":   "yes",
		"Service.ProtectKernelModules":    "yes",
		"Service.ProtectControlGroups":    "yes",
		"Service.RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"Service.RestrictNamespaces":      "yes",
		"Service.LockPersonality":         "yes",
		"Service.MemoryDenyWriteExecute":  "yes",
		"Service.SystemCallFilter":        "@system-service",
		"Service.CapabilityBoundingSet":   "",
		"Service.KillSignal":              "SIGTERM",
		"Service.TimeoutStopSec":          "30",
		"#Service.AmbientCapabilities":    "CAP_NET_BIND_SERVICE",
		"#Service.CapabilityBoundingSet":  "CAP_NET_BIND_SERVICE",
		"Install.WantedBy":                "multi-user.target",
	}
	for k, v := range want {
		got, ok := keys[k]
		if !ok {
			t.Errorf("%s: %s missing", path, k)
			continue
		}
		if len(got) != 1 || got[0] != v {
			t.Errorf("%s: %s = %q, want %q", path, k, got, v)
		}
	}
	if _, ok := keys["Service.AmbientCapabilities"]; ok {
		t.Errorf("%s: AmbientCapabilities is on; it is for :443 only, commented out by default", path)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the unit was only parsed")
		return
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	// verify also complains that /usr/local/bin/mnm is not installed here.
	if err != nil && !strings.Contains(string(out), "/usr/local/bin/mnm") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

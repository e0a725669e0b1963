package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCheckConfig writes a config in dir naming the pair and returning its
// path; extra fields are merged in.
func writeCheckConfig(t *testing.T, dir, certPath, keyPath string, extra map[string]any) string {
	t.Helper()
	cfg := map[string]any{
		"name":   "mnm.example",
		"ntp":    map[string]any{"hosts": []string{}, "retries": 1},
		"listen": map[string]any{"net": "tcp", "laddr": "127.0.0.1:0", "certPath": certPath, "keyPath": keyPath},
		"auth":   0,
		"authby": []any{},
	}
	for k, v := range extra {
		cfg[k] = v
	}
	return writeConfigFile(t, dir, cfg)
}

func TestCheck(t *testing.T) {
	selfCert, selfKey := newPair(t, "mnm.example")
	caCert, caKey := newCASignedPair(t, "mnm.example")
	otherCert, otherKey := newCASignedPair(t, "other.example")
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const tenYears = 10 * 365 * 24 * time.Hour
	for _, tc := range []struct {
		name     string
		cert     string
		key      string
		extra    map[string]any
		setup    func(t *testing.T, dir string)
		later    time.Duration // the check's clock, this far ahead of now
		wantFail bool
		want     []string
		dontWant []string
	}{
		{name: "self-signed", cert: selfCert, key: selfKey,
			want:     []string{"ok    config", "ok    certificate", "-     fingerprint  sha256 ", "warn  certificate  self-signed", "ok    data"},
			dontWant: []string{"FAIL"}},
		{name: "ca-signed", cert: caCert, key: caKey,
			want:     []string{"ok    certificate", "names [mnm.example]", "sha256 "},
			dontWant: []string{"self-signed", "does not name", "FAIL", "warn"}},
		{name: "ca-signed for another name", cert: otherCert, key: otherKey,
			want: []string{`warn  certificate  does not name the site "mnm.example"`}, dontWant: []string{"FAIL"}},
		{name: "expiring", cert: selfCert, key: selfKey, later: tenYears - 10*24*time.Hour,
			want: []string{"warn  certificate", "in 9 days: renew it"}, dontWant: []string{"FAIL"}},
		{name: "expired", cert: selfCert, key: selfKey, later: tenYears + 24*time.Hour, wantFail: true,
			want: []string{"FAIL  certificate", "expired on"}},
		{name: "missing key", cert: selfCert, key: "nokey.pem", wantFail: true,
			want: []string{"FAIL  config", "nokey.pem"}},
		{name: "data dir not writable", cert: selfCert, key: selfKey, extra: map[string]any{"dataDir": filepath.Join(notDir, "data")}, wantFail: true,
			want: []string{"FAIL  data", "is not writable"}},
		{name: "interrupted import", cert: selfCert, key: selfKey, wantFail: true,
			setup: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, moveMarkerName), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"FAIL  data", "mnm import-v0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeCheckConfig(t, dir, tc.cert, tc.key, tc.extra)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			var out bytes.Buffer
			r := &checkReport{w: &out}
			checkSite(r, path, time.Now().Add(tc.later))
			if r.failed != tc.wantFail {
				t.Errorf("failed = %v, want %v", r.failed, tc.wantFail)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.dontWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestCheckCommand runs `mnm check` as an operator would: the exit code says
// whether the site is fit to serve, and the fingerprint it prints is the
// server's.
func TestCheckCommand(t *testing.T) {
	certPath, keyPath := newPair(t)
	dir := t.TempDir()
	path := writeCheckConfig(t, dir, certPath, keyPath, nil)
	r, err := NewCertReloader(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", "-config", path}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if !strings.Contains(stdout.String(), "sha256 "+r.Fingerprint()) {
		t.Errorf("output lacks the fingerprint %s:\n%s", r.Fingerprint(), &stdout)
	}
	if code := run([]string{"check", "-config", filepath.Join(dir, "missing.config")}, &stdout, &stderr); code != exitFailure {
		t.Errorf("missing config: exit %d, want %d", code, exitFailure)
	}
	if code := run([]string{"check", "extra"}, &stdout, &stderr); code != exitUsage {
		t.Errorf("stray argument: exit %d, want %d", code, exitUsage)
	}
}

package main

import (
	"strconv"
	"strings"
	"testing"

	"mnm/qlib"
)

// configWith is a minimal configuration with extra top-level fields.
func configWith(extra string) []byte {
	return []byte(`{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}` + extra + `}`)
}

// maxLinks: 0 (derived) by default, any count up to maxLinksLimit, else an
// error naming the field.
func TestConfigMaxLinks(t *testing.T) {
	cfg, err := parseConfig(configWith(""), "/d")
	if err != nil || cfg.MaxLinks != 0 {
		t.Fatalf("default maxLinks %v %v, want 0", cfg, err)
	}
	cfg, err = parseConfig(configWith(`,"maxLinks":500`), "/d")
	if err != nil || cfg.MaxLinks != 500 {
		t.Fatalf("maxLinks 500: %v %v", cfg, err)
	}
	for _, bad := range []string{"-1", "16777217", `"100"`} {
		_, err := parseConfig(configWith(`,"maxLinks":`+bad), "/d")
		if err == nil || !strings.Contains(err.Error(), "maxLinks") {
			t.Errorf("maxLinks %s: %v, want an error naming maxLinks", bad, err)
		}
	}
}

// limits.preLoginBytes: qlib's default when left out, 0 to turn it off, a
// bound in between, and it reaches qlib.
func TestConfigPreLoginBytes(t *testing.T) {
	cfg, err := parseConfig(configWith(""), "/d")
	if err != nil || cfg.Limits.Qlib().PreLoginBytes != qlib.DefaultPreLoginBytes {
		t.Fatalf("default preLoginBytes: %v %v", cfg, err)
	}
	for _, good := range []int64{0, 1 << 20, 64 << 20} {
		cfg, err := parseConfig(configWith(`,"limits":{"preLoginBytes":`+itoa(good)+`}`), "/d")
		if err != nil || cfg.Limits.Qlib().PreLoginBytes != good {
			t.Errorf("preLoginBytes %d: %v %v", good, cfg, err)
		}
	}
	for _, bad := range []int64{-1, 65536, 1<<34 + 1} {
		_, err := parseConfig(configWith(`,"limits":{"preLoginBytes":`+itoa(bad)+`}`), "/d")
		if err == nil || !strings.Contains(err.Error(), "limits.preLoginBytes") {
			t.Errorf("preLoginBytes %d: %v, want an error naming limits.preLoginBytes", bad, err)
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

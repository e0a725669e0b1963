package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// validConfigJSON is a configuration using every field; tests derive bad ones
// from it by editing one value.
const validConfigJSON = `{
  "name": "Test Site",
  "ntp": {"hosts": ["127.0.0.1:1123", "pool.ntp.org"], "retries": 2, "required": false},
  "listen": {"net": "tcp", "laddr": "127.0.0.1:5443", "certPath": "tls/cert.pem", "keyPath": "/etc/mnm/key.pem"},
  "auth": 1,
  "authby": [
    {},
    {"label": "X", "login": ["https://example.com/l", "a&b&d"], "token": ["https://example.com/t", "c&d"],
     "std": "oidc", "keys": "https://example.com/keys", "iss": "https://example.com", "aud": "mnm"}
  ],
  "dataDir": "data",
  "maxPostBytes": 1048576
}`

func TestParseConfigValid(t *testing.T) {
	cfg, err := parseConfig([]byte(validConfigJSON), "/srv/mnm")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Name:   "Test Site",
		NTP:    NTPConfig{Hosts: []string{"127.0.0.1:1123", "pool.ntp.org"}, Retries: 2},
		Listen: ListenConfig{Net: "tcp", Laddr: "127.0.0.1:5443", CertPath: "/srv/mnm/tls/cert.pem", KeyPath: "/etc/mnm/key.pem"},
		Auth:   1,
		AuthBy: []AuthProvider{{}, {
			Label: "X", Login: []string{"https://example.com/l", "a&b&d"}, Token: []string{"https://example.com/t", "c&d"},
			Std: "oidc", Keys: "https://example.com/keys", Iss: "https://example.com", Aud: "mnm",
		}},
		DataDir:      "/srv/mnm/data",
		MaxPostBytes: 1 << 20,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("parseConfig =\n%+v\nwant\n%+v", cfg, want)
	}
	if got := cfg.UserDBDir(); got != "/srv/mnm/data/userdb" {
		t.Errorf("UserDBDir() = %q", got)
	}
	if got := cfg.QStoreDir(); got != "/srv/mnm/data/qstore" {
		t.Errorf("QStoreDir() = %q", got)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := parseConfig([]byte(`{"name":"s","listen":{"net":"tcp6","laddr":":443","certPath":"c","keyPath":"k"}}`), "/d")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/d" || cfg.MaxPostBytes != DefaultMaxPostBytes || cfg.AuthBy == nil {
		t.Errorf("defaults not applied: dataDir %q maxPostBytes %d authby %v", cfg.DataDir, cfg.MaxPostBytes, cfg.AuthBy)
	}
}

// Configurations written with Go's default (capitalised) key names, as the
// deployed server's were, still load.
func TestParseConfigKeysIgnoreCase(t *testing.T) {
	cfg, err := parseConfig([]byte(`{"Name":"s","Listen":{"Net":"tcp","Laddr":":1","CertPath":"c","KeyPath":"k"},"NTP":{"Hosts":[],"Retries":1}}`), "/d")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "s" || cfg.Listen.Laddr != ":1" || cfg.NTP.Retries != 1 {
		t.Errorf("capitalised keys not decoded: %+v", cfg)
	}
}

// The example configuration, comments and all, must load.
func TestExampleConfigParses(t *testing.T) {
	data, err := os.ReadFile("mnm.conf")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseConfig(data, "/d"); err != nil {
		t.Errorf("mnm.conf: %v", err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	// edit replaces old by new in validConfigJSON, failing loudly if old is
	// absent so that a changed fixture cannot turn a case into a no-op.
	edit := func(old, new string) string {
		if !strings.Contains(validConfigJSON, old) {
			t.Fatalf("fixture lacks %q", old)
		}
		return strings.Replace(validConfigJSON, old, new, 1)
	}
	longName := strings.Repeat("n", maxSiteNameBytes+1)
	var many []string
	for range maxAuthProviders + 1 {
		many = append(many, fmt.Sprintf(`{"label":"L%d","login":["https://a.example/","p"],"token":["https://a.example/t","p"]}`, len(many)))
	}
	for _, tc := range []struct {
		name, json, want string
	}{
		// Shape: syntax, unknown fields, duplicates, wrong types.
		{"syntax", `{"name": "x",}`, "line 1: invalid character '}'"},
		{"syntax line", "{\n\"name\": \"x\"\n\"ntp\": {}}", "line 3"},
		{"truncated", `{"name": "x"`, "unexpected end of file"},
		{"trailing data", `{"name": "x"} {}`, "unexpected data after"},
		{"empty file", ``, "unexpected end of file"},
		{"top-level list", `[]`, "want an object at the top level, got a list"},
		{"unknown top", edit(`"auth": 1`, `"auht": 1`), `unknown field "auht"`},
		{"unknown nested", edit(`"laddr"`, `"lladdr"`), `unknown field "listen.lladdr"`},
		{"unknown in list", edit(`"std"`, `"sdt"`), `unknown field "authby[1].sdt"`},
		{"duplicate", edit(`"auth": 1`, `"auth": 1, "auth": 2`), `duplicate field "auth"`},
		{"duplicate by case", edit(`"auth": 1`, `"auth": 1, "Auth": 2`), `duplicate field "auth"`},
		{"string for int", edit(`"retries": 2`, `"retries": "2"`), `field "ntp.retries": want an integer, got a string`},
		{"float for int", edit(`"retries": 2`, `"retries": 2.5`), `field "ntp.retries": want an integer`},
		{"huge int", edit(`"auth": 1`, `"auth": 1e99`), `field "auth": want an integer`},
		{"int overflow", edit(`"maxPostBytes": 1048576`, `"maxPostBytes": 99999999999999999999`), `field "maxPostBytes"`},
		{"number for string", edit(`"name": "Test Site"`, `"name": 7`), `field "name": want a string, got a number`},
		{"null is absent", edit(`"name": "Test Site"`, `"name": null`), `name: must not be empty`},
		{"string for list", edit(`"hosts": ["127.0.0.1:1123", "pool.ntp.org"]`, `"hosts": "pool.ntp.org"`), `field "ntp.hosts": want a list, got a string`},
		{"bad list element", edit(`"pool.ntp.org"`, `5`), `field "ntp.hosts[1]": want a string`},
		{"string for bool", edit(`"required": false`, `"required": "no"`), `field "ntp.required": want true or false`},
		{"list for object", edit(`"listen": {`, `"listen": [{`) + "]", `field "listen": want an object, got a list`},

		// Values.
		{"empty name", edit(`"Test Site"`, `""`), "name: must not be empty"},
		{"long name", edit(`"Test Site"`, `"`+longName+`"`), "name: 129 bytes, at most 128"},
		{"control in name", edit(`"Test Site"`, `"Test\u0007Site"`), "name: contains the unprintable character U+0007"},
		{"bad ntp host", edit(`"pool.ntp.org"`, `"pool ntp"`), "ntp.hosts[1]:"},
		{"ntp port zero", edit(`127.0.0.1:1123`, `127.0.0.1:0`), "ntp.hosts[0]:"},
		{"negative retries", edit(`"retries": 2`, `"retries": -1`), "ntp.retries: -1 is outside 0…10"},
		{"many retries", edit(`"retries": 2`, `"retries": 11`), "ntp.retries: 11 is outside"},
		{"required without hosts", edit(`"hosts": ["127.0.0.1:1123", "pool.ntp.org"], "retries": 2, "required": false`, `"hosts": [], "required": true`), "ntp.hosts: empty, but ntp.required is true"},
		{"net", edit(`"net": "tcp"`, `"net": "udp"`), `listen.net: "udp" is not one of tcp, tcp4, tcp6`},
		{"laddr no port", edit(`"127.0.0.1:5443"`, `"127.0.0.1"`), "listen.laddr:"},
		{"laddr big port", edit(`"127.0.0.1:5443"`, `"127.0.0.1:65536"`), "listen.laddr:"},
		{"laddr named port", edit(`"127.0.0.1:5443"`, `"127.0.0.1:https"`), "listen.laddr:"},
		{"laddr bad host", edit(`"127.0.0.1:5443"`, `"bad host:5443"`), "listen.laddr:"},
		{"no certPath", edit(`"tls/cert.pem"`, `""`), "listen.certPath: must not be empty"},
		{"no keyPath", edit(`"/etc/mnm/key.pem"`, `""`), "listen.keyPath: must not be empty"},
		{"auth range", edit(`"auth": 1`, `"auth": 3`), "auth: 3 is not 0"},
		{"auth negative", edit(`"auth": 1`, `"auth": -1`), "auth: -1 is not 0"},
		{"auth without providers", `{"name":"s","auth":2,"authby":[{}],"listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`, "authby: auth is 2 but no provider is listed"},
		{"auth without authby", `{"name":"s","auth":1,"listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`, "authby: auth is 1 but no provider"},
		{"too many providers", `{"name":"s","auth":1,"authby":[` + strings.Join(many, ",") + `],"listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`, "authby: 27 providers, at most 26"},
		{"marker with fields", edit(`{},`, `{"iss": "x"},`), "authby[0]: an entry with an empty label"},
		{"empty label later", edit(`"label": "X"`, `"label": ""`), "authby[1].label: must not be empty"},
		{"duplicate label", edit(`{},`, `{"label": "X", "login": ["https://a.example/", ""], "token": ["https://a.example/", ""]},`), `authby[1].label: "X" appears twice`},
		{"login not a pair", edit(`["https://example.com/l", "a&b&d"]`, `["https://example.com/l"]`), "authby[1].login: want [url, params], got 1 strings"},
		{"token missing", edit(`"token": ["https://example.com/t", "c&d"],`, ``), "authby[1].token: want [url, params], got 0 strings"},
		{"http url", edit(`https://example.com/l`, `http://example.com/l`), "authby[1].login[0]: \"http://example.com/l\": http is allowed only for loopback hosts"},
		{"relative url", edit(`https://example.com/l`, `/l`), "authby[1].login[0]: \"/l\" is not an absolute URL"},
		{"ftp url", edit(`https://example.com/t`, `ftp://example.com/t`), "authby[1].token[0]: \"ftp://example.com/t\": scheme must be https"},
		{"credentials in url", edit(`https://example.com/l`, `https://u:p@example.com/l`), "authby[1].login[0]: URL must not contain credentials"},
		{"fragment in url", edit(`https://example.com/l`, `https://example.com/l#f`), "authby[1].login[0]: URL must not contain a fragment"},
		{"long url", edit(`https://example.com/l`, `https://example.com/`+strings.Repeat("l", maxURLBytes)), "authby[1].login[0]: URL of"},
		{"control in params", edit(`"c&d"`, `"c\nd"`), "authby[1].token[1]: contains the unprintable"},
		{"long aud", edit(`"aud": "mnm"`, `"aud": "`+strings.Repeat("a", maxAuthFieldBytes+1)+`"`), "authby[1].aud: 4097 bytes"},
		{"maxPostBytes zero", edit(`1048576`, `0`), "maxPostBytes: 0 is outside"},
		{"maxPostBytes negative", edit(`1048576`, `-5`), "maxPostBytes: -5 is outside"},
		{"maxPostBytes huge", edit(`1048576`, `1099511627776`), "maxPostBytes: 1099511627776 is outside"},
		{"dataDir empty", edit(`"dataDir": "data"`, `"dataDir": ""`), "dataDir: must not be empty when given"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseConfig([]byte(tc.json), "/d")
			if err == nil {
				t.Fatalf("parseConfig accepted it: %+v", cfg)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nlacks %q", err, tc.want)
			}
		})
	}
}

// All value errors are reported at once.
func TestParseConfigReportsAllErrors(t *testing.T) {
	_, err := parseConfig([]byte(`{"name":"","auth":7,"listen":{"net":"x","laddr":"y","certPath":"","keyPath":""}}`), "/d")
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"name:", "auth:", "listen.net:", "listen.laddr:", "listen.certPath:", "listen.keyPath:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// writeConfig writes a config naming the pair cert.pem/key.pem in dir and
// returns its path.
func writeConfig(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, ConfigFileName)
	data := `{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"cert.pem","keyPath":"key.pem"}}`
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir)
	if err := CreateSelfSigned(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.CertPath != filepath.Join(dir, "cert.pem") || cfg.DataDir != dir {
		t.Errorf("paths not resolved against %s: cert %q dataDir %q", dir, cfg.Listen.CertPath, cfg.DataDir)
	}
}

func TestLoadConfigMissingCert(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir)
	_, err := LoadConfig(path)
	if err == nil {
		t.Fatal("LoadConfig accepted a config whose certificate is missing")
	}
	for _, want := range []string{path, "listen.certPath", "cert.pem", "openssl req -x509", "move mnm.config aside"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	// Certificate present, key missing.
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadConfig(path)
	if err == nil || !strings.Contains(err.Error(), "listen.keyPath") || !strings.Contains(err.Error(), "openssl") {
		t.Errorf("missing key: err = %v", err)
	}
}

func TestLoadConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadConfig(filepath.Join(dir, "absent")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxConfigFileBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: err = %v", err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte(`{"nmae":"x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(bad); err == nil || !strings.HasPrefix(err.Error(), bad+`: unknown field "nmae"`) {
		t.Errorf("error does not start with the path and field: %v", err)
	}
}

func TestDefaultConfigValid(t *testing.T) {
	cfg := DefaultConfig()
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseConfig(data, "/d")
	if err != nil {
		t.Fatalf("DefaultConfig does not validate: %v\n%s", err, data)
	}
	if got.Name == "" || got.NTP.Required || got.NTP.Retries != 3 || got.Listen.Laddr != DefaultListenAddr ||
		got.Listen.CertPath != "/d/"+DefaultCertFile || got.Listen.KeyPath != "/d/"+DefaultKeyFile {
		t.Errorf("unexpected defaults: %+v", got)
	}
}

func TestEnsureConfigFirstStart(t *testing.T) {
	dir := t.TempDir()
	logger, logs := newTestLogger()
	path, created, err := EnsureConfig(dir, logger)
	if err != nil {
		t.Fatal(err)
	}
	if !created || path != filepath.Join(dir, ConfigFileName) {
		t.Fatalf("EnsureConfig = %q, %v; want %s, true", path, created, filepath.Join(dir, ConfigFileName))
	}
	certPath, keyPath := filepath.Join(dir, DefaultCertFile), filepath.Join(dir, DefaultKeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %v, want 0600", perm)
	}
	// One log line per file, each naming it.
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 {
		t.Errorf("got %d log lines, want 3 (key, certificate, config):\n%s", len(lines), logs)
	}
	for _, p := range []string{path, certPath, keyPath} {
		if !strings.Contains(logs.String(), "path="+p) {
			t.Errorf("log does not name %s:\n%s", p, logs)
		}
	}
	// No temporary files are left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Errorf("dir holds %d entries, want 3: %v", len(entries), entries)
	}

	// The result is a working configuration.
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("created config does not load: %v", err)
	}
	if _, err := LoadTLSConfig(cfg.Listen.CertPath, cfg.Listen.KeyPath); err != nil {
		t.Fatalf("created pair does not load: %v", err)
	}

	// A second start changes nothing and logs nothing.
	before := readFiles(t, path, certPath, keyPath)
	logger2, logs2 := newTestLogger()
	_, created, err = EnsureConfig(dir, logger2)
	if err != nil || created {
		t.Fatalf("second EnsureConfig = %v, %v; want false, nil", created, err)
	}
	if logs2.String() != "" {
		t.Errorf("second start logged:\n%s", logs2)
	}
	if after := readFiles(t, path, certPath, keyPath); !reflect.DeepEqual(before, after) {
		t.Error("second start changed the files")
	}
}

func readFiles(t *testing.T, paths ...string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestEnsureConfigKeepsExistingPair(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, DefaultCertFile), filepath.Join(dir, DefaultKeyFile)
	if err := CreateSelfSigned(certPath, keyPath, []string{"old.example"}); err != nil {
		t.Fatal(err)
	}
	before := readFiles(t, certPath, keyPath)
	logger, logs := newTestLogger()
	if _, created, err := EnsureConfig(dir, logger); err != nil || !created {
		t.Fatalf("EnsureConfig = %v, %v", created, err)
	}
	if after := readFiles(t, certPath, keyPath); !reflect.DeepEqual(before, after) {
		t.Error("existing pair was replaced")
	}
	if !strings.Contains(logs.String(), "using existing tls certificate") {
		t.Errorf("reuse not logged:\n%s", logs)
	}
}

func TestEnsureConfigLonePairHalf(t *testing.T) {
	for _, lone := range []string{DefaultCertFile, DefaultKeyFile} {
		t.Run(lone, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, lone), []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := EnsureConfig(dir, nil)
			if err == nil || !strings.Contains(err.Error(), "found only one of") {
				t.Fatalf("err = %v, want found only one of …", err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, lone)); string(b) != "keep me" {
				t.Error("lone file was changed")
			}
			if _, err := os.Stat(filepath.Join(dir, ConfigFileName)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("config written despite the error: %v", err)
			}
		})
	}
}

func TestEnsureConfigMissingDir(t *testing.T) {
	if _, _, err := EnsureConfig(filepath.Join(t.TempDir(), "absent"), nil); err == nil {
		t.Error("EnsureConfig succeeded in a missing directory")
	}
}

// FuzzParseConfig checks that parseConfig never panics, and that whatever it
// accepts is stable: encoding the result and parsing it again gives the same
// configuration.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		validConfigJSON, // every field set
		`{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`, // minimal
		`{"Name":"s","LISTEN":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`, // key case
		`{"name":"s","name":"t"}`,                       // duplicate key
		`{"listen":{"lladdr":1}}`,                       // unknown nested field
		`{"ntp":{"hosts":[1,2]}}`,                       // wrong element type
		`{"auth":1e400}`,                                // number out of range
		`{"authby":[{"login":["http://[::1]:8/",""]}]}`, // loopback http
		`[`,                   // truncated
		"{\"name\":\"\xff\"}", // invalid UTF-8
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseConfig(data, "/d")
		if err != nil {
			return
		}
		again, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfg2, err := parseConfig(again, "/d")
		if err != nil {
			t.Fatalf("re-parse of accepted config failed: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(cfg, cfg2) {
			t.Fatalf("not stable:\n%+v\n%+v", cfg, cfg2)
		}
	})
}

func TestConfigComments(t *testing.T) {
	src := []byte(`{
  // the site name
  "name": "a // not a comment", // trailing
  "ntp": {"hosts": ["127.0.0.1:1"], "retries": 1},
  "listen": {"net": "tcp", "laddr": "127.0.0.1:0", "certPath": "c.pem", "keyPath": "k.pem"}
}`)
	cfg, err := parseConfig(src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "a // not a comment" {
		t.Fatalf("name %q", cfg.Name)
	}
	// An error after a comment still names the right line.
	_, err = parseConfig([]byte("{\n// c\n\"nmae\": 1}"), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "nmae") {
		t.Fatalf("error %v, want one naming the field", err)
	}
}

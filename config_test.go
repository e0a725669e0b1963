package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"mnm/admin"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"mnm/qlib"
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
    {"label": "X", "login": ["https://example.com/l", "a", "b"], "token": ["https://example.com/t", "c"],
     "std": ["d"], "keys": "https://example.com/keys", "iss": "https://example.com", "aud": "mnm"}
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
		NTP:    NTPConfig{Hosts: []string{"127.0.0.1:1123", "pool.ntp.org"}, Retries: 2, CheckEveryMinutes: defaultNTPCheckEveryMinutes},
		Listen: ListenConfig{Net: "tcp", Laddr: "127.0.0.1:5443", CertPath: "/srv/mnm/tls/cert.pem", KeyPath: "/etc/mnm/key.pem"},
		Auth:   1,
		AuthBy: []AuthProvider{{}, {
			Label: "X", Login: []string{"https://example.com/l", "a", "b"}, Token: []string{"https://example.com/t", "c"},
			Std: Params{"d"}, Keys: "https://example.com/keys", Iss: "https://example.com", Aud: "mnm",
		}},
		DataDir:      "/srv/mnm/data",
		MaxPostBytes: 1 << 20,
		MinFreeBytes: DefaultMinFreeBytes,
		Limits:       DefaultLimitsConfig(),

		AccountsPerIdentity: DefaultAccountsPerIdentity,
		TokenMaxAgeSeconds:  DefaultTokenMaxAgeSeconds,
		Admin:               AdminConfig{Laddr: admin.DefaultAddr},
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
	if cfg.DataDir != "/d" || cfg.MaxPostBytes != qlib.DefaultMaxPostBytes || cfg.AuthBy == nil || cfg.MinFreeBytes != DefaultMinFreeBytes {
		t.Errorf("defaults not applied: dataDir %q maxPostBytes %d authby %v minFreeBytes %d", cfg.DataDir, cfg.MaxPostBytes, cfg.AuthBy, cfg.MinFreeBytes)
	}
	// 0 is a setting of its own: no watermark.
	cfg, err = parseConfig([]byte(`{"name":"s","minFreeBytes":0,"listen":{"net":"tcp6","laddr":":443","certPath":"c","keyPath":"k"}}`), "/d")
	if err != nil || cfg.MinFreeBytes != 0 {
		t.Errorf("minFreeBytes 0: %v, %d", err, cfg.MinFreeBytes)
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

	// Its provider example, kept under "#authby", is valid once enabled as
	// the comment above it says, and is sent to clients as SPEC §4 shows.
	const disabled = "\"auth\": 0,\n  \"authby\": [],\n  \"#authby\":"
	if !bytes.Contains(data, []byte(disabled)) {
		t.Fatalf("mnm.conf lacks %q", disabled)
	}
	cfg, err := parseConfig(bytes.Replace(data, []byte(disabled), []byte(`"auth": 1, "authby":`), 1), "/d")
	if err != nil {
		t.Fatalf("mnm.conf with its provider enabled: %v", err)
	}
	list, optional, err := clientAuthBy(cfg.AuthBy)
	if err != nil {
		t.Fatal(err)
	}
	const want = `[{"label":"Example",` +
		`"login":["https://id.example.com/authorize","response_type=code\u0026scope=openid\u0026client_id=mnm-client-id\u0026redirect_uri=http://localhost:8123/u"],` +
		`"token":["https://id.example.com/token","grant_type=authorization_code\u0026client_id=mnm-client-id\u0026redirect_uri=http://localhost:8123/u"]}]`
	if string(list) != want || !optional {
		t.Errorf("authby %s, optional %v\nwant %s, true", list, optional, want)
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
	// authByConfig is a minimal config with auth 1 and these authby entries.
	authByConfig := func(entries ...string) string {
		return `{"name":"s","auth":1,"authby":[` + strings.Join(entries, ",") +
			`],"listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`
	}
	many := authProviders(maxAuthProviders + 1)
	// big makes providers whose reply entries are about 12 KB each, within
	// every per-field limit, so that a few overflow the tmtprev reply.
	big := func(n int) []string {
		url := `"https://a.example/` + strings.Repeat("u", maxURLBytes-100) + `"`
		param := `"p=` + strings.Repeat("v", maxAuthFieldBytes-10) + `"`
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf(`{"label":"L%d","login":[%s,%s],"token":[%s,%s]}`, i, url, param, url, param))
		}
		return out
	}
	params := func(n int) string { return strings.Repeat(`"k=v",`, n-1) + `"k=v"` }
	longParam := `"a=` + strings.Repeat("x", maxAuthFieldBytes-1) + `"`
	halfParam := `"a=` + strings.Repeat("x", maxAuthFieldBytes/2) + `"`
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
		{"negative max offset", edit(`"retries": 2`, `"retries": 2, "maxOffsetSeconds": -1`), "ntp.maxOffsetSeconds: -1 is outside 0…31536000 (0 for the default, 1000)"},
		{"max offset over a year", edit(`"retries": 2`, `"retries": 2, "maxOffsetSeconds": 31536001`), "ntp.maxOffsetSeconds: 31536001 is outside"},
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
		{"too many providers", authByConfig(many...), "authby: 27 providers, at most 26"},
		{"too many providers after marker", authByConfig(append([]string{`{}`}, many...)...), "authby: 27 providers, at most 26"},
		{"too many after comment marker", authByConfig(append([]string{`{"#": "authentication optional"}`}, many...)...), "authby: 27 providers, at most 26"},
		{"reply too large", authByConfig(big(6)...), "authby: the providers take"},
		{"marker with fields", edit(`{},`, `{"iss": "x"},`), "authby[0]: an entry with an empty label"},
		{"marker with std", edit(`{},`, `{"#": "optional", "std": ["a=b"]},`), "authby[0]: an entry with an empty label"},
		{"empty label later", edit(`"label": "X"`, `"label": ""`), "authby[1].label: must not be empty"},
		{"duplicate label", edit(`{},`, `{"label": "X", "login": ["https://a.example/"], "token": ["https://a.example/"]},`), `authby[1].label: "X" appears twice`},

		// login, token and std in the deployed shape (SPEC §8).
		{"string std", edit(`"std": ["d"]`, `"std": "oidc"`), `field "authby[1].std": a string is no longer accepted here`},
		{"string std says what to write", edit(`"std": ["d"]`, `"std": "oidc"`), `e.g. "std": ["client_id=ID", "redirect_uri=http://localhost:8123/u"]`},
		{"login with zero strings", edit(`["https://example.com/l", "a", "b"]`, `[]`), `authby[1].login: want [url, param…], got nothing, e.g. ["https://id.example.com/authorize"`},
		{"token missing", edit(`"token": ["https://example.com/t", "c"],`, ``), "authby[1].token: want [url, param…], got nothing"},
		{"login a string", edit(`["https://example.com/l", "a", "b"]`, `"https://example.com/l"`), `field "authby[1].login": want a list, got a string`},
		{"non-string param", edit(`"a", "b"`, `"a", 7`), `field "authby[1].login[2]": want a string, got a number`},
		{"non-string std", edit(`["d"]`, `[{"d": 1}]`), `field "authby[1].std[0]": want a string, got an object`},
		{"std an object", edit(`["d"]`, `{"d": 1}`), `field "authby[1].std": want a list, got an object`},
		{"too many login params", edit(`"a", "b"`, params(maxAuthParams+1)), "authby[1].login: 33 params, at most 32"},
		{"too many token params", edit(`"c"`, params(maxAuthParams+1)), "authby[1].token: 33 params, at most 32"},
		{"too many std params", edit(`["d"]`, `[`+params(maxAuthParams+1)+`]`), "authby[1].std: 33 params, at most 32"},
		{"empty param", edit(`"c"`, `""`), "authby[1].token[1]: empty param: leave it out"},
		{"empty std param", edit(`["d"]`, `["d", ""]`), "authby[1].std[1]: empty param"},
		{"param without key", edit(`"b"`, `"=b"`), `authby[1].login[2]: "=b" has no key`},
		{"param holding &", edit(`"b"`, `"b=1&c=2"`), `authby[1].login[2]: "b=1&c=2" holds "&": give each param a string of its own`},
		{"param holding #", edit(`["d"]`, `["d=x#y"]`), `authby[1].std[0]: "d=x#y" holds "#"`},
		{"long param", edit(`"c"`, longParam), "authby[1].token[1]: 4097 bytes, at most 4096"},
		{"long joined params", edit(`"a", "b"`, halfParam+","+halfParam), "authby[1].login: its params and std's take"},
		{"long joined with std", edit(`["d"]`, `[`+halfParam+`,`+halfParam+`]`), "authby[1].token: its params and std's take"},
		{"http url", edit(`https://example.com/l`, `http://example.com/l`), "authby[1].login[0]: \"http://example.com/l\": http is allowed only for loopback hosts"},
		{"relative url", edit(`https://example.com/l`, `/l`), "authby[1].login[0]: \"/l\" is not an absolute URL"},
		{"ftp url", edit(`https://example.com/t`, `ftp://example.com/t`), "authby[1].token[0]: \"ftp://example.com/t\": scheme must be https"},
		{"credentials in url", edit(`https://example.com/l`, `https://u:p@example.com/l`), "authby[1].login[0]: URL must not contain credentials"},
		{"fragment in url", edit(`https://example.com/l`, `https://example.com/l#f`), "authby[1].login[0]: URL must not contain a fragment"},
		{"long url", edit(`https://example.com/l`, `https://example.com/`+strings.Repeat("l", maxURLBytes)), "authby[1].login[0]: URL of"},
		{"control in params", edit(`"c"`, `"c\nd"`), "authby[1].token[1]: contains the unprintable"},

		// Comments: "#" keys are skipped at any level, but only they.
		{"unknown beside comment", edit(`"laddr"`, `"#": "x", "lladdr"`), `unknown field "listen.lladdr"`},
		{"wrong type beside comment", edit(`"retries": 2`, `"#": 1, "retries": "2"`), `field "ntp.retries": want an integer, got a string`},
		{"hash inside a key", edit(`"auth": 1`, `"auth#": 1`), `unknown field "auth#"`},
		{"space before hash", edit(`"auth": 1`, `" #auth": 1`), `unknown field " #auth"`},
		{"comment value truncated", `{"#": [1, {"a": `, "unexpected end of file"},
		{"comment value bad syntax", `{"#": [1, }`, "line 1: invalid character '}'"},
		{"long aud", edit(`"aud": "mnm"`, `"aud": "`+strings.Repeat("a", maxAuthFieldBytes+1)+`"`), "authby[1].aud: 4097 bytes"},
		{"maxPostBytes zero", edit(`1048576`, `0`), "maxPostBytes: 0 is outside"},
		{"maxPostBytes negative", edit(`1048576`, `-5`), "maxPostBytes: -5 is outside"},
		{"maxPostBytes huge", edit(`1048576`, `1099511627776`), "maxPostBytes: 1099511627776 is outside"},
		{"minFreeBytes small", edit(`"maxPostBytes": 1048576`, `"maxPostBytes": 1048576, "minFreeBytes": 1000`), "minFreeBytes: 1000 is outside"},
		{"minFreeBytes negative", edit(`"maxPostBytes": 1048576`, `"maxPostBytes": 1048576, "minFreeBytes": -1`), "minFreeBytes: -1 is outside"},
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

// authProviders returns n distinct valid provider entries, as JSON.
func authProviders(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf(`{"label":"L%d","login":["https://a.example/","p"],"token":["https://a.example/t","p"]}`, i))
	}
	return out
}

// Up to 26 providers are accepted, with or without the empty first entry
// (which is not one, and is not sent), and all of them are sent.
func TestParseConfigMostProviders(t *testing.T) {
	long := func(i int) string {
		label := fmt.Sprintf("%02d", i) + strings.Repeat("l", maxAuthLabelBytes-2)
		url := `"https://a.example/` + strings.Repeat("u", 100) + `"`
		return fmt.Sprintf(`{"label":%q,"login":[%s,"p"],"token":[%s,"q"],"std":["s=t"]}`, label, url, url)
	}
	var longs []string
	for i := range maxAuthProviders {
		longs = append(longs, long(i))
	}
	for _, tc := range []struct {
		name    string
		entries []string
	}{
		{"26", authProviders(maxAuthProviders)},
		{"marker and 26", append([]string{`{}`}, authProviders(maxAuthProviders)...)},
		{"comment marker and 26", append([]string{`{"#": "authentication optional"}`}, authProviders(maxAuthProviders)...)},
		{"26 long labels", longs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := `{"name":"s","auth":1,"authby":[` + strings.Join(tc.entries, ",") +
				`],"listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`
			cfg, err := parseConfig([]byte(src), "/d")
			if err != nil {
				t.Fatal(err)
			}
			list, _, err := clientAuthBy(cfg.AuthBy)
			if err != nil {
				t.Fatal(err)
			}
			var sent []map[string]any
			if err := json.Unmarshal(list, &sent); err != nil || len(sent) != maxAuthProviders {
				t.Fatalf("reply lists %d providers (%v), want %d", len(sent), err, maxAuthProviders)
			}
		})
	}
}

// Keys starting with "#" are comments at any level: top level, nested
// objects, entries of lists, with any value (a string, a number, a list, an
// object with keys of its own, repeated); "//" comments work beside them.
// The result is the configuration without them.
func TestConfigCommentKeys(t *testing.T) {
	const plain = `{
  "name": "s",
  "ntp": {"hosts": ["127.0.0.1:1"], "retries": 1},
  "listen": {"net": "tcp", "laddr": "127.0.0.1:0", "certPath": "c.pem", "keyPath": "k.pem"},
  "auth": 1,
  "authby": [{}, {"label": "X", "login": ["https://a.example/l", "a=1"], "token": ["https://a.example/t"], "std": ["s=2"]}]
}`
	const commented = `{
"#": "top level",
  "name": "s", // a "//" comment beside them
  "#ntp": {"hosts": ["disabled.example"], "retries": 9},
  "ntp": {"#": 1, "hosts": ["127.0.0.1:1"], "#": ["repeated", {"nested": {"#deeper": true}}], "retries": 1},
  "listen": {"net": "tcp", "laddr": "127.0.0.1:0", "certPath": "c.pem", "keyPath": "k.pem", "#end": null},
  "auth": 1,
  "authby": [{"#": "authentication optional"},
    {"#label": "in a list entry", "label": "X", "login": ["https://a.example/l", "a=1"],
     "token": ["https://a.example/t"], "std": ["s=2"], "#": {"}": "]"}}],
  "#authby": [{"label": "old", "login": 5}]
}`
	want, err := parseConfig([]byte(plain), "/d")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseConfig([]byte(commented), "/d")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("with comments\n%+v\nwant\n%+v", got, want)
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
	if _, err := loadTLSConfig(cfg.Listen.CertPath, cfg.Listen.KeyPath); err != nil {
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
		`{"authby":[{"login":["http://[::1]:8/",""]}]}`, // loopback http, empty param
		`{"authby":[{},{"label":"X","login":["https://a/","p"],"token":["https://a/t"],"std":["c=d"]}]}`, // deployed shape
		`{"#":1,"ntp":{"#x":[{"#":{}}]},"authby":[{"#":"optional"}]}`,                                    // comment keys at several levels
		`{"authby":[{"std":"oidc"}]}`, // the old string std
		`[`,                           // truncated
		"{\"name\":\"\xff\"}",         // invalid UTF-8
		`{"name":"s","listen":{"net":"tcp","laddr":":443","acme":{"hosts":["mnm.example.net"],"email":"ops@example.net"}}}`, // ACME instead of files
		`{"listen":{"acme":{"hosts":["192.0.2.1","*.x"],"directoryURL":"http://x"}}}`,                                       // ACME refusals
		`{"admin":{"laddr":"","tokenFile":"tokens"},"ntp":{"checkEveryMinutes":-1}}`,                                        // admin off, bad recheck
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

// TestParseConfigLimits: limits left out take their defaults, 0 turns one
// off, every value is checked with its field path, and what qlib gets
// matches the file.
func TestParseConfigLimits(t *testing.T) {
	const base = `{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}`
	parse := func(limits string) (*Config, error) {
		if limits == "" {
			return parseConfig([]byte(base+`}`), "/d")
		}
		return parseConfig([]byte(base+`,"limits":`+limits+`}`), "/d")
	}
	for _, limits := range []string{"", "null", "{}"} {
		cfg, err := parse(limits)
		if err != nil {
			t.Fatalf("limits %q: %v", limits, err)
		}
		if !reflect.DeepEqual(cfg.Limits, DefaultLimitsConfig()) {
			t.Errorf("limits %q: %+v, want the defaults", limits, cfg.Limits)
		}
	}
	// mnm.conf shows the defaults.
	data, err := os.ReadFile("mnm.conf")
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := parseConfig(data, "/d"); err != nil || !reflect.DeepEqual(cfg.Limits, DefaultLimitsConfig()) {
		t.Errorf("mnm.conf's limits are not the defaults: %v %+v", err, cfg)
	}
	defaults := DefaultLimitsConfig()
	def := defaults.Qlib()
	want := qlib.DefaultLimits()
	if !reflect.DeepEqual(def, &want) {
		t.Errorf("the default limits reach qlib as %+v, want %+v", def, want)
	}

	cfg, err := parse(`{"exempt": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], "pingsPerDay": 0,
		"linksPerAddress": 7, "queueBytesPerDevice": 1048576, "devicesPerPost": 300,
		"groupsPerDay": 0, "invitationsPerInviteePerDay": 9}`)
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.Limits.Qlib()
	wantExempt := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32")}
	if !reflect.DeepEqual(got.Exempt, wantExempt) || got.PingsPerDay != 0 || got.LinksPerAddr != 7 ||
		got.QueueBytesPerDevice != 1<<20 || got.InvitesPerDay != qlib.DefaultInvitesPerDay || got.DevicesPerPost != 300 ||
		got.GroupsPerDay != 0 || got.InvitesPerInviteePerDay != 9 {
		t.Errorf("limits set in the file reach qlib as %+v", got)
	}
	// An empty list exempts nothing, not even loopback.
	if cfg, err := parse(`{"exempt": []}`); err != nil || len(cfg.Limits.Exempt) != 0 {
		t.Errorf(`"exempt": []: %v, %v`, err, cfg.Limits.Exempt)
	}

	bad := []struct{ limits, want string }{
		{`{"exempt": ["10.1.2.3/8"]}`, `limits.exempt[0]: "10.1.2.3/8" has address bits set past /8: write 10.0.0.0/8, or 10.1.2.3/32 for the one address`},
		{`{"exempt": ["127.0.0.1/32", "localhost"]}`, `limits.exempt[1]: "localhost" is neither an address range (CIDR) nor an address`},
		{`{"exempt": ["10.0.0.0/33"]}`, `limits.exempt[0]: "10.0.0.0/33" is not an address range (CIDR)`},
		{`{"exempt": ["::ffff:10.0.0.0/104"]}`, `limits.exempt[0]: "::ffff:10.0.0.0/104": write IPv4 ranges in IPv4 form`},
		{`{"exempt": "127.0.0.1/32"}`, `field "limits.exempt": want a list, got a string`},
		{`{"linksPerAddress": -1}`, `limits.linksPerAddress: -1 is outside 0…1000000 (0 turns the limit off)`},
		{`{"registrationsPerHour": 1000001}`, `limits.registrationsPerHour: 1000001 is outside 0…1000000`},
		{`{"loginFailuresPerAddress": -5}`, `limits.loginFailuresPerAddress: -5 is outside`},
		{`{"loginFailuresPerUID": 2000000}`, `limits.loginFailuresPerUID: 2000000 is outside`},
		{`{"pingsPerDay": -1}`, `limits.pingsPerDay: -1 is outside`},
		{`{"invitationsPerDay": 1.5}`, `field "limits.invitationsPerDay": want an integer`},
		{`{"groupsPerDay": -1}`, `limits.groupsPerDay: -1 is outside 0…1000000 (0 turns the limit off)`},
		{`{"invitationsPerInviteePerDay": 1000001}`, `limits.invitationsPerInviteePerDay: 1000001 is outside`},
		{`{"devicesPerPost": -1}`, `limits.devicesPerPost: -1 is outside 0…1000000 (0 turns the limit off)`},
		{`{"devicesPerPost": 1000001}`, `limits.devicesPerPost: 1000001 is outside`},
		{`{"queueBytesPerDevice": 1000}`, `limits.queueBytesPerDevice: 1000 is outside 1048576…1099511627776 (or 0 for no limit)`},
		{`{"queueBytesPerDevice": 2199023255552}`, `limits.queueBytesPerDevice: 2199023255552 is outside`},
		{`{"pingsPerDey": 5}`, `unknown field "limits.pingsPerDey"`},
		{`{"pingsPerDay": 5, "PingsPerDay": 6}`, `duplicate field "limits.pingsPerDay"`},
	}
	for _, b := range bad {
		_, err := parse(b.limits)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("limits %s: got %v, want an error containing %q", b.limits, err, b.want)
		}
	}
	many := make([]string, maxExemptRanges+1)
	for i := range many {
		many[i] = fmt.Sprintf(`"10.0.%d.%d"`, i/256, i%256)
	}
	if _, err := parse(`{"exempt": [` + strings.Join(many, ",") + `]}`); err == nil || !strings.Contains(err.Error(), "limits.exempt: 257 ranges, at most 256") {
		t.Errorf("too many exempt ranges: %v", err)
	}
}

// TestParseConfigSignUpBounds: accountsPerIdentity and tokenMaxAgeSeconds
// take their defaults when left out, 0 when set to 0 (no bound, no check),
// and refuse values outside their ranges.
func TestParseConfigSignUpBounds(t *testing.T) {
	const base = `{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}`
	parse := func(extra string) (*Config, error) { return parseConfig([]byte(base+extra+`}`), "/d") }
	cfg, err := parse("")
	if err != nil || cfg.AccountsPerIdentity != DefaultAccountsPerIdentity || cfg.TokenMaxAgeSeconds != DefaultTokenMaxAgeSeconds {
		t.Fatalf("defaults: %v, %+v", err, cfg)
	}
	if d := DefaultConfig(); d.AccountsPerIdentity != DefaultAccountsPerIdentity || d.TokenMaxAgeSeconds != DefaultTokenMaxAgeSeconds {
		t.Errorf("DefaultConfig: accountsPerIdentity %d, tokenMaxAgeSeconds %d", d.AccountsPerIdentity, d.TokenMaxAgeSeconds)
	}
	cfg, err = parse(`,"accountsPerIdentity":0,"tokenMaxAgeSeconds":0`)
	if err != nil || cfg.AccountsPerIdentity != 0 || cfg.TokenMaxAgeSeconds != 0 {
		t.Errorf("set to 0: %v, %d, %d", err, cfg.AccountsPerIdentity, cfg.TokenMaxAgeSeconds)
	}
	cfg, err = parse(`,"accountsPerIdentity":3,"tokenMaxAgeSeconds":600`)
	if err != nil || cfg.AccountsPerIdentity != 3 || cfg.TokenMaxAgeSeconds != 600 {
		t.Errorf("set: %v, %d, %d", err, cfg.AccountsPerIdentity, cfg.TokenMaxAgeSeconds)
	}
	for _, b := range []struct{ extra, want string }{
		{`,"accountsPerIdentity":-1`, "accountsPerIdentity: -1 is outside 0…1000 (0 for no bound)"},
		{`,"accountsPerIdentity":1001`, "accountsPerIdentity: 1001 is outside"},
		{`,"tokenMaxAgeSeconds":59`, "tokenMaxAgeSeconds: 59 is outside 60…86400 (or 0 for no check)"},
		{`,"tokenMaxAgeSeconds":86401`, "tokenMaxAgeSeconds: 86401 is outside"},
		{`,"tokenMaxAgeSeconds":-1`, "tokenMaxAgeSeconds: -1 is outside"},
		{`,"tokenMaxAgeSeconds":"1h"`, `field "tokenMaxAgeSeconds": want an integer`},
	} {
		t.Run(b.extra, func(t *testing.T) {
			if _, err := parse(b.extra); err == nil || !strings.Contains(err.Error(), b.want) {
				t.Errorf("%s: got %v, want an error containing %q", b.extra, err, b.want)
			}
		})
	}
	// mnm.conf shows the defaults.
	data, err := os.ReadFile("mnm.conf")
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := parseConfig(data, "/d"); err != nil || cfg.AccountsPerIdentity != DefaultAccountsPerIdentity || cfg.TokenMaxAgeSeconds != DefaultTokenMaxAgeSeconds {
		t.Errorf("mnm.conf: %v, %+v", err, cfg)
	}
}

// TestParseConfigAwayAfterDays: the away policy is off (0) unless set, and
// refuses values outside 0…maxAwayAfterDays.
func TestParseConfigAwayAfterDays(t *testing.T) {
	const base = `{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}`
	parse := func(extra string) (*Config, error) { return parseConfig([]byte(base+extra+`}`), "/d") }
	if cfg, err := parse(""); err != nil || cfg.AwayAfterDays != 0 {
		t.Fatalf("default: %v, %d", err, cfg.AwayAfterDays)
	}
	if d := DefaultConfig(); d.AwayAfterDays != 0 {
		t.Errorf("DefaultConfig: awayAfterDays %d", d.AwayAfterDays)
	}
	for _, n := range []int{0, 1, 90, maxAwayAfterDays} {
		if cfg, err := parse(fmt.Sprintf(`,"awayAfterDays":%d`, n)); err != nil || cfg.AwayAfterDays != n {
			t.Errorf("awayAfterDays %d: %v", n, err)
		}
	}
	for _, b := range []struct{ extra, want string }{
		{`,"awayAfterDays":-1`, "awayAfterDays: -1 is outside 0…3650 (0 for off)"},
		{`,"awayAfterDays":3651`, "awayAfterDays: 3651 is outside"},
		{`,"awayAfterDays":"30d"`, `field "awayAfterDays": want an integer`},
	} {
		if _, err := parse(b.extra); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: got %v, want an error containing %q", b.extra, err, b.want)
		}
	}
}

package main

// The deployed (v0) server's configuration shapes (SPEC §8): a real deployed
// site's mnm.config, kept in testdata so that these tests do not need
// ../shared, must load unchanged and make the tmtprev reply SPEC §4 op 0
// describes.

import (
	"bytes"
	"log/slog"
	"mnm/admin"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"mnm/qlib"
	"mnm/testclient"
)

// v0ConfigFile is site/mnm.config of ../shared/tmtp/v0-site/site-11.tar.gz,
// byte for byte (TestV0ConfigTestdataMatchesShared).
const v0ConfigFile = "testdata/v0-mnm.config"

// v0AuthBy is the authby of the tmtprev reply that v0ConfigFile makes: the
// provider only (the comment-only first entry makes sign-up optional and is
// not sent), login and token as [url, own params then std's joined by "&"],
// and no std, keys, iss or aud. "&" is escaped as \u0026, as json.Marshal
// and tmtp.AppendFrame escape it; a client's JSON decoder reads "&".
const v0AuthBy = `[{"label":"Example provider",` +
	`"login":["http://127.0.0.1:9/authorize","response_type=code\u0026scope=openid\u0026client_id=your-id\u0026redirect_uri=http://localhost:8123/u"],` +
	`"token":["http://127.0.0.1:9/token","grant_type=authorization_code\u0026client_id=your-id\u0026redirect_uri=http://localhost:8123/u"]}]`

// TestV0ConfigTestdataMatchesShared: the testdata copy is the file of the
// shared v0 site, so that the tests below test what operators have.
func TestV0ConfigTestdataMatchesShared(t *testing.T) {
	old, _ := unpackSite11(t)
	shared, err := os.ReadFile(filepath.Join(old, ConfigFileName))
	if err != nil {
		t.Fatal(err)
	}
	if local := readFiles(t, v0ConfigFile)[0]; !bytes.Equal(local, shared) {
		t.Fatalf("%s differs from site/%s in %s:\n%s", v0ConfigFile, ConfigFileName, site11, shared)
	}
}

// v0Site copies the v0 config into a fresh directory with the certificate
// and key it names (./server.crt, ./server.key), rewriting its laddr first
// when laddr is not "". It returns the config's path.
func v0Site(t *testing.T, laddr string) string {
	t.Helper()
	data := readFiles(t, v0ConfigFile)[0]
	if laddr != "" {
		const deployed = `"laddr":    "127.0.0.1:59771"`
		if !bytes.Contains(data, []byte(deployed)) {
			t.Fatalf("%s lacks %s", v0ConfigFile, deployed)
		}
		data = bytes.Replace(data, []byte(deployed), []byte(`"laddr": "`+laddr+`"`), 1)
		// A server started from it takes a free port for its admin
		// listener too, rather than the default one.
		start := bytes.IndexByte(data, '{')
		data = slices.Concat(data[:start+1], []byte(`"admin": {"laddr": "127.0.0.1:0"},`), data[start+1:])
	}
	dir := t.TempDir()
	if err := CreateSelfSigned(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), []string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ConfigFileName)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The deployed config loads unchanged: "#" comments at the top level and in
// authby[0], login/token as [url, param…], std as a list.
func TestLoadConfigV0(t *testing.T) {
	path := v0Site(t, "")
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	want := &Config{
		Name: "Test Site",
		NTP:  NTPConfig{Hosts: []string{"127.0.0.1"}, Retries: 2, CheckEveryMinutes: defaultNTPCheckEveryMinutes},
		Listen: ListenConfig{Net: "tcp", Laddr: "127.0.0.1:59771",
			CertPath: filepath.Join(dir, "server.crt"), KeyPath: filepath.Join(dir, "server.key")},
		Auth: 1,
		AuthBy: []AuthProvider{{}, {
			Label: "Example provider",
			Login: []string{"http://127.0.0.1:9/authorize", "response_type=code", "scope=openid"},
			Token: []string{"http://127.0.0.1:9/token", "grant_type=authorization_code"},
			Std:   Params{"client_id=your-id", "redirect_uri=http://localhost:8123/u"},
			Keys:  "http://127.0.0.1:9/keys",
			Iss:   "https://example.com/",
			Aud:   "your-id",
		}},
		DataDir:      dir,
		MaxPostBytes: qlib.DefaultMaxPostBytes,
		MinFreeBytes: DefaultMinFreeBytes,
		Limits:       DefaultLimitsConfig(), // the deployed server had none

		AccountsPerIdentity: DefaultAccountsPerIdentity,
		TokenMaxAgeSeconds:  DefaultTokenMaxAgeSeconds,
		Admin:               AdminConfig{Laddr: admin.DefaultAddr}, // on loopback, the default
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("LoadConfig =\n%+v\nwant\n%+v", cfg, want)
	}
}

// The tmtprev authby built from the deployed config, byte for byte.
func TestClientAuthByV0(t *testing.T) {
	cfg, err := LoadConfig(v0Site(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	list, optional, err := clientAuthBy(cfg.AuthBy)
	if err != nil {
		t.Fatal(err)
	}
	if string(list) != v0AuthBy {
		t.Errorf("authby\n%s\nwant\n%s", list, v0AuthBy)
	}
	if !optional {
		t.Error("the comment-only first entry does not make sign-up optional")
	}
}

func TestClientAuthBy(t *testing.T) {
	p := func(label string, login, token []string, std ...string) AuthProvider {
		return AuthProvider{Label: label, Login: login, Token: token, Std: std, Keys: "https://k.example/", Iss: "i", Aud: "a"}
	}
	for _, tc := range []struct {
		name      string
		providers []AuthProvider
		want      string
		optional  bool
	}{
		{"none", nil, `[]`, false},
		{"marker only", []AuthProvider{{}}, `[]`, true},
		{"no params at all", []AuthProvider{p("A", []string{"https://a/l"}, []string{"https://a/t"})},
			`[{"label":"A","login":["https://a/l",""],"token":["https://a/t",""]}]`, false},
		{"std only", []AuthProvider{p("A", []string{"https://a/l"}, []string{"https://a/t"}, "s=1", "r=2")},
			`[{"label":"A","login":["https://a/l","s=1\u0026r=2"],"token":["https://a/t","s=1\u0026r=2"]}]`, false},
		{"own params only", []AuthProvider{p("A", []string{"https://a/l", "x"}, []string{"https://a/t", "y=", "z=3"})},
			`[{"label":"A","login":["https://a/l","x"],"token":["https://a/t","y=\u0026z=3"]}]`, false},
		{"marker then two", []AuthProvider{{}, p("A", []string{"https://a/l", "x=1"}, []string{"https://a/t"}, "s"), p("B", []string{"https://b/l"}, []string{"https://b/t", "y"})},
			`[{"label":"A","login":["https://a/l","x=1\u0026s"],"token":["https://a/t","s"]},{"label":"B","login":["https://b/l",""],"token":["https://b/t","y"]}]`, true},
		// Only the first entry can be the marker; validation refuses an
		// empty label elsewhere, and clientAuthBy must not drop a provider.
		{"empty label later", []AuthProvider{p("A", []string{"https://a/l"}, []string{"https://a/t"}), {}},
			`[{"label":"A","login":["https://a/l",""],"token":["https://a/t",""]},{"label":"","login":["",""],"token":["",""]}]`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			list, optional, err := clientAuthBy(tc.providers)
			if err != nil {
				t.Fatal(err)
			}
			if string(list) != tc.want || optional != tc.optional {
				t.Errorf("clientAuthBy = %s, %v\nwant %s, %v", list, optional, tc.want, tc.optional)
			}
		})
	}
}

// A server started from the deployed config (its laddr rewritten to a free
// port) answers TmtpRev over TLS with that authby. Nothing answers at the
// config's NTP host or provider URLs: both are logged warnings, not failures.
func TestV0ConfigServesTmtpRev(t *testing.T) {
	path := v0Site(t, "127.0.0.1:0")
	logs := newLockedBuffer()
	d, err := startDaemon(path, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("start: %v\n%s", err, logs)
	}
	t.Cleanup(func() {
		if err := d.shutdown(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	addr := d.ln.Addr().String()

	c, err := testclient.Dial(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteFrame(map[string]any{"Op": 0, "Id": "1"}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := c.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"auth":1,"authby":` + v0AuthBy + `,"id":"1","name":"Test Site","op":"tmtprev"}`
	if string(f.Raw) != want {
		t.Errorf("tmtprev reply\n%s\nwant\n%s", f.Raw, want)
	}

	// The comment-only first entry makes sign-up optional: no token needed.
	rc, reg, err := testclient.Register(addr, "laptop", "", testclient.Options{})
	if err != nil {
		t.Fatalf("register without a token: %v", err)
	}
	rc.Close()
	if reg.UID == "" {
		t.Error("registered without a uid")
	}

	log := logs.String()
	if !strings.Contains(log, "ntp unavailable, using the local clock") && !strings.Contains(log, "ntp clock synced") {
		t.Error("the log says nothing of NTP")
	}
	if !strings.Contains(log, "oidc keys fetch failed") {
		t.Error("the unreachable provider keys were not logged")
	}
}

package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"mnm/testclient"
)

// acmeTestHost is the name the tests get certificates for; the test DNS
// responder resolves every name to 127.0.0.1, so the CA's challenge
// connections reach the server under test.
const acmeTestHost = "mnm.test"

// --- configuration ---

// acmeConfigJSON is a site with listen.acme; tests edit one value of it.
const acmeConfigJSON = `{
  "name": "s",
  "listen": {"net": "tcp", "laddr": ":443", "acme": {
    "hosts": ["Mnm.Example.net", "other.example.net"],
    "email": "admin@example.net",
    "directoryURL": "https://127.0.0.1:14000/dir",
    "directoryCA": "pebble.pem"
  }},
  "dataDir": "data"
}`

// With acme, certPath and keyPath may be left out and defaults fill in the
// rest: cacheDir in the data directory, Let's Encrypt's directory.
func TestParseConfigACME(t *testing.T) {
	cfg, err := parseConfig([]byte(acmeConfigJSON), "/srv/mnm")
	if err != nil {
		t.Fatal(err)
	}
	want := ACMEConfig{
		Hosts:        []string{"mnm.example.net", "other.example.net"},
		Email:        "admin@example.net",
		CacheDir:     "/srv/mnm/data/acme",
		DirectoryURL: "https://127.0.0.1:14000/dir",
		DirectoryCA:  "/srv/mnm/pebble.pem",
	}
	if cfg.Listen.ACME == nil || !equalACME(*cfg.Listen.ACME, want) {
		t.Errorf("listen.acme = %+v\nwant %+v", cfg.Listen.ACME, want)
	}
	if cfg.Listen.CertPath != "" || cfg.Listen.KeyPath != "" {
		t.Errorf("certPath %q keyPath %q: want them left empty", cfg.Listen.CertPath, cfg.Listen.KeyPath)
	}

	cfg, err = parseConfig([]byte(`{"name":"s","listen":{"net":"tcp","laddr":":443","certPath":"c","keyPath":"k",
		"acme":{"hosts":["a.example"],"cacheDir":"/var/cache/mnm"}}}`), "/d")
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Listen.ACME; a.DirectoryURL != autocert.DefaultACMEDirectory || a.CacheDir != "/var/cache/mnm" || a.Email != "" || a.DirectoryCA != "" {
		t.Errorf("defaults: %+v", a)
	}

	// Without acme nothing changes, and null is as absent.
	for _, doc := range []string{
		`{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}}`,
		`{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k","acme":null}}`,
	} {
		cfg, err := parseConfig([]byte(doc), "/d")
		if err != nil || cfg.Listen.ACME != nil || cfg.Listen.CertPath != "/d/c" {
			t.Errorf("%s: %v, acme %+v, certPath %q", doc, err, cfg.Listen.ACME, cfg.Listen.CertPath)
		}
	}
}

func equalACME(a, b ACMEConfig) bool {
	return strings.Join(a.Hosts, ",") == strings.Join(b.Hosts, ",") && a.Email == b.Email &&
		a.CacheDir == b.CacheDir && a.DirectoryURL == b.DirectoryURL && a.DirectoryCA == b.DirectoryCA
}

// Every bad value names its field.
func TestParseConfigACMEErrors(t *testing.T) {
	edit := func(old, new string) string {
		t.Helper()
		if !strings.Contains(acmeConfigJSON, old) {
			t.Fatalf("fixture lacks %q", old)
		}
		return strings.Replace(acmeConfigJSON, old, new, 1)
	}
	hosts := `"hosts": ["Mnm.Example.net", "other.example.net"]`
	tests := []struct {
		name, doc, want string
	}{
		{"no hosts", edit(hosts, `"hosts": []`), "listen.acme.hosts: must list at least one host name"},
		{"hosts left out", edit(hosts+",", ``), "listen.acme.hosts: must list at least one host name"},
		{"too many hosts", edit(hosts, `"hosts": [`+strings.Repeat(`"a.example",`, maxACMEHosts)+`"b.example"]`), "listen.acme.hosts: 17 names, at most 16"},
		{"IP address", edit(hosts, `"hosts": ["192.0.2.1"]`), "listen.acme.hosts[0]: \"192.0.2.1\" is an IP address"},
		{"one label", edit(hosts, `"hosts": ["localhost"]`), "listen.acme.hosts[0]: \"localhost\": a CA issues only for names of two labels or more"},
		{"wildcard", edit(hosts, `"hosts": ["*.example.net"]`), "listen.acme.hosts[0]: \"*.example.net\" is not a host name"},
		{"underscore", edit(hosts, `"hosts": ["a_b.example.net"]`), "listen.acme.hosts[0]: \"a_b.example.net\" is not a host name"},
		{"trailing dot", edit(hosts, `"hosts": ["example.net."]`), "listen.acme.hosts[0]: \"example.net.\": write it without the trailing dot"},
		{"empty host", edit(hosts, `"hosts": [""]`), "listen.acme.hosts[0]: \"\" is not a host name"},
		{"twice", edit(hosts, `"hosts": ["a.example", "A.example"]`), "listen.acme.hosts[1]: \"A.example\" is listed twice"},
		{"hosts a string", edit(hosts, `"hosts": "a.example"`), `field "listen.acme.hosts": want a list, got a string`},
		{"acme a list", `{"name":"s","listen":{"net":"tcp","laddr":":1","acme":[]}}`, `field "listen.acme": want an object, got a list`},
		{"unknown field", edit(`"email"`, `"renewBefore": 3, "email"`), `unknown field "listen.acme.renewBefore"`},
		{"email without @", edit(`"admin@example.net"`, `"admin"`), "listen.acme.email: \"admin\" is not an email address"},
		{"email mailto", edit(`"admin@example.net"`, `"mailto:admin@example.net"`), "listen.acme.email: \"mailto:admin@example.net\": write the address without mailto:"},
		{"email list", edit(`"admin@example.net"`, `"a@example.net, b@example.net"`), "listen.acme.email: \"a@example.net, b@example.net\" is not an email address"},
		{"email control", edit(`"admin@example.net"`, `"a\u0007@example.net"`), "listen.acme.email: contains the unprintable character U+0007"},
		{"empty cacheDir", edit(`"email"`, `"cacheDir": "", "email"`), "listen.acme.cacheDir: must not be empty when given"},
		{"http directory", edit(`https://127.0.0.1:14000/dir`, `http://127.0.0.1:14000/dir`), "listen.acme.directoryURL: \"http://127.0.0.1:14000/dir\" is not an absolute https URL"},
		{"empty directory", edit(`"https://127.0.0.1:14000/dir"`, `""`), "listen.acme.directoryURL: \"\" is not an absolute https URL"},
		{"directory credentials", edit(`https://127.0.0.1`, `https://u:p@127.0.0.1`), "listen.acme.directoryURL: \"https://u:p@127.0.0.1:14000/dir\" must have no credentials"},
		{"empty directoryCA", edit(`"pebble.pem"`, `""`), "listen.acme.directoryCA: must not be empty when given"},
		{"directoryCA for Let's Encrypt", edit(`"directoryURL": "https://127.0.0.1:14000/dir",`, ``), "listen.acme.directoryCA: is for a test or private ACME server: give its directoryURL too"},
		// Without acme the pair is still required.
		{"no pair", `{"name":"s","listen":{"net":"tcp","laddr":":1"}}`, "listen.certPath: must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tt.doc), "/d")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// LoadConfig with acme reads no certificate pair; a directoryCA it names must
// be a PEM file.
func TestLoadConfigACME(t *testing.T) {
	dir := t.TempDir()
	doc := map[string]any{
		"name":   "s",
		"listen": map[string]any{"net": "tcp", "laddr": ":443", "acme": map[string]any{"hosts": []string{"a.example"}}},
	}
	path := writeConfigFile(t, dir, doc)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("no certificate files: %v", err)
	}
	if want := filepath.Join(dir, "acme"); cfg.Listen.ACME.CacheDir != want {
		t.Errorf("cacheDir %q, want %q", cfg.Listen.ACME.CacheDir, want)
	}

	acmeDoc := doc["listen"].(map[string]any)["acme"].(map[string]any)
	acmeDoc["directoryURL"] = "https://127.0.0.1:1/dir"
	acmeDoc["directoryCA"] = "ca.pem"
	path = writeConfigFile(t, dir, doc)
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "listen.acme.directoryCA:") {
		t.Errorf("missing directoryCA: err = %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Errorf("directoryCA not PEM: err = %v", err)
	}
}

// mnm.conf's "#acme" example is valid once enabled as its comment says.
func TestExampleConfigACME(t *testing.T) {
	data, err := os.ReadFile("mnm.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(`"#acme": {`)) {
		t.Fatal(`mnm.conf lacks "#acme"`)
	}
	cfg, err := parseConfig(bytes.Replace(data, []byte(`"#acme": {`), []byte(`"acme": {`), 1), "/d")
	if err != nil {
		t.Fatalf("mnm.conf with acme enabled: %v", err)
	}
	if a := cfg.Listen.ACME; a == nil || a.Hosts[0] != "example.net" || a.DirectoryURL != autocert.DefaultACMEDirectory || a.CacheDir != "/d/acme" {
		t.Errorf("listen.acme = %+v", a)
	}
}

// --- a real ACME server on loopback ---

// testPebble is Let's Encrypt's test CA, pebble, run in-process on loopback.
// Its HTTPS listener is up from the start, so a site's config can name it;
// the CA itself (whose validation authority must know the port of the
// server under test) is made by serve, and requests wait for it.
type testPebble struct {
	t      *testing.T
	srv    *httptest.Server
	url    string // the directory
	caFile string // PEM of the directory's HTTPS certificate: listen.acme.directoryCA
	logs   *lockedBuffer

	ready   chan struct{} // closed by serve
	handler http.Handler  // set by serve before ready is closed
	ca      *ca.CAImpl    // set by serve before ready is closed
}

func startPebble(t *testing.T) *testPebble {
	t.Helper()
	// Validation at once, every nonce good: the defaults (a random sleep
	// of up to 5 s, 5 % of nonces refused) would only make tests slow.
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	p := &testPebble{t: t, logs: newLockedBuffer(), ready: make(chan struct{})}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-p.ready:
			p.handler.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	}))
	p.srv.Config.ErrorLog = log.New(p.logs, "pebble https ", log.Lmicroseconds)
	p.srv.StartTLS()
	t.Cleanup(func() {
		p.srv.Close()
		if t.Failed() {
			t.Logf("pebble log:\n%s", p.logs.String())
		}
	})
	p.url = p.srv.URL + wfe.DirectoryPath
	p.caFile = filepath.Join(t.TempDir(), "pebble-https.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	if err := os.WriteFile(p.caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serve makes the CA, validating TLS-ALPN-01 on tlsPort of whatever the test
// DNS responder says (127.0.0.1), and issuing certificates valid for
// validity (0: pebble's default, 90 days).
func (p *testPebble) serve(tlsPort int, validity time.Duration) {
	p.t.Helper()
	logger := log.New(p.logs, "pebble ", log.Lmicroseconds)
	store := db.NewMemoryStore()
	profiles := map[string]ca.Profile{"default": {Description: "test", ValidityPeriod: uint64(validity / time.Second)}}
	p.ca = ca.New(logger, store, "", "ecdsa", 0, 1, profiles)
	v := va.New(logger, 0, tlsPort, false, startTestDNS(p.t), store)
	front := wfe.New(logger, store, v, p.ca, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	p.handler = front.Handler()
	close(p.ready)
}

// roots is what a member's client trusts: pebble's issuing root.
func (p *testPebble) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.GetRootCert(0).Cert)
	return pool
}

// startTestDNS answers every A query with 127.0.0.1 and every other with
// nothing, over TCP (pebble's VA asks a custom resolver over TCP); it returns
// its address.
func startTestDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{Listener: ln, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			for _, q := range r.Question {
				if q.Qtype == dns.TypeA {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET},
						A:   net.IPv4(127, 0, 0, 1),
					})
				}
			}
			w.WriteMsg(m)
		})}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// acmeSite is a config file for a site with listen.acme pointing at p.
func acmeSite(t *testing.T, dir string, p *testPebble) string {
	t.Helper()
	cfg := testConfig(t, dir, "127.0.0.1:0")
	cfg["listen"] = map[string]any{"net": "tcp", "laddr": "127.0.0.1:0", "acme": map[string]any{
		"hosts":        []string{acmeTestHost},
		"email":        "admin@" + acmeTestHost,
		"directoryURL": p.url,
		"directoryCA":  p.caFile,
	}}
	return writeConfigFile(t, dir, cfg)
}

// startACMESite starts the daemon of a site with listen.acme at p, then p
// itself, validating on the daemon's port.
func startACMESite(t *testing.T, p *testPebble, validity time.Duration) *e2eServer {
	t.Helper()
	dir := t.TempDir()
	s := serveE2E(t, dir, acmeSite(t, dir, p))
	_, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	p.serve(n, validity)
	return s
}

// verifiedTLS is a member's client config for "+mnm.test:port": the name is
// verified against pebble's root.
func verifiedTLS(p *testPebble) *tls.Config {
	return &tls.Config{ServerName: acmeTestHost, RootCAs: p.roots(), MinVersion: tls.VersionTLS12}
}

// logLine waits for a line of the server log that holds every part and
// returns it.
func logLine(t *testing.T, s *e2eServer, parts ...string) string {
	t.Helper()
	var found string
	waitFor(t, "log line with "+strings.Join(parts, " "), func() bool {
		for line := range strings.Lines(s.logs.String()) {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				found = line
				return true
			}
		}
		return false
	})
	return found
}

// countLines counts the server log's lines that hold part.
func countLines(s *e2eServer, part string) int {
	n := 0
	for line := range strings.Lines(s.logs.String()) {
		if strings.Contains(line, part) {
			n++
		}
	}
	return n
}

// logAttr is the value of key in a slog text line.
func logAttr(line, key string) string {
	_, v, ok := strings.Cut(line, " "+key+"=")
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, " ")
	return strings.TrimSpace(v)
}

// The whole path: the daemon orders a certificate from pebble at start,
// proving the name with TLS-ALPN-01 on its TMTP port; a member's client
// verifies it against the CA's root and registers; the CA's challenge
// connections never become links; a restart serves the cached certificate
// without a new order.
func TestACMEObtainAndServe(t *testing.T) {
	p := startPebble(t)
	s := startACMESite(t, p, 0)

	got := logLine(t, s, `msg="acme certificate obtained"`, "host="+acmeTestHost)
	fp := logAttr(got, "sha256")
	logLine(t, s, `msg="acme certificate"`, "sha256="+fp)

	c, reg, err := testclient.Register(s.addr, "laptop", "alice", testclient.Options{TLS: verifiedTLS(p)})
	if err != nil {
		t.Fatalf("register, verifying the certificate: %v", err)
	}
	state := c.Conn().NetConn().(*tls.Conn).ConnectionState()
	if state.NegotiatedProtocol != "" {
		t.Errorf("a TMTP client negotiated ALPN %q", state.NegotiatedProtocol)
	}
	if leaf := state.PeerCertificates[0]; certFingerprint(leaf) != fp || leaf.Issuer.CommonName == leaf.Subject.CommonName {
		t.Errorf("served %s (issuer %q), logged %s", certFingerprint(leaf), leaf.Issuer, fp)
	}
	c.Close()

	// The CA connected three times (pebble's "multi-perspective" checks),
	// and each connection read as closed at once, as a TMTP client that
	// hangs up does: none was served as a TMTP link.
	waitFor(t, "the challenge connections to close", func() bool { return countLines(s, `msg="link closed by peer"`) >= 3 })
	if strings.Contains(s.logs.String(), "link read failed") || strings.Contains(s.logs.String(), "link login timeout") {
		t.Errorf("a challenge connection was handled as a link:\n%s", s.logs.String())
	}

	// The cache lives in the data directory, and a restart uses it.
	if _, err := os.Stat(filepath.Join(s.dir, "acme", acmeTestHost)); err != nil {
		t.Errorf("no cached certificate: %v", err)
	}
	s.stop()
	s.logs = newLockedBuffer()
	s.start()
	logLine(t, s, `msg="acme certificate"`, "sha256="+fp)
	if n := countLines(s, "acme certificate obtained"); n != 0 {
		t.Errorf("restart ordered a new certificate (%d lines)", n)
	}
	c, _, err = testclient.Login(s.addr, reg.UID, reg.NodeID, testclient.Options{TLS: verifiedTLS(p)})
	if err != nil {
		t.Fatalf("login after restart: %v", err)
	}
	c.Close()

	// SIGHUP has nothing to reload and says so.
	s.d.reloadCertificates()
	logLine(t, s, "certificate reload: nothing to reload")
}

// A certificate near its end is replaced before it expires, and new links
// get the new one, verified.
func TestACMERenewal(t *testing.T) {
	p := startPebble(t)
	// autocert renews a third of the lifetime before the end: a few
	// seconds here, a month for Let's Encrypt's 90 days.
	s := startACMESite(t, p, 6*time.Second)

	first := logAttr(logLine(t, s, `msg="acme certificate obtained"`), "sha256")
	renewed := logLine(t, s, `msg="acme certificate renewed"`, "host="+acmeTestHost)
	second := logAttr(renewed, "sha256")
	if second == first || second == "" {
		t.Fatalf("renewed %q, first %q", second, first)
	}
	c, _, err := testclient.Register(s.addr, "laptop", "bob", testclient.Options{TLS: verifiedTLS(p)})
	if err != nil {
		t.Fatalf("register after renewal: %v", err)
	}
	defer c.Close()
	// Renewals go on, each a new certificate; the one served is the latest
	// logged at the time of the handshake, and never the first.
	if got := certFingerprint(c.Conn().NetConn().(*tls.Conn).ConnectionState().PeerCertificates[0]); got == first {
		t.Errorf("still serving the first certificate %s", got)
	}
}

// A CA that cannot be used stops nothing: the server starts, says why it has
// no certificate, refuses handshakes while it has none, and shuts down.
func TestACMEFailingCA(t *testing.T) {
	t.Run("directory refuses", func(t *testing.T) {
		bad := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no directory here", http.StatusNotFound)
		}))
		defer bad.Close()
		p := &testPebble{url: bad.URL + "/dir", caFile: filepath.Join(t.TempDir(), "ca.pem")}
		caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bad.Certificate().Raw})
		if err := os.WriteFile(p.caFile, caPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		s := serveE2E(t, dir, acmeSite(t, dir, p))
		line := logLine(t, s, `msg="acme certificate unavailable"`, "host="+acmeTestHost)
		if !strings.Contains(line, "404") {
			t.Errorf("log does not say why: %s", line)
		}
		_, err := testclient.DialTimeout(s.addr, &tls.Config{ServerName: acmeTestHost, InsecureSkipVerify: true}, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "internal error") {
			t.Errorf("handshake without a certificate: err = %v, want a TLS alert", err)
		}
	})

	t.Run("challenge fails", func(t *testing.T) {
		// The CA validates on a port where nothing answers for us: the
		// order fails. (autocert reports that no challenge worked; the
		// CA's reason stays in the authorization.)
		p := startPebble(t)
		dir := t.TempDir()
		s := serveE2E(t, dir, acmeSite(t, dir, p))
		closed, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := closed.Addr().(*net.TCPAddr).Port
		closed.Close()
		p.serve(port, 0)
		line := logLine(t, s, `msg="acme certificate unavailable"`, "host="+acmeTestHost)
		if !strings.Contains(line, "no viable challenge type found") {
			t.Errorf("log does not carry the CA's error: %s", line)
		}
		_, err = testclient.DialTimeout(s.addr, verifiedTLS(p), 5*time.Second)
		if err == nil {
			t.Error("handshake succeeded without a certificate")
		}
	})
}

// The listener answers a challenge hello with acme-tls/1 and a TMTP hello
// offering other protocols with none, rather than refusing it; a challenge
// connection reads as closed.
func TestACMEChallengeListener(t *testing.T) {
	src, err := newACMESource(&ACMEConfig{Hosts: []string{acmeTestHost}, CacheDir: t.TempDir(),
		DirectoryURL: "https://127.0.0.1:1/dir"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer src.close()
	// A challenge certificate for the name, as autocert keeps one while
	// an order is pending.
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := CreateSelfSigned(certPath, keyPath, []string{acmeTestHost}); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(pair.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	buf.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pair.Certificate[0]}))
	if err := src.cache.Put(t.Context(), acmeTestHost+"+token", buf.Bytes()); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl := serveListener(ln, src.TLSConfig())
	defer sl.Close()
	type result struct {
		n   int
		err error
	}
	read := make(chan result, 1)
	go func() {
		for {
			c, err := sl.Accept()
			if err != nil {
				return
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(make([]byte, 1))
			c.Close()
			read <- result{n, err}
		}
	}()

	// The CA's hello: acme-tls/1 negotiated, the challenge certificate
	// shown, and the server reads end of file.
	cc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: acmeTestHost, NextProtos: []string{acme.ALPNProto}, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if st := cc.ConnectionState(); st.NegotiatedProtocol != acme.ALPNProto || !bytes.Equal(st.PeerCertificates[0].Raw, pair.Certificate[0]) {
		t.Errorf("challenge: ALPN %q, certificate shown is not the challenge one", st.NegotiatedProtocol)
	}
	if r := <-read; r.n != 0 || !errors.Is(r.err, io.EOF) {
		t.Errorf("challenge connection read %d, %v; want EOF", r.n, r.err)
	}
	cc.Close()

	// A client offering protocols of its own is not refused for want of a
	// common one; its handshake fails only for want of a certificate
	// (nothing to order from here), which the server reads as the error.
	_, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: acmeTestHost, NextProtos: []string{"h2"}, InsecureSkipVerify: true})
	if err == nil || strings.Contains(err.Error(), "no application protocol") {
		t.Errorf("TMTP client with ALPN h2: err = %v, want a certificate failure", err)
	}
	if r := <-read; r.err == nil || errors.Is(r.err, io.EOF) {
		t.Errorf("failed handshake read as %d, %v", r.n, r.err)
	}
}

// mnm check reports the ACME configuration and the cached certificates
// instead of looking for certificate files.
func TestCheckACME(t *testing.T) {
	p := startPebble(t)
	s := startACMESite(t, p, 0)
	fp := logAttr(logLine(t, s, `msg="acme certificate obtained"`), "sha256")
	s.stop()

	var out bytes.Buffer
	checkSite(&checkReport{w: &out}, s.cfg, time.Now())
	report := out.String()
	for _, want := range []string{"from ACME " + p.url, acmeTestHost + ": cached, expires on", "sha256 " + fp, "+" + acmeTestHost + ":PORT"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "FAIL") {
		t.Errorf("report fails:\n%s", report)
	}
}

// A certificate served past half of its renewal window means renewals are
// failing: that is logged, once an hour at most.
func TestACMEWarnOverdue(t *testing.T) {
	logger, logs := newTestLogger()
	s := &acmeSource{log: logger, cfg: ACMEConfig{DirectoryURL: "https://ca.example/dir"}}
	now := time.Now()
	fresh := &x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90*24*time.Hour - time.Hour)}
	s.warnOverdue(acmeTestHost, fresh)
	if logs.String() != "" {
		t.Fatalf("fresh certificate warned about:\n%s", logs)
	}
	// 90 days, 10 left: renewal was due at 30 days left.
	old := &x509.Certificate{NotBefore: now.Add(-80 * 24 * time.Hour), NotAfter: now.Add(10 * 24 * time.Hour)}
	s.warnOverdue(acmeTestHost, old)
	s.warnOverdue(acmeTestHost, old)
	if n := strings.Count(logs.String(), "acme certificate not renewed yet"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, logs)
	}
}

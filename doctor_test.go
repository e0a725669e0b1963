package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// doctorCLI runs `mnm check args...` and returns the exit code and what it
// printed.
func doctorCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := runCheck(args, &out, &errOut)
	if errOut.Len() > 0 {
		t.Logf("stderr: %s", errOut.String())
	}
	return code, out.String()
}

// doctorJSON runs `mnm check -json args...` and decodes the findings.
func doctorJSON(t *testing.T, args ...string) (int, []finding) {
	t.Helper()
	code, out := doctorCLI(t, append([]string{"-json"}, args...)...)
	var found []finding
	if err := json.Unmarshal([]byte(out), &found); err != nil {
		t.Fatalf("-json output does not parse: %v\n%s", err, out)
	}
	return code, found
}

// findingsOf returns the findings about topic.
func findingsOf(found []finding, topic string) []finding {
	var out []finding
	for _, f := range found {
		if f.Topic == topic {
			out = append(out, f)
		}
	}
	return out
}

// wantFinding requires a finding about topic at level whose text contains
// each of texts, and returns it.
func wantFinding(t *testing.T, found []finding, topic string, level checkLevel, texts ...string) finding {
	t.Helper()
	for _, f := range findingsOf(found, topic) {
		if f.Level != level {
			continue
		}
		ok := true
		for _, s := range texts {
			ok = ok && strings.Contains(f.Text, s)
		}
		if ok {
			return f
		}
	}
	t.Fatalf("no %q finding at level %q containing %q in:\n%s", topic, level, texts, dumpFindings(found))
	return finding{}
}

// wantTimed requires f to carry a step time.
func wantTimed(t *testing.T, f finding) {
	t.Helper()
	if f.MS == nil || *f.MS < 0 {
		t.Errorf("%s finding %q has no step time", f.Topic, f.Text)
	}
}

func dumpFindings(found []finding) string {
	var b strings.Builder
	r := &checkReport{w: &b}
	for _, f := range found {
		r.add(f.Level, f.Topic, "%s", f.Text)
	}
	return b.String()
}

// noFailures requires that no finding is a failure.
func noFailures(t *testing.T, found []finding) {
	t.Helper()
	for _, f := range found {
		if f.Level == checkFail {
			t.Errorf("unexpected failure: %s: %s", f.Topic, f.Text)
		}
	}
}

// TestDoctorSelfSigned: against a live server given as =host:port, every
// step is ok, the fingerprint printed is the one the server logs, and the
// tmtprev reply is described.
func TestDoctorSelfSigned(t *testing.T) {
	dir := t.TempDir()
	s := startE2E(t, dir)
	certs, err := NewCertReloader(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	fp := certs.Fingerprint()
	if !strings.Contains(s.logs.String(), "sha256="+fp) {
		t.Fatalf("server log lacks sha256=%s", fp)
	}

	code, out := doctorCLI(t, "="+s.addr)
	if code != exitOK {
		t.Errorf("exit %d, want %d", code, exitOK)
	}
	for _, want := range []string{
		"-     address      =" + s.addr + ": the certificate is not verified",
		"ok    tcp          connected to " + s.addr,
		"ok    tls          TLS 1.3",
		"ok    names        ",
		"-     issuer       self-signed",
		"ok    expiry       ",
		"-     verify       not verified",
		"-     fingerprint  sha256 " + fp + "\n",
		"ok    tmtprev      protocol version 1, reply in ",
		`-     site         name "e2e"`,
		"-     auth         0: anyone may register",
		"-     extensions   aliasonce, block, revoke",
		"-     round trip   not tried: -register",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAIL") || strings.Contains(out, "warn") {
		t.Errorf("a failure or warning against a healthy server:\n%s", out)
	}

	// Flags after the address parse too.
	code, found := doctorJSON(t, "="+s.addr, "-timeout", "5s")
	if code != exitOK {
		t.Errorf("-json: exit %d, want %d", code, exitOK)
	}
	noFailures(t, found)
	if f := wantFinding(t, found, "fingerprint", checkInfo); f.SHA256 != fp {
		t.Errorf("-json fingerprint %q, want %q", f.SHA256, fp)
	}
	wantTimed(t, wantFinding(t, found, "tcp", checkOK))
	wantTimed(t, wantFinding(t, found, "tls", checkOK, "TLS_"))
	wantTimed(t, wantFinding(t, found, "tmtprev", checkOK))
	if f := wantFinding(t, found, "issuer", checkInfo); f.Certs == nil || *f.Certs != 1 {
		t.Errorf("issuer finding %+v, want 1 certificate", f)
	}
	if f := wantFinding(t, found, "expiry", checkOK); f.Days == nil || *f.Days < 3000 {
		t.Errorf("expiry finding %+v, want ten years of days", f)
	}
	if f := wantFinding(t, found, "auth", checkInfo); f.Auth == nil || *f.Auth != 0 {
		t.Errorf("auth finding %+v, want auth 0", f)
	}
	if len(findingsOf(found, "providers")) != 0 {
		t.Errorf("providers listed for a site without auth:\n%s", dumpFindings(found))
	}
}

// TestDoctorVerified: +host:port verifies the chain; with the server's
// certificate passed by -ca it is ok (a bare host:port is taken as +), and
// without it it fails, and -register then skips the round trip rather than
// send anything to a server a client would refuse.
func TestDoctorVerified(t *testing.T) {
	dir := t.TempDir()
	s := startE2E(t, dir)
	ca := filepath.Join(dir, "cert.pem")

	for _, site := range []string{"+" + s.addr, s.addr} {
		code, found := doctorJSON(t, "-ca", ca, site)
		if code != exitOK {
			t.Errorf("%s with -ca: exit %d, want %d", site, code, exitOK)
		}
		noFailures(t, found)
		wantFinding(t, found, "address", checkInfo, "must verify")
		wantFinding(t, found, "verify", checkOK, "chain verified against the system roots and "+ca)
		wantFinding(t, found, "names", checkOK, "covers 127.0.0.1")
	}

	code, found := doctorJSON(t, "-register", "+"+s.addr)
	if code != exitFailure {
		t.Errorf("+ without -ca: exit %d, want %d", code, exitFailure)
	}
	wantFinding(t, found, "verify", checkFail, "unknown authority", "self-signed", "=127.0.0.1:")
	wantFinding(t, found, "round trip", checkWarn, "skipped")
	if len(findingsOf(found, "register")) != 0 {
		t.Errorf("registered with a server whose certificate fails:\n%s", dumpFindings(found))
	}
	wantFinding(t, found, "tmtprev", checkOK) // still described, for the diagnosis
}

// TestDoctorRoundTrip: -register registers, posts to the account's own uid,
// receives the post back on the same device, acks it and quits, timing each
// step; over =host:port and over a verified +host:port.
func TestDoctorRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := startE2E(t, dir)

	code, out := doctorCLI(t, "-register", "="+s.addr)
	if code != exitOK {
		t.Errorf("exit %d, want %d:\n%s", code, exitOK, out)
	}
	for _, want := range []string{
		`-     round trip   registers a throwaway account (device "mnm check") that stays on the server`,
		"ok    register     account ",
		"ok    post         post to its own uid acked (stored) in ",
		"ok    delivery     delivered back to the posting device ",
		"ok    quit         logout ok in ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	code, found := doctorJSON(t, "-register", "-ca", filepath.Join(dir, "cert.pem"), "+"+s.addr)
	if code != exitOK {
		t.Errorf("verified: exit %d, want %d", code, exitOK)
	}
	noFailures(t, found)
	reg := wantFinding(t, found, "register", checkOK, "stays on the server")
	for _, f := range []finding{reg, wantFinding(t, found, "post", checkOK), wantFinding(t, found, "delivery", checkOK), wantFinding(t, found, "quit", checkOK)} {
		wantTimed(t, f)
	}
	// The account is real: the server knows its uid.
	uid := strings.Fields(strings.TrimPrefix(reg.Text, "account "))[0]
	if !strings.Contains(s.logs.String(), uid) {
		t.Errorf("server log never mentions the registered uid %s", uid)
	}
}

// TestDoctorAuthRequired: against a site whose sign-up needs a token, the
// tmtprev reply's auth mode and providers are reported, and -register
// says it cannot register without a token: a warning, not a failure.
func TestDoctorAuthRequired(t *testing.T) {
	s := startReferenceServer(t)
	code, found := doctorJSON(t, "-register", "="+s.addr)
	if code != exitOK {
		t.Errorf("exit %d, want %d", code, exitOK)
	}
	noFailures(t, found)
	if f := wantFinding(t, found, "auth", checkInfo, "1: registering needs a token"); f.Auth == nil || *f.Auth != 1 {
		t.Errorf("auth finding %+v, want auth 1", f)
	}
	wantFinding(t, found, "providers", checkInfo, `"X"`)
	wantFinding(t, found, "register", checkWarn, `"authentication required"`, "third-party token")
	if len(findingsOf(found, "post")) != 0 {
		t.Errorf("posted without an account:\n%s", dumpFindings(found))
	}
}

// TestDoctorClosedPort: nothing listening fails at TCP, at once, and the
// steps after it are not tried.
func TestDoctorClosedPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	code, found := doctorJSON(t, "-timeout", "5s", "="+addr)
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("a refused connection took %v to report", took)
	}
	if code != exitFailure {
		t.Errorf("exit %d, want %d", code, exitFailure)
	}
	wantFinding(t, found, "tcp", checkFail, "connection refused", "nothing listens")
	if len(findingsOf(found, "tls")) != 0 || len(findingsOf(found, "tmtprev")) != 0 {
		t.Errorf("went on past a failed connect:\n%s", dumpFindings(found))
	}
}

// loopbackServer serves handle on every connection to a loopback listener,
// wrapped in TLS when conf is set, until the test ends.
func loopbackServer(t *testing.T, conf *tls.Config, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn // guarded by mu: closed at the end of the test
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if conf != nil {
				nc = tls.Server(nc, conf)
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				handle(nc)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestDoctorNotTMTP: servers that are not TMTP servers (or not TLS ones)
// fail at the step that shows it, within the timeout, without hanging.
func TestDoctorNotTMTP(t *testing.T) {
	certPath, keyPath := newPair(t, "localhost")
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{pair}}
	discard := func(nc net.Conn) { io.Copy(io.Discard, nc) }
	https := httptest.NewTLSServer(nil)
	t.Cleanup(https.Close)

	for _, tc := range []struct {
		name  string
		addr  string
		topic string
		want  string
	}{
		// An HTTP server waits for the end of a request line that a
		// frame never sends.
		{"https server", strings.TrimPrefix(https.URL, "https://"), "tmtprev", "no reply within 300ms"},
		{"TLS server answering garbage", loopbackServer(t, conf, func(nc net.Conn) {
			nc.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			discard(nc)
		}), "tmtprev", "not a TMTP frame"},
		{"silent TLS server", loopbackServer(t, conf, discard), "tmtprev", "no reply within 300ms"},
		{"TLS server that hangs up", loopbackServer(t, conf, func(nc net.Conn) { nc.Read(make([]byte, 1)) }), "tmtprev", "closed the link without a reply"},
		{"silent TCP server", loopbackServer(t, nil, discard), "tls", "no handshake within 300ms"},
		{"TCP server with a banner", loopbackServer(t, nil, func(nc net.Conn) {
			nc.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
			discard(nc)
		}), "tls", "does not speak TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			code, found := doctorJSON(t, "-timeout", "300ms", "-register", "="+tc.addr)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v with a 300ms step timeout", took)
			}
			if code != exitFailure {
				t.Errorf("exit %d, want %d", code, exitFailure)
			}
			wantTimed(t, wantFinding(t, found, tc.topic, checkFail, tc.want))
			if len(findingsOf(found, "register")) != 0 || len(findingsOf(found, "site")) != 0 {
				t.Errorf("went on past the failure:\n%s", dumpFindings(found))
			}
		})
	}
}

// writeExpiredPair writes a self-signed pair for localhost and 127.0.0.1
// that expired a day ago as dir/cert.pem and dir/key.pem.
func writeExpiredPair(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDoctorExpired: a server presenting an expired certificate fails even as
// =host:port; the rest is still diagnosed.
func TestDoctorExpired(t *testing.T) {
	dir := t.TempDir()
	writeExpiredPair(t, dir)
	s := startE2E(t, dir) // keeps the pair it finds
	code, found := doctorJSON(t, "="+s.addr)
	if code != exitFailure {
		t.Errorf("exit %d, want %d", code, exitFailure)
	}
	if f := wantFinding(t, found, "expiry", checkFail, "expired on"); f.Days == nil || *f.Days != -1 {
		t.Errorf("expiry finding %+v, want -1 days", f)
	}
	wantFinding(t, found, "tmtprev", checkOK)

	code, found = doctorJSON(t, "-ca", filepath.Join(dir, "cert.pem"), "+"+s.addr)
	if code != exitFailure {
		t.Errorf("+: exit %d, want %d", code, exitFailure)
	}
	wantFinding(t, found, "verify", checkFail, "expired")
}

// TestDoctorExpiresSoon: within certRenewSoon of expiry (the doctor's clock
// set ahead) the certificate gets a warning, not a failure.
func TestDoctorExpiresSoon(t *testing.T) {
	s := startE2E(t, t.TempDir())
	target, err := parseDoctorTarget("=" + s.addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &doctorReport{}
	later := time.Now().Add(selfSignedValidity - 10*24*time.Hour)
	d := &doctor{target: target, timeout: 5 * time.Second, roots: x509.NewCertPool(), r: r,
		now: func() time.Time { return later }}
	d.run()
	noFailures(t, r.found)
	wantFinding(t, r.found, "expiry", checkWarn, "in 9 days: renew it")
}

func TestDoctorUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.pem")
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"=127.0.0.1"},        // no port
		{"+:4000"},            // no host
		{"-register"},         // a doctor flag without an address
		{"-json"},             // likewise
		{"=127.0.0.1:1", "x"}, // two addresses
		{"-config", "mnm.config", "=127.0.0.1:1"},
		{"-timeout", "0s", "=127.0.0.1:1"},
		{"-ca", missing, "=127.0.0.1:1"},
		{"-ca", notPEM, "=127.0.0.1:1"},
	} {
		var out, errOut bytes.Buffer
		if code := runCheck(args, &out, &errOut); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
		if out.Len() > 0 || errOut.Len() == 0 {
			t.Errorf("%q: stdout %q, stderr %q: want only a message on stderr", args, out.String(), errOut.String())
		}
	}
}

func TestDoctorParseTarget(t *testing.T) {
	for _, tc := range []struct {
		site, addr, host string
		verify           bool
	}{
		{"=mnm.example:4000", "mnm.example:4000", "mnm.example", false},
		{"+mnm.example:4000", "mnm.example:4000", "mnm.example", true},
		{"mnm.example:4000", "mnm.example:4000", "mnm.example", true},
		{"=[::1]:4000", "[::1]:4000", "::1", false},
	} {
		got, err := parseDoctorTarget(tc.site)
		if err != nil {
			t.Errorf("%s: %v", tc.site, err)
			continue
		}
		if got.addr != tc.addr || got.host != tc.host || got.port != "4000" || got.verify != tc.verify {
			t.Errorf("%s: %+v, want addr %s host %s verify %v", tc.site, got, tc.addr, tc.host, tc.verify)
		}
	}
}

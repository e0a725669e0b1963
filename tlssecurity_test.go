package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTLSRefusesCBCSuites is the attack of issue #10 item 8: a TLS 1.2
// client that offers only CBC-SHA1 suites is refused, one offering an AEAD
// suite is served.
func TestTLSRefusesCBCSuites(t *testing.T) {
	certPath, keyPath := newPair(t)
	r, err := NewCertReloader(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		suites []uint16
		ok     bool
	}{
		{"cbc-sha1 only", []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}, false},
		{"cbc-sha256 only", []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}, false},
		{"aes-gcm", []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, true},
		{"chacha20-poly1305", []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, served := serveTLS(t, r.TLSConfig())
			ccfg := trusting(t, certPath, "localhost")
			ccfg.MaxVersion = tls.VersionTLS12
			ccfg.CipherSuites = tc.suites
			_, _, err := dialTLS(addr, ccfg)
			serr := <-served
			if tc.ok && (err != nil || serr != nil) {
				t.Fatalf("handshake failed: client %v, server %v", err, serr)
			}
			if !tc.ok && err == nil {
				t.Fatal("handshake with a CBC suite succeeded")
			}
			if !tc.ok && (serr == nil || !strings.Contains(serr.Error(), "cipher")) {
				t.Errorf("server error %v, want no cipher suite in common", serr)
			}
		})
	}
	for _, id := range aeadCipherSuites() {
		for _, s := range tls.InsecureCipherSuites() {
			if s.ID == id {
				t.Errorf("offered suite %s is insecure", s.Name)
			}
		}
		if name := tls.CipherSuiteName(id); !strings.Contains(name, "GCM") && !strings.Contains(name, "CHACHA20_POLY1305") {
			t.Errorf("offered suite %s is not AEAD", name)
		}
	}
}

// TestCertFingerprint checks the fingerprint against one computed here from
// the file, and against openssl's when it is installed: members compare what
// the server logs with what openssl (or their client) shows.
func TestCertFingerprint(t *testing.T) {
	certPath, keyPath := newPair(t)
	r, err := NewCertReloader(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(parseCertFile(t, certPath).Raw)
	var pairs []string
	for _, b := range sum {
		pairs = append(pairs, strings.ToUpper(hex.EncodeToString([]byte{b})))
	}
	want := strings.Join(pairs, ":")
	if got := r.Fingerprint(); got != want {
		t.Errorf("Fingerprint() = %s, want %s", got, want)
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		return // the computation above is the check; openssl only confirms the format
	}
	out, err := exec.Command("openssl", "x509", "-in", certPath, "-noout", "-fingerprint", "-sha256").Output()
	if err != nil {
		t.Fatalf("openssl: %v", err)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(out)), "="+want) {
		t.Errorf("openssl prints %q, server logs %s", out, want)
	}
}

// newCASignedPair writes a leaf for host signed by a fresh CA, and returns
// the pair's paths.
func newCASignedPair(t *testing.T, host string) (certPath, keyPath string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	if err := os.WriteFile(certPath, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestCertSelfSigned(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(t *testing.T) (string, string)
		want bool
	}{
		{"self-signed", func(t *testing.T) (string, string) { return newPair(t) }, true},
		{"ca-signed", func(t *testing.T) (string, string) { return newCASignedPair(t, "mnm.example") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewCertReloader(tc.pair(t))
			if err != nil {
				t.Fatal(err)
			}
			if got := r.SelfSigned(); got != tc.want {
				t.Errorf("SelfSigned() = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestStartLogsFingerprint: every start logs the certificate's fingerprint,
// and a self-signed one gets the advice to use a CA certificate.
func TestStartLogsFingerprint(t *testing.T) {
	dir := t.TempDir()
	s := startE2E(t, dir)
	r, err := NewCertReloader(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	logs := s.logs.String()
	if !strings.Contains(logs, `msg="tls certificate" sha256=`+r.Fingerprint()+" selfSigned=true") {
		t.Errorf("start log lacks the fingerprint %s:\n%s", r.Fingerprint(), logs)
	}
	if !strings.Contains(logs, "level=WARN msg=\"self-signed certificate: members must check its sha256 fingerprint") {
		t.Errorf("start log lacks the self-signed advice:\n%s", logs)
	}
}

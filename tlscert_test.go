package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// newPair creates a self-signed pair in a fresh directory and returns the
// paths.
func newPair(t *testing.T, hosts ...string) (certPath, keyPath string) {
	t.Helper()
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := CreateSelfSigned(certPath, keyPath, hosts); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// parseCertFile returns the certificate in a PEM file.
func parseCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestCreateSelfSigned(t *testing.T) {
	certPath, keyPath := newPair(t, "mnm.example", "192.0.2.7", "localhost", "")
	cert := parseCertFile(t, certPath)

	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", cert.PublicKey)
	}
	if want := []string{"mnm.example", "localhost"}; !slices.Equal(cert.DNSNames, want) {
		t.Errorf("DNS SANs %v, want %v (deduplicated, empty skipped)", cert.DNSNames, want)
	}
	var ips []string
	for _, ip := range cert.IPAddresses {
		ips = append(ips, ip.String())
	}
	if want := []string{"192.0.2.7", "127.0.0.1", "::1"}; !slices.Equal(ips, want) {
		t.Errorf("IP SANs %v, want %v", ips, want)
	}
	if cert.Subject.CommonName != "mnm.example" {
		t.Errorf("CN %q, want mnm.example", cert.Subject.CommonName)
	}
	if life := cert.NotAfter.Sub(time.Now()); life < 9*365*24*time.Hour || life > 11*365*24*time.Hour {
		t.Errorf("valid for %v more, want about 10 years", life)
	}
	if !cert.NotBefore.Before(time.Now()) {
		t.Errorf("NotBefore %v is not in the past", cert.NotBefore)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}

	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %v, want 0600", perm)
	}
	entries, err := os.ReadDir(filepath.Dir(certPath))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("directory holds %v, want only the two files (no temporaries)", entries)
	}
}

func TestCreateSelfSignedNeverOverwrites(t *testing.T) {
	for _, existing := range []string{"cert.pem", "key.pem"} {
		t.Run(existing, func(t *testing.T) {
			dir := t.TempDir()
			certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
			if err := os.WriteFile(filepath.Join(dir, existing), []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			err := CreateSelfSigned(certPath, keyPath, nil)
			if err == nil || !strings.Contains(err.Error(), "not overwriting") {
				t.Fatalf("err = %v, want … not overwriting", err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, existing)); string(b) != "keep me" {
				t.Error("existing file changed")
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("directory holds %v, want only the existing file", entries)
			}
		})
	}
}

func TestWriteFileOnceRefusesExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := writeFileOnce(path, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeFileOnce(path, []byte("two"), 0o644); !errors.Is(err, os.ErrExist) {
		t.Errorf("second write: err = %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "one" {
		t.Errorf("content %q, want one", b)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary file left: %v", entries)
	}
}

// serveTLS accepts one connection on a loopback listener with cfg, performs the
// handshake and reports its result on the returned channel.
func serveTLS(t *testing.T, cfg *tls.Config) (addr string, result <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, cfg)
		c.SetDeadline(time.Now().Add(10 * time.Second)) // a broken client cannot hang the test
		ch <- tc.Handshake()
	}()
	return ln.Addr().String(), ch
}

// dialTLS handshakes with addr; it returns the server's leaf certificate and
// the negotiated version.
func dialTLS(addr string, cfg *tls.Config) (*x509.Certificate, uint16, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	st := c.ConnectionState()
	return st.PeerCertificates[0], st.Version, nil
}

// trusting returns a client config that verifies the server against the
// certificate at certPath as its only root, as a client pinning a
// self-signed site would.
func trusting(t *testing.T, certPath, serverName string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(parseCertFile(t, certPath))
	return &tls.Config{RootCAs: pool, ServerName: serverName}
}

func TestLoadTLSConfigHandshake(t *testing.T) {
	certPath, keyPath := newPair(t, "mnm.example")
	cfg, err := loadTLSConfig(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", cfg.MinVersion)
	}
	for _, tc := range []struct {
		name       string
		serverName string
		version    uint16
	}{
		{"tls13 by name", "localhost", 0},
		{"tls13 by configured host", "mnm.example", 0},
		{"tls13 by ip", "127.0.0.1", 0},
		{"tls12", "localhost", tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, served := serveTLS(t, cfg)
			ccfg := trusting(t, certPath, tc.serverName)
			ccfg.MaxVersion = tc.version
			_, version, err := dialTLS(addr, ccfg)
			if err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if err := <-served; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			want := tc.version
			if want == 0 {
				want = tls.VersionTLS13
			}
			if version != want {
				t.Errorf("negotiated %x, want %x", version, want)
			}
		})
	}
}

func TestLoadTLSConfigRefusesTLS11(t *testing.T) {
	certPath, keyPath := newPair(t)
	cfg, err := loadTLSConfig(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	addr, served := serveTLS(t, cfg)
	ccfg := trusting(t, certPath, "localhost")
	ccfg.MinVersion, ccfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if _, _, err := dialTLS(addr, ccfg); err == nil {
		t.Fatal("TLS 1.1 client connected")
	}
	err = <-served
	if err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("server handshake error %v, want a protocol version refusal", err)
	}
}

func TestLoadTLSConfigErrors(t *testing.T) {
	certPath, keyPath := newPair(t)
	otherCert, _ := newPair(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, make([]byte, maxPEMFileBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name, cert, key, want string
	}{
		{"missing cert", missing, keyPath, "no such file"},
		{"missing key", certPath, missing, "no such file"},
		{"garbage cert", garbage, keyPath, "garbage.pem"},
		{"garbage key", certPath, garbage, "garbage.pem"},
		{"mismatched pair", otherCert, keyPath, "private key does not match"},
		{"oversized cert", big, keyPath, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadTLSConfig(tc.cert, tc.key)
			if err == nil {
				t.Fatal("loaded")
			}
			msg := err.Error()
			// Every failure says how to make a pair, naming the paths.
			for _, want := range []string{tc.want, "openssl req -x509", "-keyout " + tc.key, "-out " + tc.cert, "move mnm.config aside"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q:\n%s", want, msg)
				}
			}
		})
	}
}

func TestCertReloader(t *testing.T) {
	certPath, keyPath := newPair(t, "old.example")
	r, err := NewCertReloader(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.NotAfter(); !got.Equal(parseCertFile(t, certPath).NotAfter) {
		t.Errorf("NotAfter() = %v", got)
	}
	cfg := r.TLSConfig()
	peer := func() *x509.Certificate {
		t.Helper()
		addr, served := serveTLS(t, cfg)
		cert, _, err := dialTLS(addr, &tls.Config{InsecureSkipVerify: true}) // like a client of a "=host:port" site
		if err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		return cert
	}
	if got := peer(); got.Subject.CommonName != "old.example" {
		t.Fatalf("serving %q, want old.example", got.Subject.CommonName)
	}

	// An operator renews the pair in place (rename over the old files).
	newCert, newKey := newPair(t, "new.example")
	if err := os.Rename(newKey, keyPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(newCert, certPath); err != nil {
		t.Fatal(err)
	}
	if got := peer(); got.Subject.CommonName != "old.example" {
		t.Errorf("certificate changed before Reload: %q", got.Subject.CommonName)
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := peer(); got.Subject.CommonName != "new.example" {
		t.Errorf("after Reload serving %q, want new.example", got.Subject.CommonName)
	}

	// A broken renewal is refused and the current certificate stays.
	if err := os.WriteFile(certPath, []byte("broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil {
		t.Error("Reload accepted a broken certificate")
	}
	if got := peer(); got.Subject.CommonName != "new.example" {
		t.Errorf("after a failed Reload serving %q, want new.example", got.Subject.CommonName)
	}
}

// Reload may run (on SIGHUP) while handshakes read the certificate; run with
// -race.
func TestCertReloaderConcurrent(t *testing.T) {
	certPath, keyPath := newPair(t)
	r, err := NewCertReloader(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				if c, err := r.GetCertificate(nil); err != nil || c == nil || c.Leaf == nil {
					t.Errorf("GetCertificate = %v, %v", c, err)
					return
				}
			}
		})
	}
	for range 20 {
		if err := r.Reload(); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
}

// loadTLSConfig is the server configuration the daemon serves for the pair.
func loadTLSConfig(certPath, keyPath string) (*tls.Config, error) {
	r, err := NewCertReloader(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	return r.TLSConfig(), nil
}

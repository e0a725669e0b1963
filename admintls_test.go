package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminTLS: with admin.tls the admin listener speaks only HTTPS, with
// the TMTP listener's certificate. mnm admin, reading the same config,
// trusts that very certificate though it is self-signed and does not name
// the address dialled; plain HTTP is refused; a client trusting another
// site's certificate refuses this one.
func TestAdminTLS(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "127.0.0.1:0")
	cfg["admin"] = map[string]any{"laddr": "127.0.0.1:0", "tls": true}
	s := serveE2E(t, dir, writeConfigFile(t, dir, cfg))
	s.register("alice")

	var st struct {
		Site  string `json:"site"`
		Users int    `json:"users"`
	}
	s.adminJSON(&st, "status")
	if st.Site != "e2e" || st.Users != 1 {
		t.Fatalf("status over TLS: %+v", st)
	}
	if !strings.Contains(s.logs.String(), "tls=true") {
		t.Error("the admin listener's start line does not say tls=true")
	}

	// Plain HTTP gets no answer worth the name.
	resp, err := http.Get("http://" + s.d.adminAddr + "/healthz")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("plain HTTP answered 200: %s", body)
		}
	}

	// HTTPS with the certificate as a root works...
	certPEM, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	get := func(roots *x509.CertPool) error {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
		resp, err := c.Get("https://" + s.d.adminAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(roots); err != nil {
		t.Fatalf("https with the site's certificate: %v", err)
	}

	// ...and mnm admin with another site's config refuses the listener.
	other := t.TempDir()
	otherCfg := writeConfigFile(t, other, testConfig(t, other, "127.0.0.1:0"))
	withTLS := strings.Replace(readFile(t, otherCfg), `"admin": {`, `"admin": {"tls": true, `, 1)
	if withTLS == readFile(t, otherCfg) {
		t.Fatal("could not turn tls on in the other config")
	}
	if err := os.WriteFile(otherCfg, []byte(withTLS), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := s.adminRunConfig(otherCfg, "status")
	if code != exitFailure || !strings.Contains(errs, "neither the configured one nor trusted") {
		t.Fatalf("mnm admin trusting another certificate: exit %d, %s", code, errs)
	}
}

// readFile returns the contents of path.
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"mnm/durable"
)

const (
	// selfSignedYears is the validity of a self-signed certificate. Clients
	// of a self-signed site ("=host:port") skip verification, so expiry
	// only causes work; ten years outlives most deployments.
	selfSignedYears    = 10
	selfSignedValidity = selfSignedYears * 365 * 24 * time.Hour

	// certBackdate starts validity in the past, so that a client whose clock
	// is a little slow accepts a certificate made a moment ago.
	certBackdate = time.Hour

	// maxPEMFileBytes bounds the certificate and key files: a chain is a few
	// KB; a path naming some other large file fails at once.
	maxPEMFileBytes = 1 << 20
)

// CreateSelfSigned writes a new self-signed certificate and its private key:
// ECDSA P-256, valid for selfSignedYears, for hosts plus localhost, 127.0.0.1
// and ::1 (names and IP addresses are told apart). The key file is readable by
// its owner only. Each file is written crash-safely and never overwrites an
// existing file: if either path exists, nothing is written.
//
// The key is written before the certificate, so a crash between the two
// leaves a lone key; EnsureConfig reports that rather than guess.
func CreateSelfSigned(certPath, keyPath string, hosts []string) error {
	for _, p := range []string{certPath, keyPath} {
		found, err := pathExists(p)
		if err != nil {
			return fmt.Errorf("tlscert: %w", err)
		}
		if found {
			return fmt.Errorf("tlscert: %s exists; not overwriting it", p)
		}
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("tlscert: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return fmt.Errorf("tlscert: serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"mnm self-signed"}},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(selfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range append(slices.Clone(hosts), "localhost", "127.0.0.1", "::1") {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	tmpl.Subject.CommonName = tmpl.DNSNames[0] // there is always "localhost"

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("tlscert: create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("tlscert: marshal key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileOnce(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("tlscert: %w", err)
	}
	if err := writeFileOnce(certPath, certPEM, 0o644); err != nil {
		return fmt.Errorf("tlscert: %w", err)
	}
	return nil
}

// writeFileOnce creates path holding data on the OS's file system,
// crash-safely and without ever replacing an existing file: see
// durable.CreateOnce. After a crash, path either does not exist or is
// complete.
func writeFileOnce(path string, data []byte, perm fs.FileMode) error {
	return durable.CreateOnce(durable.OSFS{}, path, data, perm)
}

// certHint tells an operator how to get a certificate and key at the given
// paths; it ends every error about a missing or unusable pair.
func certHint(certPath, keyPath string) string {
	return fmt.Sprintf("to make a self-signed pair: openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650"+
		" -subj /CN=HOST -addext subjectAltName=DNS:HOST,DNS:localhost,IP:127.0.0.1 -keyout %s -out %s"+
		" (HOST: this server's name); or move %s aside and start mnm, which then writes a new config with a self-signed pair",
		keyPath, certPath, ConfigFileName)
}

// CertReloader serves a certificate and key from files and can re-read them
// while the server runs (on SIGHUP, say), so that a renewed certificate takes
// effect without dropping links. Handshakes in progress keep the certificate
// they started with.
type CertReloader struct {
	certPath, keyPath string
	cert              atomic.Pointer[tls.Certificate] // replaced whole by Reload
}

// NewCertReloader loads the pair at certPath and keyPath. A missing,
// unreadable or mismatched pair is an error that says how to make one.
func NewCertReloader(certPath, keyPath string) (*CertReloader, error) {
	r := &CertReloader{certPath: certPath, keyPath: keyPath}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload re-reads the files. On error the certificate served so far stays in
// use.
func (r *CertReloader) Reload() error {
	certPEM, err := readSmallFile(r.certPath, maxPEMFileBytes)
	if err != nil {
		return fmt.Errorf("tls: certificate: %w; %s", err, certHint(r.certPath, r.keyPath))
	}
	keyPEM, err := readSmallFile(r.keyPath, maxPEMFileBytes)
	if err != nil {
		return fmt.Errorf("tls: key: %w; %s", err, certHint(r.certPath, r.keyPath))
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("tls: %s and %s: %w; %s", r.certPath, r.keyPath, err, certHint(r.certPath, r.keyPath))
	}
	if cert.Leaf == nil {
		return errors.New("tls: certificate not parsed") // X509KeyPair fills Leaf since Go 1.23
	}
	r.cert.Store(&cert)
	return nil
}

// GetCertificate is the tls.Config hook: it returns the current certificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// NotAfter is when the current certificate expires, for the start-up log.
func (r *CertReloader) NotAfter() time.Time { return r.cert.Load().Leaf.NotAfter }

// Names are the DNS names and IP addresses the current certificate is for,
// for the admin status.
func (r *CertReloader) Names() []string {
	leaf := r.cert.Load().Leaf
	names := slices.Clone(leaf.DNSNames)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	return names
}

// Fingerprint is the SHA-256 of the current certificate, as colon-separated
// hex pairs: what `openssl x509 -noout -fingerprint -sha256` prints, so that
// a member can compare the two.
func (r *CertReloader) Fingerprint() string { return certFingerprint(r.cert.Load().Leaf) }

// SelfSigned reports whether the current certificate signs itself: members
// then reach the site with "=host:port", which skips verification, and must
// check its fingerprint instead.
func (r *CertReloader) SelfSigned() bool { return isSelfSigned(r.cert.Load().Leaf) }

// certFingerprint returns the SHA-256 of c's DER encoding as "AB:CD:…".
func certFingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	var b strings.Builder
	for i, x := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", x)
	}
	return b.String()
}

// isSelfSigned reports whether c is signed by its own key. (CheckSignatureFrom
// would refuse: a leaf is not a CA.)
func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// logCertificate logs the certificate being served, with the fingerprint
// members of a self-signed site compare against, at every start and reload.
// A self-signed certificate also gets a warning: anyone on the path can
// impersonate such a site to a member who skips that comparison, and collect
// nodeids at Login.
func logCertificate(logger *slog.Logger, r *CertReloader, event string) {
	leaf := r.cert.Load().Leaf
	logger.Info(event, "sha256", r.Fingerprint(), "selfSigned", r.SelfSigned(),
		"names", leaf.DNSNames, "notAfter", r.NotAfter().UTC().Format(time.RFC3339))
	if r.SelfSigned() {
		logger.Warn(selfSignedAdvice)
	}
}

// selfSignedAdvice is logged with every self-signed certificate.
const selfSignedAdvice = "self-signed certificate: members must check its sha256 fingerprint when they add the site (README, Security);" +
	" for any site that is not a test, use a certificate from a CA (certPath, keyPath)"

// aeadCipherSuites are the TLS 1.2 suites the server accepts: ECDHE key
// exchange, for forward secrecy, with AEAD ciphers only. Go's defaults still
// include CBC-SHA1 suites, whose MAC-then-encrypt construction has a history
// of padding-oracle attacks; every client that speaks TLS 1.2 has AES-GCM.
// TLS 1.3's suites are all AEAD and not configurable.
func aeadCipherSuites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}

// TLSConfig returns a server configuration that serves the reloader's current
// certificate. TLS 1.2 is the floor: older versions have known weaknesses and
// every client mnm supports speaks 1.2 or 1.3; with 1.2, only AEAD suites.
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   aeadCipherSuites(),
		GetCertificate: r.GetCertificate,
	}
}

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// Automatic certificates (listen.acme): the server gets its certificate from
// an ACME CA, Let's Encrypt by default, and renews it before it expires. The
// CA proves that we hold the host name with the TLS-ALPN-01 challenge on the
// TMTP port itself: it connects, offers the ALPN protocol "acme-tls/1", and
// checks the special certificate it is shown. No other port is opened.
//
// autocert does the ACME work (account, orders, challenge, renewal timers);
// this file configures it, logs what it does, and keeps the CA's connections
// away from the TMTP server.

// Limits on listen.acme.
const (
	// maxACMEHosts bounds listen.acme.hosts: each name is a certificate of
	// its own, ordered and renewed separately, and a CA limits the
	// certificates it issues a week (Let's Encrypt: 50 per registered
	// domain). A site is reached by one name, or a few.
	maxACMEHosts = 16

	// maxEmailBytes is the longest address SMTP carries (RFC 5321 §4.5.3.1.3).
	maxEmailBytes = 254

	// acmeHTTPTimeout bounds each request to the CA, so that a CA that
	// accepts connections but never answers cannot hold an order (and
	// the handshakes waiting on it) for autocert's whole five minutes.
	acmeHTTPTimeout = 30 * time.Second

	// acmeOverdueLogEvery spaces the warnings that a certificate is close
	// to expiry without having been renewed: one line an hour is enough to
	// be seen, and a handshake-rate flood would say nothing more.
	acmeOverdueLogEvery = time.Hour
)

// ACMEConfig is listen.acme: get the listener's certificate from an ACME CA
// instead of certPath and keyPath, which are then not read.
type ACMEConfig struct {
	// Hosts are the names to get certificates for: the names members use
	// in "+host:port". At least one, at most maxACMEHosts. A client that
	// names no host, or another one, gets the first host's certificate.
	Hosts []string `json:"hosts"`
	// Email is the contact the CA writes to about expiring or revoked
	// certificates. Optional.
	Email string `json:"email,omitempty"`
	// CacheDir keeps the account key and the certificates across
	// restarts; without it every start would order anew and soon meet the
	// CA's rate limits. Default: "acme" in the data directory.
	CacheDir string `json:"cacheDir"`
	// DirectoryURL is the CA's ACME directory. Default: Let's Encrypt's
	// production directory (autocert.DefaultACMEDirectory).
	DirectoryURL string `json:"directoryURL"`
	// DirectoryCA is a PEM file of the CA certificates that sign the
	// directory's HTTPS certificate, trusted instead of the system's. It
	// is for test and private ACME servers only (pebble, a company CA);
	// the public CAs need none.
	DirectoryCA string `json:"directoryCA,omitempty"`
}

// validate checks listen.acme; present says which fields the file gives,
// since an empty cacheDir, directoryURL or directoryCA is a mistake only
// when written.
func (ac *ACMEConfig) validate(bad func(field, format string, args ...any), present map[string]bool) {
	const f = "listen.acme."
	if len(ac.Hosts) == 0 {
		bad(f+"hosts", "must list at least one host name: the name members add the site with (+host:port)")
	}
	if len(ac.Hosts) > maxACMEHosts {
		bad(f+"hosts", "%d names, at most %d", len(ac.Hosts), maxACMEHosts)
	}
	seen := make(map[string]bool, len(ac.Hosts))
	for i, h := range ac.Hosts {
		field := fmt.Sprintf(f+"hosts[%d]", i)
		if err := checkACMEHost(h); err != nil {
			bad(field, "%v", err)
		} else if seen[strings.ToLower(h)] {
			bad(field, "%q is listed twice", h)
		}
		seen[strings.ToLower(h)] = true
	}
	if ac.Email != "" {
		if err := checkEmail(ac.Email); err != nil {
			bad(f+"email", "%v", err)
		}
	}
	if present[f+"cacheDir"] && ac.CacheDir == "" {
		bad(f+"cacheDir", "must not be empty when given (leave it out for \"acme\" in the data directory)")
	}
	if present[f+"directoryURL"] {
		if err := checkDirectoryURL(ac.DirectoryURL); err != nil {
			bad(f+"directoryURL", "%v", err)
		}
	}
	if present[f+"directoryCA"] {
		switch {
		case ac.DirectoryCA == "":
			bad(f+"directoryCA", "must not be empty when given")
		case !present[f+"directoryURL"]:
			bad(f+"directoryCA", "is for a test or private ACME server: give its directoryURL too (the default, Let's Encrypt, needs no CA file)")
		}
	}
}

// checkACMEHost accepts a host name a CA issues for: letters, digits and
// hyphens in two labels or more, without a trailing dot. IP addresses and
// wildcards are refused: TLS-ALPN-01 cannot prove either here.
func checkACMEHost(h string) error {
	if _, err := netip.ParseAddr(h); err == nil {
		return fmt.Errorf("%q is an IP address; a CA issues these certificates for host names only", h)
	}
	if strings.HasSuffix(h, ".") {
		return fmt.Errorf("%q: write it without the trailing dot", h)
	}
	if !isHostName(h) || strings.Contains(h, "_") {
		return fmt.Errorf("%q is not a host name (letters, digits, hyphens and dots)", h)
	}
	if !strings.Contains(h, ".") {
		return fmt.Errorf("%q: a CA issues only for names of two labels or more (example.net)", h)
	}
	return nil
}

// checkEmail accepts a plain address, local@domain, as the CA's contact.
func checkEmail(s string) error {
	if err := checkPrintable(s, maxEmailBytes); err != nil {
		return err
	}
	if strings.HasPrefix(strings.ToLower(s), "mailto:") {
		return fmt.Errorf("%q: write the address without mailto:", s)
	}
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || domain == "" || strings.ContainsAny(s, " ,<>") || strings.Contains(domain, "@") {
		return fmt.Errorf("%q is not an email address (name@example.net)", s)
	}
	return nil
}

// checkDirectoryURL accepts an absolute https URL: ACME runs over HTTPS only
// (RFC 8555 §6.1).
func checkDirectoryURL(s string) error {
	if len(s) > maxURLBytes {
		return fmt.Errorf("URL of %d bytes, at most %d", len(s), maxURLBytes)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %v", err)
	}
	if u.Scheme != "https" || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%q is not an absolute https URL (ACME runs over HTTPS only)", s)
	}
	if u.User != nil || u.Fragment != "" {
		return fmt.Errorf("%q must have no credentials or fragment", s)
	}
	return nil
}

// resolve fills in the defaults and makes paths absolute with abs, after
// dataDir is resolved. Host names are lower-cased, as the CA and TLS
// compare them.
func (ac *ACMEConfig) resolve(abs func(string) string, dataDir string) {
	for i, h := range ac.Hosts {
		ac.Hosts[i] = strings.ToLower(h)
	}
	if ac.CacheDir == "" {
		ac.CacheDir = filepath.Join(dataDir, "acme")
	} else {
		ac.CacheDir = abs(ac.CacheDir)
	}
	if ac.DirectoryURL == "" {
		ac.DirectoryURL = autocert.DefaultACMEDirectory
	}
	if ac.DirectoryCA != "" {
		ac.DirectoryCA = abs(ac.DirectoryCA)
	}
}

// checkFiles is LoadConfig's look at the files the listener reads at start:
// the certificate pair, or with ACME the directory's CA file if one is named.
func (lc *ListenConfig) checkFiles() error {
	if lc.ACME == nil {
		return checkReadable(lc.CertPath, lc.KeyPath)
	}
	if lc.ACME.DirectoryCA != "" {
		if _, err := directoryRoots(lc.ACME.DirectoryCA); err != nil {
			return err
		}
	}
	return nil
}

// directoryRoots reads listen.acme.directoryCA into a pool.
func directoryRoots(path string) (*x509.CertPool, error) {
	data, err := readSmallFile(path, maxPEMFileBytes)
	if err != nil {
		return nil, fmt.Errorf("listen.acme.directoryCA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("listen.acme.directoryCA: %s holds no PEM certificate", path)
	}
	return pool, nil
}

// acmeSource serves the certificates an ACME CA issues, through autocert.
// It is made by newACMESource, started by start once the listener is up
// (the CA connects to it), and closed by close at shutdown.
type acmeSource struct {
	cfg    ACMEConfig
	log    *slog.Logger
	m      *autocert.Manager
	cache  *acmeCache
	client *http.Client
	hosts  map[string]bool // cfg.Hosts as a set; read-only

	// plain is the TLS configuration of TMTP clients; challenge, that of
	// the CA's challenge connections, which negotiate acme-tls/1.
	plain, challenge *tls.Config

	overdueLogged atomic.Int64 // unix seconds of the last overdue warning
}

// newACMESource prepares the cache directory and autocert; it contacts
// nobody until start or the first handshake.
func newACMESource(cfg *ACMEConfig, logger *slog.Logger) (*acmeSource, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.DirectoryCA != "" {
		roots, err := directoryRoots(cfg.DirectoryCA)
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("listen.acme.cacheDir: %w", err)
	}
	s := &acmeSource{
		cfg:    *cfg,
		log:    logger,
		cache:  &acmeCache{dir: autocert.DirCache(cfg.CacheDir), log: logger, seen: map[string]bool{}},
		client: &http.Client{Transport: transport, Timeout: acmeHTTPTimeout},
		hosts:  make(map[string]bool, len(cfg.Hosts)),
	}
	for _, h := range cfg.Hosts {
		s.hosts[h] = true
	}
	s.m = &autocert.Manager{
		// Setting listen.acme is the operator's acceptance of the CA's
		// terms (README); there is nobody to ask at a handshake.
		Prompt:     autocert.AcceptTOS,
		Cache:      s.cache,
		HostPolicy: autocert.HostWhitelist(cfg.Hosts...),
		Client:     &acme.Client{DirectoryURL: cfg.DirectoryURL, HTTPClient: s.client},
		Email:      cfg.Email,
	}
	s.plain = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   aeadCipherSuites(),
		GetCertificate: s.getCertificate,
	}
	s.challenge = s.plain.Clone()
	s.challenge.NextProtos = []string{acme.ALPNProto}
	return s, nil
}

// TLSConfig is the listener's configuration: the file pair's (TLS 1.2 and up,
// AEAD suites) with certificates from the CA and acme-tls/1 offered. Only a
// hello that offers acme-tls/1 is answered with it: a TMTP client that sends
// ALPN protocols of its own sees no ALPN at all, as with a file pair, rather
// than a refusal for want of a common protocol.
func (s *acmeSource) TLSConfig() *tls.Config {
	conf := s.challenge.Clone()
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(hello.SupportedProtos, acme.ALPNProto) {
			return s.challenge, nil
		}
		return s.plain, nil
	}
	return conf
}

// getCertificate is the tls.Config hook. A CA's challenge hello is autocert's
// alone. Any other hello gets the certificate of the host it names, or of
// the first host when it names none of ours (an IP address, a scanner's
// guess): so only the configured names are ever ordered, and a client that
// dials by address still completes its handshake.
func (s *acmeSource) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if isChallengeHello(hello) {
		return s.m.GetCertificate(hello)
	}
	host := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if !s.hosts[host] {
		host = s.cfg.Hosts[0]
	}
	if hello.ServerName != host {
		h := *hello
		h.ServerName = host
		hello = &h
	}
	cert, err := s.m.GetCertificate(hello)
	if err != nil {
		s.log.Warn("acme certificate unavailable", "host", host, "err", err)
		return nil, err
	}
	s.warnOverdue(host, cert.Leaf)
	return cert, nil
}

// isChallengeHello reports whether a CA is validating TLS-ALPN-01: it offers
// acme-tls/1 and nothing else (RFC 8737 §3), which is also autocert's test.
func isChallengeHello(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto
}

// warnOverdue logs, at most once per acmeOverdueLogEvery, that leaf is near
// its end without having been renewed. autocert renews in the background
// and reports no failure; a certificate still served past half of its
// renewal window is how one shows. The window is autocert's default: a
// third of the lifetime, at most 30 days.
func (s *acmeSource) warnOverdue(host string, leaf *x509.Certificate) {
	if leaf == nil {
		return
	}
	now := time.Now()
	window := min(leaf.NotAfter.Sub(leaf.NotBefore)/3, 30*24*time.Hour)
	if leaf.NotAfter.Sub(now) > window/2 {
		return
	}
	last := s.overdueLogged.Load()
	if now.Unix()-last < int64(acmeOverdueLogEvery/time.Second) || !s.overdueLogged.CompareAndSwap(last, now.Unix()) {
		return
	}
	s.log.Warn("acme certificate not renewed yet; check that the CA can reach this listener", "host", host,
		"notAfter", leaf.NotAfter.UTC().Format(time.RFC3339), "directory", s.cfg.DirectoryURL)
}

// start logs the configuration and fetches every host's certificate in the
// background, from the cache or the CA, so that the first member does not
// wait for the order and a CA that cannot be reached shows in the log at
// once. The listener must be serving: the CA connects to it.
func (s *acmeSource) start() {
	s.log.Info("acme certificates", "hosts", s.cfg.Hosts, "directory", s.cfg.DirectoryURL, "cache", s.cfg.CacheDir, "email", s.cfg.Email != "")
	go func() {
		for _, host := range s.cfg.Hosts {
			// An ECDSA-capable hello, as every client mnm supports sends,
			// so that this fetches the certificate they will be served.
			cert, err := s.getCertificate(&tls.ClientHelloInfo{ServerName: host,
				CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}})
			if err == nil && cert.Leaf != nil {
				s.log.Info("acme certificate", "host", host, "sha256", certFingerprint(cert.Leaf),
					"notAfter", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
			}
		}
	}()
}

// close stops the cache, so that nothing is written to it after shutdown
// (autocert's renewal timers outlive any server; a fetch still running from
// start fails at its next request), and stops new requests to the CA.
func (s *acmeSource) close() {
	s.cache.close()
	s.client.CloseIdleConnections()
}

// errACMEClosed is what the cache answers once the server has shut down.
var errACMEClosed = errors.New("acme: server shut down")

// acmeCache is autocert's cache, a directory, with a log line for every
// certificate stored: autocert stores each one it obtains or renews, and
// tells of them no other way.
type acmeCache struct {
	dir autocert.Cache
	log *slog.Logger

	mu sync.Mutex
	// Guarded by mu (held through each Get and Put, so that close waits
	// for the one in progress):
	seen   map[string]bool // certificate names read or written: a Put of one is a renewal
	closed bool
}

// Get is autocert.Cache's.
func (c *acmeCache) Get(ctx context.Context, name string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errACMEClosed
	}
	data, err := c.dir.Get(ctx, name)
	if err == nil {
		c.seen[name] = true
	}
	return data, err
}

// Put is autocert.Cache's. A certificate is logged even when it cannot be
// stored: it is being served all the same, and the failure has a line of its
// own.
func (c *acmeCache) Put(ctx context.Context, name string, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errACMEClosed
	}
	err := c.dir.Put(ctx, name, data)
	if err != nil {
		c.log.Error("acme cache write failed; the certificate will be ordered again at the next start", "name", name, "err", err)
	}
	if host, ok := certCacheHost(name); ok {
		event := "acme certificate obtained"
		if c.seen[name] {
			event = "acme certificate renewed"
		}
		c.seen[name] = true
		if leaf, perr := cachedLeaf(data); perr != nil {
			c.log.Warn(event, "host", host, "err", perr)
		} else {
			c.log.Info(event, "host", host, "sha256", certFingerprint(leaf),
				"notAfter", leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return err
}

// Delete is autocert.Cache's.
func (c *acmeCache) Delete(ctx context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errACMEClosed
	}
	return c.dir.Delete(ctx, name)
}

func (c *acmeCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
}

// certCacheHost tells a certificate's cache entry from autocert's others (the
// account key, challenge certificates) and returns its host. autocert names
// entries "host", "host+rsa", "host+token" and "acme_account+key".
func certCacheHost(name string) (string, bool) {
	if strings.HasPrefix(name, "acme_account") || strings.HasSuffix(name, "+token") {
		return "", false
	}
	return strings.TrimSuffix(name, "+rsa"), true
}

// cachedLeaf finds the leaf certificate in a cache entry: autocert writes the
// private key, then the chain, leaf first, as PEM.
func cachedLeaf(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("acme: no certificate in the cache entry")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// challengeListener hands the TMTP server the connections of ln, a TLS
// listener, wrapped so that a CA's challenge connection reads as closed: the
// CA only looks at the certificate, and the link would otherwise wait for a
// TmtpRev until its login timeout. The handshake still runs in the link's
// goroutine under its deadline, as for every connection.
type challengeListener struct{ net.Listener }

// serveListener is the listener the TMTP server accepts from: TLS over ln,
// with challenge connections filtered when conf offers acme-tls/1.
func serveListener(ln net.Listener, conf *tls.Config) net.Listener {
	tl := tls.NewListener(ln, conf)
	if !slices.Contains(conf.NextProtos, acme.ALPNProto) {
		return tl
	}
	return challengeListener{tl}
}

func (l challengeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		return c, nil
	}
	return &challengeConn{Conn: tc}, nil
}

// challengeConn completes the handshake at the first Read and, if acme-tls/1
// was negotiated, reads end of file. Embedding *tls.Conn keeps NetConn, which
// qlib uses to park idle links.
type challengeConn struct {
	*tls.Conn
	once      sync.Once
	challenge bool // set by once
}

func (c *challengeConn) Read(p []byte) (int, error) {
	var err error
	c.once.Do(func() {
		if err = c.Conn.Handshake(); err == nil {
			c.challenge = c.ConnectionState().NegotiatedProtocol == acme.ALPNProto
		}
	})
	if err != nil {
		return 0, err
	}
	if c.challenge {
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}

// reloadCertificates is SIGHUP's: the file pair is read again; ACME
// certificates renew by themselves, so there is nothing to read.
func (d *daemon) reloadCertificates() {
	if d.acme != nil {
		d.log.Info("certificate reload: nothing to reload, acme certificates are renewed automatically", "hosts", d.acme.cfg.Hosts)
		return
	}
	if d.certs == nil {
		return
	}
	if err := d.certs.Reload(); err != nil {
		d.log.Error("certificate reload failed; keeping the old one", "err", err)
	} else {
		logCertificate(d.log, d.certs, "certificate reloaded")
	}
}

// checkACME is `mnm check`'s report on listen.acme: what it asks of whom, and
// the certificates already in the cache. Like the rest of check, it touches
// no network.
func checkACME(r *checkReport, cfg *Config, now time.Time) {
	ac := cfg.Listen.ACME
	r.add(checkOK, "certificate", "from ACME %s for %v, cached in %s", ac.DirectoryURL, ac.Hosts, ac.CacheDir)
	if ac.DirectoryURL == autocert.DefaultACMEDirectory {
		if _, port, err := net.SplitHostPort(cfg.Listen.Laddr); err == nil && port != "443" {
			r.add(checkWarn, "certificate", "Let's Encrypt validates TLS-ALPN-01 on port 443 only: listen on :443 or forward 443 to port %s", port)
		}
	}
	for _, host := range ac.Hosts {
		data, err := readSmallFile(filepath.Join(ac.CacheDir, host), maxPEMFileBytes)
		if err != nil {
			r.add(checkInfo, "certificate", "%s: none cached yet; the server orders one at start", host)
			continue
		}
		leaf, err := cachedLeaf(data)
		if err != nil {
			r.add(checkWarn, "certificate", "%s: cache entry unreadable (%v); the server orders a new one", host, err)
			continue
		}
		if left := leaf.NotAfter.Sub(now); left <= 0 {
			r.add(checkWarn, "certificate", "%s: cached certificate expired on %s; the server orders a new one", host, leaf.NotAfter.UTC().Format(time.DateOnly))
		} else {
			r.add(checkOK, "certificate", "%s: cached, expires on %s (renewed automatically)", host, leaf.NotAfter.UTC().Format(time.DateOnly))
		}
		r.add(checkInfo, "fingerprint", "%s: sha256 %s", host, certFingerprint(leaf))
	}
	r.add(checkInfo, "certificate", "members add the site as +%s:PORT; it is verified, there is no fingerprint to compare", ac.Hosts[0])
}

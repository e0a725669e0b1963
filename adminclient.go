package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"mnm/admin"
)

// newAdminClient returns a client of the admin listener of the server whose
// configuration is at configPath: `mnm admin` and `mnm backup` find the
// running server this way. addr, when not empty, overrides the config's
// admin.laddr; tokenName picks an entry of the token file (default: the
// first), whose secret is sent when the file is set. An empty laddr means
// the listener is off.
func newAdminClient(configPath, addr, tokenName string) (*admin.Client, error) {
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return nil, err
	}
	if addr == "" {
		addr = cfg.Admin.Laddr
	}
	if addr == "" {
		return nil, fmt.Errorf("%s: the admin listener is off (admin.laddr is empty)", configPath)
	}
	addr = dialableAddr(addr)
	var secret string
	if cfg.Admin.TokenFile != "" {
		tokens, err := admin.LoadTokens(cfg.Admin.TokenFile)
		if err != nil {
			return nil, err
		}
		for _, t := range tokens {
			if tokenName == "" || t.Name == tokenName {
				secret = t.Secret
				break
			}
		}
		if secret == "" && tokenName != "" {
			return nil, fmt.Errorf("%s: no token named %q", cfg.Admin.TokenFile, tokenName)
		}
	} else if tokenName != "" {
		return nil, fmt.Errorf("%s: -token %q, but admin.tokenFile is not set", configPath, tokenName)
	}
	var tc *tls.Config
	if cfg.Admin.TLS {
		if tc, err = adminClientTLS(cfg); err != nil {
			return nil, err
		}
	}
	return admin.NewClient(addr, secret, tc), nil
}

// adminClientTLS is how mnm admin checks an admin listener that speaks TLS
// with the TMTP listener's certificate. The client dials an address (often
// loopback) that the certificate need not name, so the usual check by
// address does not fit: it accepts the very certificate the config's file
// pair holds (a self-signed one included), or a chain the system trusts
// for the certificate's own name (an ACME host, a CA-issued pair renewed
// since the file was read).
func adminClientTLS(cfg *Config) (*tls.Config, error) {
	var pinned *x509.Certificate
	var names []string
	if cfg.Listen.ACME != nil {
		names = cfg.Listen.ACME.Hosts
	} else {
		pair, err := tls.LoadX509KeyPair(cfg.Listen.CertPath, cfg.Listen.KeyPath)
		if err != nil {
			return nil, fmt.Errorf("admin listener certificate: %w", err)
		}
		pinned = pair.Leaf
		names = pinned.DNSNames
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is checked by VerifyConnection below, not by
		// address: the address dialled is not a name the certificate
		// must hold.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyAdminCert(cs.PeerCertificates, pinned, names)
		},
	}, nil
}

// verifyAdminCert accepts certs when their leaf is pinned, or when the
// system's roots vouch for it under one of names.
func verifyAdminCert(certs []*x509.Certificate, pinned *x509.Certificate, names []string) error {
	if len(certs) == 0 {
		return errors.New("admin listener sent no certificate")
	}
	if pinned != nil && bytes.Equal(certs[0].Raw, pinned.Raw) {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	var errs []error
	for _, name := range names {
		_, err := certs[0].Verify(x509.VerifyOptions{DNSName: name, Intermediates: inter})
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("admin listener's certificate is neither the configured one nor trusted for %v: %w", names, errors.Join(errs...))
}

// dialableAddr turns a listen address into one to dial: an unspecified
// host (all addresses) is reached on loopback.
func dialableAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

package main

import (
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
	return admin.NewClient(addr, secret), nil
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

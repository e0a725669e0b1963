package main

import (
	"path/filepath"

	"mnm/admin"
)

// AdminConfig is the admin listener: metrics, the status page, health
// probes and the API that `mnm admin` drives (package admin).
type AdminConfig struct {
	// Laddr is "host:port". Absent: admin.DefaultAddr, loopback only; ""
	// turns the listener off.
	Laddr string `json:"laddr"`
	// TokenFile names the file of bearer tokens ("NAME SECRET" lines,
	// admin.LoadTokens) that admit requests not from loopback; absent or
	// empty: only loopback is admitted. Relative to the config file.
	TokenFile string `json:"tokenFile,omitempty"`
	// TLS serves the listener over HTTPS with the TMTP listener's
	// certificate (its file pair, or ACME's), so that tokens and member
	// data do not cross a network in clear. mnm admin and mnm backup then
	// trust that very certificate (a self-signed one included) or, for
	// another, the system's roots for the certificate's name.
	TLS bool `json:"tls,omitempty"`
}

// validate checks the admin section.
func (ac *AdminConfig) validate(bad func(field, format string, args ...any)) {
	if ac.Laddr != "" {
		if err := checkListenAddr(ac.Laddr); err != nil {
			bad("admin.laddr", "%v", err)
		}
	}
}

// fillDefaults sets what the file left out: an absent laddr is the default,
// an empty one is off.
func (ac *AdminConfig) fillDefaults(present map[string]bool) {
	if !present["admin.laddr"] {
		ac.Laddr = admin.DefaultAddr
	}
}

// resolve makes the token file's path relative to dir, the config file's
// directory.
func (ac *AdminConfig) resolve(dir string) {
	if ac.TokenFile != "" && !filepath.IsAbs(ac.TokenFile) {
		ac.TokenFile = filepath.Join(dir, ac.TokenFile)
	}
}

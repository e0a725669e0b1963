package main

// Reload (SIGHUP): the certificate is read again (acme.go,
// reloadCertificates), and so is the configuration file, whose settings
// that are safe to change under running links take effect at once:
//
//	limits (but limits.preLoginBytes)   qlib.Server.SetLimits
//	receiveOnly.mayReach                qlib.Server.SetMayReach
//	maxPostBytes                        qlib.Server.SetMaxPostBytes
//
// Everything else (listen, dataDir, admin, ntp, auth…) is built into what
// runs: a change is logged as needing a restart, and stays so logged on
// each reload until the server restarts. A file that fails to load changes
// nothing.

import (
	"reflect"
	"slices"
	"strings"
)

// liveSettings are the configuration paths reload applies; a path names a
// field or, with a trailing ".", every field under it.
var liveSettings = []string{"limits.", "receiveOnly.mayReach", "maxPostBytes"}

// restartSettings are paths under live ones that still need a restart.
var restartSettings = []string{"limits.preLoginBytes"}

// isLive reports whether the setting at path takes effect on reload.
func isLive(path string) bool {
	if slices.Contains(restartSettings, path) {
		return false
	}
	return slices.ContainsFunc(liveSettings, func(p string) bool {
		return p == path || strings.HasSuffix(p, ".") && strings.HasPrefix(path, p)
	})
}

// reload is SIGHUP's work: the certificate, then the configuration.
func (d *daemon) reload() {
	d.reloadCertificates()
	d.reloadConfig()
}

// reloadConfig reads the configuration file again and applies its live
// settings. It logs one line naming what changed and, if need be, one
// naming the changed settings that wait for a restart.
func (d *daemon) reloadConfig() {
	if d.configPath == "" {
		return
	}
	next, err := LoadConfig(d.configPath)
	if err != nil {
		d.log.Error("config reload failed; keeping the running configuration", "file", d.configPath, "err", err)
		return
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	applied := d.applied
	if applied == nil {
		applied = d.cfg
	}
	var changed, restart []string
	for _, path := range configDiff(applied, next) {
		if isLive(path) {
			changed = append(changed, path)
		}
	}
	for _, path := range configDiff(d.cfg, next) {
		if !isLive(path) {
			restart = append(restart, path)
		}
	}
	for _, path := range changed {
		switch {
		case strings.HasPrefix(path, "limits."):
			// Set once below for all limits.
		case path == "receiveOnly.mayReach":
			d.srv.SetMayReach(next.ReceiveOnly.MayReachSet())
		case path == "maxPostBytes":
			d.srv.SetMaxPostBytes(next.MaxPostBytes)
		}
	}
	if slices.ContainsFunc(changed, func(p string) bool { return strings.HasPrefix(p, "limits.") }) {
		d.srv.SetLimits(next.qlibLimits())
	}
	d.applied = next
	d.log.Info("config reloaded", "file", d.configPath, "changed", changed)
	if len(restart) > 0 {
		d.log.Warn("config changes that take effect at the next restart", "settings", restart)
	}
}

// configDiff returns the JSON paths ("limits.pingsPerDay") of the settings
// that differ between a and b, down to the fields of nested objects.
func configDiff(a, b *Config) []string {
	var out []string
	diffValue(reflect.ValueOf(*a), reflect.ValueOf(*b), "", &out)
	return out
}

func diffValue(a, b reflect.Value, path string, out *[]string) {
	if a.Kind() != reflect.Struct {
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
		return
	}
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		diffValue(a.Field(i), b.Field(i), fieldPath(path, jsonName(f)), out)
	}
}

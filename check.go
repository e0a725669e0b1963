package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"mnm/durable"
)

// certRenewSoon is how close to expiry a certificate gets a warning: a month
// leaves time to renew one by hand.
const certRenewSoon = 30 * 24 * time.Hour

// checkLevel grades a finding. A failure makes the command exit non-zero.
type checkLevel string

const (
	checkOK   checkLevel = "ok"
	checkWarn checkLevel = "warn"
	checkFail checkLevel = "FAIL"
	checkInfo checkLevel = "-"
)

// checkReport collects findings and writes each as it comes.
type checkReport struct {
	w      io.Writer
	failed bool
}

func (r *checkReport) add(level checkLevel, topic, format string, args ...any) {
	if level == checkFail {
		r.failed = true
	}
	fmt.Fprintf(r.w, "%-4s  %-11s  %s\n", level, topic, fmt.Sprintf(format, args...))
}

// runCheck is `mnm check`. It reads a site's configuration and reports, one
// line per finding, what an operator should know before (or while) serving
// it: whether the config loads, the certificate's names, expiry and SHA-256
// fingerprint (the one members of a self-signed site compare), whether the
// data directory is writable and has room. It changes nothing and touches no
// network, so it is safe to run beside a live server.
//
// Given an ADDRESS (=host:port, +host:port), it diagnoses that server over
// the network instead: see runDoctor (doctor.go).
func runCheck(args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("mnm check", flag.ContinueOnError)
	fset.SetOutput(stderr)
	configPath := fset.String("config", "mnm.config", "configuration file to check")
	doctor := addDoctorFlags(fset)
	if err := fset.Parse(args); err != nil {
		return exitUsage
	}
	if wantsDoctor(fset) {
		return runDoctor(fset, doctor, stdout, stderr)
	}
	r := &checkReport{w: stdout}
	checkSite(r, *configPath, time.Now())
	if r.failed {
		return exitFailure
	}
	return exitOK
}

// checkSite runs every check on the site configured at configPath.
func checkSite(r *checkReport, configPath string, now time.Time) {
	cfg, err := LoadConfig(configPath)
	if err != nil {
		r.add(checkFail, "config", "%v", err)
		return
	}
	r.add(checkOK, "config", "%s: site %q, listening on %s %s", configPath, cfg.Name, cfg.Listen.Net, cfg.Listen.Laddr)
	checkCertificate(r, cfg, now)
	checkDataDir(r, cfg)
}

// checkCertificate loads the pair as the server would and reports its names,
// expiry and fingerprint.
func checkCertificate(r *checkReport, cfg *Config, now time.Time) {
	if cfg.Listen.ACME != nil {
		checkACME(r, cfg, now) // no files: the CA issues them (acme.go)
		return
	}
	certs, err := NewCertReloader(cfg.Listen.CertPath, cfg.Listen.KeyPath)
	if err != nil {
		r.add(checkFail, "certificate", "%v", err)
		return
	}
	leaf := certs.cert.Load().Leaf
	left := leaf.NotAfter.Sub(now)
	switch {
	case left <= 0:
		r.add(checkFail, "certificate", "%s expired on %s", cfg.Listen.CertPath, leaf.NotAfter.UTC().Format(time.DateOnly))
	case left < certRenewSoon:
		r.add(checkWarn, "certificate", "%s expires on %s, in %d days: renew it (SIGHUP reloads)", cfg.Listen.CertPath, leaf.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24))
	default:
		r.add(checkOK, "certificate", "%s: names %v, expires on %s", cfg.Listen.CertPath, leaf.DNSNames, leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	r.add(checkInfo, "fingerprint", "sha256 %s", certs.Fingerprint())
	if certs.SelfSigned() {
		r.add(checkWarn, "certificate", "self-signed: members add the site as =host:port and must compare the fingerprint above; a site that is not a test should use a CA certificate")
		return
	}
	if err := leaf.VerifyHostname(cfg.Name); err != nil {
		r.add(checkWarn, "certificate", "does not name the site %q: members who add it as +%s:port will be refused (%v)", cfg.Name, cfg.Name, err)
	}
}

// checkDataDir reports whether the data directory can be written and has
// more free space than the server's watermark.
func checkDataDir(r *checkReport, cfg *Config) {
	if _, err := os.Lstat(filepath.Join(cfg.DataDir, moveMarkerName)); err == nil {
		r.add(checkFail, "data", "%s: %v", cfg.DataDir, ErrImportInterrupted)
	}
	dir := cfg.DataDir
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// The server makes it at first start; its parent must let it.
		r.add(checkInfo, "data", "%s does not exist yet; the server creates it", dir)
		dir = filepath.Dir(dir)
	}
	f, err := os.CreateTemp(dir, ".mnm-check-*")
	if err != nil {
		r.add(checkFail, "data", "%s is not writable: %v", dir, err)
		return
	}
	f.Close()
	os.Remove(f.Name())
	free, err := durable.OSFS{}.Free(dir)
	switch {
	case err != nil:
		r.add(checkOK, "data", "%s is writable (free space unknown: %v)", dir, err)
	case cfg.MinFreeBytes > 0 && free < cfg.MinFreeBytes:
		r.add(checkFail, "data", "%s has %s free, under minFreeBytes %s: the server would refuse every post", dir, byteSize(free), byteSize(cfg.MinFreeBytes))
	default:
		r.add(checkOK, "data", "%s is writable, %s free", dir, byteSize(free))
	}
}

// byteSize formats n octets for a person.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Command mnm is a TMTP relay server: the server half of "mnm is not mail", a
// members-only replacement for email.
//
//	mnm               run the server (creates mnm.config and a certificate on first start)
//	mnm --version     print the version
//	mnm load [flags]  the load benchmark (load.go, BENCHMARKS.md)
//	mnm import-v0 OLD_SITE  take over a site of the deployed server (importv0.go)
//	mnm check [-config F]   check a site's config, certificate and data directory (check.go)
//	mnm check [-register] [-timeout D] [-ca FILE] [-json] ADDRESS   diagnose a TMTP server over the network (doctor.go)
//	mnm member [-config F] promote|demote UID | list   receive-only members (member.go)
//	mnm admin [-config F] [-json] status|users|user|queues|revoke-device|...   a running server, through its admin listener (admincmd.go)
//	mnm backup [-config F] [-addr A] [-token NAME] DEST   an online backup of a running server into a new data directory (backupcmd.go)
//
// See README.md for operating it and Protocol.md for what it speaks.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mnm/admin"
	"mnm/logflood"
	"mnm/qlib"
	"mnm/qlib/store"

	"github.com/prometheus/client_golang/prometheus"
)

// version is set at build time with -ldflags "-X main.version=..."; the
// default names a development build.
var version = "0.1.0-dev"

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // a startup error or a failed shutdown
	exitUsage   = 2
)

// shutdownGrace is how long a graceful shutdown waits for links to finish
// their requests before closing them hard.
const shutdownGrace = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	// Subcommands come first; anything else is the server's flags.
	if len(args) > 0 {
		switch args[0] {
		case "load":
			return runLoad(args[1:], stdout, stderr)
		case "import-v0":
			return runImportV0(args[1:], stdout, stderr)
		case "check":
			return runCheck(args[1:], stdout, stderr)
		case "member":
			return runMember(args[1:], stdout, stderr)
		case "admin":
			return runAdmin(args[1:], stdout, stderr)
		case "backup":
			return runBackup(args[1:], stdout, stderr)
		}
		// A number N: simulate N members against an in-process server.
		if n, ok := simMembers(args[0]); ok {
			return runSim(n, args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("mnm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	configPath := fs.String("config", "mnm.config", "configuration file; created with a self-signed certificate if missing")
	debug := fs.Bool("debug", false, "log debug events")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *showVersion {
		fmt.Fprintln(stdout, "mnm", version)
		return exitOK
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger, closeLog := newDaemonLogger(stderr, level)
	defer closeLog()
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mnm: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}

	d, err := startDaemon(*configPath, logger)
	if err != nil {
		logger.Error("startup failed", "err", err)
		return exitFailure
	}
	return waitForStop(d, logger)
}

// newDaemonLogger returns the server's logger, writing text lines to w, and
// the function that writes the summaries of lines still suppressed at exit.
// A connection that fails before login logs a line, so a flood of them
// would flood the log: past logflood.DefaultBurst lines of one kind a
// minute, the rest are counted in one summary line. Errors (a store or
// user database failure) always pass. A kind of line is its level, message,
// reason and uid: refusals for different reasons stay apart, and so do
// different members' logins, so that what is cut is one event repeated,
// the shape of a flood.
func newDaemonLogger(w io.Writer, level slog.Level) (*slog.Logger, func()) {
	h := logflood.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}),
		logflood.Options{KeyAttrs: []string{"reason", "uid"}})
	return slog.New(h), func() { h.Close() }
}

// waitForStop serves until SIGINT/SIGTERM or a store failure, then shuts the
// daemon down. SIGHUP reloads the certificate, so a renewed one takes effect
// without dropping links, and the configuration's live settings (reload.go).
func waitForStop(d *daemon, logger *slog.Logger) int {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	code := exitOK
	for stop := false; !stop; {
		select {
		case s := <-sig:
			if s != syscall.SIGHUP {
				logger.Info("shutting down", "signal", s.String())
				stop = true
				break
			}
			d.reload()
		case err := <-d.fatal:
			// Fail stop: nothing more can be acknowledged safely.
			logger.Error("shutting down after a storage failure", "err", err)
			code = exitFailure
			stop = true
		}
	}
	go func() {
		// A second signal means "now": the operator does not want to wait.
		for s := range sig {
			if s != syscall.SIGHUP {
				logger.Warn("second signal; exiting at once")
				os.Exit(exitFailure)
			}
		}
	}()
	if err := d.shutdown(); err != nil {
		logger.Error("shutdown failed", "err", err)
		return exitFailure
	}
	logger.Info("stopped")
	return code
}

// daemon is a running server with everything it owns.
type daemon struct {
	log *slog.Logger
	// users is the user database: the site's on one machine, this
	// frontend's replica of the site's in a cluster. directory is what
	// the server asks: users itself, or in a cluster the directory that
	// forwards writes to the site's writer (clusterdir.go).
	users     *UserDB
	directory siteDirectory
	// qstore is the server's store: store on one machine, the cluster's
	// (site.store) in a cluster, where store is nil.
	qstore qlib.Store
	store  *store.Log
	// site is the cluster this frontend belongs to; nil on one machine.
	site *clusterSite
	// evictTo is the server, for the cluster bus's evictions, which may
	// come from the bus's goroutines once the server runs.
	evictTo atomic.Pointer[qlib.Server]

	srv    *qlib.Server
	ln     net.Listener
	certs  *CertReloader // nil when the caller manages certificates, or with acme
	acme   *acmeSource   // nil unless listen.acme is set
	served chan error
	fatal  chan error // the store (qlib.Config.OnFatal) or the userdb (SetOnFatal) failed
	lock   *os.File   // holds the data directory's lock (lockDataDir); nil where there is none
	// stopSweep ends the away sweep (sweepAway); nil when the policy is
	// off and no sweep runs.
	stopSweep chan struct{}
	swept     chan struct{} // closed when the sweep has ended
	// clock is the NTP-corrected clock, re-checked by its own goroutine
	// (Clock.RunChecks) until stopClock is closed; clockDone is closed when
	// it has ended. All nil when the caller manages the clock, or the
	// re-checks are off.
	clock     *Clock
	stopClock chan struct{}
	clockDone chan struct{}
	// configPath is the file the configuration came from, read again on
	// SIGHUP (reload.go); "" when the caller made the configuration.
	configPath string
	// reloadMu serialises reloads; applied is the configuration whose live
	// settings are in force (nil: cfg's), guarded by it.
	reloadMu sync.Mutex
	applied  *Config

	cfg      *Config
	now      func() time.Time
	started  time.Time
	stopping chan struct{} // closed when shutdown begins: no longer ready
	// registry holds the metrics (metrics.go); the admin listener serves
	// them.
	registry *prometheus.Registry
	// ntpOffset reports the clock's offset from NTP at its last check;
	// nil when the caller manages the clock.
	ntpOffset func() time.Duration
	// The admin listener (adminsite.go); nil when it is off.
	admin     *admin.Server
	adminHTTP *http.Server
	adminAddr string // where it listens, "host:port"
	adminDone chan struct{}
	// recent keeps the latest warnings for the status page.
	recent *admin.Recent
	// statusEvery is the status page's sampling interval; 0 is the
	// default. Tests shorten it (startDaemon's tune).
	statusEvery time.Duration
}

// awaySweepEvery is how often the away sweep runs: the policy counts in
// days, so an hour late is nothing, and a sweep that finds nobody due reads
// memory only.
const awaySweepEvery = time.Hour

// sweepAway runs the away sweep (qlib.Server.SweepAway) every
// awaySweepEvery until stopSweep is closed. A failed sweep is a storage
// failure and stops the server.
func (d *daemon) sweepAway(now func() time.Time) {
	defer close(d.swept)
	t := time.NewTicker(awaySweepEvery)
	defer t.Stop()
	for {
		select {
		case <-d.stopSweep:
			return
		case <-t.C:
			if n, err := d.srv.SweepAway(now()); err != nil {
				d.failed(err)
				return
			} else if n > 0 {
				d.log.Info("away sweep", "dropped", n)
			}
		}
	}
}

// startDaemon reads (or creates) the configuration and starts serving.
// Each tune adjusts the daemon before its admin listener starts (tests).
func startDaemon(configPath string, logger *slog.Logger, tune ...func(*daemon)) (*daemon, error) {
	// The status page shows the latest warnings: everything logged from
	// here on passes by them.
	recent := admin.NewRecent(recentWarnings)
	logger = slog.New(recent.Handler(logger.Handler()))
	if _, err := os.Stat(configPath); errors.Is(err, os.ErrNotExist) {
		if _, _, err := EnsureConfig(filepath.Dir(configPath), logger); err != nil {
			return nil, err
		}
	}
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return nil, err
	}
	clock, err := SyncClock(cfg.NTP, logger)
	if err != nil {
		return nil, err
	}
	// The certificate comes from the file pair or, with listen.acme, from
	// an ACME CA (acme.go).
	var (
		certs   *CertReloader
		acmeSrc *acmeSource
		tlsConf *tls.Config
	)
	if cfg.Listen.ACME != nil {
		if acmeSrc, err = newACMESource(cfg.Listen.ACME, logger); err != nil {
			return nil, err
		}
		tlsConf = acmeSrc.TLSConfig()
	} else {
		if certs, err = NewCertReloader(cfg.Listen.CertPath, cfg.Listen.KeyPath); err != nil {
			return nil, err
		}
		logCertificate(logger, certs, "tls certificate")
		tlsConf = certs.TLSConfig()
	}
	var tokens []admin.Token
	if cfg.Admin.TokenFile != "" {
		if tokens, err = admin.LoadTokens(cfg.Admin.TokenFile); err != nil {
			return nil, err
		}
	}
	adminLn, err := adminListen(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen(cfg.Listen.Net, cfg.Listen.Laddr)
	if err != nil {
		closeListener(adminLn)
		return nil, fmt.Errorf("listen: %w", err)
	}
	var verifier qlib.TokenVerifier
	if cfg.Auth > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), verifierStartTimeout)
		v, err := NewOIDCVerifier(ctx, cfg.AuthBy, OIDCOptions{
			MaxTokenAge: time.Duration(cfg.TokenMaxAgeSeconds) * time.Second,
			Logger:      logger,
			Now:         clock.Now,
		})
		cancel()
		if err != nil {
			ln.Close()
			closeListener(adminLn)
			return nil, err
		}
		verifier = v
	}
	d, err := newDaemon(cfg, clock.Now, tlsConf, ln, verifier, logger)
	if err != nil {
		ln.Close()
		closeListener(adminLn)
		return nil, err
	}
	d.ntpOffset = clock.Offset
	d.clock, d.configPath = clock, configPath
	if every := time.Duration(cfg.NTP.CheckEveryMinutes) * time.Minute; every > 0 {
		d.stopClock, d.clockDone = make(chan struct{}), make(chan struct{})
		go clock.RunChecks(cfg.NTP, every, logger, d.stopClock, d.clockDone)
	}
	d.recent = recent
	for _, fn := range tune {
		fn(d)
	}
	if adminLn != nil {
		if cfg.Admin.TLS {
			adminLn = tls.NewListener(adminLn, tlsConf)
		}
		d.startAdmin(adminLn, tokens)
	}
	d.certs, d.acme = certs, acmeSrc
	if acmeSrc != nil {
		acmeSrc.start() // now that the CA can reach the listener
	}
	logger.Info("mnm started", "version", version, "listen", ln.Addr().String(), "name", cfg.Name, "data", cfg.DataDir)
	return d, nil
}

// verifierStartTimeout bounds the fetch of the third-party providers' keys at
// start; a provider that does not answer in time is retried when a token
// needs it.
const verifierStartTimeout = 15 * time.Second

// newDaemon opens the data directories of cfg and serves TLS on ln. Tests use
// it with a loopback listener.
func newDaemon(cfg *Config, now func() time.Time, tlsConf *tls.Config, ln net.Listener, verifier qlib.TokenVerifier, logger *slog.Logger) (*daemon, error) {
	authBy, optional, err := clientAuthBy(cfg.AuthBy)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(filepath.Join(cfg.DataDir, moveMarkerName)); err == nil {
		return nil, ErrImportInterrupted
	}
	if _, err := os.Lstat(filepath.Join(cfg.DataDir, backupIncompleteName)); err == nil {
		return nil, ErrBackupIncomplete
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	// Released on every failure below; on success shutdown releases it.
	started := false
	defer func() {
		if !started && lock != nil {
			lock.Close()
		}
	}()
	perIdentity := cfg.AccountsPerIdentity
	if perIdentity == 0 {
		perIdentity = NoAccountBound // the config's 0 removes the bound
	}
	d := &daemon{log: logger, served: make(chan error, 1), fatal: make(chan error, 1),
		cfg: cfg, now: now, started: now(), stopping: make(chan struct{}), registry: newRegistry()}
	var (
		sessions qlib.Sessions
		presence qlib.Presence
	)
	if cfg.Cluster != nil {
		if err := d.openClusterData(perIdentity); err != nil {
			return nil, err
		}
		sessions, presence = d.site.sessions(), d.site.presence
	} else if err := d.openLocalData(perIdentity); err != nil {
		return nil, err
	}
	d.users.SetOnFatal(d.failed)
	srv, err := qlib.NewServer(qlib.Config{
		Name:         cfg.Name,
		Directory:    d.directory,
		Store:        d.qstore,
		Sessions:     sessions,
		Presence:     presence,
		Logger:       logger,
		MaxPostBytes: cfg.MaxPostBytes,
		Auth:         cfg.Auth,
		AuthBy:       authBy,
		AuthOptional: optional,
		Verifier:     verifier,
		OnFatal:      d.failed,
		Limits:       cfg.qlibLimits(),
		MaxLinks:     linkCap(cfg.MaxLinks, logger),
		MayReach:     cfg.ReceiveOnly.MayReachSet(),
		Registerer:   d.registry,
	})
	if err != nil {
		d.closeData()
		return nil, err
	}
	d.srv, d.ln, d.lock = srv, ln, lock
	d.evictTo.Store(srv)
	if d.site != nil {
		d.site.presence.Attach(srv)
	}
	d.registerDataMetrics()
	started = true
	go func() { d.served <- srv.Serve(serveListener(ln, tlsConf)) }()
	if cfg.AwayAfterDays > 0 {
		d.stopSweep, d.swept = make(chan struct{}), make(chan struct{})
		go d.sweepAway(now)
	}
	return d, nil
}

// failed reports a storage failure to waitForStop; the first one is enough.
func (d *daemon) failed(err error) {
	select {
	case d.fatal <- err:
	default:
	}
}

// shutdown stops the server gracefully, then closes the store and user
// database so that everything acknowledged is on disk.
func (d *daemon) shutdown() error {
	close(d.stopping) // not ready from now on
	if d.stopClock != nil {
		close(d.stopClock)
		<-d.clockDone
	}
	if d.stopSweep != nil {
		close(d.stopSweep)
		<-d.swept // no sweep writes once the store and userdb close
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := d.srv.Shutdown(ctx)
	if serr := <-d.served; !errors.Is(serr, qlib.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	// After the links: a backup streaming now still reads an open store.
	err = errors.Join(err, d.stopAdmin(ctx))
	if d.acme != nil {
		d.acme.close()
	}
	err = errors.Join(err, d.closeData())
	if d.lock != nil {
		d.lock.Close() // after the data is closed: nothing of ours writes to it now
	}
	return err
}

// clientAuthBy is the provider list as clients see it in the tmtprev reply
// (SPEC §4 op 0): for each provider its label, and login and token as exactly
// [url, params], the params joined with "&", std's after the endpoint's own
// (AuthProvider.clientEndpoint). Std, keys, issuer and audience are not sent.
// The empty first entry is not sent either: it only makes third-party auth
// optional, which optional reports, and the deployed client would show it as
// a provider without a name. json.Marshal escapes "&" as \u0026, as
// tmtp.AppendFrame escapes the rest of the reply; clients decode either.
func clientAuthBy(providers []AuthProvider) (list []byte, optional bool, err error) {
	type entry struct {
		Label string    `json:"label"`
		Login [2]string `json:"login"`
		Token [2]string `json:"token"`
	}
	out := make([]entry, 0, len(providers))
	for i, p := range providers {
		if isOptionalMarker(i, p) {
			optional = true
			continue
		}
		out = append(out, entry{Label: p.Label, Login: p.clientEndpoint(p.Login), Token: p.clientEndpoint(p.Token)})
	}
	list, err = json.Marshal(out)
	return list, optional, err
}

// closeListener closes ln unless it is nil.
func closeListener(ln net.Listener) {
	if ln != nil {
		ln.Close()
	}
}

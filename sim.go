package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"mnm/testclient"
	"mnm/testclient/proc"
	"mnm/testclient/sim"
)

// `mnm N [flags]` runs a live simulation: N simulated members over real TLS
// links (sim.Run) against an ephemeral server in this process
// (loopback port, throwaway certificate, temporary data removed at exit),
// or against the server at -addr. The in-process server logs warnings only,
// on stderr, so that its routine events (a login, a logout per member per
// cycle) do not drown the status lines on stdout; the simulation's own
// integrity errors and failures go there too.
//
// The status lines show the RSS and CPU of one process: this one by
// default, which is the server and the members together, or with -pid the
// server's process alone, so that the server can be measured without the
// simulation's share (BENCHMARKS.md, "Simulation").

// simMaxMembers bounds N: every online member holds one loopback connection,
// and one client address has about 28,000 ephemeral ports (Linux's default
// range 32768–60999) to connect from.
const simMaxMembers = 25000

// spareFiles is what `mnm N` and `mnm load` need in file descriptors
// besides one or two per link (the client's end, and the server's when it
// is in this process): the listener, the store's segments, the user
// database, logs and standard streams.
const spareFiles = 256

// simMembers reports whether the first argument asks for a simulation (it
// is an integer) and of how many members.
func simMembers(arg string) (int, bool) {
	n, err := strconv.Atoi(arg)
	return n, err == nil
}

func runSim(n int, args []string, stdout, stderr io.Writer) int {
	return runSimWith(n, args, stdout, stderr, nil)
}

// simFlags are the parsed flags of `mnm N`.
type simFlags struct {
	timescale float64
	interval  time.Duration
	duration  time.Duration
	drain     time.Duration
	seed      uint64
	addr      string // as given
	admin     string // -admin: the in-process server's admin listener, or ""
	pid       int

	// From addr, if set: the dial address and TLS configuration.
	dial string
	tls  *tls.Config
}

// parseSimFlags parses the flags of a simulation of n members; on a usage
// error it has written the error and the usage to stderr.
func parseSimFlags(n int, args []string, stderr io.Writer) (*simFlags, bool) {
	var f simFlags
	fs := flag.NewFlagSet("mnm N", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mnm N [flags]\n\nSimulate N members (%d to %d) against a server in this process, or the one at -addr, until Ctrl-C.\n\n",
			sim.MinMembers, simMaxMembers)
		fs.PrintDefaults()
	}
	fs.Float64Var(&f.timescale, "timescale", 1, "multiply the members' pauses (1–30 s) by this: 0.01 makes them 10–300 ms")
	fs.DurationVar(&f.interval, "interval", sim.DefaultInterval, "print a status line this often")
	fs.DurationVar(&f.duration, "duration", 0, "stop after this much traffic, as on Ctrl-C (0: run until Ctrl-C)")
	fs.DurationVar(&f.drain, "drain", sim.DefaultDrain, "after stopping, wait at most this long for deliveries in flight")
	fs.Uint64Var(&f.seed, "seed", 0, "seed of the members' random choices (0: pick one)")
	fs.StringVar(&f.addr, "addr", "", "server to simulate against: host:port or =host:port (certificate not verified), +host:port (verified); empty starts one in this process")
	fs.IntVar(&f.pid, "pid", 0, "process id of the -addr server: the status lines show its RSS and CPU")
	fs.StringVar(&f.admin, "admin", "", "serve the in-process server's status page and metrics at this address, e.g. 127.0.0.1:5480")
	if err := fs.Parse(args); err != nil {
		return nil, false
	}
	var bad string
	switch {
	case fs.NArg() > 0:
		bad = fmt.Sprintf("unexpected argument %q", fs.Arg(0))
	case n < sim.MinMembers || n > simMaxMembers:
		bad = fmt.Sprintf("N must be %d to %d members, not %d", sim.MinMembers, simMaxMembers, n)
	case !(f.timescale > 0):
		bad = "-timescale must be positive"
	case f.interval <= 0 || f.drain <= 0 || f.duration < 0:
		bad = "-interval and -drain must be positive, -duration not negative"
	case f.pid != 0 && f.addr == "":
		bad = "-pid names the -addr server's process; without -addr the server is this process"
	case f.pid < 0:
		bad = "-pid must be a process id"
	case f.admin != "" && f.addr != "":
		bad = "-admin serves the in-process server's status page; with -addr, use that server's own"
	case f.admin != "" && checkListenAddr(f.admin) != nil:
		bad = "-admin: " + checkListenAddr(f.admin).Error()
	case f.addr != "":
		var err error
		if f.dial, f.tls, err = simSite(f.addr); err != nil {
			bad = err.Error()
		} else if _, err := proc.Read(f.pid); f.pid != 0 && err != nil {
			bad = fmt.Sprintf("-pid %d: %v", f.pid, err)
		}
	}
	if bad != "" {
		fmt.Fprintf(stderr, "mnm: %s\n", bad)
		fs.Usage()
		return nil, false
	}
	return &f, true
}

// runSimWith is runSim with a hook for tests: adjust may change the
// configuration before the run, and keep stop to end the run as Ctrl-C
// does.
func runSimWith(n int, args []string, stdout, stderr io.Writer, adjust func(cfg *sim.Config, stop context.CancelFunc)) int {
	f, ok := parseSimFlags(n, args, stderr)
	if !ok {
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := sim.Config{
		Members:   n,
		Timescale: f.timescale,
		Duration:  f.duration,
		Interval:  f.interval,
		Drain:     f.drain,
		Seed:      f.seed,
		Logger:    logger,
	}
	// Every online member holds a link, a descriptor at each end; with the
	// server in this process both ends are here.
	ends := 1
	if f.addr == "" {
		ends = 2
	}
	need := uint64(ends*n + spareFiles)
	if limit, err := raiseFileLimit(need); err != nil || limit < need {
		// Running out of descriptors would fail the server (and its data
		// writes), not just a login: members take turns instead.
		cfg.MaxOnline = max(int(limit)-spareFiles, 2) / ends
		logger.Warn("too few file descriptors for every member to be online at once; members take turns",
			"need", need, "limit", limit, "maxOnline", cfg.MaxOnline, "err", err)
	}

	var e *ephemeral
	if f.addr == "" {
		var err error
		if e, err = startEphemeral(logger); err != nil {
			logger.Error("starting the server failed", "err", err)
			return exitFailure
		}
		cfg.Addr = e.Addr
		cfg.Proc, cfg.ProcName = procStats(os.Getpid()), "server+members"
		if f.admin != "" {
			ln, err := net.Listen("tcp", f.admin)
			if err != nil {
				e.Close()
				logger.Error("admin listener", "err", err)
				return exitFailure
			}
			e.startAdmin(ln, nil)
			fmt.Fprintf(stdout, "mnm: status page at http://%s/\n", ln.Addr())
		}
		fmt.Fprintf(stdout, "mnm: simulating %d members against a server in this process at %s (data in %s, removed at exit;"+
			" server log: warnings only, on stderr; rss and cpu are of the whole process, server and members together)\n", n, e.Addr, e.dir)
	} else {
		cfg.Addr, cfg.TLS = f.dial, f.tls
		what := "no -pid: the server's rss and cpu are not shown"
		if f.pid != 0 {
			cfg.Proc, cfg.ProcName = procStats(f.pid), "server"
			what = fmt.Sprintf("rss and cpu are of the server, process %d, alone", f.pid)
		}
		fmt.Fprintf(stdout, "mnm: simulating %d members against the server at %s (%s)\n", n, cfg.Addr, what)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	finished := make(chan struct{})
	defer close(finished)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		select {
		case <-sig:
		case <-finished:
			return
		}
		fmt.Fprintln(stderr, "mnm: stopping (Ctrl-C again to exit at once)")
		cancel()
		select {
		case <-sig:
		case <-finished:
			return
		}
		// The operator does not want to wait. The data is throwaway; the
		// server may still be writing it, which does not stop the removal.
		fmt.Fprintln(stderr, "mnm: second signal; exiting at once")
		if e != nil {
			os.RemoveAll(e.dir)
		}
		os.Exit(exitFailure)
	}()

	if adjust != nil {
		adjust(&cfg, cancel)
	}
	sum, runErr := sim.Run(ctx, cfg, stdout)
	if e != nil {
		if err := e.Close(); err != nil {
			logger.Error("server shutdown failed", "err", err)
			return exitFailure
		}
	}
	switch {
	case errors.Is(runErr, context.Canceled):
		fmt.Fprintln(stdout, "mnm: stopped during setup")
		return exitOK
	case runErr != nil:
		logger.Error("simulation failed", "err", runErr)
		return exitFailure
	case sum.IntegrityErrors() > 0:
		return exitFailure
	}
	return exitOK
}

// simSite turns -addr into a dial address and TLS configuration: a site
// address ("=host:port", "+host:port", SPEC §8), or a bare host:port whose
// certificate is not verified, as `mnm load -serve` prints and `mnm load
// -addr` takes.
func simSite(addr string) (string, *tls.Config, error) {
	if strings.HasPrefix(addr, "=") || strings.HasPrefix(addr, "+") {
		return testclient.ParseSite(addr)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", nil, fmt.Errorf("-addr %q: %w", addr, err)
	}
	return addr, nil, nil
}

// procStats returns a reader of process pid's memory and CPU time.
func procStats(pid int) func() (proc.Stats, error) {
	return func() (proc.Stats, error) { return proc.Read(pid) }
}

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
//
// -addr may list several frontends of one clustered site, comma-separated:
// the members are spread over them (sim.Frontend), so that deliveries cross
// from one frontend to another; -pid then lists their processes, whose
// figures are summed.

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
	pid       string // as given

	// From addr, if set: the frontends' dial addresses and TLS
	// configurations; from pid, the processes.
	frontends []sim.Frontend
	pids      []int
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
	fs.StringVar(&f.addr, "addr", "", "server to simulate against: host:port or =host:port (certificate not verified), +host:port (verified); a comma-separated list of the frontends of one site spreads the members over them; empty starts one in this process")
	fs.StringVar(&f.pid, "pid", "", "process id of the -addr server (comma-separated, one per frontend at most): the status lines show its RSS and CPU, summed over the processes")
	fs.StringVar(&f.admin, "admin", "", "serve the in-process server's status page and metrics at this address, e.g. 127.0.0.1:5480")
	if err := fs.Parse(args); err != nil {
		return nil, false
	}
	var bad string
	pids, pidErr := parsePIDs(f.pid)
	switch {
	case fs.NArg() > 0:
		bad = fmt.Sprintf("unexpected argument %q", fs.Arg(0))
	case n < sim.MinMembers || n > simMaxMembers:
		bad = fmt.Sprintf("N must be %d to %d members, not %d", sim.MinMembers, simMaxMembers, n)
	case !(f.timescale > 0):
		bad = "-timescale must be positive"
	case f.interval <= 0 || f.drain <= 0 || f.duration < 0:
		bad = "-interval and -drain must be positive, -duration not negative"
	case len(pids) > 0 && f.addr == "":
		bad = "-pid names the -addr server's process; without -addr the server is this process"
	case pidErr != nil:
		bad = pidErr.Error()
	case f.admin != "" && f.addr != "":
		bad = "-admin serves the in-process server's status page; with -addr, use that server's own"
	case f.admin != "" && checkListenAddr(f.admin) != nil:
		bad = "-admin: " + checkListenAddr(f.admin).Error()
	case f.addr != "":
		sites, err := parseSites(f.addr, len(pids))
		if err != nil {
			bad = err.Error()
			break
		}
		for _, s := range sites {
			f.frontends = append(f.frontends, sim.Frontend{Addr: s.dial, TLS: s.tls})
		}
		f.pids = pids
		for _, pid := range pids {
			if _, err := proc.Read(pid); err != nil {
				bad = fmt.Sprintf("-pid %d: %v", pid, err)
				break
			}
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
		cfg.Frontends = []sim.Frontend{{Addr: e.Addr}}
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
		cfg.Frontends = f.frontends
		if len(f.pids) > 0 {
			cfg.Proc, cfg.ProcName = procStats(f.pids...), "server"
		}
		if len(f.pids) > 1 {
			cfg.ProcName = "servers" // their figures summed
		}
		fmt.Fprintf(stdout, "mnm: simulating %d members against %s\n", n, simTarget(f.frontends, f.pids))
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

// simTarget says, in the first line of output against -addr, what the
// members are simulated against and whose figures the status lines show.
// Against one server it is what it was before frontends.
func simTarget(frontends []sim.Frontend, pids []int) string {
	if len(frontends) == 1 {
		what := "no -pid: the server's rss and cpu are not shown"
		if len(pids) > 0 {
			what = fmt.Sprintf("rss and cpu are of the server, process %d, alone", pids[0])
		}
		return fmt.Sprintf("the server at %s (%s)", frontends[0].Addr, what)
	}
	addrs := make([]string, len(frontends))
	for i, fe := range frontends {
		addrs[i] = fe.Addr
	}
	var what string
	switch len(pids) {
	case 0:
		what = "no -pid: the servers' rss and cpu are not shown"
	case 1:
		what = fmt.Sprintf("rss and cpu are of process %d alone", pids[0])
	default:
		list := make([]string, len(pids))
		for i, pid := range pids {
			list[i] = strconv.Itoa(pid)
		}
		what = "rss and cpu are the sum of processes " + strings.Join(list, ", ")
	}
	return fmt.Sprintf("%d frontends of one site at %s, members spread over them (%s)", len(frontends), strings.Join(addrs, ", "), what)
}

// site is one address of -addr: where to dial, and how to check the
// certificate (nil: not at all).
type site struct {
	dial string
	tls  *tls.Config
}

// parseSites parses -addr, a comma-separated list of the frontends of one
// site, each in a form simSite takes; a single address is one server. No
// address may be empty or given twice (in any form), and there are at
// least as many addresses as pids, the processes of -pid.
func parseSites(list string, pids int) ([]site, error) {
	var sites []site
	seen := make(map[string]bool)
	for i, elem := range strings.Split(list, ",") {
		if elem == "" {
			return nil, fmt.Errorf("-addr %q: address %d is empty", list, i+1)
		}
		dial, conf, err := simSite(elem)
		if err != nil {
			return nil, err
		}
		if seen[dial] {
			return nil, fmt.Errorf("-addr %q: %s is given twice", list, dial)
		}
		seen[dial] = true
		sites = append(sites, site{dial: dial, tls: conf})
	}
	if pids > len(sites) {
		return nil, fmt.Errorf("-pid lists %d processes for %d -addr addresses; at most one per address", pids, len(sites))
	}
	return sites, nil
}

// parsePIDs parses -pid: "" (or "0", as before lists) for none, or a
// comma-separated list of process ids, none empty, not positive or given
// twice.
func parsePIDs(list string) ([]int, error) {
	if list == "" || list == "0" {
		return nil, nil
	}
	var pids []int
	seen := make(map[int]bool)
	for i, elem := range strings.Split(list, ",") {
		if elem == "" {
			return nil, fmt.Errorf("-pid %q: process %d is empty", list, i+1)
		}
		pid, err := strconv.Atoi(elem)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("-pid must be a process id, not %q", elem)
		}
		if seen[pid] {
			return nil, fmt.Errorf("-pid %q: %d is given twice", list, pid)
		}
		seen[pid] = true
		pids = append(pids, pid)
	}
	return pids, nil
}

// simSite turns one address of -addr into a dial address and TLS
// configuration: a site address ("=host:port", "+host:port", SPEC §8), or
// a bare host:port whose certificate is not verified, as `mnm load -serve`
// prints and `mnm load -addr` takes.
func simSite(addr string) (string, *tls.Config, error) {
	if strings.HasPrefix(addr, "=") || strings.HasPrefix(addr, "+") {
		return testclient.ParseSite(addr)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", nil, fmt.Errorf("-addr %q: %w", addr, err)
	}
	return addr, nil, nil
}

// procStats returns a reader of the memory and CPU time of the processes
// pids, summed.
func procStats(pids ...int) func() (proc.Stats, error) {
	return func() (proc.Stats, error) { return proc.ReadSum(pids) }
}

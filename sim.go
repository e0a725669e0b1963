package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"mnm/testclient"
)

// `mnm N [flags]` runs a live simulation: an ephemeral server in this
// process (loopback port, throwaway certificate, temporary data removed at
// exit) and N simulated members over real TLS links (testclient.RunSim).
// The server logs warnings only, on stderr, so that its routine events (a
// login, a logout per member per cycle) do not drown the status lines on
// stdout; the simulation's own integrity errors and failures go there too.

// simMaxMembers bounds N: every online member holds one loopback connection,
// and one client address has about 28,000 ephemeral ports (Linux's default
// range 32768–60999) to connect from.
const simMaxMembers = 25000

// simSpareFiles is what the process needs in file descriptors besides two per
// member (the member's end of its link and the server's): the listener, the
// store's segments, the user database, standard streams.
const simSpareFiles = 256

// simMembers reports whether the first argument asks for a simulation (it
// is an integer) and of how many members.
func simMembers(arg string) (int, bool) {
	n, err := strconv.Atoi(arg)
	return n, err == nil
}

func runSim(n int, args []string, stdout, stderr io.Writer) int {
	return runSimWith(n, args, stdout, stderr, nil)
}

// runSimWith is runSim with a hook that may change the configuration before
// the run, for tests.
func runSimWith(n int, args []string, stdout, stderr io.Writer, adjust func(*testclient.SimConfig)) int {
	fs := flag.NewFlagSet("mnm N", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: mnm N [flags]\n\nSimulate N members (%d to %d) against an in-process server until Ctrl-C.\n\n",
			testclient.SimMinMembers, simMaxMembers)
		fs.PrintDefaults()
	}
	timescale := fs.Float64("timescale", 1, "multiply the members' pauses (1–30 s) by this: 0.01 makes them 10–300 ms")
	interval := fs.Duration("interval", testclient.DefaultSimInterval, "print a status line this often")
	duration := fs.Duration("duration", 0, "stop after this much traffic, as on Ctrl-C (0: run until Ctrl-C)")
	drain := fs.Duration("drain", testclient.DefaultSimDrain, "after stopping, wait at most this long for deliveries in flight")
	seed := fs.Uint64("seed", 0, "seed of the members' random choices (0: pick one)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	var bad string
	switch {
	case fs.NArg() > 0:
		bad = fmt.Sprintf("unexpected argument %q", fs.Arg(0))
	case n < testclient.SimMinMembers || n > simMaxMembers:
		bad = fmt.Sprintf("N must be %d to %d members, not %d", testclient.SimMinMembers, simMaxMembers, n)
	case !(*timescale > 0):
		bad = "-timescale must be positive"
	case *interval <= 0 || *drain <= 0 || *duration < 0:
		bad = "-interval and -drain must be positive, -duration not negative"
	}
	if bad != "" {
		fmt.Fprintf(stderr, "mnm: %s\n", bad)
		fs.Usage()
		return exitUsage
	}

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	need := uint64(2*n + simSpareFiles)
	limit, err := raiseFileLimit(need)
	maxOnline := 0
	if err != nil || limit < need {
		// Running out of descriptors would fail the server (and its data
		// writes), not just a login: members take turns instead.
		maxOnline = max(int(limit)-simSpareFiles, 2) / 2
		logger.Warn("too few file descriptors for every member to be online at once; members take turns",
			"need", need, "limit", limit, "maxOnline", maxOnline, "err", err)
	}
	e, err := startEphemeral(logger)
	if err != nil {
		logger.Error("starting the server failed", "err", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "mnm: simulating %d members against a server in this process at %s (data in %s, removed at exit;"+
		" server log: warnings only, on stderr; rss counts server and members together)\n", n, e.Addr, e.dir)

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
		os.RemoveAll(e.dir)
		os.Exit(exitFailure)
	}()

	cfg := testclient.SimConfig{
		Addr:      e.Addr,
		Members:   n,
		Timescale: *timescale,
		Duration:  *duration,
		Interval:  *interval,
		Drain:     *drain,
		Seed:      *seed,
		MaxOnline: maxOnline,
		RSS:       processRSS,
		Logger:    logger,
	}
	if adjust != nil {
		adjust(&cfg)
	}
	sum, runErr := testclient.RunSim(ctx, cfg, stdout)
	if err := e.Close(); err != nil {
		logger.Error("server shutdown failed", "err", err)
		return exitFailure
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

// processRSS returns this process's resident set size and its peak, in
// octets, from /proc/self/status (Linux); zeros where that is unavailable.
func processRSS() (current, peak int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	return parseProcStatus(f)
}

// parseProcStatus reads VmRSS and VmHWM ("VmRSS:   12345 kB") from a
// /proc/<pid>/status file.
func parseProcStatus(r io.Reader) (rss, hwm int64) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil || kb < 0 || kb > math.MaxInt64>>10 {
			continue
		}
		if key == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	return rss, hwm
}

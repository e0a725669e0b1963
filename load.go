package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"mnm/testclient/load"
)

// `mnm load` is the load benchmark (BENCHMARKS.md): it drives a TMTP server,
// ours started in this process or any other given by address, and prints one
// JSON line of results. The engine is load.Run; this file is its
// flags, the in-process server, and the two other modes:
//
//	mnm load [flags]          post and deliver, print a load.Result
//	mnm load -idle N [flags]  N idle logged-in links, print a load.IdleResult
//	mnm load -serve           run an ephemeral server until SIGINT, so that a
//	                          loader in another process can measure it alone (-pid)
//
// -addr may list several frontends of one clustered site, comma-separated:
// the members are spread over them, each posting to members on other
// frontends (load.Config), and -pid lists their processes, whose figures
// are summed. The result then says how many frontends were loaded and
// which processes the server figures sum.

// Defaults of `mnm load`: the benchmark's standard run (BENCHMARKS.md).
const (
	loadDefaultUsers      = 100
	loadDefaultPosts      = 50
	loadDefaultSize       = 1000
	loadDefaultRecipients = 2
	loadDefaultWindow     = 1
)

// loadFlags are the parsed flags of `mnm load`.
type loadFlags struct {
	addr       string // as given
	users      int
	senders    int
	posts      int
	size       int
	recipients int
	window     int
	timeout    time.Duration
	seed       uint64
	pid        string // as given
	cpuProfile string
	memProfile string
	serve      bool
	idle       int
	settle     time.Duration
	hold       time.Duration
	strict     bool
	debug      bool

	// From addr, if set: the site's frontends; from pid, the processes.
	frontends []load.Frontend
	pids      []int
}

func parseLoadFlags(args []string, stderr io.Writer) (*loadFlags, error) {
	var f loadFlags
	fs := flag.NewFlagSet("mnm load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.addr, "addr", "", "server to load: host:port or =host:port (certificate not verified), +host:port (verified); a comma-separated list of the frontends of one site spreads the members over them; empty starts one in this process")
	fs.IntVar(&f.users, "users", loadDefaultUsers, "members, each a new account")
	fs.IntVar(&f.senders, "senders", 0, "members that post, the others only receive; 0 means all")
	fs.IntVar(&f.posts, "posts", loadDefaultPosts, "posts per sender")
	fs.IntVar(&f.size, "size", loadDefaultSize, "payload octets per post")
	fs.IntVar(&f.recipients, "recipients", loadDefaultRecipients, "recipients per post (other members, chosen at random, fixed per member)")
	fs.IntVar(&f.window, "window", loadDefaultWindow, "posts in flight per member")
	fs.DurationVar(&f.timeout, "timeout", load.DefaultTimeout, "bound on the whole run; what has not arrived by then is reported lost")
	fs.Uint64Var(&f.seed, "seed", 1, "seed of the recipient choice and payloads")
	fs.StringVar(&f.pid, "pid", "", "process id of the -addr server, to read its RSS and CPU time from /proc (comma-separated, at most one per frontend: the figures are summed)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (server included when in-process; the server alone with -serve) to `file`")
	fs.StringVar(&f.memProfile, "memprofile", "", "write a heap profile of this process to `file`: at the end, or with -idle while the links are up")
	fs.BoolVar(&f.serve, "serve", false, "run an ephemeral server, print its site address, and wait for SIGINT")
	fs.IntVar(&f.idle, "idle", 0, "instead of posting, measure the server's RSS per idle logged-in link with this many links")
	fs.DurationVar(&f.settle, "settle", load.DefaultIdleSettle, "with -idle: wait this long before each RSS reading")
	fs.DurationVar(&f.hold, "hold", 0, "with -idle: keep the links idle this much longer and read the RSS again (150s spans the runtime's periodic collection)")
	fs.BoolVar(&f.strict, "strict", false, "check every received frame against the protocol (costs load-generator CPU)")
	fs.BoolVar(&f.debug, "debug", false, "log progress (and the in-process server's events) on stderr")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f.serve && (f.addr != "" || f.idle > 0 || f.memProfile != "") {
		return nil, errors.New("-serve runs a server; it takes no -addr, -idle or -memprofile")
	}
	pids, err := parsePIDs(f.pid)
	if err != nil {
		return nil, err
	}
	if len(pids) > 0 && f.addr == "" {
		return nil, errors.New("-pid names the -addr server's process; without -addr the server is this process")
	}
	if f.addr != "" {
		sites, err := parseSites(f.addr, len(pids))
		if err != nil {
			return nil, err
		}
		for _, s := range sites {
			f.frontends = append(f.frontends, load.Frontend{Addr: s.dial, TLS: s.tls})
		}
		f.pids = pids
	}
	return &f, nil
}

// runLoad is `mnm load`.
func runLoad(args []string, stdout, stderr io.Writer) int {
	f, err := parseLoadFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "mnm load:", err)
		return exitUsage
	}
	level := slog.LevelWarn
	if f.debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	// Every link is a descriptor at each end, and in-process both ends are
	// in this process: the 10,000-link idle measurement needs more than the
	// usual soft limit. A -serve server takes whatever the hard limit allows.
	ends := 1
	if f.addr == "" {
		ends = 2
	}
	need := uint64(ends*max(f.idle, f.users) + spareFiles)
	if limit, err := raiseFileLimit(need); err != nil || limit < need {
		logger.Warn("too few file descriptors for every link", "need", need, "limit", limit, "err", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if f.serve {
		if f.cpuProfile != "" {
			// The server alone: from its start to SIGINT.
			stopProfile, err := startCPUProfile(f.cpuProfile)
			if err != nil {
				logger.Error("cpu profile", "err", err)
				return exitFailure
			}
			defer stopProfile()
		}
		return loadServe(ctx, stdout, logger)
	}
	if err := runLoadMode(ctx, f, stdout, logger); err != nil {
		logger.Error("load failed", "err", err)
		return exitFailure
	}
	return exitOK
}

// loadServe runs an ephemeral server until ctx ends, having printed its site
// address on stdout.
func loadServe(ctx context.Context, stdout io.Writer, logger *slog.Logger) int {
	e, err := startEphemeral(logger)
	if err != nil {
		logger.Error("startup failed", "err", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "=%s\n", e.Addr)
	logger.Warn("load server ready; stop it with SIGINT", "site", "="+e.Addr, "pid", os.Getpid())
	<-ctx.Done()
	if err := e.Close(); err != nil {
		logger.Error("shutdown failed", "err", err)
		return exitFailure
	}
	return exitOK
}

// runLoadMode runs the post benchmark or the idle measurement and prints its
// result as one JSON line.
func runLoadMode(ctx context.Context, f *loadFlags, stdout io.Writer, logger *slog.Logger) (err error) {
	frontends, pids := f.frontends, f.pids
	if len(frontends) == 0 {
		e, err := startEphemeral(logger)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, e.Close()) }()
		frontends, pids = []load.Frontend{{Addr: e.Addr}}, []int{os.Getpid()}
	}

	// The CPU profile covers the measured part: it starts when setup is
	// done (RunLoad's Ready) and stops when the run does.
	stopProfile := func() error { return nil }
	startProfile := func() {
		if f.cpuProfile == "" {
			return
		}
		stop, perr := startCPUProfile(f.cpuProfile)
		if perr != nil {
			logger.Error("cpu profile", "err", perr)
			return
		}
		stopProfile = stop
	}

	var result any
	if f.idle > 0 {
		if len(pids) == 0 {
			return errors.New("-idle against -addr needs -pid to read the server's memory")
		}
		startProfile()
		var heapErr error
		result, err = load.Idle(ctx, load.IdleConfig{
			Frontends: frontends, Links: f.idle, ServerPIDs: pids,
			Settle: f.settle, Hold: f.hold, Timeout: f.timeout, Logger: logger,
			Measured: func() {
				// The heap with every link up: both ends when in-process.
				if f.memProfile != "" {
					heapErr = writeHeapProfile(f.memProfile)
				}
			},
		})
		err = errors.Join(err, heapErr)
	} else {
		result, err = load.Run(ctx, load.Config{
			Users: f.users, Senders: f.senders, Posts: f.posts, Size: f.size, Recipients: f.recipients, Window: f.window,
			Timeout: f.timeout, Seed: f.seed, Strict: f.strict,
			Frontends: frontends, ServerPIDs: pids, Ready: startProfile, Logger: logger,
		})
	}
	if perr := stopProfile(); err == nil {
		err = perr
	}
	if err != nil {
		return err
	}
	if f.memProfile != "" && f.idle == 0 {
		if err := writeHeapProfile(f.memProfile); err != nil {
			return err
		}
	}
	line, err := json.Marshal(result)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", line)
	return err
}

// startCPUProfile starts profiling into path; stop ends it and closes the file.
func startCPUProfile(path string) (stop func() error, err error) {
	out, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		return out.Close()
	}, nil
}

// writeHeapProfile writes the live heap after a collection, so that it shows
// what is retained rather than what was garbage.
func writeHeapProfile(path string) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	return errors.Join(pprof.WriteHeapProfile(out), out.Close())
}

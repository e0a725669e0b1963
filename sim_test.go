package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mnm/cluster/natstest"
	"mnm/qlib/store"
	"mnm/testclient"
	"mnm/testclient/sim"
)

// Short simulations: 6 members at 1/1000 of the published pauses (1–30 ms).
// A run stops once it has shown what the tests check, testSimDeliveries
// deliveries and a status line (simStopper), which takes well under a
// second on an idle machine; a loaded one gets there later rather than
// with too little traffic. testSimBound stops a run that cannot get there.
const (
	testSimMembers    = 6
	testSimTimescale  = "0.001"
	testSimDeliveries = 100
	testSimInterval   = 50 * time.Millisecond
	testSimBound      = time.Minute
)

// simStopper ends a test simulation, as Ctrl-C would, once it has seen
// testSimDeliveries deliveries (through SimConfig.Tamper) and a status line
// (written through it to out).
type simStopper struct {
	out        io.Writer
	cancel     context.CancelFunc // set before the run starts
	deliveries atomic.Int64
	status     atomic.Bool
}

var statusLine = regexp.MustCompile(`^sim: \d+s online `)

func (s *simStopper) Write(p []byte) (int, error) {
	if statusLine.Match(p) {
		s.status.Store(true)
		s.check()
	}
	return s.out.Write(p)
}

// tamper returns a SimConfig.Tamper that counts deliveries, after inner.
func (s *simStopper) tamper(inner func(*testclient.Frame)) func(*testclient.Frame) {
	return func(f *testclient.Frame) {
		if inner != nil {
			inner(f)
		}
		s.deliveries.Add(1)
		s.check()
	}
}

func (s *simStopper) check() {
	if s.status.Load() && s.deliveries.Load() >= testSimDeliveries && s.cancel != nil {
		s.cancel()
	}
}

// quietLogger discards the server's routine log but lets a test see
// warnings and errors.
func quietLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// runTestSim runs a short simulation against an ephemeral server; adjust,
// if set, changes the configuration first.
func runTestSim(t *testing.T, adjust func(*sim.Config)) (sim.Summary, string) {
	t.Helper()
	e, err := startEphemeral(quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}()
	cfg := sim.Config{
		Frontends: []sim.Frontend{{Addr: e.Addr}},
		Members:   testSimMembers,
		Timescale: 0.001,
		Duration:  testSimBound,
		Interval:  testSimInterval,
		Drain:     10 * time.Second,
		Seed:      1,
		Proc:      procStats(os.Getpid()),
		ProcName:  "server+members",
		Logger:    quietLogger(t),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := &simStopper{out: &out, cancel: cancel}
	cfg.Tamper = stop.tamper(cfg.Tamper)
	sum, err := sim.Run(ctx, cfg, stop)
	if err != nil {
		t.Fatalf("RunSim: %v\n%s", err, out.String())
	}
	return sum, out.String()
}

func TestRunSim(t *testing.T) {
	sum, out := runTestSim(t, nil)
	t.Log(out)
	checkCleanRun(t, sum)
	if !regexp.MustCompile(`(?m)^sim: \d+s online \d+/6, posts \d+ .*, server\+members rss \d+ MB cpu \d+%$`).MatchString(out) {
		t.Error("no status line")
	}
	if !regexp.MustCompile(`(?m)^  traffic +\d+ posts/s, \d+ deliveries/s, [\d.]+ MB/s delivered; post→delivery p50 \S+, p99 \S+ \(until the stop\)$`).MatchString(out) {
		t.Error("no rates in the summary")
	}
	if !strings.Contains(out, "sim: PASS") {
		t.Error("no PASS verdict")
	}
}

// TestRunSimTakingTurns: with room for two links, six members take turns
// online, and the drain still delivers everything.
func TestRunSimTakingTurns(t *testing.T) {
	sum, out := runTestSim(t, func(c *sim.Config) { c.MaxOnline = 2 })
	t.Log(out)
	checkCleanRun(t, sum)
	if strings.Contains(out, "online 3/") || strings.Contains(out, "online 4/") {
		t.Error("more members online than MaxOnline")
	}
}

func checkCleanRun(t *testing.T, sum sim.Summary) {
	t.Helper()
	switch {
	case sum.Logins < testSimMembers:
		t.Errorf("%d logins of %d members", sum.Logins, testSimMembers)
	case sum.Posts == 0 || sum.PostBytes == 0:
		t.Errorf("no posts: %+v", sum)
	case sum.Deliveries < sum.Posts:
		// Every acked post has a recipient, and the drain waits for all.
		t.Errorf("%d deliveries of %d posts", sum.Deliveries, sum.Posts)
	case !sum.Drained || sum.InFlight != 0:
		t.Errorf("drain incomplete: %d in flight", sum.InFlight)
	case sum.IntegrityErrors() != 0 || sum.Errors != 0 || sum.Unacked != 0:
		t.Errorf("errors in a clean run: %+v", sum)
	case sum.AckP50 <= 0 || sum.DeliveryP99 < sum.DeliveryP50 || sum.RSS <= 0 || sum.PeakRSS < sum.RSS:
		t.Errorf("latencies or rss missing: %+v", sum)
	case sum.TrafficPosts == 0 || sum.TrafficPosts > sum.Posts ||
		sum.TrafficDeliveries > sum.Deliveries || sum.TrafficDeliveryBytes > sum.DeliveryBytes:
		t.Errorf("counts at the stop beyond the final counts: %+v", sum)
	case sum.TrafficDeliveries > 0 && (sum.TrafficDeliveryP50 <= 0 || sum.TrafficDeliveryP99 < sum.TrafficDeliveryP50):
		t.Errorf("latencies during the traffic missing: %+v", sum)
	case sum.SelfCPU <= 0:
		t.Errorf("no cpu time of this process: %+v", sum)
	}
}

// TestRunSimTamper damages one delivery on its way to the checks: the run
// must report it.
func TestRunSimTamper(t *testing.T) {
	var n atomic.Int64
	flip := func(f *testclient.Frame) {
		if n.Add(1) == 3 {
			f.Data[len(f.Data)/2] ^= 0x40
		}
	}
	// The damaged delivery is never recorded, so the drain waits out its
	// bound: keep it short.
	sum, out := runTestSim(t, func(c *sim.Config) {
		c.Tamper = flip
		c.Drain = 300 * time.Millisecond
	})
	if sum.Corrupt != 1 || sum.Duplicates != 0 || sum.Misdelivered != 0 || sum.Reordered != 0 {
		t.Errorf("one damaged delivery: %+v\n%s", sum, out)
	}
	// It stays owed: in flight, or lost if a later post of its sender
	// reached the same member.
	if sum.InFlight+sum.Lost != 1 || sum.IntegrityErrors() < 1 {
		t.Errorf("the damaged delivery is not accounted for: %+v", sum)
	}
	if !strings.Contains(out, "sim: FAIL") {
		t.Errorf("no FAIL verdict:\n%s", out)
	}
}

// runSimCommand runs `mnm 6 args…` until a simStopper stops it; tamper, if
// set, sees every delivery first.
func runSimCommand(t *testing.T, args []string, tamper func(*testclient.Frame)) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	stop := &simStopper{out: &out}
	args = append([]string{"-duration", testSimBound.String(), "-timescale", testSimTimescale, "-interval", testSimInterval.String()}, args...)
	code = runSimWith(testSimMembers, args, stop, &errOut, func(c *sim.Config, cancel context.CancelFunc) {
		stop.cancel = cancel
		c.Tamper = stop.tamper(tamper)
		if tamper != nil {
			// The damaged delivery is never recorded, so the drain
			// waits out its bound: keep it short.
			c.Drain = 300 * time.Millisecond
		}
	})
	return code, out.String(), errOut.String()
}

func TestSimCommand(t *testing.T) {
	code, stdout, stderr := runSimCommand(t, []string{"-admin", "127.0.0.1:0"}, nil)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "sim: PASS") || !strings.Contains(stdout, "rss and cpu are of the whole process") {
		t.Errorf("stdout:\n%s", stdout)
	}
	if !regexp.MustCompile(`status page at http://127\.0\.0\.1:\d+/`).MatchString(stdout) {
		t.Errorf("-admin: no status page address in stdout:\n%s", stdout)
	}
	// The temporary data is gone.
	m := regexp.MustCompile(`data in (\S+), removed at exit`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no data folder named:\n%s", stdout)
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", m[1], err)
	}

	// An integrity error makes the exit status non-zero.
	var n atomic.Int64
	tamper := func(f *testclient.Frame) {
		if n.Add(1) == 2 {
			f.Head["from"] = "someone else"
		}
	}
	if code, stdout, _ := runSimCommand(t, nil, tamper); code != exitFailure {
		t.Errorf("tampered run: exit %d, want %d\n%s", code, exitFailure, stdout)
	}
}

func TestSimCommandUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"1"}, "N must be 2 to"},
		{[]string{"-3"}, "N must be 2 to"},
		{[]string{"999999"}, "N must be 2 to"},
		{[]string{"6", "-timescale", "0"}, "-timescale must be positive"},
		{[]string{"6", "-timescale", "NaN"}, "-timescale must be positive"},
		{[]string{"6", "-drain", "0s"}, "-drain must be positive"},
		{[]string{"6", "extra"}, `unexpected argument "extra"`},
		{[]string{"6", "-bogus"}, "flag provided but not defined"},
		{[]string{"6", "-pid", "1"}, "without -addr the server is this process"},
		{[]string{"6", "-addr", "=127.0.0.1:1", "-pid", "-2"}, "-pid must be a process id"},
		{[]string{"6", "-addr", "="}, "neither =host:port nor +host:port"},
		{[]string{"6", "-addr", "no-port"}, `-addr "no-port"`},
		{[]string{"6", "-addr", "127.0.0.1:1", "-pid", "2147483647"}, "-pid 2147483647"},
		{[]string{"6", "-addr", "=127.0.0.1:1", "-admin", "127.0.0.1:0"}, "with -addr, use that server's own"},
		{[]string{"6", "-admin", "not an address"}, `-admin: "not an address" is not host:port`},
		{[]string{"6", "-addr", "=127.0.0.1:1,,=127.0.0.1:2"}, "address 2 is empty"},
		{[]string{"6", "-addr", ",=127.0.0.1:2"}, "address 1 is empty"},
		{[]string{"6", "-addr", "=127.0.0.1:1,127.0.0.1:1"}, "127.0.0.1:1 is given twice"},
		{[]string{"6", "-addr", "=127.0.0.1:1,="}, "neither =host:port nor +host:port"},
		{[]string{"6", "-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "1,2,3"}, "-pid lists 3 processes for 2 -addr addresses"},
		{[]string{"6", "-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "1,"}, "process 2 is empty"},
		{[]string{"6", "-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "1,1"}, "1 is given twice"},
		{[]string{"6", "-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "1,-2"}, "-pid must be a process id"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			// Through run, so the dispatch of a number to the simulation is
			// tested too.
			if code := run(c.args, &stdout, &stderr); code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr.String(), c.want) || !strings.Contains(stderr.String(), "usage: mnm N") {
				t.Errorf("stderr %q, want %q and the usage", &stderr, c.want)
			}
		})
	}
}

// TestSimCommandAddr runs the simulation against a server it did not start,
// as against `mnm load -serve` in another process: the status lines show
// the -pid process's figures, labelled as the server's.
func TestSimCommandAddr(t *testing.T) {
	e, err := startEphemeral(quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}()
	pid := strconv.Itoa(os.Getpid())
	for _, addr := range []string{"=" + e.Addr, e.Addr} {
		code, out, stderr := runSimCommand(t, []string{"-addr", addr, "-pid", pid}, nil)
		if code != exitOK {
			t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", addr, code, out, stderr)
		}
		for _, want := range []string{
			"against the server at " + e.Addr + " (rss and cpu are of the server, process " + pid + ", alone)",
			"sim: PASS",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: no %q in\n%s", addr, want, out)
			}
		}
		if !regexp.MustCompile(`(?m), server rss \d+ MB cpu \d+%$`).MatchString(out) {
			t.Errorf("%s: no status line with the server's rss:\n%s", addr, out)
		}
		if !regexp.MustCompile(`(?m)^  server +rss [\d.]+ MB, peak [\d.]+ MB; cpu `).MatchString(out) {
			t.Errorf("%s: no server figures in the summary:\n%s", addr, out)
		}
		if strings.Contains(out, "server+members") || strings.Contains(out, "data in") {
			t.Errorf("%s: in-process wording against another server:\n%s", addr, out)
		}
	}

	// Without -pid, no process's figures are shown as the server's.
	code, out, stderr := runSimCommand(t, []string{"-addr", "=" + e.Addr}, nil)
	if code != exitOK {
		t.Fatalf("without -pid: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	if regexp.MustCompile(`rss \d`).MatchString(out) || !strings.Contains(out, "no -pid") {
		t.Errorf("without -pid:\n%s", out)
	}
}

// testFrontends starts two frontends of one site, sharing its store and
// user database in this process (cluster_frontends_test.go).
func testFrontends(t *testing.T) []*frontend {
	t.Helper()
	c := natstest.Start(t, natstest.Options{})
	st, err := store.Open(store.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // after the frontends' own cleanups
	return startFrontends(t, c, 2, siteUsers(t), sharedStore(st), 5*time.Second)
}

// servedLinks matches a frontend's log line of a registration or a login.
var servedLinks = regexp.MustCompile(`(?m)msg=(register|login)( |$)`)

// checkBothServed checks that both frontends registered or logged in
// devices.
func checkBothServed(t *testing.T, fes []*frontend) {
	t.Helper()
	for i, fe := range fes {
		n := len(servedLinks.FindAllString(fe.logs.String(), -1))
		t.Logf("frontend %d: %d registrations and logins", i, n)
		if n == 0 {
			t.Errorf("frontend %d served no device", i)
		}
	}
}

// TestSimTwoFrontends runs the simulation against two frontends of one
// site: members spread over both, so that their posts cross from one to
// the other, and every check passes; a damaged delivery still fails the
// run. The status lines show the sum of the -pid processes.
func TestSimTwoFrontends(t *testing.T) {
	fes := testFrontends(t)
	pids := fmt.Sprintf("%d,%d", os.Getpid(), os.Getppid())
	args := []string{"-addr", "=" + fes[0].addr + "," + fes[1].addr, "-pid", pids}
	code, out, stderr := runSimCommand(t, args, nil)
	t.Log(out)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("against 2 frontends of one site at %s, %s, members spread over them (rss and cpu are the sum of processes %d, %d)",
			fes[0].addr, fes[1].addr, os.Getpid(), os.Getppid()),
		fmt.Sprintf("groups at %s, %s (seed", fes[0].addr, fes[1].addr),
		"sim: PASS",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m), servers rss \d+ MB cpu \d+%$`).MatchString(out) {
		t.Errorf("no status line with the servers' rss:\n%s", out)
	}
	checkBothServed(t, fes)

	var n atomic.Int64
	tamper := func(f *testclient.Frame) {
		if n.Add(1) == 2 {
			f.Data[len(f.Data)/2] ^= 0x40
		}
	}
	if code, out, _ := runSimCommand(t, args, tamper); code != exitFailure || !strings.Contains(out, "sim: FAIL") {
		t.Errorf("tampered run: exit %d, want %d\n%s", code, exitFailure, out)
	}
}

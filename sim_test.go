package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mnm/testclient"
)

// A short simulation: 6 members at 1/1000 of the published pauses (1–30 ms)
// for under a second of traffic is a few hundred posts and deliveries.
const (
	testSimMembers   = 6
	testSimTimescale = "0.001"
	testSimDuration  = 700 * time.Millisecond
)

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
func runTestSim(t *testing.T, adjust func(*testclient.SimConfig)) (testclient.SimSummary, string) {
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
	cfg := testclient.SimConfig{
		Addr:      e.Addr,
		Members:   testSimMembers,
		Timescale: 0.001,
		Duration:  testSimDuration,
		Interval:  200 * time.Millisecond,
		Drain:     10 * time.Second,
		Seed:      1,
		RSS:       processRSS,
		Logger:    quietLogger(t),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	var out bytes.Buffer
	sum, err := testclient.RunSim(context.Background(), cfg, &out)
	if err != nil {
		t.Fatalf("RunSim: %v\n%s", err, out.String())
	}
	return sum, out.String()
}

func TestRunSim(t *testing.T) {
	sum, out := runTestSim(t, nil)
	t.Log(out)
	checkCleanRun(t, sum)
	if !regexp.MustCompile(`(?m)^sim: \d+s online \d+/6, posts \d+ .* rss \d+ MB$`).MatchString(out) {
		t.Error("no status line")
	}
	if !strings.Contains(out, "sim: PASS") {
		t.Error("no PASS verdict")
	}
}

// TestRunSimTakingTurns: with room for two links, six members take turns
// online, and the drain still delivers everything.
func TestRunSimTakingTurns(t *testing.T) {
	sum, out := runTestSim(t, func(c *testclient.SimConfig) { c.MaxOnline = 2 })
	t.Log(out)
	checkCleanRun(t, sum)
	if strings.Contains(out, "online 3/") || strings.Contains(out, "online 4/") {
		t.Error("more members online than MaxOnline")
	}
}

func checkCleanRun(t *testing.T, sum testclient.SimSummary) {
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
	case sum.AckP50 <= 0 || sum.DeliveryP99 < sum.DeliveryP50 || sum.RSS <= 0:
		t.Errorf("latencies or rss missing: %+v", sum)
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
	sum, out := runTestSim(t, func(c *testclient.SimConfig) {
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

func TestSimCommand(t *testing.T) {
	args := []string{"-duration", testSimDuration.String(), "-timescale", testSimTimescale, "-interval", "200ms"}
	var stdout, stderr bytes.Buffer
	if code := runSim(testSimMembers, args, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	if !strings.Contains(stdout.String(), "sim: PASS") {
		t.Errorf("stdout:\n%s", &stdout)
	}
	// The temporary data is gone.
	m := regexp.MustCompile(`data in (\S+), removed at exit`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no data folder named:\n%s", &stdout)
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", m[1], err)
	}

	// An integrity error makes the exit status non-zero.
	stdout.Reset()
	stderr.Reset()
	var n atomic.Int64
	tamper := func(c *testclient.SimConfig) {
		c.Drain = 300 * time.Millisecond
		c.Tamper = func(f *testclient.Frame) {
			if n.Add(1) == 2 {
				f.Head["from"] = "someone else"
			}
		}
	}
	if code := runSimWith(testSimMembers, args, &stdout, &stderr, tamper); code != exitFailure {
		t.Errorf("tampered run: exit %d, want %d\n%s", code, exitFailure, &stdout)
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
	} {
		var stdout, stderr bytes.Buffer
		// Through run, so the dispatch of a number to the simulation is
		// tested too.
		if code := run(c.args, &stdout, &stderr); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", c.args, code, exitUsage)
		}
		if !strings.Contains(stderr.String(), c.want) || !strings.Contains(stderr.String(), "usage: mnm N") {
			t.Errorf("%q: stderr %q, want %q and the usage", c.args, &stderr, c.want)
		}
	}
}

func TestParseProcStatus(t *testing.T) {
	status := "Name:\tmnm\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t8\n"
	rss, hwm := parseProcStatus(strings.NewReader(status))
	if rss != 1024<<10 || hwm != 2048<<10 {
		t.Errorf("rss %d, hwm %d", rss, hwm)
	}
	if rss, hwm := parseProcStatus(strings.NewReader("VmRSS: lots\nVmHWM: -5 kB\n")); rss != 0 || hwm != 0 {
		t.Errorf("garbage parsed as rss %d, hwm %d", rss, hwm)
	}
	if rss, _ := processRSS(); rss <= 0 {
		t.Skip("no /proc/self/status here")
	}
}

func FuzzParseProcStatus(f *testing.F) {
	f.Add("VmRSS:\t    1024 kB\n")                 // the usual form
	f.Add("VmHWM: 9223372036854775807 kB\nVmRSS:") // overflow when shifted; a key without a value
	f.Add(":\n::\nVmRSS::\n")                      // separators only
	f.Fuzz(func(t *testing.T, s string) {
		rss, hwm := parseProcStatus(strings.NewReader(s))
		if rss < 0 || hwm < 0 {
			t.Errorf("negative size from %q: %d %d", s, rss, hwm)
		}
	})
}

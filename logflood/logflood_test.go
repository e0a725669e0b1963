package logflood

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// line is a record as the wrapped handler got it.
type line struct {
	level slog.Level
	msg   string
	attrs map[string]string // WithAttrs' and the record's
}

// recorder is a slog.Handler that keeps what it is given.
type recorder struct {
	mu    *sync.Mutex
	lines *[]line
	with  []slog.Attr
}

func newRecorder() *recorder { return &recorder{mu: &sync.Mutex{}, lines: &[]line{}} }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{mu: r.mu, lines: r.lines, with: append(append([]slog.Attr(nil), r.with...), as...)}
}

func (r *recorder) WithGroup(string) slog.Handler { return r }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	l := line{level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	for _, a := range r.with {
		l.attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		l.attrs[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	*r.lines = append(*r.lines, l)
	r.mu.Unlock()
	return nil
}

func (r *recorder) all() []line {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]line(nil), *r.lines...)
}

// count returns how many lines have msg, and the sum of their counts.
func (r *recorder) count(msg string) (lines, counted int) {
	for _, l := range r.all() {
		if l.msg == msg {
			lines++
			var n int
			fmt.Sscan(l.attrs["count"], &n)
			counted += n
		}
	}
	return lines, counted
}

// fakeClock is a clock that tests move.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// setup returns a Handler on a recorder and a fake clock, with an interval
// long enough that its timer never fires during a test: tests sweep.
func setup(o Options) (*Handler, *slog.Logger, *recorder, *fakeClock) {
	rec := newRecorder()
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	o.Now = clock.Now
	if o.Interval == 0 {
		o.Interval = time.Hour
	}
	h := New(rec, o)
	return h, slog.New(h), rec, clock
}

// The first Burst lines of a kind pass; the rest are counted, exactly, in
// one summary when the interval ends, and the next interval starts afresh.
func TestCountsAndSummary(t *testing.T) {
	h, log, rec, clock := setup(Options{Burst: 3})
	defer h.Close()
	for range 10 {
		log.Info("link refused", "remote", "x")
	}
	if n, _ := rec.count("link refused"); n != 3 {
		t.Fatalf("%d lines passed, want 3", n)
	}
	h.st.sweep() // the interval is not over: no summary yet
	if n, _ := rec.count("link refused (suppressed)"); n != 0 {
		t.Fatalf("summary before the interval ended")
	}
	clock.Advance(time.Hour)
	h.st.sweep()
	if n, c := rec.count("link refused (suppressed)"); n != 1 || c != 7 {
		t.Fatalf("%d summaries counting %d, want 1 counting 7", n, c)
	}
	for _, l := range rec.all() {
		if l.msg == "link refused (suppressed)" && (l.level != slog.LevelInfo || l.attrs["interval"] != "1h0m0s") {
			t.Fatalf("summary %+v: want level INFO, interval 1h0m0s", l)
		}
	}
	log.Info("link refused")
	if n, _ := rec.count("link refused"); n != 4 {
		t.Fatalf("a new interval passed %d lines in all, want 4", n)
	}
	if len(h.st.kinds) != 1 {
		t.Fatalf("%d kinds tracked, want 1", len(h.st.kinds))
	}
}

// A record of a kind whose interval is over writes that interval's summary
// at once, without waiting for the timer.
func TestSummaryOnNextLine(t *testing.T) {
	h, log, rec, clock := setup(Options{Burst: 1})
	defer h.Close()
	for range 5 {
		log.Warn("accept failed")
	}
	clock.Advance(time.Hour)
	log.Warn("accept failed")
	if n, c := rec.count("accept failed (suppressed)"); n != 1 || c != 4 {
		t.Fatalf("%d summaries counting %d, want 1 counting 4", n, c)
	}
	if n, _ := rec.count("accept failed"); n != 2 {
		t.Fatalf("%d lines passed, want 2", n)
	}
}

// Kinds differ by level, message and the key attributes, from the record
// or from WithAttrs; other attributes do not make a kind.
func TestDistinctKinds(t *testing.T) {
	h, log, rec, _ := setup(Options{Burst: 2, KeyAttrs: []string{"reason", "uid"}})
	defer h.Close()
	for i := range 2 {
		log.Info("link refused", "reason", "a", "n", i)
		log.Info("link refused", "reason", "b", "n", i)
		log.Info("link quit", "reason", "a")
		log.Warn("link quit", "reason", "a")
		log.With("uid", "u1", "remote", "r1").Info("login")
		log.With("uid", "u2", "remote", "r2").Info("login")
	}
	if got := len(rec.all()); got != 12 {
		t.Fatalf("%d lines passed, want all 12: no kind is over its burst", got)
	}
	// The remote is not a key attribute: one member from many addresses
	// is one kind.
	for i := range 5 {
		log.With("uid", "u1", "remote", fmt.Sprint(i)).Info("login")
	}
	if n, _ := rec.count("login"); n != 4 {
		t.Fatalf("%d login lines, want 4 (u1's were over its burst)", n)
	}
	h.Close()
	var found bool
	for _, l := range rec.all() {
		if l.msg == "login (suppressed)" {
			found = true
			if l.attrs["uid"] != "u1" || l.attrs["count"] != "5" {
				t.Fatalf("summary %v, want uid u1, count 5", l.attrs)
			}
		}
	}
	if !found {
		t.Fatal("no summary for u1's logins")
	}
}

// Errors always pass and are not counted.
func TestErrorsNeverSuppressed(t *testing.T) {
	h, log, rec, _ := setup(Options{Burst: 1})
	for range 100 {
		log.Error("store failed", "err", "EIO")
	}
	h.Close()
	if n, _ := rec.count("store failed"); n != 100 {
		t.Fatalf("%d of 100 errors passed", n)
	}
	if len(rec.all()) != 100 {
		t.Fatalf("%d lines, want the 100 errors and no summary", len(rec.all()))
	}
}

// Past MaxKeys kinds, new kinds share one overflow entry: memory stays
// bounded and so do the lines, and the counts still add up.
func TestMaxKeys(t *testing.T) {
	const maxKeys, burst, kinds = 4, 3, 100
	h, log, rec, _ := setup(Options{Burst: burst, MaxKeys: maxKeys})
	for i := range kinds {
		log.Info(fmt.Sprintf("event %d", i))
	}
	if len(h.st.kinds) != maxKeys || h.st.overflow == nil {
		t.Fatalf("%d kinds tracked (overflow %v), want %d and an overflow", len(h.st.kinds), h.st.overflow != nil, maxKeys)
	}
	if got := len(rec.all()); got != maxKeys+burst {
		t.Fatalf("%d lines passed, want %d", got, maxKeys+burst)
	}
	h.Close()
	if n, c := rec.count(overflowMsg); n != 1 || c != kinds-maxKeys-burst {
		t.Fatalf("%d overflow summaries counting %d, want 1 counting %d", n, c, kinds-maxKeys-burst)
	}
}

// Many goroutines logging one kind: exactly Burst lines pass, and the
// summary counts every other line (run with -race).
func TestConcurrent(t *testing.T) {
	const goroutines, each, burst = 8, 500, 5
	h, log, rec, _ := setup(Options{Burst: burst, KeyAttrs: []string{"reason"}})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := log.With("remote", g)
			for range each {
				l.Info("link refused", "reason", "r")
				l.Error("kept")
			}
		}()
	}
	wg.Wait()
	h.Close()
	if n, _ := rec.count("link refused"); n != burst {
		t.Fatalf("%d lines passed, want %d", n, burst)
	}
	if n, c := rec.count("link refused (suppressed)"); n != 1 || c != goroutines*each-burst {
		t.Fatalf("%d summaries counting %d, want 1 counting %d", n, c, goroutines*each-burst)
	}
	if n, _ := rec.count("kept"); n != goroutines*each {
		t.Fatalf("%d errors passed, want %d", n, goroutines*each)
	}
}

// On the real clock the timer writes the summary when the interval ends,
// with no further line to trigger it; Close stops it and leaves no
// goroutine behind, and lines after Close pass unchanged.
func TestTimerAndClose(t *testing.T) {
	before := runtime.NumGoroutine()
	rec := newRecorder()
	h := New(rec, Options{Interval: 20 * time.Millisecond, Burst: 1})
	log := slog.New(h)
	for range 3 {
		log.Info("flood")
	}
	waitFor(t, "the summary", func() bool { n, _ := rec.count("flood (suppressed)"); return n == 1 })
	if _, c := rec.count("flood (suppressed)"); c != 2 {
		t.Fatalf("summary counts %d, want 2", c)
	}
	waitFor(t, "the kinds forgotten and the timer disarmed", func() bool {
		h.st.mu.Lock()
		defer h.st.mu.Unlock()
		return len(h.st.kinds) == 0 && h.st.due.IsZero()
	})
	for range 3 {
		log.Info("again")
	}
	h.Close()
	for range 3 {
		log.Info("after close")
	}
	if n, _ := rec.count("after close"); n != 3 {
		t.Fatalf("%d of 3 lines after Close passed", n)
	}
	if n, c := rec.count("again (suppressed)"); n != 1 || c != 2 {
		t.Fatalf("Close wrote %d summaries counting %d, want 1 counting 2", n, c)
	}
	waitFor(t, "the timer's goroutine gone", func() bool { return runtime.NumGoroutine() <= before })
	if strings.Contains(fmt.Sprint(rec.all()), "after close (suppressed)") {
		t.Fatal("a summary after Close")
	}
}

// waitFor polls cond until it holds, for state that has no event to wait
// on; after 10 s the test fails, naming what it waited for.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

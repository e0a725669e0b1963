package main

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// checkMonotonic calls Now n times and fails if it ever goes back.
func checkMonotonic(t *testing.T, c *Clock, n int) time.Time {
	t.Helper()
	prev := c.Now()
	for range n {
		now := c.Now()
		if now.Before(prev) {
			t.Fatalf("Now() went back from %v to %v", prev, now)
		}
		prev = now
	}
	return prev
}

// TestClockRecheck: a re-check adopts the responder's new offset (Offset
// reports it at once), and Now never goes back across a negative step, from
// one goroutine or several, while it slews toward it.
func TestClockRecheck(t *testing.T) {
	r := newNTPResponder(t, 2*time.Second, ntpAnswer)
	cfg := NTPConfig{Hosts: []string{r.addr()}, Retries: 1, Required: true}
	logger, logs := newTestLogger()
	c, err := SyncClock(cfg, logger, WithNTPTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if off := c.Offset(); !near(off, 2*time.Second) {
		t.Fatalf("offset %v at start, want 2s", off)
	}
	synced := c.Synced()
	if synced.IsZero() || !LocalClock().Synced().IsZero() {
		t.Fatalf("synced at %v after an answer; a local clock says %v", synced, LocalClock().Synced())
	}
	r.setOffset(-3 * time.Second) // a negative step of 5 s
	before := c.Now()
	if err := c.Recheck(cfg, logger, WithNTPTimeout(time.Second)); err != nil {
		t.Fatal(err)
	}
	if !c.Synced().After(synced) {
		t.Errorf("the re-check's answer did not move Synced from %v", synced)
	}
	if off := c.Offset(); !near(off, -3*time.Second) {
		t.Fatalf("offset %v after the re-check, want -3s", off)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { checkMonotonic(t, c, 50000) })
	}
	last := checkMonotonic(t, c, 200000)
	wg.Wait()
	if last.Before(before) {
		t.Fatalf("Now() %v after the re-check is before %v", last, before)
	}
	// Slewed, not stepped: still about 2 s ahead of the local clock.
	if ahead := last.Sub(time.Now()); !near(ahead, 2*time.Second) {
		t.Errorf("Now() is %v ahead of the local clock right after the re-check, want about 2s (slewing)", ahead)
	}
	if !strings.Contains(logs.String(), "ntp re-check") {
		t.Errorf("re-check not logged:\n%s", logs.String())
	}
	// A 5 s change is below ntpOffsetWarn: debug, not warn.
	if strings.Contains(logs.String(), "level=WARN msg=\"ntp re-check\"") {
		t.Errorf("a 5 s change logged at warn:\n%s", logs.String())
	}
}

// TestClockRecheckWarnsOnBigChange: a change beyond ntpOffsetWarn is
// logged at warn level.
func TestClockRecheckWarnsOnBigChange(t *testing.T) {
	r := newNTPResponder(t, 0, ntpAnswer)
	cfg := NTPConfig{Hosts: []string{r.addr()}, Retries: 1}
	logger, logs := newTestLogger()
	c, err := SyncClock(cfg, logger, WithNTPTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r.setOffset(ntpOffsetWarn + 5*time.Second)
	if err := c.Recheck(cfg, logger, WithNTPTimeout(time.Second)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"ntp re-check\"") {
		t.Errorf("no warning:\n%s", logs.String())
	}
}

// TestClockRecheckRefusesSpoof: an answer beyond maxOffset at a re-check is
// refused like one at start, and the clock keeps its offset.
func TestClockRecheckRefusesSpoof(t *testing.T) {
	r := newNTPResponder(t, time.Second, ntpAnswer)
	cfg := NTPConfig{Hosts: []string{r.addr()}, Retries: 1, MaxOffsetSeconds: 100}
	logger, logs := newTestLogger()
	c, err := SyncClock(cfg, logger, WithNTPTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r.setOffset(24 * time.Hour)
	if err := c.Recheck(cfg, logger, WithNTPTimeout(time.Second)); err == nil {
		t.Fatal("a spoofed offset of a day was accepted")
	}
	if off := c.Offset(); !near(off, time.Second) {
		t.Errorf("offset %v after a refused re-check, want 1s kept", off)
	}
	if ahead := c.Now().Sub(time.Now()); !near(ahead, time.Second) {
		t.Errorf("clock moved by a refused answer: %v ahead", ahead)
	}
	if !strings.Contains(logs.String(), "ntp answer refused") {
		t.Errorf("refusal not logged:\n%s", logs.String())
	}
}

// TestClockSlew: the applied offset moves toward the target at slewRate,
// both ways, and stops there.
func TestClockSlew(t *testing.T) {
	s := &clockState{at: time.Hour, from: time.Second, target: -time.Second}
	for _, tc := range []struct{ e, want time.Duration }{
		{0, time.Second}, // before the change: as it was
		{time.Hour, time.Second},
		{time.Hour + 2000*time.Millisecond, time.Second - time.Millisecond},
		{time.Hour + 2000*time.Second, 0},
		{time.Hour + 4000*time.Second, -time.Second},
		{100 * time.Hour, -time.Second},
	} {
		if got := s.applied(tc.e); got != tc.want {
			t.Errorf("applied(%v) = %v, want %v", tc.e, got, tc.want)
		}
	}
	up := &clockState{from: 0, target: time.Millisecond}
	if got := up.applied(time.Second); got != time.Second/slewRate {
		t.Errorf("slewing up: %v after 1s, want %v", got, time.Second/slewRate)
	}
}

// TestClockRunChecks: the daemon's re-check goroutine picks up a new
// offset and ends when told.
func TestClockRunChecks(t *testing.T) {
	r := newNTPResponder(t, 0, ntpAnswer)
	cfg := NTPConfig{Hosts: []string{r.addr()}, Retries: 1}
	logger, _ := newTestLogger()
	c, err := SyncClock(cfg, logger, WithNTPTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r.setOffset(7 * time.Second)
	stop, done := make(chan struct{}), make(chan struct{})
	go c.RunChecks(cfg, 10*time.Millisecond, logger, stop, done, WithNTPTimeout(time.Second))
	waitFor(t, "the re-check to adopt the new offset", func() bool { return near(c.Offset(), 7*time.Second) })
	close(stop)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("RunChecks did not end")
	}
}

// TestConfigNTPCheckEvery: absent is the default, 0 is off, out of range
// is refused.
func TestConfigNTPCheckEvery(t *testing.T) {
	base := `{"name":"x","listen":{"net":"tcp","laddr":"127.0.0.1:0","certPath":"c","keyPath":"k"},"authby":[],"ntp":{"hosts":[]%s}}`
	for _, tc := range []struct {
		field string
		want  int
		bad   bool
	}{
		{"", defaultNTPCheckEveryMinutes, false},
		{`,"checkEveryMinutes":0`, 0, false},
		{`,"checkEveryMinutes":15`, 15, false},
		{`,"checkEveryMinutes":-1`, 0, true},
		{`,"checkEveryMinutes":100000`, 0, true},
	} {
		cfg, err := parseConfig([]byte(strings.Replace(base, "%s", tc.field, 1)), t.TempDir())
		if tc.bad {
			if err == nil || !strings.Contains(err.Error(), "checkEveryMinutes") {
				t.Errorf("%q: %v, want refused", tc.field, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.field, err)
			continue
		}
		if cfg.NTP.CheckEveryMinutes != tc.want {
			t.Errorf("%q: %d, want %d", tc.field, cfg.NTP.CheckEveryMinutes, tc.want)
		}
	}
}

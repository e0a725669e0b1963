package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"mnm/cluster/natstest"
)

// testTTL is the liveness TTL of most tests: short, so that waiting out a
// dead frontend costs a second, and long enough for renewals to survive an
// in-process node kill on a loaded machine.
const testTTL = time.Second

// testTimeout bounds every Claim and wait of a test.
const testTimeout = 20 * time.Second

// frontend is one Bus with its own connection, as a separate frontend
// process would have, and a record of its callbacks.
type frontend struct {
	name string
	bus  *Bus
	nc   *nats.Conn

	evicts   chan evictNote
	presence chan presenceNote
	gone     chan goneNote

	mu      sync.Mutex // guards evicted
	evicted map[string]int
}

type evictNote struct {
	dev string
	at  time.Time
}

type presenceNote struct {
	to, from string
	status   int64
}

type goneNote struct {
	uid  string
	list string // fmt.Sprint of the list
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("BUS_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func startFrontend(t *testing.T, c *natstest.Cluster, name string, ttl time.Duration) *frontend {
	t.Helper()
	f := &frontend{
		name:     name,
		nc:       c.Connect(t),
		evicts:   make(chan evictNote, 1000),
		presence: make(chan presenceNote, 1000),
		gone:     make(chan goneNote, 1000),
		evicted:  make(map[string]int),
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	b, err := New(ctx, Options{
		Conn:        f.nc,
		Frontend:    name,
		LivenessTTL: ttl,
		Logger:      testLogger(t),
		OnEvict: func(dev string) {
			f.mu.Lock()
			f.evicted[dev]++
			f.mu.Unlock()
			f.evicts <- evictNote{dev, time.Now()}
		},
		OnPresence: func(to, from string, status int64) {
			f.presence <- presenceNote{to, from, status}
		},
		OnUserGone: func(uid string, list []string) {
			f.gone <- goneNote{uid, fmt.Sprint(list)}
		},
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	f.bus = b
	t.Cleanup(b.Close)
	return f
}

func (f *frontend) evictions(dev string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.evicted[dev]
}

func (f *frontend) claim(t *testing.T, dev string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := f.bus.Claim(ctx, dev); err != nil {
		t.Fatalf("%s: claim %q: %v", f.name, dev, err)
	}
	if !f.bus.Holds(dev) {
		t.Fatalf("%s: claim %q returned but does not hold it", f.name, dev)
	}
}

// kill simulates a crash of f's process: its renewals stop without any
// cleanup and its connection goes away, so its subscriptions vanish and its
// liveness key is left to expire. Nothing of f runs afterwards.
func (f *frontend) kill() {
	f.bus.stop()
	f.bus.loopWG.Wait()
	f.nc.Close()
}

// holder reads dev's session record as another frontend would.
func holder(t *testing.T, f *frontend, dev string) *record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	rec, _, err := f.bus.readRecord(ctx, dev)
	if err != nil {
		t.Fatalf("read record of %q: %v", dev, err)
	}
	return rec
}

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A device key with the characters subjects and KV keys reserve.
const awkwardDev = "u.1%2B+x/dev.0"

func TestTakeover(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)

	a.claim(t, awkwardDev)
	if b.bus.Holds(awkwardDev) {
		t.Fatal("b holds a device it never claimed")
	}
	if rec := holder(t, b, awkwardDev); rec == nil || rec.Frontend != "fe.a" {
		t.Fatalf("record after a's claim: %+v", rec)
	}
	// A repeated claim on the holding frontend is its own business.
	a.claim(t, awkwardDev)
	if n := a.evictions(awkwardDev); n != 0 {
		t.Fatalf("a evicted %d times by its own claim", n)
	}

	b.claim(t, awkwardDev)
	// The reply that let b's Claim return came after a's OnEvict returned.
	if n := a.evictions(awkwardDev); n != 1 {
		t.Fatalf("a evicted %d times when b returned from its claim, want 1", n)
	}
	if a.bus.Holds(awkwardDev) {
		t.Fatal("a still holds the device b took")
	}
	if rec := holder(t, a, awkwardDev); rec == nil || rec.Frontend != "fe.b" {
		t.Fatalf("record after takeover: %+v", rec)
	}

	// A logout deletes the record: the next login needs no evict.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := b.bus.Release(ctx, awkwardDev); err != nil {
		t.Fatalf("release: %v", err)
	}
	if b.bus.Holds(awkwardDev) {
		t.Fatal("b holds the device after releasing it")
	}
	if rec := holder(t, a, awkwardDev); rec != nil {
		t.Fatalf("record after release: %+v", rec)
	}
	a.claim(t, awkwardDev)
	if n := b.evictions(awkwardDev); n != 0 {
		t.Fatalf("b evicted %d times after releasing", n)
	}
	if err := b.bus.Release(ctx, "never-claimed"); err != nil {
		t.Fatalf("release of a device not held: %v", err)
	}
	if err := a.bus.Claim(ctx, ""); !errors.Is(err, ErrBadName) {
		t.Fatalf("claim of an empty device: %v", err)
	}
}

// TestConcurrentClaims has three frontends claim each device at once, many
// times: each round must end with exactly one holder, every Claim that
// returned nil but lost must have been evicted, and the others must have
// been refused with ErrTakenOver.
func TestConcurrentClaims(t *testing.T) {
	const rounds = 30
	c := natstest.Start(t, natstest.Options{})
	fs := []*frontend{
		startFrontend(t, c, "fe.a", testTTL),
		startFrontend(t, c, "fe.b", testTTL),
		startFrontend(t, c, "fe.c", testTTL),
	}
	for r := range rounds {
		dev := fmt.Sprintf("dev.%d", r)
		// Half the rounds start with the device held, so that takeovers
		// and first claims both race.
		if r%2 == 1 {
			fs[r%3].claim(t, dev)
		}
		before := make([]int, len(fs))
		for i, f := range fs {
			before[i] = f.evictions(dev)
		}
		errs := make([]error, len(fs))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, f := range fs {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				<-start
				errs[i] = f.bus.Claim(ctx, dev)
			})
		}
		close(start)
		wg.Wait()

		holders := 0
		var won *frontend
		for i, f := range fs {
			evicted := f.evictions(dev) - before[i]
			switch {
			case errs[i] == nil && f.bus.Holds(dev):
				holders++
				won = f
				if evicted != 0 && (r%2 == 0 || i != r%3) {
					t.Fatalf("round %d: %s holds and was evicted %d times", r, f.name, evicted)
				}
			case errs[i] == nil:
				if evicted == 0 || evicted > 2 {
					t.Fatalf("round %d: %s claimed, lost, evicted %d times", r, f.name, evicted)
				}
			case errors.Is(errs[i], ErrTakenOver):
			default:
				t.Fatalf("round %d: %s: %v", r, f.name, errs[i])
			}
		}
		if holders != 1 {
			t.Fatalf("round %d: %d holders (errors %v)", r, holders, errs)
		}
		if rec := holder(t, fs[0], dev); rec == nil || rec.Frontend != won.name {
			t.Fatalf("round %d: record %+v, holder %s", r, rec, won.name)
		}
	}
}

// TestDeadFrontend kills the holder without Close: a claim elsewhere waits
// for its liveness key to expire, at most about the TTL, and then takes the
// device without any evict.
func TestDeadFrontend(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	a.claim(t, "dev")
	a.kill()

	start := time.Now()
	b.claim(t, "dev")
	took := time.Since(start)
	// The key was renewed at most renewEvery before the kill, and the
	// claimer gives up after resolveFor.
	if took < testTTL-b.bus.renewEvery-100*time.Millisecond || took > b.bus.resolveFor {
		t.Fatalf("claim over a dead frontend took %s, TTL %s", took, testTTL)
	}
	if n := a.evictions("dev"); n != 0 {
		t.Fatalf("dead frontend evicted %d times", n)
	}
	t.Logf("claim over a dead frontend took %s (TTL %s)", took, testTTL)
}

// TestRestartedFrontend restarts a frontend under its name: its old
// incarnation's devices are free at once.
func TestRestartedFrontend(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	a.claim(t, "dev")
	a.kill()
	a2 := startFrontend(t, c, "fe.a", testTTL)

	start := time.Now()
	b.claim(t, "dev")
	if took := time.Since(start); took > testTTL/2 {
		t.Fatalf("claim over a restarted frontend took %s", took)
	}
	if n := a2.evictions("dev"); n != 0 {
		t.Fatalf("restarted frontend evicted %d times", n)
	}
	// And the restarted one takes it back through an evict.
	a2.claim(t, "dev")
	if n := b.evictions("dev"); n != 1 {
		t.Fatalf("b evicted %d times, want 1", n)
	}
}

// TestFence cuts a frontend off from NATS without stopping it: it cannot
// renew, so it drops its devices before its key expires and another
// frontend takes them.
func TestFence(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	a.claim(t, "dev")
	cut := time.Now()
	a.nc.Close()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := b.bus.Claim(ctx, "dev"); err != nil {
		t.Fatalf("claim: %v", err)
	}
	claimed := time.Now()
	t.Logf("claim over a cut-off frontend took %s (TTL %s)", claimed.Sub(cut), testTTL)
	select {
	case e := <-a.evicts:
		if e.dev != "dev" {
			t.Fatalf("a evicted %q", e.dev)
		}
		if !e.at.Before(claimed) {
			t.Fatalf("a dropped the device %s after b claimed it", e.at.Sub(claimed))
		}
		if e.at.Sub(cut) > testTTL {
			t.Fatalf("a dropped the device %s after losing NATS, TTL %s", e.at.Sub(cut), testTTL)
		}
	default:
		t.Fatal("b claimed the device while a had not dropped it")
	}
	if a.bus.Holds("dev") {
		t.Fatal("fenced frontend still holds the device")
	}
}

// TestBadEvictRequest sends requests that do not parse or name a claim
// that is not held: neither costs the holder its device.
func TestBadEvictRequest(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	a.claim(t, "dev")
	raw := c.Connect(t)
	subj := DefaultPrefix + ".evict." + encode("fe.a")

	a.bus.mu.Lock()
	inc, claim := a.bus.inc, a.bus.sessions["dev"].claim
	a.bus.mu.Unlock()
	stale, _ := json.Marshal(evictRequest{Dev: "dev", Inc: inc, Claim: claim + 100})
	otherInc, _ := json.Marshal(evictRequest{Dev: "dev", Inc: "old", Claim: claim})
	for _, tc := range []struct {
		name, data, want string
	}{
		{"garbage", "{", replyBad},
		{"empty", "{}", replyBad},
		{"no incarnation", `{"dev":"dev"}`, replyBad},
		{"stale claim", string(stale), replyReleased},
		{"old incarnation", string(otherInc), replyReleased},
		{"ping", string(pingRequest), replyPong},
	} {
		m, err := raw.Request(subj, []byte(tc.data), testTimeout)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if string(m.Data) != tc.want {
			t.Fatalf("%s: reply %q, want %q", tc.name, m.Data, tc.want)
		}
		if !a.bus.Holds("dev") || a.evictions("dev") != 0 {
			t.Fatalf("%s: holder lost the device", tc.name)
		}
	}
}

// TestLeaderKill kills the node leading the sessions bucket in the middle
// of a run of takeovers: claims go on after the election.
func TestLeaderKill(t *testing.T) {
	const before, after, devs = 10, 20, 4
	c := natstest.Start(t, natstest.Options{})
	// A longer TTL: the renewals must outlast the failover.
	ttl := 3 * time.Second
	fs := []*frontend{startFrontend(t, c, "fe.a", ttl), startFrontend(t, c, "fe.b", ttl)}

	var mu sync.Mutex // guards done and stop
	done, stop := 0, false
	errc := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			mu.Lock()
			if stop {
				mu.Unlock()
				errc <- nil
				return
			}
			mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			err := fs[i%2].bus.Claim(ctx, fmt.Sprintf("dev.%d", i%devs))
			cancel()
			if err != nil {
				errc <- fmt.Errorf("claim %d: %w", i, err)
				return
			}
			mu.Lock()
			done++
			mu.Unlock()
		}
	}()
	claimed := func() int {
		mu.Lock()
		defer mu.Unlock()
		return done
	}
	waitFor(t, "claims before the kill", func() bool { return claimed() >= before })
	stream := "KV_" + DefaultPrefix + "_SESS"
	leader := c.Leader(stream)
	if leader < 0 {
		t.Fatal("no sessions leader")
	}
	c.Kill(leader)
	atKill := claimed()
	waitFor(t, "claims after the kill", func() bool {
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
		return claimed() >= atKill+after
	})
	mu.Lock()
	stop = true
	mu.Unlock()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for d := range devs {
		dev := fmt.Sprintf("dev.%d", d)
		if fs[0].bus.Holds(dev) == fs[1].bus.Holds(dev) {
			t.Fatalf("%s: held by a %v, b %v", dev, fs[0].bus.Holds(dev), fs[1].bus.Holds(dev))
		}
	}
	waitFor(t, "a new sessions leader", func() bool {
		now := c.Leader(stream)
		return now >= 0 && now != leader
	})
}

// TestClose closes a holder: its devices and liveness key go at once, so a
// claim elsewhere neither evicts nor waits, and the closed Bus refuses work.
func TestClose(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	a.claim(t, "dev")
	a.bus.Close()
	if a.bus.Holds("dev") {
		t.Fatal("closed bus holds a device")
	}
	if rec := holder(t, b, "dev"); rec != nil {
		t.Fatalf("record after close: %+v", rec)
	}
	start := time.Now()
	b.claim(t, "dev")
	if took := time.Since(start); took > testTTL/2 {
		t.Fatalf("claim after the holder closed took %s", took)
	}
	if n := a.evictions("dev"); n != 0 {
		t.Fatalf("closed frontend evicted %d times", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := a.bus.Claim(ctx, "other"); !errors.Is(err, ErrClosed) {
		t.Fatalf("claim on a closed bus: %v", err)
	}
	if err := a.bus.Notify("u", "v", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("notify on a closed bus: %v", err)
	}
}

// TestLocalClaims claims one device from several goroutines of one
// frontend while another frontend holds it: they serialise, the first
// evicts the other frontend, the rest find the device held.
func TestLocalClaims(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	a := startFrontend(t, c, "fe.a", testTTL)
	b := startFrontend(t, c, "fe.b", testTTL)
	b.claim(t, "dev")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			errs[i] = a.bus.Claim(ctx, "dev")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("claim %d: %v", i, err)
		}
	}
	if !a.bus.Holds("dev") || b.bus.Holds("dev") || b.evictions("dev") != 1 {
		t.Fatalf("a holds %v, b holds %v, b evicted %d times", a.bus.Holds("dev"), b.bus.Holds("dev"), b.evictions("dev"))
	}
}

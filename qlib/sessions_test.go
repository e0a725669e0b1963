package qlib

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mnm/testclient"
)

// fakeSessions is Sessions for frontends in one process: a map of device
// to holder, and a claim evicts the previous holder synchronously, as the
// bus (cluster/bus) does across machines.
type fakeSessions struct {
	mu      *sync.Mutex
	holders map[string]*fakeSessions // dev → the frontend holding it
	srv     *Server
	claims  int // guarded by mu
	evicted []string
}

// newFakeSessions returns one Sessions per frontend, sharing one map.
func newFakeSessions(n int) []*fakeSessions {
	mu, holders := &sync.Mutex{}, map[string]*fakeSessions{}
	out := make([]*fakeSessions, n)
	for i := range out {
		out[i] = &fakeSessions{mu: mu, holders: holders}
	}
	return out
}

func (f *fakeSessions) Claim(ctx context.Context, dev string) error {
	f.mu.Lock()
	f.claims++
	prev := f.holders[dev]
	f.holders[dev] = f
	f.mu.Unlock()
	if prev != nil && prev != f {
		prev.srv.EvictDevice(dev) // returns once its link is closed
		prev.mu.Lock()
		prev.evicted = append(prev.evicted, dev)
		prev.mu.Unlock()
	}
	return nil
}

func (f *fakeSessions) Release(dev string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.holders[dev] == f {
		delete(f.holders, dev)
	}
}

func (f *fakeSessions) holder(dev string) *fakeSessions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holders[dev]
}

// startFrontend starts a second Server over ts's store and directory: two
// frontends of one site, as the clustered backend runs them.
func startFrontend(t *testing.T, ts *testServer, tweak func(*Config)) *testServer {
	t.Helper()
	fe := &testServer{t: t, dir: ts.dir, store: ts.store, logs: &syncBuffer{}}
	cfg := Config{Name: "test", Directory: ts.dir, Store: ts.store, Logger: ts.srv.log.With("frontend", "b"), ParkAfter: time.Millisecond}
	if tweak != nil {
		tweak(&cfg)
	}
	var err error
	if fe.srv, err = NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fe.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- fe.srv.Serve(tls.NewListener(ln, testTLSConfig(t))) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := fe.srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
	})
	return fe
}

// TestSessionsTakeoverAcrossFrontends: a device logged in on frontend A logs
// in on frontend B. A's link is closed before B's login is answered, the
// message A had in flight comes to B first, what is posted next (on A)
// follows on B, and nothing reaches the device twice except that in-flight
// message. When the device's link on B ends, B gives the session up; A,
// whose link was taken over, gives up nothing.
func TestSessionsTakeoverAcrossFrontends(t *testing.T) {
	ss := newFakeSessions(2)
	a := startServer(t, func(c *Config) { c.Sessions = ss[0] })
	b := startFrontend(t, a, func(c *Config) { c.Sessions = ss[1] })
	ss[0].srv, ss[1].srv = a.srv, b.srv

	sender, _ := a.register()
	_, reg := a.register()
	nodeid, dev := a.dir.device(reg.UID)
	post := func(text string) string {
		t.Helper()
		ack, err := sender.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte(text))
		if err != nil || ack.Error != "" {
			t.Fatalf("post: %v %s", err, ack.Error)
		}
		return ack.MsgID
	}

	onA := a.login(reg.UID, nodeid)
	if ss[0].holder(dev) != ss[0] {
		t.Fatal("A does not hold the device's session after its login")
	}
	first := post("in flight on A")
	for f := nextMessage(t, onA); f.Str("id") != first; f = nextMessage(t, onA) {
		onA.Ack(f.Str("id")) // its login notice
	}

	onB, _, err := testclient.Login(b.addr, reg.UID, nodeid, testclient.Options{})
	if err != nil {
		t.Fatalf("login on B: %v", err)
	}
	defer onB.Close()
	// B's login returned: A's link was closed before (Claim waits for the
	// eviction), so it ends without any further frame.
	select {
	case <-onA.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("A's link still open after the device logged in on B")
	}
	if ss[0].holder(dev) != ss[1] || len(ss[0].evicted) != 1 {
		t.Fatalf("holder %p (B is %p), A evicted %v", ss[0].holder(dev), ss[1], ss[0].evicted)
	}
	second := post("posted on A, delivered on B")

	var got []string
	for len(got) < 2 {
		f := nextMessage(t, onB)
		if f.Op() == "delivery" {
			got = append(got, f.Str("id"))
		}
		onB.Ack(f.Str("id"))
	}
	if got[0] != first || got[1] != second {
		t.Fatalf("B got %v, want the in-flight %s then %s", got, first, second)
	}
	// The login notice of B's login may be stored after the second post:
	// it is acked as it comes. Nothing else may come: no delivery twice.
	waitFor(t, "the device's queue empty", func() bool {
		select {
		case f := <-onB.Messages():
			if f.Op() == "delivery" {
				t.Errorf("B got %s again", f.Str("id"))
			}
			onB.Ack(f.Str("id"))
		default:
		}
		return a.store.Len(dev) == 0
	})

	// A's link was taken over: its end released nothing. B's end releases.
	if ss[0].holder(dev) != ss[1] {
		t.Fatal("A's ending link released B's session")
	}
	onB.Close()
	waitFor(t, "B to release the session", func() bool { return ss[0].holder(dev) == nil })
}

// A login whose session cannot be claimed (the other frontend does not let
// go in time) is refused with "node already connected".
func TestSessionsClaimRefused(t *testing.T) {
	var ref refusingSessions
	a := startServer(t, func(c *Config) { c.Sessions = &ref })
	_, reg := a.register() // claims the new device's session
	nodeid, _ := a.dir.device(reg.UID)
	ref.refuse.Store(true)
	_, _, err := testclient.Login(a.addr, reg.UID, nodeid, testclient.Options{})
	if qe, ok := err.(*testclient.QuitError); !ok || qe.Reason != "node already connected" {
		t.Fatalf("login with a refused claim: %v, want quit %q", err, "node already connected")
	}
	if !strings.Contains(a.logs.String(), "could not be taken from another frontend") {
		t.Error("the refusal is not logged")
	}
}

// refusingSessions grants claims until refuse is set.
type refusingSessions struct{ refuse atomic.Bool }

func (r *refusingSessions) Claim(ctx context.Context, dev string) error {
	if r.refuse.Load() {
		return fmt.Errorf("frontend b still holds %s", dev)
	}
	return nil
}
func (r *refusingSessions) Release(string) {}

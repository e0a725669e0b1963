package dirkv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/natstest"
)

// testTTL is the lease TTL of most tests: short, so that waiting out a dead
// writer costs a second or two, and long enough for renewals to survive a
// loaded machine under -race.
const testTTL = 1500 * time.Millisecond

// testTimeout bounds every wait of a test.
const testTimeout = 20 * time.Second

func testLogger() *slog.Logger {
	if os.Getenv("DIRKV_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// start starts a 3-node cluster and logs how long it took: a slow test
// is often a slow start.
func start(t *testing.T) *natstest.Cluster {
	t0 := time.Now()
	c := natstest.Start(t, natstest.Options{})
	t.Logf("cluster up in %s", time.Since(t0))
	return c
}

// frontend is one Dir with its own connection, as a separate frontend
// process would have, and the records its watcher installed.
type frontend struct {
	name string
	d    *Dir
	nc   *nats.Conn

	mu      sync.Mutex // guards the fields below
	recs    map[string]string
	revs    []uint64 // revisions applied, in order
	blockOn string   // a key whose apply waits for unblock
	unblock chan struct{}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// open opens, loads and watches a Dir named name; serve also makes it
// campaign, with a handler that writes "put" calls' key=value args.
func open(t *testing.T, c *natstest.Cluster, name string, ttl time.Duration, serve bool) *frontend {
	t.Helper()
	f := &frontend{name: name, nc: c.Connect(t), recs: make(map[string]string)}
	d, err := Open(ctxT(t), Options{Conn: f.nc, Frontend: name, LeaseTTL: ttl, Logger: testLogger()})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	f.d = d
	t.Cleanup(func() { d.Close() })
	recs, upto, err := d.Load(ctxT(t))
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	for _, r := range recs {
		f.recs[r.Key] = string(r.Data)
	}
	if err := d.Watch(upto, f.apply); err != nil {
		t.Fatalf("watch %s: %v", name, err)
	}
	if serve {
		if err := d.Serve(f.handle); err != nil {
			t.Fatalf("serve %s: %v", name, err)
		}
	}
	return f
}

func (f *frontend) apply(r Record) {
	f.mu.Lock()
	f.revs = append(f.revs, r.Rev)
	if r.Data == nil {
		delete(f.recs, r.Key)
	} else {
		f.recs[r.Key] = string(r.Data)
	}
	block, ch := f.blockOn == r.Key, f.unblock
	f.mu.Unlock()
	if block {
		<-ch
	}
}

func (f *frontend) get(key string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.recs[key]
	return v, ok
}

// handle is the test's directory: "put" writes key=value, "whoami" names
// the writer, "fail" answers a code.
func (f *frontend) handle(ctx context.Context, method string, args []byte) ([]byte, uint64, string) {
	switch method {
	case "put":
		k, v, _ := strings.Cut(string(args), "=")
		rev, err := f.d.Write(ctx, k, []byte(v))
		if err != nil {
			return nil, 0, err.Error()
		}
		return []byte("ok"), rev, ""
	case "whoami":
		return []byte(f.name), 0, ""
	}
	return nil, 0, "unknown method"
}

// waitFor polls cond until it holds or testTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func writer(fs ...*frontend) *frontend {
	var w *frontend
	for _, f := range fs {
		if f.d.IsWriter() {
			if w != nil {
				return nil
			}
			w = f
		}
	}
	return w
}

func waitWriter(t *testing.T, fs ...*frontend) *frontend {
	t.Helper()
	var w *frontend
	waitFor(t, "a writer", func() bool {
		w = writer(fs...)
		return w != nil
	})
	return w
}

func (f *frontend) write(t *testing.T, key, value string) uint64 {
	t.Helper()
	rev, err := f.d.Write(ctxT(t), key, []byte(value))
	if err != nil {
		t.Fatalf("%s: write %s: %v", f.name, key, err)
	}
	return rev
}

// TestLoadWatch writes through the writer and checks that a Dir opened
// later loads the last values, and that watchers apply every later write
// in revision order, deletions included.
func TestLoadWatch(t *testing.T) {
	c := start(t)
	a := open(t, c, "fe.a", testTTL, true)
	waitWriter(t, a)
	var last uint64
	for i := range 10 {
		last = a.write(t, fmt.Sprintf("k.%d", i%4), fmt.Sprint(i))
	}
	empty := a.write(t, "empty", "")

	b := open(t, c, "fe.b", testTTL, false)
	want := map[string]string{"k.0": "8", "k.1": "9", "k.2": "6", "k.3": "7", "empty": ""}
	for k, v := range want {
		if got, ok := b.get(k); !ok || got != v {
			t.Fatalf("loaded %s=%q (%v), want %q", k, got, ok, v)
		}
	}
	if b.d.Applied() < max(last, empty) {
		t.Fatalf("watch started at %d, before the last write %d", b.d.Applied(), max(last, empty))
	}

	// A watcher from 0 sees every surviving revision, the rest as they come.
	cc := open(t, c, "fe.c", testTTL, false)
	for i := 10; i < 20; i++ {
		last = a.write(t, fmt.Sprintf("k.%d", i%4), fmt.Sprint(i))
	}
	// A deletion by hand reaches the watchers as a nil record.
	js, err := jetstream.New(c.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctxT(t), "MNM_DIR")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctxT(t), "empty"); err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	del := st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
	for _, f := range []*frontend{a, b, cc} {
		if err := f.d.WaitApplied(ctxT(t), del); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		if got, _ := f.get("k.3"); got != "19" {
			t.Fatalf("%s: k.3=%q after the watch", f.name, got)
		}
		if _, ok := f.get("empty"); ok {
			t.Fatalf("%s: deleted record still installed", f.name)
		}
		f.mu.Lock()
		for i := 1; i < len(f.revs); i++ {
			if f.revs[i] <= f.revs[i-1] {
				t.Fatalf("%s: revision %d applied after %d", f.name, f.revs[i], f.revs[i-1])
			}
		}
		f.mu.Unlock()
	}
	if err := a.d.Watch(0, a.apply); err == nil {
		t.Fatal("second Watch accepted")
	}
}

// TestWriteRefused checks the writes a Dir must refuse: without the lease,
// with a bad key, and after Close.
func TestWriteRefused(t *testing.T) {
	c := start(t)
	a := open(t, c, "fe.a", testTTL, true)
	waitWriter(t, a)
	b := open(t, c, "fe.b", testTTL, false)
	if _, err := b.d.Write(ctxT(t), "k", []byte("v")); !errors.Is(err, ErrNotWriter) {
		t.Fatalf("write without the lease: %v", err)
	}
	for _, key := range []string{"", ".k", "k.", "a..b", "a b", "a*", "a>", "ä", strings.Repeat("k", maxKeyLen+1)} {
		if _, err := a.d.Write(ctxT(t), key, []byte("v")); !errors.Is(err, ErrBadKey) {
			t.Fatalf("write of key %q: %v", key, err)
		}
	}
	a.write(t, "u/1.g_2=-", "v")
	a.d.Close()
	if _, err := a.d.Write(ctxT(t), "k", []byte("v")); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if a.d.IsWriter() {
		t.Fatal("closed Dir is the writer")
	}
}

// TestConflict has another writer's write land on a key that the writer's
// watcher has not applied yet: the writer's next write of the key is
// refused rather than overwriting it, and succeeds once it has seen it.
func TestConflict(t *testing.T) {
	c := start(t)
	a := open(t, c, "fe.a", testTTL, true)
	waitWriter(t, a)
	a.write(t, "k", "a1")
	a.mu.Lock()
	a.blockOn, a.unblock = "block", make(chan struct{})
	a.mu.Unlock()
	blocked := a.write(t, "block", "")
	if err := a.d.WaitApplied(ctxT(t), blocked-1); err != nil {
		t.Fatal(err)
	}
	// The other writer: a deposed or rogue frontend, or an operator.
	js, err := jetstream.New(c.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctxT(t), "MNM_DIR")
	if err != nil {
		t.Fatal(err)
	}
	other, err := kv.Put(ctxT(t), "k", []byte("other"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.d.Write(ctxT(t), "k", []byte("a2")); !errors.Is(err, ErrConflict) {
		t.Fatalf("write over an unseen revision: %v", err)
	}
	// A create of a key someone else created conflicts too.
	if _, err := kv.Create(ctxT(t), "new", []byte("other")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.d.Write(ctxT(t), "new", []byte("a")); !errors.Is(err, ErrConflict) {
		t.Fatalf("create over an unseen key: %v", err)
	}
	close(a.unblock)
	if err := a.d.WaitApplied(ctxT(t), other); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.get("k"); got != "other" {
		t.Fatalf("k=%q after the other write", got)
	}
	rev := a.write(t, "k", "a3")
	if rev <= other {
		t.Fatalf("write at %d, after %d", rev, other)
	}
}

// TestOneWriter starts three Dirs campaigning at once: exactly one becomes
// the writer, and every Dir's calls reach it.
func TestOneWriter(t *testing.T) {
	c := start(t)
	fs := make([]*frontend, 3)
	var wg sync.WaitGroup
	for i := range fs {
		fs[i] = open(t, c, fmt.Sprintf("fe.%d", i), testTTL, false)
	}
	for _, f := range fs {
		wg.Go(func() {
			if err := f.d.Serve(f.handle); err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	wg.Wait()
	w := waitWriter(t, fs...)
	// Over two TTLs of renewals, never two writers, always the same one.
	end := time.Now().Add(2 * testTTL)
	for time.Now().Before(end) {
		n := 0
		for _, f := range fs {
			if f.d.IsWriter() {
				n++
				if f != w {
					t.Fatalf("%s became the writer while %s was", f.name, w.name)
				}
			}
		}
		if n != 1 {
			t.Fatalf("%d writers", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, f := range fs {
		reply, _, code, err := f.d.Call(ctxT(t), "whoami", nil)
		if err != nil || code != "" || string(reply) != w.name {
			t.Fatalf("%s: whoami = %q, %q, %v; writer %s", f.name, reply, code, err, w.name)
		}
	}
}

// TestCall forwards calls from a Dir that is not the writer: the writer's
// handler runs them, and the caller's watcher reaches the revision they
// wrote.
func TestCall(t *testing.T) {
	c := start(t)
	a := open(t, c, "fe.a", testTTL, true)
	waitWriter(t, a)
	b := open(t, c, "fe.b", testTTL, true)
	if b.d.IsWriter() {
		t.Fatal("two writers")
	}
	for i := range 5 {
		reply, rev, code, err := b.d.Call(ctxT(t), "put", fmt.Appendf(nil, "k.%d=v%d", i, i))
		if err != nil || code != "" || string(reply) != "ok" || rev == 0 {
			t.Fatalf("call %d: %q rev %d code %q err %v", i, reply, rev, code, err)
		}
		if err := b.d.WaitApplied(ctxT(t), rev); err != nil {
			t.Fatal(err)
		}
		if got, _ := b.get(fmt.Sprintf("k.%d", i)); got != fmt.Sprintf("v%d", i) {
			t.Fatalf("caller reads k.%d=%q after its call", i, got)
		}
	}
	// The handler's code comes back as it is, as from the writer itself.
	for _, f := range []*frontend{a, b} {
		_, rev, code, err := f.d.Call(ctxT(t), "nope", nil)
		if err != nil || code != "unknown method" || rev != 0 {
			t.Fatalf("%s: unknown method: rev %d code %q err %v", f.name, rev, code, err)
		}
		_, _, code, err = f.d.Call(ctxT(t), "put", []byte("bad key=v"))
		if err != nil || !strings.Contains(code, ErrBadKey.Error()) {
			t.Fatalf("%s: bad key: code %q err %v", f.name, code, err)
		}
	}

	// Requests that do not parse are refused, not retried.
	raw := c.Connect(t)
	for _, data := range []string{"{", "{}", `{"id":"x"}`, `{"method":"put"}`, `{"id":1}`} {
		m, err := raw.Request("MNM.dir.call", []byte(data), testTimeout)
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		if string(m.Data) != `{"status":"bad"}` {
			t.Fatalf("%q answered %s", data, m.Data)
		}
	}
	// A Dir whose subscription outlives its lease tells the caller to
	// try again elsewhere.
	a.d.mu.Lock()
	a.d.ready = false
	a.d.mu.Unlock()
	m, err := raw.Request("MNM.dir.call", []byte(`{"id":"y","method":"whoami"}`), testTimeout)
	if err != nil || string(m.Data) != `{"status":"notwriter"}` {
		t.Fatalf("call to a deposed writer: %v %s", err, m.Data)
	}
	a.d.mu.Lock()
	a.d.ready = true
	a.d.mu.Unlock()
	// A repeated call id is answered, not run again.
	req := `{"id":"same","method":"put","args":"` + "ay4xPXZ4" + `"}` // k.1=vx
	var revs []string
	for range 2 {
		m, err := raw.Request("MNM.dir.call", []byte(req), testTimeout)
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, string(m.Data))
	}
	if revs[0] != revs[1] || !strings.Contains(revs[0], `"rev"`) {
		t.Fatalf("repeated call answered %s then %s", revs[0], revs[1])
	}

	// No writer: ErrNoWriter when ctx ends; a closed Dir: ErrClosed.
	a.d.Close()
	b.d.Close()
	lone := open(t, c, "fe.lone", testTTL, false)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, _, _, err := lone.d.Call(ctx, "whoami", nil); !errors.Is(err, ErrNoWriter) {
		t.Fatalf("call without a writer: %v", err)
	}
	// Answers that do not parse, or of a status unknown, are not
	// taken for the writer's.
	fake, err := raw.Subscribe("MNM.dir.call", func(m *nats.Msg) {
		m.Respond([]byte("{"))
		m.Respond([]byte(`{"status":"later"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if _, _, _, err := lone.d.Call(ctx2, "whoami", nil); !errors.Is(err, ErrNoWriter) {
		t.Fatalf("call answered by garbage: %v", err)
	}
	fake.Unsubscribe()
	if _, _, _, err := b.d.Call(ctxT(t), "whoami", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call on a closed Dir: %v", err)
	}
}

// TestHandover closes the writer: another Dir takes over at once, not
// after the TTL, and a call in the meantime waits for it.
func TestHandover(t *testing.T) {
	c := start(t)
	// A long TTL: a successor that had to wait for the old lease to
	// expire would take over 16 s (the TTL less a renewal interval), one
	// handed the lease by Close takes 0.1–0.3 s (2 s seen on a loaded CI
	// machine), so TTL/2 tells the two apart with room for a slow run.
	ttl := 20 * time.Second
	a := open(t, c, "fe.a", ttl, true)
	waitWriter(t, a)
	b := open(t, c, "fe.b", ttl, true)
	cc := open(t, c, "fe.c", ttl, false)
	a.write(t, "k", "a")

	start := time.Now()
	a.d.Close()
	reply, _, _, err := cc.d.Call(ctxT(t), "whoami", nil)
	if err != nil || string(reply) != "fe.b" {
		t.Fatalf("call after the handover: %q, %v", reply, err)
	}
	took := time.Since(start)
	t.Logf("handover took %s (TTL %s)", took, ttl)
	if took > ttl/2 {
		t.Fatalf("handover took %s, TTL %s", took, ttl)
	}
	if !b.d.IsWriter() {
		t.Fatal("b answered but is not the writer")
	}
	// The successor caught up before serving: its write is over a's.
	if got, _ := b.get("k"); got != "a" {
		t.Fatalf("successor holds k=%q", got)
	}
	b.write(t, "k", "b")
}

// TestDeadWriter cuts the writer off from NATS without Close: it stops
// writing at the end of its lease, and only after that, once the key
// expired, does another Dir become the writer.
func TestDeadWriter(t *testing.T) {
	c := start(t)
	a := open(t, c, "fe.a", testTTL, true)
	waitWriter(t, a)
	b := open(t, c, "fe.b", testTTL, true)
	a.write(t, "k", "a")

	cut := time.Now()
	a.nc.Close()
	a.d.mu.Lock()
	until := a.d.leaseUntil
	a.d.mu.Unlock()
	if until.Before(cut) {
		t.Fatalf("lease ended %s before the cut", cut.Sub(until))
	}
	var elected time.Time
	waitFor(t, "a new writer", func() bool {
		if b.d.IsWriter() {
			elected = time.Now()
			return true
		}
		return false
	})
	t.Logf("new writer %s after the cut (TTL %s), old lease ended %s after it",
		elected.Sub(cut), testTTL, until.Sub(cut))
	if !elected.After(until) {
		t.Fatalf("b became the writer %s before a's lease ended", until.Sub(elected))
	}
	if a.d.IsWriter() {
		t.Fatal("cut-off writer still the writer")
	}
	if _, err := a.d.Write(ctxT(t), "k", []byte("late")); !errors.Is(err, ErrNotWriter) {
		t.Fatalf("write by the cut-off writer: %v", err)
	}
	if elected.Sub(cut) < testTTL-testTTL/renewDivisor-100*time.Millisecond {
		t.Fatalf("b elected %s after the cut, before a's key could expire", elected.Sub(cut))
	}
	a.d.mu.Lock()
	sub := a.d.sub
	a.d.mu.Unlock()
	if sub != nil {
		t.Fatal("cut-off writer still subscribed to calls")
	}
	rev := b.write(t, "k", "b")
	if err := b.d.WaitApplied(ctxT(t), rev); err != nil {
		t.Fatal(err)
	}
}

// TestLeaderKill kills the node leading the records' stream in the middle
// of forwarded writes: the writes resume after the election, every
// acknowledged one survives, and the restarted node catches up.
func TestLeaderKill(t *testing.T) {
	const before, after = 10, 20
	c := start(t)
	// A longer TTL: the renewals must outlast the failover.
	ttl := 3 * time.Second
	a := open(t, c, "fe.a", ttl, true)
	waitWriter(t, a)
	b := open(t, c, "fe.b", ttl, true)

	var mu sync.Mutex // guards acked and stop
	acked := make(map[string]uint64)
	stop := false
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			mu.Lock()
			if stop {
				mu.Unlock()
				done <- nil
				return
			}
			mu.Unlock()
			key := fmt.Sprintf("k.%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			_, rev, code, err := b.d.Call(ctx, "put", []byte(key+"=v"))
			cancel()
			if err != nil {
				done <- fmt.Errorf("call %d: %w", i, err)
				return
			}
			if code != "" {
				// Not acknowledged (an election): the client retries.
				t.Logf("put %s refused: %s", key, code)
				continue
			}
			mu.Lock()
			acked[key] = rev
			mu.Unlock()
		}
	}()
	n := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	waitFor(t, "writes before the kill", func() bool { return n() >= before })
	stream := "KV_MNM_DIR"
	leader := c.Leader(stream)
	if leader < 0 {
		t.Fatal("no records leader")
	}
	killed := time.Now()
	c.Kill(leader)
	atKill := n()
	waitFor(t, "a write after the kill", func() bool { return n() > atKill })
	t.Logf("first write acknowledged %s after the kill", time.Since(killed))
	waitFor(t, "writes after the kill", func() bool {
		select {
		case err := <-done:
			t.Fatal(err)
		default:
		}
		return n() >= atKill+after
	})
	mu.Lock()
	stop = true
	mu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d writes after the kill in %s", after, time.Since(killed))
	// The caller's watcher reads on with the node down.
	mu.Lock()
	var last uint64
	for _, rev := range acked {
		last = max(last, rev)
	}
	mu.Unlock()
	if err := b.d.WaitApplied(ctxT(t), last); err != nil {
		t.Fatal(err)
	}
	t.Logf("caller applied the last write %s after the kill", time.Since(killed))
	c.Restart(leader)
	c.WaitStreamCurrent(stream)
	t.Logf("node restarted and current %s after the kill", time.Since(killed))

	fresh := open(t, c, "fe.fresh", ttl, false)
	mu.Lock()
	defer mu.Unlock()
	for key, rev := range acked {
		if v, ok := fresh.get(key); !ok || v != "v" {
			t.Fatalf("acknowledged %s (rev %d) lost: %q %v", key, rev, v, ok)
		}
	}
	for key := range acked {
		if _, ok := b.get(key); !ok {
			t.Fatalf("caller's watcher missed %s", key)
		}
	}
}

// TestResolve checks how a write that got no reply is resolved by reading
// the key back: written by us, not written, written by someone else, or
// unknown because the cluster does not answer.
func TestResolve(t *testing.T) {
	c := start(t)
	a := open(t, c, "fe.a", testTTL, true)
	waitWriter(t, a)
	cause := errors.New("no reply")
	r1 := a.write(t, "k", "v1")

	// Unchanged: not written, and neither a conflict nor in doubt.
	_, err := a.d.resolve(ctxT(t), "k", []byte("v2"), r1, cause)
	if err == nil || errors.Is(err, ErrConflict) || errors.Is(err, ErrInDoubt) || !errors.Is(err, cause) {
		t.Fatalf("resolve of an unchanged key: %v", err)
	}
	// Our bytes above the revision written over: ours.
	r2 := a.write(t, "k", "v2")
	if rev, err := a.d.resolve(ctxT(t), "k", []byte("v2"), r1, cause); err != nil || rev != r2 {
		t.Fatalf("resolve of a landed write: %d, %v (want %d)", rev, err, r2)
	}
	// Other bytes: someone else's.
	if _, err := a.d.resolve(ctxT(t), "k", []byte("v3"), r1, cause); !errors.Is(err, ErrConflict) {
		t.Fatalf("resolve over another write: %v", err)
	}
	// A create that never landed.
	if _, err := a.d.resolve(ctxT(t), "none", []byte("v"), 0, cause); err == nil || errors.Is(err, ErrInDoubt) {
		t.Fatalf("resolve of a create that did not land: %v", err)
	}
	// No cluster: in doubt once ctx ends.
	a.nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := a.d.resolve(ctx, "k", []byte("v2"), r1, cause); !errors.Is(err, ErrInDoubt) {
		t.Fatalf("resolve without a cluster: %v", err)
	}
}

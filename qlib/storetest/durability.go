package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"mnm/qlib/store"
)

// testReopen: what was committed survives a clean restart, queues in order
// and messages byte for byte; what was acknowledged before the Close does
// not come back, nor does a message every device acknowledged.
func testReopen(t *testing.T, h Harness) {
	s := open(t, h)
	var all []store.ID
	for i := range 40 {
		n := i * 997
		if i%13 == 0 {
			n = 200_000 + i
		}
		data := append(fmt.Appendf(nil, "message %d ", i), randomData(uint64(i), n)...)
		prio := store.Normal
		if i%7 == 0 {
			prio = store.High
		}
		all = append(all, post(t, s, prio, data, []string{"a", "b", "c"}[:1+i%3]...).ID)
	}
	// Acknowledge here and there, out of order; messages only for a go.
	for _, dev := range []string{"a", "b"} {
		q := s.Queue(dev)
		for i := 0; i < len(q); i += 3 {
			if err := s.Ack(dev, q[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := map[string][]store.ID{}
	queued := map[store.ID]bool{}
	for _, dev := range []string{"a", "b", "c"} {
		want[dev] = s.Queue(dev)
		for _, id := range want[dev] {
			queued[id] = true
		}
	}
	contents := map[store.ID][]byte{}
	for id := range queued {
		contents[id] = content(t, s, id)
	}
	check := func(when string) {
		t.Helper()
		for dev, ids := range want {
			checkQueue(t, s, dev, ids)
			for _, id := range ids {
				if got := content(t, s, id); !bytes.Equal(got, contents[id]) {
					t.Errorf("%s: message %v differs (%d bytes, want %d)", when, id, len(got), len(contents[id]))
				}
			}
		}
		for _, id := range all {
			if !queued[id] {
				gone(t, s, id, when+", acknowledged by every device")
			}
		}
	}
	check("before a restart")
	s.reopen()
	check("after a restart")

	// Acks made after a restart are kept by the next one.
	drain(t, s, "a")
	if err := s.Ack("b", want["b"][0]); err != nil {
		t.Fatal(err)
	}
	want["a"], want["b"] = nil, want["b"][1:]
	queued = map[store.ID]bool{}
	for _, ids := range want {
		for _, id := range ids {
			queued[id] = true
		}
	}
	s.reopen()
	check("after a second restart")
}

// testIDsAcrossReopen: ids keep increasing across restarts, even when
// nothing is left in the store to remember them by.
func testIDsAcrossReopen(t *testing.T, h Harness) {
	s := open(t, h)
	var last store.ID
	for round := range 3 {
		for range 3 {
			r := post(t, s, store.Normal, []byte("x"), "a")
			if r.ID <= last {
				t.Fatalf("round %d: id %v not above %v, issued before", round, r.ID, last)
			}
			last = r.ID
		}
		drain(t, s, "a")
		s.reopen()
	}
}

// testClose: once the store is closed, drafts in progress and new ones
// fail with ErrClosed, and CommitAsync refuses at once; nothing of them is
// stored.
func testClose(t *testing.T, h Harness) {
	s := open(t, h)
	kept := post(t, s, store.Normal, []byte("kept"), "a")
	var called atomic.Int64
	never := func([]store.Receipt, error) { called.Add(1) }
	pending, pendingAsync := s.Draft(), s.Draft()
	for _, d := range []store.Draft{pending, pendingAsync} {
		if _, err := d.Write([]byte("pending")); err != nil {
			t.Fatal(err)
		}
	}
	s.close()

	msg := store.Message{To: []string{"a"}, Len: 1, Envelope: envelope("closed")}
	if _, err := pending.Commit(msg); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Commit of a draft begun before Close = %v, want ErrClosed", err)
	}
	if err := pendingAsync.CommitAsync(never, msg); !errors.Is(err, store.ErrClosed) {
		t.Errorf("CommitAsync of a draft begun before Close = %v, want ErrClosed", err)
	}
	if _, err := s.Draft().Write([]byte("x")); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Write to a draft begun after Close = %v, want ErrClosed", err)
	}
	empty := store.Message{To: []string{"a"}, Envelope: envelope("closed")}
	if _, err := s.Draft().Commit(empty); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Commit of a draft begun after Close = %v, want ErrClosed", err)
	}
	if err := s.Draft().CommitAsync(never, empty); !errors.Is(err, store.ErrClosed) {
		t.Errorf("CommitAsync of a draft begun after Close = %v, want ErrClosed", err)
	}
	s.reopen()
	checkQueue(t, s, "a", []store.ID{kept.ID})
	if n := called.Load(); n != 0 {
		t.Errorf("done called %d times for commits refused at once", n)
	}
}

// testCloseDuringCommits: commits racing with Close either succeed, and are
// then durable, or fail with ErrClosed; every CommitAsync handed over has
// its done called.
func testCloseDuringCommits(t *testing.T, h Harness) {
	s := open(t, h)
	st := s.Store
	var mu sync.Mutex
	// Guarded by mu: what WriteTo must send for each message whose
	// commit was reported successful.
	ok := map[store.ID][]byte{}
	fail := func(what string, err error) {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s while closing = %v, want ErrClosed", what, err)
		}
	}

	// Synchronous committers, until the store refuses.
	const committers = 4
	var wg sync.WaitGroup
	for c := range committers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				data := fmt.Appendf(nil, "sync-%d-%d", c, i)
				d := st.Draft()
				if _, err := d.Write(data); err != nil {
					fail("Write", err)
					return
				}
				rs, err := d.Commit(store.Message{To: []string{"a"}, Len: int64(len(data)), Envelope: envelope("post")})
				if err != nil {
					fail("Commit", err)
					return
				}
				mu.Lock()
				ok[rs[0].ID] = posted(rs[0], data)
				mu.Unlock()
			}
		}()
	}

	// One asynchronous caller, which calls Close after a few commits and
	// goes on until the store refuses: Close is sure to meet commits in
	// progress, whatever the scheduling.
	const beforeClose = 20
	s.closed = true // from here on, by the goroutine below
	closed := make(chan error, 1)
	var closeErr error
	closeReturned := false
	var handed sync.WaitGroup // CommitAsync accepted, done not yet called
	for i := 0; ; i++ {
		if i == beforeClose {
			started := make(chan struct{})
			go func() {
				close(started)
				closed <- st.Close()
			}()
			<-started
		}
		if !closeReturned {
			select {
			case closeErr = <-closed:
				closeReturned = true
			default:
			}
		}
		data := fmt.Appendf(nil, "async-%d", i)
		d := st.Draft()
		if _, err := d.Write(data); err != nil {
			fail("Write", err)
			break
		}
		handed.Add(1)
		var called atomic.Bool
		err := d.CommitAsync(func(rs []store.Receipt, err error) {
			if called.Swap(true) {
				t.Errorf("done of one commit called twice")
				return
			}
			defer handed.Done()
			if err != nil {
				fail("CommitAsync's done", err)
				return
			}
			mu.Lock()
			ok[rs[0].ID] = posted(rs[0], data)
			mu.Unlock()
		}, store.Message{To: []string{"a"}, Len: int64(len(data)), Envelope: envelope("post")})
		if err != nil {
			handed.Done()
			fail("CommitAsync", err)
			break
		}
		if closeReturned {
			t.Errorf("CommitAsync accepted after Close returned")
			break
		}
	}
	if !closeReturned {
		closeErr = await(t, "Close", closed)
	}
	if closeErr != nil {
		t.Fatalf("Close: %v", closeErr)
	}
	stopped := make(chan struct{})
	go func() {
		handed.Wait()
		wg.Wait()
		close(stopped)
	}()
	await(t, "every done, and the committers to stop", stopped)

	s.reopen()
	mu.Lock()
	defer mu.Unlock()
	q := s.Queue("a")
	for id, want := range ok {
		if !slices.Contains(q, id) {
			t.Errorf("message %v lost although its commit succeeded", id)
			continue
		}
		if got := content(t, s, id); !bytes.Equal(got, want) {
			t.Errorf("message %v = %q, want %q", id, got, want)
		}
	}
	checkQueue(t, s, "a", q)
	if !slices.IsSorted(q) {
		t.Errorf("queue %v not in id order", q)
	}
	t.Logf("%d commits succeeded around Close", len(ok))
}

// testCrash: after a power loss, every message whose commit succeeded is
// there, with its queue entries (in order) and its bytes; an acknowledged
// entry may come back (the contract allows it: acks become durable soon,
// not at once); ids go on increasing. Runs only with a Crasher.
func testCrash(t *testing.T, h Harness) {
	c, isCrasher := h.(Crasher)
	if !isCrasher {
		t.Skip("the harness cannot simulate a power loss (storetest.Crasher)")
	}
	s := open(t, h)
	type msg struct {
		prio  store.Priority
		devs  []string
		bytes []byte
	}
	var mu sync.Mutex
	// Guarded by mu: every message whose commit succeeded.
	ok := map[store.ID]msg{}
	for i := range 20 {
		prio := store.Priority(i % 3 / 2)
		devs := []string{"a", "b"}[:1+i%2]
		data := fmt.Appendf(nil, "before-%d", i)
		r := post(t, s, prio, data, devs...)
		ok[r.ID] = msg{prio, devs, posted(r, data)}
	}
	acked := map[store.ID]bool{}
	for _, id := range s.Queue("a")[:5] {
		if err := s.Ack("a", id); err != nil {
			t.Fatal(err)
		}
		acked[id] = true
	}
	// Commits in flight as the power fails: those reported successful
	// must survive.
	for i := range 20 {
		data := fmt.Appendf(nil, "inflight-%d", i)
		d := s.Draft()
		if _, err := d.Write(data); err != nil {
			t.Fatal(err)
		}
		err := d.CommitAsync(func(rs []store.Receipt, err error) {
			if err == nil {
				mu.Lock()
				ok[rs[0].ID] = msg{store.Normal, []string{"b"}, posted(rs[0], data)}
				mu.Unlock()
			}
		}, store.Message{To: []string{"b"}, Len: int64(len(data)), Envelope: envelope("post")})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.Store = c.Crash(t, s.Store)

	mu.Lock()
	defer mu.Unlock()
	var last store.ID
	for id := range ok {
		last = max(last, id)
	}
	for _, dev := range []string{"a", "b"} {
		q := s.Queue(dev)
		for id, m := range ok {
			if slices.Contains(m.devs, dev) && !(dev == "a" && acked[id]) && !slices.Contains(q, id) {
				t.Errorf("%s's entry for %v lost although its commit succeeded", dev, id)
			}
		}
		for i, id := range q {
			// An unknown id is a commit in flight that was never
			// reported: it is for b, at Normal priority, like ok's
			// zero value.
			m, known := ok[id]
			switch {
			case !known && dev != "b":
				t.Errorf("%s's queue holds %v, never committed for it", dev, id)
			case !known:
				continue
			case !slices.Contains(m.devs, dev):
				t.Errorf("%s's queue holds %v, a message not for it", dev, id)
			case !bytes.Equal(content(t, s, id), m.bytes):
				t.Errorf("message %v differs after the power loss", id)
			}
			if i > 0 {
				prev, cur := ok[q[i-1]], ok[id]
				if prev.prio < cur.prio || prev.prio == cur.prio && q[i-1] > id {
					t.Errorf("%s's queue %v out of delivery order", dev, q)
				}
			}
		}
		checkQueue(t, s, dev, q)
	}
	back := 0
	for _, id := range s.Queue("a") {
		if acked[id] {
			back++
		}
	}
	t.Logf("%d of %d acknowledged entries came back", back, len(acked))
	if r := post(t, s, store.Normal, []byte("after"), "a"); r.ID <= last {
		t.Errorf("id %v after the power loss not above %v, issued before", r.ID, last)
	}
}

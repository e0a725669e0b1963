package storetest

import (
	"bytes"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"mnm/qlib"
	"mnm/qlib/store"
)

// recorder is a watcher that records the length of its device's queue at
// each call. It does what a watcher may: call Len, and signal without
// blocking.
type recorder struct {
	s      qlib.Store
	dev    string
	signal chan struct{} // a call happened; capacity 1, so fn never blocks

	mu sync.Mutex
	// Guarded by mu: Len(dev) as each call saw it.
	lens []int
}

func newRecorder(s qlib.Store, dev string) *recorder {
	return &recorder{s: s, dev: dev, signal: make(chan struct{}, 1)}
}

func (r *recorder) fn() {
	n := r.s.Len(r.dev)
	r.mu.Lock()
	r.lens = append(r.lens, n)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// calls returns the queue lengths the calls so far saw.
func (r *recorder) calls() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lens)
}

// awaitLen waits for a call that saw at least n entries in the queue.
func (r *recorder) awaitLen(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for !slices.ContainsFunc(r.calls(), func(k int) bool { return k >= n }) {
		select {
		case <-r.signal:
		case <-deadline:
			t.Fatalf("timed out waiting for %s's watcher to see %d entries (calls saw %v)", r.dev, n, r.calls())
		}
	}
}

// testWatch: a watcher is called once entries are added to its device's
// queue, and only then; it may be registered from any goroutine; it may
// call Head, Len, WriteTo and Ack; registering another replaces it, and nil
// removes it.
func testWatch(t *testing.T, h Harness) {
	s := open(t, h)
	a := newRecorder(s.Store, "a")
	registered := make(chan struct{})
	go func() {
		s.Watch("a", a.fn)
		close(registered)
	}()
	await(t, "Watch from another goroutine", registered)
	post(t, s, store.Normal, []byte("for b"), "b")
	post(t, s, store.Normal, []byte("for a"), "a")
	a.awaitLen(t, 1)
	for _, n := range a.calls() {
		if n == 0 {
			t.Errorf("a's watcher called with a's queue empty: not for an entry added to it")
		}
	}

	// A watcher that delivers: it reads and acknowledges what it finds.
	c := s.Store
	acked := make(chan store.ID, 3)
	s.Watch("c", func() {
		for {
			id, ok := c.Head("c")
			if !ok {
				return
			}
			if _, err := c.WriteTo(io.Discard, id); err != nil {
				t.Errorf("WriteTo from a watcher: %v", err)
				return
			}
			if err := c.Ack("c", id); err != nil {
				t.Errorf("Ack from a watcher: %v", err)
				return
			}
			acked <- id
		}
	})
	var sent []store.ID
	for _, p := range []string{"c1", "c2", "c3"} {
		sent = append(sent, post(t, s, store.Normal, []byte(p), "c", "d").ID)
	}
	var got []store.ID
	for range sent {
		got = append(got, await(t, "the watcher's ack", acked))
	}
	if !slices.Equal(got, sent) {
		t.Errorf("the watcher acknowledged %v, want %v", got, sent)
	}
	checkQueue(t, s, "c", nil)
	checkQueue(t, s, "d", sent)

	// Replacing and removing. The probe, watched throughout, is in every
	// commit: once its watcher is called, so would a's have been.
	probe := newRecorder(s.Store, "probe")
	s.Watch("probe", probe.fn)
	a2 := newRecorder(s.Store, "a")
	s.Watch("a", a2.fn)
	before := len(a.calls())
	post(t, s, store.Normal, []byte("a2"), "a", "probe")
	a2.awaitLen(t, 2)
	probe.awaitLen(t, 1)
	if n := len(a.calls()); n != before {
		t.Errorf("a replaced watcher was called %d times more", n-before)
	}
	s.Watch("a", nil)
	before = len(a2.calls())
	post(t, s, store.Normal, []byte("none"), "a", "probe")
	probe.awaitLen(t, 2)
	if n := len(a2.calls()); n != before {
		t.Errorf("a removed watcher was called %d times more", n-before)
	}
	// Close flushes pending work: no call is left to come.
	s.close()
	if n := len(a2.calls()); n != before {
		t.Errorf("a removed watcher was called %d times more by Close", n-before)
	}
}

// testWatchCopyQueue: CopyQueue adds entries to dst's queue, so it calls
// dst's watcher.
func testWatchCopyQueue(t *testing.T, h Harness) {
	s := open(t, h)
	dst := newRecorder(s.Store, "dst")
	s.Watch("dst", dst.fn)
	one := post(t, s, store.Normal, []byte("one"), "src")
	two := post(t, s, store.High, []byte("two"), "src")
	if err := s.CopyQueue("src", "dst"); err != nil {
		t.Fatal(err)
	}
	dst.awaitLen(t, 2)
	checkQueue(t, s, "dst", []store.ID{two.ID, one.ID})
}

// testWatchConcurrent: watchers come and go while commits add entries, with
// no race and no deadlock; the last one registered is called.
func testWatchConcurrent(t *testing.T, h Harness) {
	s := open(t, h)
	st := s.Store
	r := newRecorder(st, "w")
	const commits, toggles = 30, 200
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range toggles {
			if i%2 == 0 {
				st.Watch("w", r.fn)
			} else {
				st.Watch("w", nil)
			}
		}
	}()
	var sent []store.ID
	for i := range commits {
		sent = append(sent, post(t, s, store.Normal, []byte{byte(i)}, "w").ID)
	}
	await(t, "the watch toggles", done)
	s.Watch("w", r.fn)
	last := post(t, s, store.Normal, []byte("last"), "w")
	r.awaitLen(t, commits+1)
	checkQueue(t, s, "w", append(sent, last.ID))
	if got, want := content(t, s, last.ID), posted(last, []byte("last")); !bytes.Equal(got, want) {
		t.Errorf("WriteTo = %q, want %q", got, want)
	}
}

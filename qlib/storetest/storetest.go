// Package storetest is the contract of qlib.Store as an executable test
// suite, so that every backend (the log-structured store.Log, the clustered
// one of issue #14) is held to the same promises. A backend's tests call Run
// with a Harness that opens fresh stores and reopens them on the same data:
//
//	func TestContract(t *testing.T) { storetest.Run(t, myHarness{}) }
//
// The suite uses a store only through qlib.Store and store.Draft, and asserts
// only what their documentation (qlib/store.go, qlib/store/store.go)
// promises. Where a backend may choose (whether an acknowledged entry comes
// back after a power loss, when the bytes of a dead message leave the disk),
// the suite accepts every choice the contract allows. It waits for events
// with deadlines, never sleeps, and runs in a few seconds, also under -race.
package storetest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"mnm/qlib"
	"mnm/qlib/store"
)

// Harness opens the stores the suite tests.
//
// Every subtest calls Open once, with its own t, for a store of its own:
// empty, and independent of every other store Open returns (a directory of
// its own, or stream names of its own on a cluster the harness shares
// between subtests). Open reports failures through t and arranges, with
// t.Cleanup, to release what it started beyond the store (files, servers);
// the suite closes the stores itself, once each. Subtests run one at a
// time.
//
// Reopen is a clean restart. The suite has closed old (Close returned nil)
// and does not use it again; Reopen returns a store opened on old's data, as
// the next run of the server would open it. A harness finds the data from
// old: it may keep a map from the stores it returned to where their data is.
type Harness interface {
	Open(t *testing.T) qlib.Store
	Reopen(t *testing.T, old qlib.Store) qlib.Store
}

// Crasher is a Harness that can also simulate a power loss. The suite runs
// its crash checks only when the harness is one.
//
// Crash returns a store opened on what stable storage holds of old's data
// if the power failed now, old still open and in use. It takes old over: the
// suite neither uses nor closes old afterwards, and Crash returns only once
// old has stopped, so that none of old's callbacks (CommitAsync's done, a
// watcher) runs after it.
type Crasher interface {
	Harness
	Crash(t *testing.T, old qlib.Store) qlib.Store
}

// Run runs the contract suite against the stores h opens, one subtest per
// promise.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"Commit", testCommit},
		{"HeadOrder", testHeadOrder},
		{"WriteTo", testWriteTo},
		{"Ack", testAck},
		{"Watch", testWatch},
		{"WatchCopyQueue", testWatchCopyQueue},
		{"WatchConcurrent", testWatchConcurrent},
		{"CommitAsync", testCommitAsync},
		{"Draft", testDraft},
		{"DraftRange", testDraftRange},
		{"LargeDraft", testLargeDraft},
		{"ConcurrentDrafts", testConcurrentDrafts},
		{"CopyQueue", testCopyQueue},
		{"CopyQueueDuringCommits", testCopyQueueDuringCommits},
		{"Secret", testSecret},
		{"Reopen", testReopen},
		{"IDsAcrossReopen", testIDsAcrossReopen},
		{"Close", testClose},
		{"CloseDuringCommits", testCloseDuringCommits},
		{"Crash", testCrash},
		{"Concurrency", testConcurrency},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

// waitTimeout bounds every wait for an event that must come: generous, so
// that a loaded machine (or a cluster electing a leader) does not fail the
// suite, while a lost event still fails it rather than hang.
const waitTimeout = 10 * time.Second

// handle is the store a subtest works on, across restarts: it embeds the
// current store, and closes it at cleanup unless the subtest did.
type handle struct {
	qlib.Store
	t      *testing.T
	h      Harness
	closed bool
}

// open opens a fresh store for t.
func open(t *testing.T, h Harness) *handle {
	t.Helper()
	s := &handle{Store: h.Open(t), t: t, h: h}
	t.Cleanup(func() {
		if !s.closed {
			s.Store.Close()
		}
	})
	return s
}

// close closes the store, which must succeed.
func (s *handle) close() {
	s.t.Helper()
	s.closed = true
	if err := s.Store.Close(); err != nil {
		s.t.Fatalf("Close: %v", err)
	}
}

// reopen restarts the store cleanly: Close (unless the subtest closed it),
// then open on the same data.
func (s *handle) reopen() {
	s.t.Helper()
	if !s.closed {
		s.close()
	}
	s.Store = s.h.Reopen(s.t, s.Store)
	s.closed = false
}

// envelope returns an Envelope rendering all of its arguments and a tag, so
// that the bytes WriteTo sends show what the store passed it.
func envelope(tag string) store.Envelope {
	return func(id store.ID, posted time.Time, batch []store.ID) []byte {
		return fmt.Appendf(nil, "<%s %v %d %v>", tag, id, posted.UnixNano(), batch)
	}
}

// post commits data as one message for devs and returns its receipt.
func post(t *testing.T, s qlib.Store, prio store.Priority, data []byte, devs ...string) store.Receipt {
	t.Helper()
	d := s.Draft()
	if _, err := d.Write(data); err != nil {
		t.Fatalf("Write: %v", err)
	}
	rs, err := d.Commit(store.Message{Prio: prio, To: devs, Len: int64(len(data)), Envelope: envelope("post")})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(rs) != 1 {
		t.Fatalf("Commit of one message returned %d receipts", len(rs))
	}
	return rs[0]
}

// posted is what WriteTo must send for a message post committed with data.
func posted(r store.Receipt, data []byte) []byte {
	return append(envelope("post")(r.ID, r.Posted, []store.ID{r.ID}), data...)
}

// ids returns the ids of rs.
func ids(rs []store.Receipt) []store.ID {
	out := make([]store.ID, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// content returns what WriteTo writes for id, checking the count it returns.
func content(t *testing.T, s qlib.Store, id store.ID) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := s.WriteTo(&buf, id)
	if err != nil {
		t.Fatalf("WriteTo(%v): %v", id, err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo(%v) returned %d, wrote %d", id, n, buf.Len())
	}
	return buf.Bytes()
}

// gone checks that the store no longer holds id, and that WriteTo then
// writes nothing (the server skips such an entry and goes on writing the
// link).
func gone(t *testing.T, s qlib.Store, id store.ID, why string) {
	t.Helper()
	var buf bytes.Buffer
	n, err := s.WriteTo(&buf, id)
	if !errors.Is(err, store.ErrNoMessage) {
		t.Errorf("WriteTo(%v) %s = %v, want ErrNoMessage", id, why, err)
	}
	if n != 0 || buf.Len() != 0 {
		t.Errorf("WriteTo(%v) %s wrote %d bytes (said %d), want none", id, why, buf.Len(), n)
	}
}

// drain acknowledges dev's queue to its end and returns it in delivery order.
func drain(t *testing.T, s qlib.Store, dev string) []store.ID {
	t.Helper()
	var out []store.ID
	for {
		id, ok := s.Head(dev)
		if !ok {
			return out
		}
		out = append(out, id)
		if err := s.Ack(dev, id); err != nil {
			t.Fatalf("Ack(%s, %v): %v", dev, id, err)
		}
	}
}

// checkQueue checks that dev's queue is want, in delivery order, through
// every method that shows it: Queue, Len, Head and QueueBytes (the sum of
// what WriteTo sends for each entry).
func checkQueue(t *testing.T, s qlib.Store, dev string, want []store.ID) {
	t.Helper()
	if got := s.Queue(dev); !slices.Equal(got, want) {
		t.Errorf("Queue(%s) = %v, want %v", dev, got, want)
	}
	if got := s.Len(dev); got != len(want) {
		t.Errorf("Len(%s) = %d, want %d", dev, got, len(want))
	}
	head, ok := s.Head(dev)
	switch {
	case len(want) == 0 && ok:
		t.Errorf("Head(%s) = %v, want an empty queue", dev, head)
	case len(want) > 0 && (!ok || head != want[0]):
		t.Errorf("Head(%s) = %v, %v; want %v", dev, head, ok, want[0])
	}
	var size int64
	for _, id := range want {
		size += int64(len(content(t, s, id)))
	}
	if got := s.QueueBytes(dev); got != size {
		t.Errorf("QueueBytes(%s) = %d, want %d (what WriteTo sends for its entries)", dev, got, size)
	}
}

// await waits for a receive from c (or its closing); what names the event
// if it does not come within waitTimeout.
func await[T any](t *testing.T, what string, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// randomData returns n deterministic pseudo-random bytes.
func randomData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}

// errWriter is the error of failWriter.
var errWriter = errors.New("storetest: writer failed")

// failWriter is a connection that has gone away.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errWriter }

package store

import (
	"bytes"
	"testing"
)

// wantQueueBytes is QueueBytes computed the slow way: the bytes WriteTo
// sends for each entry of dev's queue.
func wantQueueBytes(t *testing.T, l *Log, dev string) int64 {
	t.Helper()
	var n int64
	for _, id := range l.Queue(dev) {
		n += int64(len(content(t, l, id)))
	}
	return n
}

// checkQueueBytes compares QueueBytes with the slow count for each of devs.
func checkQueueBytes(t *testing.T, l *Log, when string, devs ...string) {
	t.Helper()
	for _, dev := range devs {
		if got, want := l.QueueBytes(dev), wantQueueBytes(t, l, dev); got != want {
			t.Errorf("%s: QueueBytes(%s) = %d, want %d", when, dev, got, want)
		}
	}
}

// TestQueueBytes follows a queue's tally through everything that changes the
// queue: commits (a message for several devices counts for each, a
// duplicate device once), both priorities, chunked data, acks, queue copies
// over a non-empty queue, compaction (which moves messages without changing
// their size) and recovery after a restart.
func TestQueueBytes(t *testing.T) {
	const segSize = 16 << 10
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = segSize })
	devs := []string{"a", "b", "c", "d", "online"}
	if got := l.QueueBytes("nobody"); got != 0 {
		t.Fatalf("QueueBytes of an unknown device = %d", got)
	}
	first := post(t, l, Normal, []byte("hello"), "a", "b", "a")
	size := int64(len(content(t, l, first)))
	if got := l.QueueBytes("a"); got != size {
		t.Errorf("one message for a twice: QueueBytes = %d, want %d (counted once)", got, size)
	}
	post(t, l, High, []byte("account change"), "a")
	post(t, l, Normal, randomData(3, 3*chunkSize+7), "c") // chunked; dies when c is replaced
	for i := range 300 {
		to := []string{"online"}
		if i%10 == 0 {
			to = append(to, "b")
		}
		post(t, l, Priority(i%2), bytes.Repeat([]byte{byte(i)}, 100+i), to...)
	}
	checkQueueBytes(t, l, "after commits", devs...)

	// An empty commit and one with no devices change nothing.
	if _, err := l.Draft().Commit(); err != nil {
		t.Fatal(err)
	}
	post(t, l, Normal, []byte("for nobody"))
	checkQueueBytes(t, l, "after empty commits", devs...)

	if err := l.Ack("a", first); err != nil {
		t.Fatal(err)
	}
	checkQueueBytes(t, l, "after an ack", devs...)
	if err := l.CopyQueue("a", "d"); err != nil {
		t.Fatal(err)
	}
	if err := l.CopyQueue("b", "c"); err != nil { // replaces c's queue
		t.Fatal(err)
	}
	checkQueueBytes(t, l, "after queue copies", devs...)
	if l.QueueBytes("c") != l.QueueBytes("b") {
		t.Errorf("copied queue: c %d bytes, b %d", l.QueueBytes("c"), l.QueueBytes("b"))
	}

	// Counted before the acks: the compactor may start on its own as soon
	// as they make the oldest segments mostly dead.
	nBefore, _, _ := segStats(l)
	drain(t, l, "online")
	if got := l.QueueBytes("online"); got != 0 {
		t.Errorf("drained queue: QueueBytes = %d", got)
	}
	if !l.compactSync() {
		t.Fatal("store closed")
	}
	if n, _, _ := segStats(l); n >= nBefore {
		t.Fatalf("compaction left %d segments of %d: the test needs it to move messages", n, nBefore)
	}
	checkQueueBytes(t, l, "after compaction", devs...)
	before := map[string]int64{}
	for _, dev := range devs {
		before[dev] = l.QueueBytes(dev)
	}
	l.Close()

	l2, _ := openMem(t, fsys, func(o *Options) { o.SegmentSize = segSize })
	checkQueueBytes(t, l2, "after reopening", devs...)
	for _, dev := range devs {
		if got := l2.QueueBytes(dev); got != before[dev] {
			t.Errorf("after reopening QueueBytes(%s) = %d, was %d", dev, got, before[dev])
		}
	}
	drain(t, l2, "a")
	if got := l2.QueueBytes("a"); got != 0 {
		t.Errorf("drained after reopening: QueueBytes(a) = %d", got)
	}
}

package store

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"mnm/durable"
)

// segCount returns the number of segments and the log's total and live bytes.
func segStats(l *Log) (n int, total, live int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.segs), l.total, l.live
}

func segFiles(t *testing.T, fsys *durable.MemFS) []string {
	t.Helper()
	names, err := fsys.ReadDir(testDir)
	if err != nil {
		t.Fatal(err)
	}
	var segs []string
	for _, n := range names {
		if _, ok := parseSegName(n); ok {
			segs = append(segs, n)
		}
	}
	return segs
}

func TestCompaction(t *testing.T) {
	const segSize = 16 << 10
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = segSize })
	bodies := map[ID][]byte{}
	var offline []ID // for a device that never comes online
	var big ID
	for i := range 600 {
		data := bytes.Repeat([]byte{byte(i)}, 200+i%300)
		devs := []string{"online"}
		if i%50 == 0 {
			devs = append(devs, "offline")
		}
		if i == 10 {
			// A message with chunks, so that copying streams data.
			data = randomData(9, 3*chunkSize+5)
			devs = append(devs, "offline")
		}
		id := post(t, l, Priority(i%2), data, devs...)
		bodies[id] = content(t, l, id)
		if len(devs) > 1 {
			offline = append(offline, id)
		}
		if i == 10 {
			big = id
		}
	}
	slices.Sort(offline)
	wantOffline := l.Queue("offline")
	nBefore, totalBefore, _ := segStats(l)
	drain(t, l, "online")
	if !l.compactSync() {
		t.Fatal("store closed")
	}
	n, total, live := segStats(l)
	t.Logf("segments %d -> %d, bytes %d -> %d, live %d", nBefore, n, totalBefore, total, live)
	if n >= nBefore || total > 2*live+segSize {
		t.Errorf("after compaction %d segments (was %d), %d bytes for %d live", n, nBefore, total, live)
	}
	if _, err := fsys.ReadFile(testDir + "/" + segName(1)); err == nil {
		t.Errorf("oldest segment not deleted")
	}
	if files := segFiles(t, fsys); len(files) != n {
		t.Errorf("%d segment files for %d segments", len(files), n)
	}
	check := func(l *Log) {
		t.Helper()
		if got := l.Queue("offline"); !slices.Equal(got, wantOffline) {
			t.Errorf("offline queue = %v, want %v", got, wantOffline)
		}
		if got := l.Queue("online"); len(got) != 0 {
			t.Errorf("acked messages came back: online = %v", got)
		}
		for _, id := range wantOffline {
			if got := content(t, l, id); !bytes.Equal(got, bodies[id]) {
				t.Errorf("message %v differs after compaction", id)
			}
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.msgs) != len(wantOffline) {
			t.Errorf("%d messages indexed, want %d", len(l.msgs), len(wantOffline))
		}
		if m := l.msgs[big]; m == nil || len(m.blob.chunks) == 0 {
			t.Errorf("big message not stored in chunks after the copy")
		}
	}
	check(l)
	l.Close()
	l2, _ := openMem(t, fsys, func(o *Options) { o.SegmentSize = segSize })
	check(l2)
	// Compacting again after the restart (copies of copies) is fine too.
	for i := range 200 {
		post(t, l2, Normal, bytes.Repeat([]byte{byte(i)}, 300), "online")
	}
	drain(t, l2, "online")
	l2.compactSync()
	check(l2)
	l2.Close()
	l3, _ := openMem(t, fsys, func(o *Options) { o.SegmentSize = segSize })
	check(l3)

	// Once everything is acknowledged, the log shrinks to its head.
	drain(t, l3, "offline")
	l3.compactSync()
	if n, total, live := segStats(l3); n != 1 || live != 0 {
		t.Errorf("with nothing live: %d segments, %d bytes, %d live", n, total, live)
	}
}

// Acks and queue copies that land while a segment is being compacted are
// reflected in the copies: nothing acked comes back, nothing copied is lost.
func TestCompactionRacesAcks(t *testing.T) {
	const segSize = 8 << 10
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = segSize })
	// Stop the compactor before its first copy record, with the moving
	// set built, and ack and copy queues then.
	stopped, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	l.mu.Lock()
	l.beforeCopy = func(ID) {
		once.Do(func() {
			close(stopped)
			<-resume
		})
	}
	l.mu.Unlock()
	var ids []ID
	for i := range 200 {
		devs := []string{"a"}
		if i%4 == 0 {
			devs = append(devs, "b", "c")
		}
		ids = append(ids, post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 300), devs...))
	}
	drain(t, l, "a")
	done := make(chan bool)
	go func() { done <- l.compactSync() }()
	<-stopped
	// Meanwhile: b acks two messages, c's queue becomes a copy of b's.
	bq := l.Queue("b")
	if err := l.Ack("b", bq[0]); err != nil {
		t.Fatal(err)
	}
	if err := l.Ack("b", bq[3]); err != nil {
		t.Fatal(err)
	}
	if err := l.CopyQueue("b", "d"); err != nil {
		t.Fatal(err)
	}
	if err := l.Ack("c", bq[1]); err != nil {
		t.Fatal(err)
	}
	close(resume)
	if !<-done {
		t.Fatal("store closed")
	}
	want := map[string][]ID{"a": nil, "b": l.Queue("b"), "c": l.Queue("c"), "d": l.Queue("d")}
	if len(want["b"]) != len(bq)-2 || len(want["d"]) != len(bq)-2 || len(want["c"]) != len(bq)-1 {
		t.Fatalf("queues b %d c %d d %d, from %d", len(want["b"]), len(want["c"]), len(want["d"]), len(bq))
	}
	l.mu.Lock()
	moved := l.msgs[bq[0]] != nil && l.msgs[bq[0]].blob.seg.seq > 1
	l.mu.Unlock()
	if !moved {
		t.Fatalf("message %v not moved by the compaction", bq[0])
	}
	l.Close()
	l2, _ := openMem(t, fsys, func(o *Options) { o.SegmentSize = segSize })
	for dev, ids := range want {
		if got := l2.Queue(dev); !slices.Equal(got, ids) {
			t.Errorf("after restart %s = %v, want %v", dev, got, ids)
		}
	}
}

// A reader keeps a moved message's old segment file open until it is done.
func TestReadDuringCompaction(t *testing.T) {
	const segSize = 4 << 10
	l, _ := openMem(t, nil, func(o *Options) { o.SegmentSize = segSize })
	keep := post(t, l, Normal, []byte("survivor"), "a", "b")
	want := content(t, l, keep)
	for i := range 100 {
		post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 300), "a")
	}
	// Take the reader's reference before the messages die, as the
	// compactor may move keep as soon as they do.
	r, err := l.acquire(keep, false)
	if err != nil {
		t.Fatal(err)
	}
	old := r.blob.seg
	drain(t, l, "a")
	l.compactSync()
	l.mu.Lock()
	removed, f := old.removed, old.f
	l.mu.Unlock()
	if !removed || f == nil {
		t.Fatalf("old segment removed=%v open=%v; want removed but open", removed, f != nil)
	}
	var buf bytes.Buffer
	if _, err := copyAt(&buf, r.blob.seg.f, r.env, r.envLen, make([]byte, 16)); err != nil {
		t.Fatalf("reading the moved message's old place: %v", err)
	}
	l.release(&r)
	l.mu.Lock()
	f = old.f
	l.mu.Unlock()
	if f != nil {
		t.Error("old segment file still open after the reader left")
	}
	if got := content(t, l, keep); !bytes.Equal(got, want) {
		t.Errorf("moved message = %q, want %q", got, want)
	}
}

// A draft's chunks in the oldest segment keep it from being deleted.
func TestPinnedSegmentKept(t *testing.T) {
	const segSize = 4 * chunkSize
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = segSize })
	d := l.Draft()
	data := randomData(5, 2*chunkSize+10)
	d.Write(data)
	// Fill several segments with messages that die.
	for i := range 40 {
		post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, chunkSize/2), "a")
	}
	drain(t, l, "a")
	l.compactSync()
	if n, _, _ := segStats(l); n < 2 {
		t.Fatalf("only %d segment left: pinned chunks deleted", n)
	}
	rs, err := d.Commit(Message{To: []string{"b"}, Len: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	if got := content(t, l, rs[0].ID); !bytes.Equal(got, data) {
		t.Error("draft data differs")
	}
	l.Close()
	l2, _ := openMem(t, fsys, func(o *Options) { o.SegmentSize = segSize })
	if got := content(t, l2, rs[0].ID); !bytes.Equal(got, data) {
		t.Error("draft data differs after restart")
	}
}

func TestCompactionRemoveErrorFailStop(t *testing.T) {
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 2 << 10 })
	for i := range 30 {
		post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 300), "a")
	}
	fsys.FailNth(durable.OpRemove, 1, errBoom)
	// The background compactor may hit the failure while the queue drains,
	// so the acks may fail too.
	for {
		id, ok := l.Head("a")
		if !ok || l.Ack("a", id) != nil {
			break
		}
	}
	l.compactSync()
	d := l.Draft()
	d.Write([]byte("x"))
	if _, err := d.Commit(Message{To: []string{"a"}, Len: 1}); !errors.Is(err, errBoom) {
		t.Errorf("commit after a failed segment removal = %v, want the removal's error", err)
	}
}

func TestCopyQueue(t *testing.T) {
	l, fsys := openMem(t, nil)
	var ids []ID
	for i := range 6 {
		ids = append(ids, post(t, l, Priority(i%2), []byte(fmt.Sprint(i)), "src"))
	}
	only := post(t, l, Normal, []byte("only dst had it"), "dst")
	notified := make(chan struct{}, 1)
	l.Watch("dst", func() { notified <- struct{}{} })
	if err := l.CopyQueue("src", "dst"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-notified:
	default:
		t.Error("dst's watcher not called by CopyQueue")
	}
	want := l.Queue("src")
	if got := l.Queue("dst"); !slices.Equal(got, want) {
		t.Errorf("dst = %v, want %v", got, want)
	}
	if _, err := l.WriteTo(&bytes.Buffer{}, only); err == nil {
		t.Error("message only dst had survived the replacement of its queue")
	}
	// The queues are independent now.
	if err := l.Ack("src", want[0]); err != nil {
		t.Fatal(err)
	}
	if got := l.Queue("dst"); !slices.Equal(got, want) {
		t.Errorf("after src's ack dst = %v, want %v", got, want)
	}
	if err := l.CopyQueue("dst", "dst"); err != nil {
		t.Errorf("CopyQueue onto itself = %v", err)
	}
	if err := l.CopyQueue("nobody", "empty"); err != nil || l.Len("empty") != 0 {
		t.Errorf("CopyQueue of an empty queue = %v, len %d", err, l.Len("empty"))
	}
	srcWant := l.Queue("src")
	l.Close()
	l2, _ := openMem(t, fsys)
	if got := l2.Queue("dst"); !slices.Equal(got, want) {
		t.Errorf("after restart dst = %v, want %v", got, want)
	}
	if got := l2.Queue("src"); !slices.Equal(got, srcWant) {
		t.Errorf("after restart src = %v, want %v", got, srcWant)
	}
	if _, err := l2.WriteTo(&bytes.Buffer{}, only); err == nil {
		t.Error("message only dst had came back after restart")
	}
	_ = ids
}

// Dead blobs do not pile up in a segment's list while it waits to be
// compacted.
func TestDeadBlobsPruned(t *testing.T) {
	l, _ := openMem(t, nil)
	const n = 1000
	for i := range n {
		post(t, l, Normal, []byte{byte(i)}, "a")
	}
	drain(t, l, "a")
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.segs {
		if len(s.blobs) > n/4 {
			t.Errorf("%s lists %d blobs with nothing live", s.path, len(s.blobs))
		}
	}
}

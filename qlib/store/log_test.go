package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/durable"
)

const testDir = "/q/qstore"

// syncBuffer is a bytes.Buffer safe for the store's goroutines to log into.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// quiet is a logger for tests that do not look at logs.
func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openMem opens a store on fsys (a fresh MemFS if nil), closed at cleanup.
func openMem(t testing.TB, fsys *durable.MemFS, mod ...func(*Options)) (*Log, *durable.MemFS) {
	t.Helper()
	if fsys == nil {
		fsys = durable.NewMemFS()
	}
	opts := Options{Dir: testDir, FS: fsys, Logger: quiet()}
	for _, f := range mod {
		f(&opts)
	}
	l, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l, fsys
}

// env returns an Envelope that renders the id, the posting time and a tag,
// so that tests can check all three come back.
func env(tag string) Envelope {
	return func(id ID, posted time.Time, batch []ID) []byte {
		return fmt.Appendf(nil, "<%s %v %d>", tag, id, posted.UnixNano())
	}
}

// post commits data as one message for devs and returns its id.
func post(t testing.TB, l *Log, prio Priority, data []byte, devs ...string) ID {
	t.Helper()
	d := l.Draft()
	if _, err := d.Write(data); err != nil {
		t.Fatalf("Write: %v", err)
	}
	rs, err := d.Commit(Message{Prio: prio, To: devs, Len: int64(len(data)), Envelope: env(string(data[:min(len(data), 8)]))})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return rs[0].ID
}

// content returns what WriteTo writes for id.
func content(t testing.TB, l *Log, id ID) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := l.WriteTo(&buf, id)
	if err != nil {
		t.Fatalf("WriteTo(%v): %v", id, err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo(%v) returned %d, wrote %d", id, n, buf.Len())
	}
	return buf.Bytes()
}

// drain returns dev's queue in delivery order by acking it to the end.
func drain(t testing.TB, l *Log, dev string) []ID {
	t.Helper()
	var ids []ID
	for {
		id, ok := l.Head(dev)
		if !ok {
			return ids
		}
		ids = append(ids, id)
		if err := l.Ack(dev, id); err != nil {
			t.Fatalf("Ack(%s, %v): %v", dev, id, err)
		}
	}
}

func TestCommitReadAck(t *testing.T) {
	l, _ := openMem(t, nil)
	data := []byte("hello, world")
	d := l.Draft()
	d.Write(data[:5])
	d.Write(data[5:])
	var envArgs []ID
	rs, err := d.Commit(Message{To: []string{"a", "b", "a"}, Len: int64(len(data)),
		Envelope: func(id ID, posted time.Time, batch []ID) []byte {
			envArgs = append(envArgs, batch...)
			return []byte("ENV" + id.String())
		}})
	if err != nil {
		t.Fatal(err)
	}
	id := rs[0].ID
	if !slices.Equal(envArgs, []ID{id}) {
		t.Errorf("envelope batch = %v, want [%v]", envArgs, id)
	}
	want := "ENV" + id.String() + string(data)
	for _, dev := range []string{"a", "b"} {
		if h, ok := l.Head(dev); !ok || h != id {
			t.Errorf("Head(%s) = %v %v, want %v", dev, h, ok, id)
		}
		if n := l.Len(dev); n != 1 {
			t.Errorf("Len(%s) = %d, want 1 (duplicate recipients count once)", dev, n)
		}
	}
	if got := content(t, l, id); string(got) != want {
		t.Errorf("WriteTo = %q, want %q", got, want)
	}
	if err := l.Ack("a", id); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Head("a"); ok {
		t.Error("a's queue not empty after ack")
	}
	if err := l.Ack("a", id); !errors.Is(err, ErrNotQueued) {
		t.Errorf("second Ack = %v, want ErrNotQueued", err)
	}
	if got := content(t, l, id); string(got) != want {
		t.Errorf("after one ack WriteTo = %q, want %q", got, want)
	}
	if err := l.Ack("b", id); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteTo(io.Discard, id); !errors.Is(err, ErrNoMessage) {
		t.Errorf("WriteTo after last ack = %v, want ErrNoMessage", err)
	}
	l.mu.Lock()
	nmsg, nq := len(l.msgs), len(l.queues)
	l.mu.Unlock()
	if nmsg != 0 || nq != 0 {
		t.Errorf("index holds %d messages, %d queues after all acks; want none", nmsg, nq)
	}
	if err := l.Ack("c", id); !errors.Is(err, ErrNotQueued) {
		t.Errorf("Ack by unknown device = %v, want ErrNotQueued", err)
	}
}

func TestPriorityOrder(t *testing.T) {
	l, _ := openMem(t, nil)
	a := post(t, l, Normal, []byte("a"), "d")
	b := post(t, l, Normal, []byte("b"), "d")
	c := post(t, l, High, []byte("c"), "d")
	e := post(t, l, High, []byte("e"), "d")
	if got, want := drain(t, l, "d"), []ID{c, e, a, b}; !slices.Equal(got, want) {
		t.Errorf("delivery order %v, want %v (high first, then by id)", got, want)
	}
}

func TestAckOutOfOrder(t *testing.T) {
	l, _ := openMem(t, nil)
	var ids []ID
	for i := range 5 {
		ids = append(ids, post(t, l, Normal, []byte{byte('0' + i)}, "d"))
	}
	if err := l.Ack("d", ids[2]); err != nil {
		t.Fatalf("Ack of a middle entry: %v", err)
	}
	if got, want := drain(t, l, "d"), []ID{ids[0], ids[1], ids[3], ids[4]}; !slices.Equal(got, want) {
		t.Errorf("queue %v, want %v", got, want)
	}
}

func TestIDsAndReceipts(t *testing.T) {
	now := time.Date(2026, 11, 30, 1, 45, 24, 979e6, time.UTC)
	l, _ := openMem(t, nil, func(o *Options) { o.Now = func() time.Time { return now } })
	var last ID
	for i := range 20 {
		d := l.Draft()
		d.Write([]byte("notepost"))
		var seen [][]ID
		e := func(id ID, posted time.Time, batch []ID) []byte {
			seen = append(seen, slices.Clone(batch))
			if !posted.Equal(now) {
				t.Errorf("posted %v, want %v", posted, now)
			}
			return nil
		}
		rs, err := d.Commit(
			Message{To: []string{"x"}, Off: 0, Len: 4, Envelope: e},
			Message{To: []string{"y"}, Off: 4, Len: 4, Envelope: e})
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 2 || rs[1].ID != rs[0].ID+1 {
			t.Fatalf("receipts %v: want two consecutive ids", rs)
		}
		if rs[0].ID <= last {
			t.Fatalf("commit %d: id %v not above previous %v", i, rs[0].ID, last)
		}
		if i == 0 && rs[0].ID < ID(now.UnixNano()) {
			t.Errorf("first id %v below the clock %v", rs[0].ID, now.UnixNano())
		}
		last = rs[1].ID
		if !rs[0].Posted.Equal(now) || !rs[1].Posted.Equal(now) {
			t.Errorf("receipts posted %v, %v; want %v", rs[0].Posted, rs[1].Posted, now)
		}
		want := []ID{rs[0].ID, rs[1].ID}
		if len(seen) != 2 || !slices.Equal(seen[0], want) || !slices.Equal(seen[1], want) {
			t.Errorf("envelope batches %v, want %v twice", seen, want)
		}
	}
}

func TestDraftErrors(t *testing.T) {
	l, _ := openMem(t, nil)
	d := l.Draft()
	d.Write([]byte("12345"))
	for _, m := range []Message{
		{To: []string{"a"}, Off: 0, Len: 6},
		{To: []string{"a"}, Off: 6, Len: 0},
		{To: []string{"a"}, Off: -1, Len: 2},
		{To: []string{"a"}, Off: 2, Len: -1},
	} {
		d := l.Draft()
		d.Write([]byte("12345"))
		if _, err := d.Commit(m); !errors.Is(err, ErrRange) {
			t.Errorf("Commit(off %d len %d) = %v, want ErrRange", m.Off, m.Len, err)
		}
	}
	if _, err := d.Commit(Message{To: []string{"a"}, Prio: High + 1, Len: 1}); !errors.Is(err, ErrPriority) {
		t.Errorf("Commit with priority %d = %v, want ErrPriority", High+1, err)
	}
	if _, err := d.Commit(Message{To: []string{"a"}, Len: 1}); !errors.Is(err, ErrDraftDone) {
		t.Errorf("second Commit = %v, want ErrDraftDone", err)
	}
	if _, err := d.Write([]byte("x")); !errors.Is(err, ErrDraftDone) {
		t.Errorf("Write after Commit = %v, want ErrDraftDone", err)
	}
	d.Abort() // no-op after commit
	if n := l.Len("a"); n != 0 {
		t.Errorf("failed commits left %d entries", n)
	}

	// A message for nobody gets a receipt and is forgotten at once.
	d = l.Draft()
	d.Write([]byte("x"))
	rs, err := d.Commit(Message{Len: 1})
	if err != nil || len(rs) != 1 {
		t.Fatalf("Commit for nobody = %v, %v", rs, err)
	}
	if _, err := l.WriteTo(io.Discard, rs[0].ID); !errors.Is(err, ErrNoMessage) {
		t.Errorf("WriteTo of a message for nobody = %v, want ErrNoMessage", err)
	}
	// An empty commit stores nothing.
	if rs, err := l.Draft().Commit(); err != nil || rs != nil {
		t.Errorf("empty Commit = %v, %v", rs, err)
	}
}

func TestClosed(t *testing.T) {
	l, _ := openMem(t, nil)
	id := post(t, l, Normal, []byte("x"), "a")
	d := l.Draft()
	d.Write([]byte("pending"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := d.Commit(Message{To: []string{"a"}, Len: 1}); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close = %v, want ErrClosed", err)
	}
	if _, err := l.Draft().Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if err := l.Ack("a", id); !errors.Is(err, ErrClosed) {
		t.Errorf("Ack after Close = %v, want ErrClosed", err)
	}
	if err := l.CopyQueue("a", "b"); !errors.Is(err, ErrClosed) {
		t.Errorf("CopyQueue after Close = %v, want ErrClosed", err)
	}
	if _, err := l.WriteTo(io.Discard, id); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteTo after Close = %v, want ErrClosed", err)
	}
}

func TestRestart(t *testing.T) {
	l, fsys := openMem(t, nil)
	var want = map[string][]ID{}
	bodies := map[ID]string{}
	for i := range 50 {
		body := fmt.Sprintf("message %d %s", i, strings.Repeat("x", i*37))
		devs := []string{"a", "b", "c"}[:1+i%3]
		prio := Normal
		if i%7 == 0 {
			prio = High
		}
		id := post(t, l, prio, []byte(body), devs...)
		bodies[id] = string(content(t, l, id))
	}
	// Ack a few here and there, including out of order.
	for _, dev := range []string{"a", "b"} {
		q := l.Queue(dev)
		for i := 0; i < len(q); i += 3 {
			if err := l.Ack(dev, q[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, dev := range []string{"a", "b", "c"} {
		want[dev] = l.Queue(dev)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, _ := openMem(t, fsys)
	for dev, ids := range want {
		if got := l2.Queue(dev); !slices.Equal(got, ids) {
			t.Errorf("after restart %s's queue = %v, want %v", dev, got, ids)
		}
		for _, id := range ids {
			if got := content(t, l2, id); string(got) != bodies[id] {
				t.Errorf("after restart message %v = %q, want %q", id, got, bodies[id])
			}
		}
	}
	l2.mu.Lock()
	nmsg := len(l2.msgs)
	l2.mu.Unlock()
	live := map[ID]bool{}
	for _, ids := range want {
		for _, id := range ids {
			live[id] = true
		}
	}
	if nmsg != len(live) {
		t.Errorf("after restart %d messages indexed, want %d", nmsg, len(live))
	}
}

func TestIDsAfterRestartWithClockBack(t *testing.T) {
	clock := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	l, fsys := openMem(t, nil, func(o *Options) { o.Now = now })
	var last ID
	for range 3 {
		last = post(t, l, Normal, []byte("x"), "a")
	}
	drain(t, l, "a") // nothing left in the log to remember the ids by
	l.Close()

	clock = clock.Add(-time.Hour)
	l2, _ := openMem(t, fsys, func(o *Options) { o.Now = now })
	id := post(t, l2, Normal, []byte("y"), "a")
	if id <= last {
		t.Fatalf("id after restart with the clock set back %v, not above %v", id, last)
	}
	l2.Close()

	// Without the ceiling file, the ids in the log still keep order.
	if err := fsys.Remove(testDir + "/" + floorName); err != nil {
		t.Fatal(err)
	}
	l3, _ := openMem(t, fsys, func(o *Options) { o.Now = now })
	if id3 := post(t, l3, Normal, []byte("z"), "a"); id3 <= id {
		t.Fatalf("id after restart without ceiling %v, not above %v", id3, id)
	}
}

func TestCeilingRaisedBeforeUse(t *testing.T) {
	clock := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	l, fsys := openMem(t, nil, func(o *Options) { o.Now = func() time.Time { return clock } })
	// Use up the ceiling so that a commit must raise it first.
	l.pendMu.Lock()
	l.nextID = l.ceiling - 1
	l.pendMu.Unlock()
	d := l.Draft()
	d.Write([]byte("ab"))
	rs, err := d.Commit(Message{To: []string{"a"}, Len: 1}, Message{To: []string{"a"}, Off: 1, Len: 1})
	if err != nil {
		t.Fatal(err)
	}
	c, err := readCeiling(fsys, testDir)
	if err != nil {
		t.Fatal(err)
	}
	if c <= rs[1].ID {
		t.Errorf("persisted ceiling %v not above issued id %v", c, rs[1].ID)
	}
}

package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"mnm/durable"
)

// randomData returns n deterministic pseudo-random bytes.
func randomData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}

func TestLargeDraftStreams(t *testing.T) {
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 1 << 20 })
	data := randomData(1, 5<<20+12345)
	rng := rand.New(rand.NewPCG(7, 7))
	d := l.Draft().(*draft)
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(3*chunkSize))
		if w, err := d.Write(rest[:n]); err != nil || w != n {
			t.Fatalf("Write = %d, %v", w, err)
		}
		if b := d.buffered(); b > chunkSize {
			t.Fatalf("draft holds %d bytes in memory, more than a chunk (%d)", b, chunkSize)
		}
		rest = rest[n:]
	}
	if len(d.chunks) < len(data)/chunkSize-1 {
		t.Errorf("only %d chunks written for %d bytes", len(d.chunks), len(data))
	}
	// Like PostNotify: the first bytes are a note for some, the rest the post.
	const noteLen = 1000
	rs, err := d.Commit(
		Message{To: []string{"n1", "n2"}, Len: noteLen, Envelope: env("note")},
		Message{To: []string{"p1"}, Off: noteLen, Len: int64(len(data) - noteLen), Envelope: env("post")})
	if err != nil {
		t.Fatal(err)
	}
	check := func(l *Log) {
		t.Helper()
		note, post := content(t, l, rs[0].ID), content(t, l, rs[1].ID)
		if e := env("note")(rs[0].ID, rs[0].Posted, nil); !bytes.Equal(note, append(e, data[:noteLen]...)) {
			t.Errorf("note differs (%d bytes)", len(note))
		}
		if e := env("post")(rs[1].ID, rs[1].Posted, nil); !bytes.Equal(post, append(e, data[noteLen:]...)) {
			t.Errorf("post differs (%d bytes)", len(post))
		}
		for dev, want := range map[string]ID{"n1": rs[0].ID, "n2": rs[0].ID, "p1": rs[1].ID} {
			if got := l.Queue(dev); !slices.Equal(got, []ID{want}) {
				t.Errorf("%s's queue = %v, want [%v]", dev, got, want)
			}
		}
	}
	check(l)
	l.Close()
	l2, _ := openMem(t, fsys)
	check(l2)
}

// Data ranges may start and end anywhere relative to chunk boundaries.
func TestDraftRanges(t *testing.T) {
	l, _ := openMem(t, nil)
	data := randomData(2, 3*chunkSize+77)
	d := l.Draft()
	d.Write(data)
	ranges := [][2]int64{
		{0, 0}, {0, 1}, {0, chunkSize}, {chunkSize - 1, 2}, {chunkSize, chunkSize},
		{3 * chunkSize, 77}, {3*chunkSize + 76, 1}, {5, int64(len(data)) - 5}, {int64(len(data)), 0},
	}
	var msgs []Message
	for i, r := range ranges {
		msgs = append(msgs, Message{To: []string{fmt.Sprint("d", i)}, Off: r[0], Len: r[1]})
	}
	rs, err := d.Commit(msgs...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range ranges {
		if got := content(t, l, rs[i].ID); !bytes.Equal(got, data[r[0]:r[0]+r[1]]) {
			t.Errorf("range [%d,+%d): got %d bytes, differs", r[0], r[1], len(got))
		}
	}
}

// A small post allocates only about its own size.
func TestSmallDraftAllocation(t *testing.T) {
	l, _ := openMem(t, nil)
	d := l.Draft().(*draft)
	d.Write(make([]byte, 300))
	if c := cap(d.buf); c > 1024 {
		t.Errorf("a 300-byte draft holds a %d-byte buffer", c)
	}
	d.Abort()
}

func TestAbortedDraft(t *testing.T) {
	l, fsys := openMem(t, nil)
	keep := post(t, l, Normal, []byte("keep"), "a")
	d := l.Draft().(*draft)
	d.Write(randomData(3, 4*chunkSize))
	if len(d.chunks) == 0 {
		t.Fatal("no chunk written")
	}
	pin := d.pin
	d.Abort()
	d.Abort()
	if n := pin.pins.Load(); n != 0 {
		t.Errorf("segment still pinned %d times after abort", n)
	}
	if _, err := d.Commit(Message{To: []string{"a"}, Len: 1}); !errors.Is(err, ErrDraftDone) {
		t.Errorf("Commit after Abort = %v, want ErrDraftDone", err)
	}
	check := func(l *Log) {
		t.Helper()
		if got := l.Queue("a"); !slices.Equal(got, []ID{keep}) {
			t.Errorf("queue = %v, want [%v]", got, keep)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.msgs) != 1 || len(l.queues) != 1 {
			t.Errorf("%d messages, %d queues; want 1, 1", len(l.msgs), len(l.queues))
		}
	}
	check(l)
	l.Close()
	l2, _ := openMem(t, fsys)
	check(l2)
}

// TestFailedWriteFailsCommit: the Draft contract. A refused Write (here for
// want of space) fails the Commit, even once space has returned, and nothing
// is stored; a later draft commits as usual.
func TestFailedWriteFailsCommit(t *testing.T) {
	fsys := durable.NewMemFS()
	l, _ := openMem(t, fsys, func(o *Options) { o.MinFree = 1 << 20 })
	l.pendMu.Lock()
	l.spaceEvery = 0 // ask the FS at every append
	l.pendMu.Unlock()
	fsys.SetCapacity(fsys.Used() + 512<<10) // below the watermark
	d := l.Draft()
	if _, err := d.Write(randomData(4, 2*chunkSize)); !errors.Is(err, ErrFull) {
		t.Fatalf("Write on a full disk = %v, want ErrFull", err)
	}
	fsys.SetCapacity(0) // space returns
	if _, err := d.Commit(Message{To: []string{"a"}, Len: 1}); !errors.Is(err, ErrFull) {
		t.Errorf("Commit after a failed Write = %v, want the Write's ErrFull", err)
	}
	if n := l.Len("a"); n != 0 {
		t.Errorf("%d messages queued after a failed Write", n)
	}
	post(t, l, Normal, []byte("after"), "a")
	if n := l.Len("a"); n != 1 {
		t.Errorf("%d messages queued after a later draft, want 1", n)
	}
}

// Memory stays bounded when several large uploads outrun the writer: chunk
// writers wait for the pending batch to drain.
func TestPendingBounded(t *testing.T) {
	l, fsys := openMem(t, nil)
	release := make(chan struct{})
	var once sync.Once
	fsys.SetHook(func(op durable.Op, name string) error {
		if op == durable.OpWrite {
			once.Do(func() { <-release }) // stall the writer on its first write
		}
		return nil
	})
	const uploads = 3
	done := make(chan error)
	for range uploads {
		go func() {
			d := l.Draft()
			defer d.Abort()
			_, err := d.Write(make([]byte, 2*maxPending))
			done <- err
		}()
	}
	// With the writer stalled, the uploads can only fill the pending batch
	// up to its bound; wait until they are all blocked on it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.pendMu.Lock()
		n := len(l.pend.buf)
		l.pendMu.Unlock()
		if n >= maxPending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pending batch never filled")
		}
		time.Sleep(time.Millisecond) // polling a condition with a deadline
	}
	select {
	case err := <-done:
		t.Fatalf("an upload finished while the writer was stalled: %v", err)
	default:
	}
	l.pendMu.Lock()
	n := len(l.pend.buf)
	l.pendMu.Unlock()
	if n > maxPending+uploads*(chunkSize+frameHeaderSize) {
		t.Errorf("pending batch grew to %d bytes, bound %d", n, maxPending)
	}
	close(release)
	for range uploads {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestWriteToStreams(t *testing.T) {
	l, _ := openMem(t, nil)
	data := randomData(4, 2<<20)
	id := post(t, l, Normal, data, "a")
	w := &maxWriter{}
	if _, err := l.WriteTo(w, id); err != nil {
		t.Fatal(err)
	}
	if w.max > chunkSize {
		t.Errorf("WriteTo wrote %d bytes at once: more than a buffer", w.max)
	}
	if w.n < int64(len(data)) {
		t.Errorf("WriteTo wrote %d bytes, want %d+", w.n, len(data))
	}
	// A failing writer's error comes back.
	if _, err := l.WriteTo(failWriter{}, id); !errors.Is(err, errBoom) {
		t.Errorf("WriteTo to a failing writer = %v, want errBoom", err)
	}
}

type maxWriter struct{ n, max int64 }

func (w *maxWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	w.max = max(w.max, int64(len(p)))
	return len(p), nil
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errBoom }

var _ io.Writer = failWriter{}

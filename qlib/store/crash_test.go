package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"mnm/durable"
)

var errBoom = errors.New("boom")

// hasAll reports, for each of devs, whether id is in its queue.
func inQueues(l *Log, id ID, devs ...string) []bool {
	var in []bool
	for _, dev := range devs {
		in = append(in, slices.Contains(l.Queue(dev), id))
	}
	return in
}

// Commits that returned survive a power loss at any moment, whatever the
// crash leaves of the unsynced tail.
func TestCrashKeepsReturnedCommits(t *testing.T) {
	tails := map[string]func(string, []byte) []byte{
		"none": nil,
		"all":  func(_ string, b []byte) []byte { return b },
		"half": func(_ string, b []byte) []byte { return b[:len(b)/2] },
		"garbage": func(_ string, b []byte) []byte {
			g := make([]byte, len(b))
			for i := range g {
				g[i] = byte(i*7 + 3)
			}
			return g
		},
		"zeroes": func(_ string, b []byte) []byte { return make([]byte, len(b)) },
	}
	for name, tail := range tails {
		t.Run(name, func(t *testing.T) {
			l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 8 << 10 })
			var mu sync.Mutex
			ok := map[ID][]byte{}
			var wg sync.WaitGroup
			const workers = 8
			enough := make(chan struct{})
			var once sync.Once
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						data := []byte(fmt.Sprintf("w%d-%d-%s", w, i, strings.Repeat("z", (i*131)%3000)))
						d := l.Draft()
						d.Write(data)
						rs, err := d.Commit(Message{To: []string{"a", fmt.Sprint("w", w)}, Len: int64(len(data))})
						if err != nil {
							return
						}
						mu.Lock()
						ok[rs[0].ID] = data
						if len(ok) >= 300 {
							once.Do(func() { close(enough) })
						}
						mu.Unlock()
					}
				}()
			}
			<-enough
			crashed := fsys.Crash(tail)
			wg.Wait()
			if err := l.Close(); !errors.Is(err, ErrFailed) {
				t.Errorf("Close after power loss = %v, want ErrFailed", err)
			}

			l2, _ := openMem(t, crashed)
			qa := l2.Queue("a")
			for id, data := range ok {
				if !slices.Contains(qa, id) {
					t.Errorf("committed message %v lost", id)
					continue
				}
				if got := content(t, l2, id); !bytes.HasSuffix(got, data) {
					t.Errorf("message %v = %q, want data %q", id, got, data)
				}
			}
			if !slices.IsSorted(qa) {
				t.Errorf("queue out of order after recovery")
			}
		})
	}
}

// A commit cut short by a power loss during its fsync is present for all of
// its recipients or for none, wherever the torn write ends.
func TestCrashCommitAtomic(t *testing.T) {
	for _, size := range []int{100, 3*chunkSize + 500} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
			// run commits data as a note and a post for three devices
			// and loses power at its fsync, keeping keep(unsynced) bytes.
			run := func(keep func(n int) int) (before ID, after *Log, unsynced []byte) {
				l, fsys := openMem(t, nil)
				before = post(t, l, Normal, []byte("earlier"), "a")
				crash := powerLossAtSync(fsys, keep)
				d := l.Draft()
				d.Write(data)
				_, err := d.Commit(
					Message{To: []string{"a", "b"}, Len: 10},
					Message{To: []string{"a", "b", "c"}, Off: 10, Len: int64(size - 10)})
				if err == nil {
					t.Fatal("commit succeeded although its fsync failed")
				}
				l.Close()
				crashed, unsynced := crash()
				after, _ = openMem(t, crashed)
				return before, after, unsynced
			}
			_, _, unsynced := run(func(n int) int { return 0 })
			n := len(unsynced)
			if n == 0 {
				t.Fatal("nothing unsynced at the fsync")
			}
			// Every cut of a small write; for a big one, cuts around
			// each frame's start and end and a spread between.
			var keeps []int
			if n < 2000 {
				for k := range n + 1 {
					keeps = append(keeps, k)
				}
			} else {
				for _, off := range append(frameOffsets(t, unsynced), n) {
					for _, d := range []int{-1, 0, 1, frameHeaderSize - 1, frameHeaderSize} {
						if k := off + d; k >= 0 && k <= n {
							keeps = append(keeps, k)
						}
					}
				}
				for k := 0; k < n; k += n / 40 {
					keeps = append(keeps, k)
				}
			}
			present := 0
			for _, k := range keeps {
				before, l, _ := run(func(int) int { return k })
				if got := l.Queue("a"); len(got) == 0 || got[0] != before {
					t.Fatalf("keep %d: earlier durable message lost: a = %v", k, got)
				}
				qa := l.Queue("a")
				switch len(qa) {
				case 1:
					if len(l.Queue("b"))+len(l.Queue("c")) != 0 {
						t.Fatalf("keep %d of %d: commit half there: a=%v b=%v c=%v",
							k, n, qa, l.Queue("b"), l.Queue("c"))
					}
				case 3:
					present++
					note, post := qa[1], qa[2]
					if !slices.Equal(l.Queue("b"), []ID{note, post}) || !slices.Equal(l.Queue("c"), []ID{post}) {
						t.Fatalf("keep %d of %d: commit half there: a=%v b=%v c=%v",
							k, n, qa, l.Queue("b"), l.Queue("c"))
					}
					if got := content(t, l, post); !bytes.Equal(got, data[10:]) {
						t.Fatalf("keep %d: recovered post differs", k)
					}
					if got := content(t, l, note); !bytes.Equal(got, data[:10]) {
						t.Fatalf("keep %d: recovered note differs", k)
					}
				default:
					t.Fatalf("keep %d: a = %v", k, qa)
				}
				l.Close()
			}
			if present == 0 {
				t.Error("the commit never survived, even with its whole record on disk")
			}
		})
	}
}

func TestTornTailTruncated(t *testing.T) {
	l, fsys := openMem(t, nil)
	id := post(t, l, Normal, []byte("durable"), "a")
	var crashed *durable.MemFS
	fsys.SetHook(func(op durable.Op, name string) error {
		if op == durable.OpSync && crashed == nil {
			crashed = fsys.Crash(func(_ string, b []byte) []byte { return b[:max(len(b)-3, 0)] })
			return errBoom
		}
		return nil
	})
	d := l.Draft()
	d.Write([]byte("lost"))
	if _, err := d.Commit(Message{To: []string{"a"}, Len: 4}); err == nil {
		t.Fatal("commit succeeded although its fsync failed")
	}
	l.Close()
	seg := testDir + "/" + segName(1)
	before, _ := crashed.ReadFile(seg)

	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	l2, _ := openMem(t, crashed, func(o *Options) { o.Logger = logger })
	if !strings.Contains(logs.String(), "truncating torn tail") || !strings.Contains(logs.String(), seg) {
		t.Errorf("no log of the truncation naming %s:\n%s", seg, logs)
	}
	after, _ := crashed.ReadFile(seg)
	if len(after) >= len(before) || !bytes.Equal(after, before[:len(after)]) {
		t.Errorf("segment %d bytes, was %d: want a truncated prefix", len(after), len(before))
	}
	if got := l2.Queue("a"); !slices.Equal(got, []ID{id}) {
		t.Errorf("queue after recovery %v, want [%v]", got, id)
	}
	l2.Close()

	logs = &syncBuffer{}
	openMem(t, crashed, func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	if strings.Contains(logs.String(), "truncating") {
		t.Errorf("second recovery truncated again:\n%s", logs)
	}
}

// frameOffsets returns the offsets of the frames in a segment's bytes.
func frameOffsets(t testing.TB, b []byte) []int {
	t.Helper()
	var offs []int
	for off := 0; off < len(b); {
		offs = append(offs, off)
		off += frameHeaderSize + int(binary.LittleEndian.Uint32(b[off+4:]))
	}
	return offs
}

func TestCorruptRecordIsAnError(t *testing.T) {
	// build writes several segments of acknowledged commits, each commit
	// fsynced on its own.
	build := func() *durable.MemFS {
		l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 2 << 10 })
		for i := range 40 {
			post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 200), "a")
		}
		l.Close()
		return fsys
	}
	damage := func(fsys *durable.MemFS, seq uint64, pick func(offs []int) int) (string, int) {
		name := testDir + "/" + segName(seq)
		b, err := fsys.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		at := pick(frameOffsets(t, b))
		b[at] ^= 0x40
		fsys.WriteFile(name, b)
		return name, at
	}
	cases := []struct {
		name string
		seq  uint64
		pick func(offs []int) int
	}{
		{"payload in first segment", 1, func(o []int) int { return o[1] + frameHeaderSize + 5 }},
		{"header in first segment", 1, func(o []int) int { return o[1] + 4 }},
		{"last frame of a middle segment", 3, func(o []int) int { return o[len(o)-1] + frameHeaderSize + 1 }},
		// In the last segment, a damaged frame followed by frames
		// written after later fsyncs is damage, not a torn tail.
		{"early frame of last written segment", 0, func(o []int) int { return o[0] + frameHeaderSize + 2 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := build()
			seq := c.seq
			if seq == 0 {
				names, _ := fsys.ReadDir(testDir)
				for _, n := range names {
					if s, ok := parseSegName(n); ok {
						if b, _ := fsys.ReadFile(testDir + "/" + n); len(b) > 0 {
							seq = s // the last segment with data
						}
					}
				}
				// Make it the last segment: drop the empty head the
				// store created at its last open.
				for s := seq + 1; ; s++ {
					if fsys.Remove(testDir+"/"+segName(s)) != nil {
						break
					}
				}
			}
			name, at := damage(fsys, seq, c.pick)
			_, err := Open(Options{Dir: testDir, FS: fsys, Logger: quiet()})
			if err == nil {
				t.Fatalf("Open succeeded with damage at %s offset %d", name, at)
			}
			if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "offset") {
				t.Errorf("error %q does not name the file and offset", err)
			}
		})
	}
}

// The scan for later frames also runs when the damaged frame is the last
// one: then it is a torn tail and is truncated.
func TestDamagedLastFrameTruncated(t *testing.T) {
	l, fsys := openMem(t, nil)
	a := post(t, l, Normal, []byte("first"), "a")
	post(t, l, Normal, []byte("second"), "a")
	l.Close()
	name := testDir + "/" + segName(1)
	b, _ := fsys.ReadFile(name)
	offs := frameOffsets(t, b)
	b[offs[len(offs)-1]+frameHeaderSize] ^= 1
	fsys.WriteFile(name, b)
	fsys.Remove(testDir + "/" + segName(2))
	l2, _ := openMem(t, fsys)
	if got := l2.Queue("a"); !slices.Equal(got, []ID{a}) {
		t.Errorf("queue %v, want [%v]", got, a)
	}
}

func TestSegmentGapIsAnError(t *testing.T) {
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 1 << 10 })
	for i := range 20 {
		post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 300), "a")
	}
	l.Close()
	if err := fsys.Remove(testDir + "/" + segName(3)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Options{Dir: testDir, FS: fsys, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), segName(4)) {
		t.Errorf("Open with a missing segment = %v, want an error naming %s", err, segName(4))
	}
}

func TestLeftoverTempRemoved(t *testing.T) {
	fsys := durable.NewMemFS()
	fsys.MkdirAll(testDir, 0o700)
	fsys.WriteFile(testDir+"/idfloor.tmp", []byte("junk"))
	openMem(t, fsys)
	if _, err := fsys.ReadFile(testDir + "/idfloor.tmp"); err == nil {
		t.Error("leftover temporary file still there")
	}
}

func TestBadCeilingFile(t *testing.T) {
	fsys := durable.NewMemFS()
	fsys.MkdirAll(testDir, 0o700)
	fsys.WriteFile(testDir+"/"+floorName, []byte("not an id\n"))
	if _, err := Open(Options{Dir: testDir, FS: fsys, Logger: quiet()}); err == nil || !strings.Contains(err.Error(), floorName) {
		t.Errorf("Open with a bad ceiling file = %v, want an error naming it", err)
	}
}

// Injected write and fsync errors fail the commit and stop the store;
// nothing committed before is lost.
func TestIOErrorsFailStop(t *testing.T) {
	for _, op := range []durable.Op{durable.OpWrite, durable.OpSync} {
		t.Run(op.String(), func(t *testing.T) {
			l, fsys := openMem(t, nil)
			var ids []ID
			for i := range 5 {
				ids = append(ids, post(t, l, Normal, []byte{byte(i)}, "a", "b"))
			}
			if err := l.Ack("a", ids[0]); err != nil {
				t.Fatal(err)
			}
			fsys.FailNth(op, 1, errBoom)
			d := l.Draft()
			d.Write([]byte("doomed"))
			_, err := d.Commit(Message{To: []string{"a"}, Len: 6})
			if !errors.Is(err, ErrFailed) || !errors.Is(err, errBoom) {
				t.Fatalf("Commit with failing %v = %v, want ErrFailed wrapping the cause", op, err)
			}
			// Everything later fails too, even though the fault is gone.
			d = l.Draft()
			if _, err := d.Write([]byte("x")); !errors.Is(err, ErrFailed) {
				t.Errorf("Write after failure = %v", err)
			}
			if err := l.Ack("b", ids[1]); !errors.Is(err, ErrFailed) {
				t.Errorf("Ack after failure = %v", err)
			}
			if err := l.CopyQueue("b", "c"); !errors.Is(err, ErrFailed) {
				t.Errorf("CopyQueue after failure = %v", err)
			}
			if _, err := l.WriteTo(&bytes.Buffer{}, ids[1]); !errors.Is(err, ErrFailed) {
				t.Errorf("WriteTo after failure = %v", err)
			}
			if err := l.Close(); !errors.Is(err, ErrFailed) {
				t.Errorf("Close after failure = %v", err)
			}
			l2, _ := openMem(t, fsys.Crash(nil))
			if got := l2.Queue("b"); !slices.Equal(got, ids) {
				t.Errorf("after restart b = %v, want %v", got, ids)
			}
			if got := l2.Queue("a"); len(got) != 5 && len(got) != 4 {
				t.Errorf("after restart a = %v", got)
			}
		})
	}
}

// Failures outside the commit path fail stop as well.
func TestRotationAndCeilingErrors(t *testing.T) {
	cases := []struct {
		op durable.Op
		n  int
	}{
		{durable.OpOpen, 1},    // creating the next segment
		{durable.OpSyncDir, 1}, // syncing the directory after creating it
		{durable.OpRename, 1},  // raising the id ceiling
	}
	for _, c := range cases {
		t.Run(c.op.String(), func(t *testing.T) {
			l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 1 << 10 })
			if c.op == durable.OpRename {
				l.pendMu.Lock()
				l.nextID = l.ceiling
				l.pendMu.Unlock()
			}
			fsys.FailNth(c.op, c.n, errBoom)
			var err error
			for i := 0; i < 10 && err == nil; i++ {
				d := l.Draft()
				d.Write(bytes.Repeat([]byte{1}, 600))
				_, err = d.Commit(Message{To: []string{"a"}, Len: 600})
			}
			if !errors.Is(err, ErrFailed) || !errors.Is(err, errBoom) {
				t.Fatalf("commits with failing %v: %v, want ErrFailed", c.op, err)
			}
		})
	}
}

// Random workloads against a model, with power losses in between (and
// group posts, whose devices go in device sets): every acknowledged commit
// survives, acked messages may come back only if the
// ack was not yet durable, and nothing else appears.
func TestCrashRandomized(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	fsys := durable.NewMemFS()
	committed := map[ID]string{} // every commit that returned
	acked := map[string]map[ID]bool{"a": {}, "b": {}}
	for round := range 12 {
		l, err := Open(Options{Dir: testDir, FS: fsys, Logger: quiet(), SegmentSize: 4 << 10})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// Check the state against the model.
		for _, dev := range []string{"a", "b"} {
			q := l.Queue(dev)
			if !slices.IsSorted(q) {
				t.Fatalf("round %d: %s out of order", round, dev)
			}
			for _, id := range q {
				if _, ok := committed[id]; !ok {
					t.Fatalf("round %d: %s has %v, never committed", round, dev, id)
				}
			}
			for id := range committed {
				if !acked[dev][id] && !slices.Contains(q, id) {
					t.Fatalf("round %d: %s lost %v", round, dev, id)
				}
			}
			for _, id := range q {
				if got := content(t, l, id); !bytes.HasSuffix(got, []byte(committed[id])) {
					t.Fatalf("round %d: %v has wrong content", round, id)
				}
			}
		}
		for range 40 + rng.IntN(40) {
			switch rng.IntN(4) {
			case 0, 1:
				data := strings.Repeat(string(rune('a'+rng.IntN(26))), rng.IntN(3*chunkSize/2))
				to := []string{"a", "b"}
				if rng.IntN(3) == 0 {
					// A group post: its devices go in a device
					// set, copied forward by compaction.
					to = append(bigSet("g", minSetDevs), to...)
				}
				d := l.Draft()
				d.Write([]byte(data))
				rs, err := d.Commit(Message{To: to, Len: int64(len(data))})
				if err != nil {
					t.Fatal(err)
				}
				committed[rs[0].ID] = data
			case 2:
				dev := []string{"a", "b"}[rng.IntN(2)]
				if id, ok := l.Head(dev); ok {
					if err := l.Ack(dev, id); err != nil {
						t.Fatal(err)
					}
					acked[dev][id] = true
				}
			case 3:
				l.compactSync()
			}
		}
		fsys = fsys.Crash(func(_ string, b []byte) []byte { return b[:rng.IntN(len(b)+1)] })
		l.Close()
	}
}

// powerLossAtSync makes fsys lose power at its next fsync, which fails with
// errBoom: the first segment keeps keep(n) of its n unsynced bytes, other
// files nothing. crash returns what the power loss left and the segment's
// unsynced bytes; the FS is nil if no fsync came.
func powerLossAtSync(fsys *durable.MemFS, keep func(n int) int) (crash func() (*durable.MemFS, []byte)) {
	var crashed *durable.MemFS
	var unsynced []byte
	fsys.SetHook(func(op durable.Op, name string) error {
		if op == durable.OpSync && crashed == nil {
			crashed = fsys.Crash(func(name string, b []byte) []byte {
				if !strings.HasSuffix(name, segName(1)) {
					return nil
				}
				unsynced = b
				return b[:min(keep(len(b)), len(b))]
			})
			return errBoom
		}
		return nil
	})
	return func() (*durable.MemFS, []byte) { return crashed, unsynced }
}

package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"mnm/durable"
)

// TestSnapshotUnderLoad takes a snapshot while commits, acks and
// compaction run, copies it while they go on, and opens the copy: every
// message committed before the snapshot is there with its bytes, and the
// listed segments outlive compaction until the snapshot is released.
func TestSnapshotUnderLoad(t *testing.T) {
	const segSize = 16 << 10
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = segSize })

	var (
		mu     sync.Mutex
		bodies = map[ID][]byte{} // committed to "keep", never acked
	)
	commit := func(i int) (ID, error) {
		data := bytes.Repeat([]byte(fmt.Sprintf("m%05d.", i)), 20+i%40)
		if i%97 == 0 {
			data = randomData(uint64(i), 2*chunkSize+i) // chunked
		}
		d := l.Draft()
		if _, err := d.Write(data); err != nil {
			return 0, err
		}
		to := []string{"churn"}
		if i%10 == 0 {
			to = append(to, "keep")
		}
		rs, err := d.Commit(Message{To: to, Len: int64(len(data)), Envelope: env("e")})
		if err != nil {
			return 0, err
		}
		if len(to) > 1 {
			mu.Lock()
			bodies[rs[0].ID] = data
			mu.Unlock()
		}
		return rs[0].ID, nil
	}
	// A backlog over several segments, most of it acked by "churn" so that
	// compaction has work (copying "keep"'s messages forward).
	for i := range 300 {
		if _, err := commit(i); err != nil {
			t.Fatal(err)
		}
	}
	drain(t, l, "churn")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var n atomic.Int64
	n.Store(1000)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := commit(int(n.Add(1))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() { // the churning device acks what comes
		for {
			select {
			case <-stop:
				return
			default:
			}
			if id, ok := l.Head("churn"); ok {
				if err := l.Ack("churn", id); err != nil && !errors.Is(err, ErrNotQueued) {
					t.Error(err)
					return
				}
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			l.compactSync()
		}
	})

	waitFor(t, "compaction under load", func() bool {
		_, err := fsys.ReadFile(testDir + "/" + segName(1))
		return err != nil && n.Load() > 1500
	})
	// Everything committed before the snapshot is the reference.
	mu.Lock()
	before := make(map[ID][]byte, len(bodies))
	for id, b := range bodies {
		before[id] = b
	}
	mu.Unlock()
	snap, err := l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()

	// Copy while the load goes on, then let compaction run: the listed
	// segments must survive it.
	dst := durable.NewMemFS()
	if err := dst.MkdirAll(testDir, dirPerm); err != nil {
		t.Fatal(err)
	}
	var segNames []string
	for _, f := range snap.Files() {
		data, err := io.ReadAll(f.Open())
		if err != nil {
			t.Fatalf("read %s: %v", f.Name, err)
		}
		if int64(len(data)) != f.Size {
			t.Fatalf("%s: read %d bytes of %d", f.Name, len(data), f.Size)
		}
		if err := dst.WriteFile(testDir+"/"+f.Name, data); err != nil {
			t.Fatal(err)
		}
		if f.Name != floorName {
			segNames = append(segNames, f.Name)
		}
	}
	at := n.Load()
	waitFor(t, "commits after the snapshot", func() bool { return n.Load() > at+500 })
	l.compactSync()
	for _, name := range segNames {
		if _, err := fsys.ReadFile(testDir + "/" + name); err != nil {
			t.Errorf("segment %s of the held snapshot deleted: %v", name, err)
		}
	}
	close(stop)
	wg.Wait()
	snap.Release()
	drain(t, l, "churn")
	l.compactSync()
	if _, err := fsys.ReadFile(testDir + "/" + segNames[0]); err == nil {
		t.Errorf("oldest snapshot segment %s still present after release: compaction did not resume", segNames[0])
	}

	cp, err := Open(Options{Dir: testDir, FS: dst, Logger: quiet(), SegmentSize: segSize})
	if err != nil {
		t.Fatalf("open the copy: %v", err)
	}
	defer cp.Close()
	inCopy := map[ID]bool{}
	for _, id := range cp.Queue("keep") {
		inCopy[id] = true
	}
	for id, want := range before {
		if !inCopy[id] {
			t.Errorf("message %v committed before the snapshot is missing from the copy", id)
			continue
		}
		var buf bytes.Buffer
		if _, err := cp.WriteTo(&buf, id); err != nil {
			t.Fatalf("copy WriteTo(%v): %v", id, err)
		}
		if !bytes.HasSuffix(buf.Bytes(), want) {
			t.Errorf("message %v: copy has other bytes", id)
		}
	}
	t.Logf("snapshot: %d files, %d bytes; %d messages before it, %d in the copy's queue",
		len(snap.Files()), snap.Bytes(), len(before), len(inCopy))
	// Ids issued by the copy continue above every id it holds.
	d := cp.Draft()
	rs, err := d.Commit(Message{To: []string{"keep"}, Envelope: env("x")})
	if err != nil {
		t.Fatal(err)
	}
	for id := range inCopy {
		if rs[0].ID <= id {
			t.Fatalf("copy issued %v, not above %v", rs[0].ID, id)
		}
	}
}

// TestSnapshotClosedStore: no snapshot of a closed store, and a snapshot
// held across Close still reads, its files closed at Release.
func TestSnapshotClosedStore(t *testing.T) {
	l, _ := openMem(t, nil)
	id := post(t, l, 0, []byte("hello"), "a")
	snap, err := l.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range snap.Files() {
		if _, err := io.ReadAll(f.Open()); err != nil {
			t.Errorf("read %s after Close: %v", f.Name, err)
		}
	}
	snap.Release()
	snap.Release() // twice is fine
	if _, err := l.Snapshot(); err == nil {
		t.Error("snapshot of a closed store")
	}
	_ = id
}

package store

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"mnm/durable"
)

// Many goroutines commit while others ack; every device's queue keeps each
// goroutine's messages in the order committed, and the acks of a shared
// queue see them in that order too.
func TestConcurrentCommitsAndAcks(t *testing.T) {
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 32 << 10 })
	const workers, each = 8, 60
	// Payload "w<worker>-<seq>" identifies a message's sender and place.
	parse := func(b []byte) (w, seq int) {
		if _, err := fmt.Sscanf(string(b[bytes.IndexByte(b, '|')+1:]), "w%d-%d", &w, &seq); err != nil {
			t.Errorf("bad payload %q: %v", b, err)
		}
		return w, seq
	}

	// The acker consumes the shared queue as it fills, woken by Watch.
	wake := make(chan struct{}, 1)
	l.Watch("shared", func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	ackDone := make(chan error)
	go func() {
		last := make([]int, workers)
		for i := range last {
			last[i] = -1
		}
		got := 0
		for got < workers*each {
			id, ok := l.Head("shared")
			if !ok {
				<-wake
				continue
			}
			var buf bytes.Buffer
			if _, err := l.WriteTo(&buf, id); err != nil {
				ackDone <- err
				return
			}
			w, seq := parse(buf.Bytes())
			if seq != last[w]+1 {
				ackDone <- fmt.Errorf("shared queue delivered w%d-%d after w%d-%d", w, seq, w, last[w])
				return
			}
			last[w] = seq
			if err := l.Ack("shared", id); err != nil {
				ackDone <- err
				return
			}
			got++
		}
		ackDone <- nil
	}()

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range each {
				data := fmt.Appendf(nil, "w%d-%d", w, seq)
				d := l.Draft()
				d.Write(data)
				_, err := d.Commit(Message{
					To:       []string{"shared", fmt.Sprint("own", w), "all"},
					Len:      int64(len(data)),
					Envelope: func(id ID, _ time.Time, _ []ID) []byte { return []byte(id.String() + "|") },
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := <-ackDone; err != nil {
		t.Fatal(err)
	}
	check := func(l *Log) {
		t.Helper()
		for w := range workers {
			q := l.Queue(fmt.Sprint("own", w))
			if len(q) != each {
				t.Fatalf("own%d has %d entries, want %d", w, len(q), each)
			}
			for i, id := range q {
				if gw, seq := parse(content(t, l, id)); gw != w || seq != i {
					t.Fatalf("own%d[%d] is w%d-%d", w, i, gw, seq)
				}
			}
		}
		all := l.Queue("all")
		if len(all) != workers*each || !slices.IsSorted(all) {
			t.Fatalf("all has %d entries (sorted %v), want %d", len(all), slices.IsSorted(all), workers*each)
		}
		last := make([]int, workers)
		for i := range last {
			last[i] = -1
		}
		for _, id := range all {
			w, seq := parse(content(t, l, id))
			if seq != last[w]+1 {
				t.Fatalf("all: w%d-%d after w%d-%d", w, seq, w, last[w])
			}
			last[w] = seq
		}
		if n := l.Len("shared"); n != 0 {
			t.Errorf("shared has %d entries after all acks", n)
		}
	}
	check(l)
	if c, s := l.nCommits.Load(), l.nSyncs.Load(); s >= c {
		t.Logf("%d commits took %d fsyncs: no grouping (possible on a loaded machine)", c, s)
	}
	l.Close()
	l2, _ := openMem(t, fsys)
	check(l2)
}

// Watch fires only once the entries are durable and visible.
func TestWatchAfterDurability(t *testing.T) {
	l, fsys := openMem(t, nil)
	inSync, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fsys.SetHook(func(op durable.Op, name string) error {
		if op == durable.OpSync {
			once.Do(func() {
				close(inSync)
				<-release
			})
		}
		return nil
	})
	fired := make(chan ID, 10)
	l.Watch("a", func() {
		id, _ := l.Head("a") // a watcher may call the store
		fired <- id
	})
	committed := make(chan ID)
	go func() {
		d := l.Draft()
		d.Write([]byte("x"))
		rs, err := d.Commit(Message{To: []string{"a", "b"}, Len: 1})
		if err != nil {
			t.Error(err)
		}
		committed <- rs[0].ID
	}()
	<-inSync
	// The fsync is in progress: nothing may be visible or announced yet.
	if _, ok := l.Head("a"); ok {
		t.Error("entry visible before its fsync completed")
	}
	select {
	case <-fired:
		t.Error("watcher called before the fsync completed")
	default:
	}
	close(release)
	id := <-committed
	if got := <-fired; got != id {
		t.Errorf("watcher saw head %v, want %v", got, id)
	}
	// Removing the watcher stops the calls.
	l.Watch("a", nil)
	post(t, l, Normal, []byte("y"), "a")
	l.Close() // waits for the writer: any call would have happened
	select {
	case <-fired:
		t.Error("watcher called after removal")
	default:
	}
}

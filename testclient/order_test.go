package testclient

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
)

func TestOrderTracker(t *testing.T) {
	tr := NewOrderTracker()
	steps := []struct {
		seq  uint64
		want Verdict
	}{
		{0, InOrder}, {1, InOrder}, {3, InOrder}, // 2 skipped for now
		{1, Duplicate}, {3, Duplicate},
		{2, Reordered}, {2, Duplicate},
		{6, InOrder}, {5, Reordered}, {8, InOrder},
	}
	for i, s := range steps {
		if got := tr.Observe("dev1", "alice", s.seq); got != s.want {
			t.Errorf("step %d seq %d: %v, want %v", i, s.seq, got, s.want)
		}
	}
	want := OrderStats{Streams: 1, Received: 7, Reorders: 2, Duplicates: 3}
	if got := tr.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
	// Seen: 0 1 2 3 5 6 8. Missing below 10: 4 7 9.
	for sent, lost := range map[uint64]uint64{0: 0, 4: 0, 5: 1, 8: 2, 9: 2, 10: 3} {
		if got := tr.Lost("dev1", "alice", sent); got != lost {
			t.Errorf("Lost(sent %d) = %d, want %d", sent, got, lost)
		}
	}
	if got := tr.Missing("dev1", "alice", 100, 4); !reflect.DeepEqual(got, []uint64{4, 7, 9, 10}) {
		t.Errorf("Missing = %v", got)
	}
	// Streams are independent.
	if tr.Observe("dev2", "alice", 1) != InOrder || tr.Observe("dev1", "bob", 0) != InOrder {
		t.Error("streams not independent")
	}
	if tr.Lost("dev2", "alice", 2) != 1 || tr.Lost("dev3", "alice", 5) != 5 {
		t.Error("Lost of other streams")
	}
	if got := tr.Missing("dev3", "alice", 3, 10); !reflect.DeepEqual(got, []uint64{0, 1, 2}) {
		t.Errorf("Missing of an unseen stream = %v", got)
	}
}

// TestOrderTrackerConcurrent feeds the tracker from many goroutines (run
// with -race).
func TestOrderTrackerConcurrent(t *testing.T) {
	tr := NewOrderTracker()
	const receivers, senders, msgs = 8, 4, 500
	var wg sync.WaitGroup
	for r := range receivers {
		wg.Go(func() {
			for s := range senders {
				for seq := range uint64(msgs) {
					if v := tr.Observe(fmt.Sprint("r", r), fmt.Sprint("s", s), seq); v != InOrder {
						t.Errorf("%v", v)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	want := OrderStats{Streams: receivers * senders, Received: receivers * senders * msgs}
	if got := tr.Stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
	if tr.Lost("r0", "s0", msgs) != 0 || tr.Lost("r0", "s0", msgs+3) != 3 {
		t.Error("Lost")
	}
}

func BenchmarkObserve(b *testing.B) {
	tr := NewOrderTracker()
	for i := range b.N {
		tr.Observe("dev", "sender", uint64(i))
	}
}

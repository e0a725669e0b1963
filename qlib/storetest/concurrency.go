package storetest

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mnm/qlib/store"
)

// testConcurrency: committers and deliverers all at once, as the server runs
// them. Several goroutines commit to overlapping sets of devices while one
// deliverer per device reads and acknowledges its queue as it fills (woken
// by Watch). Every message reaches each of its devices exactly once; each
// committer's messages of one priority reach a device in the order
// committed; all queues end empty and every message forgotten.
func testConcurrency(t *testing.T, h Harness) {
	s := open(t, h)
	st := s.Store
	const committers, each = 8, 75
	devs := []string{"all", "even", "odd", "third"}
	to := func(w, seq int) []string {
		d := []string{"all", []string{"even", "odd"}[w%2]}
		if seq%3 == 0 {
			d = append(d, "third")
		}
		return d
	}
	prio := func(seq int) store.Priority {
		if seq%5 == 0 {
			return store.High
		}
		return store.Normal
	}
	want := map[string]int{} // entries each device is to get
	for w := range committers {
		for seq := range each {
			for _, d := range to(w, seq) {
				want[d]++
			}
		}
	}
	// The envelope is the id, so that a deliverer can tell WriteTo sent
	// the message it asked for; the data names the committer and place.
	env := func(id store.ID, _ time.Time, _ []store.ID) []byte { return []byte(id.String() + "|") }
	parse := func(b []byte, id store.ID) (w, seq int, err error) {
		if _, err := fmt.Sscanf(string(b), id.String()+"|w%d-%d", &w, &seq); err != nil {
			return 0, 0, fmt.Errorf("message %v is %q: %w", id, b, err)
		}
		return w, seq, nil
	}

	type delivery struct {
		dev string
		ids []store.ID
		err error
	}
	results := make(chan delivery, len(devs))
	var acked atomic.Int64 // entries acked by every deliverer: progress
	for _, dev := range devs {
		wake := make(chan struct{}, 1)
		st.Watch(dev, func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		})
		go func() {
			var got []store.ID
			fail := func(format string, args ...any) {
				results <- delivery{dev, got, fmt.Errorf(format, args...)}
			}
			seen := map[store.ID]bool{}
			last := map[[2]int]int{} // committer and priority → last seq delivered
			for len(got) < want[dev] {
				id, ok := st.Head(dev)
				if !ok {
					select {
					case <-wake:
						continue
					case <-time.After(waitTimeout):
						fail("timed out with %d of %d entries delivered", len(got), want[dev])
						return
					}
				}
				var buf bytes.Buffer
				if _, err := st.WriteTo(&buf, id); err != nil {
					fail("WriteTo(%v): %v", id, err)
					return
				}
				w, seq, err := parse(buf.Bytes(), id)
				if err != nil {
					fail("%v", err)
					return
				}
				key := [2]int{w, int(prio(seq))}
				switch l, ok := last[key]; {
				case seen[id]:
					fail("%v delivered twice", id)
					return
				case !slices.Contains(to(w, seq), dev):
					fail("w%d-%d delivered, not for this device", w, seq)
					return
				case ok && seq <= l:
					fail("w%d-%d delivered after w%d-%d", w, seq, w, l)
					return
				}
				last[key] = seq
				if err := st.Ack(dev, id); err != nil {
					fail("Ack(%v): %v", id, err)
					return
				}
				seen[id] = true
				got = append(got, id)
				acked.Add(1)
			}
			results <- delivery{dev, got, nil}
		}()
	}

	committed := make([][]store.ID, committers) // by committer, then seq
	var wg sync.WaitGroup
	for w := range committers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range each {
				data := fmt.Appendf(nil, "w%d-%d", w, seq)
				d := st.Draft()
				if _, err := d.Write(data); err != nil {
					t.Errorf("committer %d: Write: %v", w, err)
					return
				}
				rs, err := d.Commit(store.Message{Prio: prio(seq), To: to(w, seq), Len: int64(len(data)), Envelope: env})
				if err != nil {
					t.Errorf("committer %d: Commit: %v", w, err)
					return
				}
				committed[w] = append(committed[w], rs[0].ID)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// The deliverers may still be at work: a backend that reads over a
	// network (a clustered one, under a loaded test machine) is slower
	// than the committers. They are waited for as long as they make
	// progress, and fail only if none is made for waitTimeout.
	delivered := map[string][]store.ID{}
	progress := acked.Load()
	for len(delivered) < len(devs) {
		select {
		case d := <-results:
			if d.err != nil {
				t.Errorf("%s: %v", d.dev, d.err)
			}
			delivered[d.dev] = d.ids
		case <-time.After(waitTimeout):
			if now := acked.Load(); now == progress {
				t.Fatalf("timed out waiting for the deliverers: %d of %d done, none acked anything for %v", len(delivered), len(devs), waitTimeout)
			} else {
				progress = now
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, dev := range devs {
		var wantIDs []store.ID
		for w := range committers {
			for seq, id := range committed[w] {
				if slices.Contains(to(w, seq), dev) {
					wantIDs = append(wantIDs, id)
				}
			}
		}
		slices.Sort(wantIDs)
		got := slices.Sorted(slices.Values(delivered[dev]))
		if !slices.Equal(got, wantIDs) {
			t.Errorf("%s got %d entries, not the %d committed for it", dev, len(got), len(wantIDs))
		}
		checkQueue(t, s, dev, nil)
	}
	for w := range committers {
		for _, id := range committed[w] {
			gone(t, s, id, "once every device acknowledged it")
		}
	}
}

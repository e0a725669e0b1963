package jsstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/natstest"
	"mnm/qlib"
	"mnm/qlib/store"
	"mnm/qlib/storetest"
)

// testTimeout bounds a test's JetStream calls and waits.
const testTimeout = 20 * time.Second

// harness opens stores on one shared cluster, each on a stream and subject
// prefix of its own; Reopen opens a new Store on the old one's stream.
type harness struct {
	c     *natstest.Cluster
	mu    sync.Mutex
	n     int
	where map[qlib.Store]place
}

type place struct {
	stream, prefix string
	node           uint8
}

func newHarness(t *testing.T, c *natstest.Cluster) *harness {
	return &harness{c: c, where: map[qlib.Store]place{}}
}

// open opens a Store on pl with its own connection (so that a crash can
// cut it).
func (h *harness) open(t *testing.T, pl place, maxBatch int) *Store {
	t.Helper()
	nc := h.c.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, err := Open(ctx, Options{
		JS: js, Conn: nc, Stream: pl.stream, Prefix: pl.prefix, Node: pl.node, MaxBatch: maxBatch,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	h.mu.Lock()
	h.where[s] = pl
	h.mu.Unlock()
	return s
}

func (h *harness) fresh() place {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	return place{stream: fmt.Sprintf("S%d", h.n), prefix: fmt.Sprintf("p%d", h.n)}
}

func (h *harness) Open(t *testing.T) qlib.Store { return h.open(t, h.fresh(), 0) }

func (h *harness) Reopen(t *testing.T, old qlib.Store) qlib.Store {
	h.mu.Lock()
	pl, ok := h.where[old]
	h.mu.Unlock()
	if !ok {
		t.Fatal("Reopen of a store the harness did not open")
	}
	return h.open(t, pl, 0)
}

// Crash is a frontend's crash: its connection is cut with commits in
// flight. JetStream itself keeps what it acknowledged (fsynced on a
// quorum); a power loss of the servers is not simulated here.
func (h *harness) Crash(t *testing.T, old qlib.Store) qlib.Store {
	old.(*Store).crash()
	return h.Reopen(t, old)
}

func TestContract(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	storetest.Run(t, newHarness(t, c))
}

// TestCluster runs the checks of what the contract suite cannot see:
// atomic batches, ids across frontends, wakes across frontends.
func TestCluster(t *testing.T) {
	const serverLimit = 20
	c := natstest.Start(t, natstest.Options{MaxBatchSize: serverLimit})
	h := newHarness(t, c)

	t.Run("BatchOverServerLimit", func(t *testing.T) {
		// The store believes the limit is higher than the server's: the
		// server refuses the batch, and none of it is stored.
		s := h.open(t, h.fresh(), 1000)
		defer s.Close()
		devs := make([]string, serverLimit) // 1 record + 2 per device > limit
		for i := range devs {
			devs[i] = fmt.Sprint("d", i)
		}
		d := s.Draft()
		d.Write([]byte("big group"))
		_, err := d.Commit(store.Message{To: devs, Len: 9, Envelope: func(store.ID, time.Time, []store.ID) []byte { return []byte("e") }})
		if err == nil {
			t.Fatal("commit of a batch over the server's limit succeeded")
		}
		var api *jetstream.APIError
		if !errors.As(err, &api) {
			t.Errorf("error %v: want the server's refusal", err)
		}
		for _, kind := range []string{"m", "q", "r"} {
			if n := stored(t, s, kind); n != 0 {
				t.Errorf("%d %s. messages stored by a refused batch", n, kind)
			}
		}
		for _, dev := range devs {
			if n := s.Len(dev); n != 0 {
				t.Fatalf("Len(%s) = %d after a refused batch", dev, n)
			}
		}
		// The store still works afterwards.
		d = s.Draft()
		if _, err := d.Commit(store.Message{To: []string{"d0"}, Envelope: func(store.ID, time.Time, []store.ID) []byte { return []byte("e") }}); err != nil {
			t.Fatalf("commit after a refused one: %v", err)
		}
		if n := s.Len("d0"); n != 1 {
			t.Errorf("Len(d0) = %d, want 1", n)
		}
	})

	t.Run("MergedBatches", func(t *testing.T) {
		// Concurrent commits share batches, within the batch limit (each
		// commit is 5 stream messages: at most 4 fit in 20), and still lie
		// in id order in a queue they share.
		s := h.open(t, h.fresh(), serverLimit)
		defer s.Close()
		const committers, each = 32, 8
		before := s.batches.Load()
		var wg sync.WaitGroup
		for g := range committers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var last store.ID
				for range each {
					rs, err := s.Draft().Commit(store.Message{To: []string{"all", fmt.Sprint("g", g)}})
					if err != nil {
						t.Error(err)
						return
					}
					if rs[0].ID <= last {
						t.Errorf("committer %d: id %v after %v", g, rs[0].ID, last)
					}
					last = rs[0].ID
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		batches := s.batches.Load() - before
		if batches >= committers*each {
			t.Errorf("%d commits in %d batches: none merged", committers*each, batches)
		}
		t.Logf("%d commits in %d batches", committers*each, batches)
		ids := s.Queue("all")
		if len(ids) != committers*each {
			t.Fatalf("Len(all) = %d, want %d", len(ids), committers*each)
		}
		for i := 1; i < len(ids); i++ {
			if ids[i] <= ids[i-1] {
				t.Fatalf("queue not in id order: %v at %d after %v", ids[i], i, ids[i-1])
			}
		}
	})

	t.Run("MergedBatchRefused", func(t *testing.T) {
		// Commits that each fit the server's limit are merged into a
		// batch that does not (the store believes the limit is higher):
		// every commit of it fails, in call order, and none is stored.
		s := h.open(t, h.fresh(), 1000)
		defer s.Close()
		// Take every slot, so that the commits queue up and go out as
		// one batch once the slots are given back.
		for range maxInflight {
			s.slots <- struct{}{}
		}
		before := s.batches.Load()
		const commits = 10 // 3 stream messages each: 30 > 20
		type result struct {
			i   int
			rs  []store.Receipt
			err error
		}
		results := make(chan result, commits)
		for i := range commits {
			err := s.Draft().CommitAsync(func(rs []store.Receipt, err error) { results <- result{i, rs, err} },
				store.Message{To: []string{fmt.Sprint("d", i)}})
			if err != nil {
				t.Fatal(err)
			}
		}
		for range maxInflight {
			<-s.slots
		}
		for want := range commits {
			var r result
			select {
			case r = <-results:
			case <-time.After(testTimeout):
				t.Fatalf("commit %d not reported", want)
			}
			if r.i != want {
				t.Errorf("done of commit %d called before commit %d's", r.i, want)
			}
			var api *jetstream.APIError
			if !errors.As(r.err, &api) {
				t.Errorf("commit %d: error %v, want the server's refusal", r.i, r.err)
			}
			if r.rs != nil {
				t.Errorf("commit %d: receipts %v with the error", r.i, r.rs)
			}
		}
		if n := s.batches.Load() - before; n != 1 {
			t.Errorf("%d commits sent in %d batches, want 1", commits, n)
		}
		for _, kind := range []string{"m", "q", "r"} {
			if n := stored(t, s, kind); n != 0 {
				t.Errorf("%d %s. messages stored by a refused batch", n, kind)
			}
		}
		// The store still works afterwards.
		if _, err := s.Draft().Commit(store.Message{To: []string{"d0"}}); err != nil {
			t.Fatalf("commit after a refused batch: %v", err)
		}
		if n := s.Len("d0"); n != 1 {
			t.Errorf("Len(d0) = %d, want 1", n)
		}
	})

	t.Run("TooManyRecipients", func(t *testing.T) {
		s := h.open(t, h.fresh(), serverLimit)
		defer s.Close()
		devs := make([]string, serverLimit/2) // 1 + 2*10 > 20
		for i := range devs {
			devs[i] = fmt.Sprint("d", i)
		}
		called := false
		err := s.Draft().CommitAsync(func([]store.Receipt, error) { called = true }, store.Message{To: devs})
		if !errors.Is(err, ErrTooManyRecipients) {
			t.Errorf("CommitAsync = %v, want ErrTooManyRecipients", err)
		}
		if _, err := s.Draft().Commit(store.Message{To: devs[:9]}); err != nil {
			t.Errorf("commit of 19 stream messages: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if called {
			t.Error("done called for a refused commit")
		}
	})

	t.Run("NobodyFirst", func(t *testing.T) {
		// A message for nobody stores no record: its commit's batch is
		// empty, or only an id ceiling.
		s := h.open(t, h.fresh(), 0)
		defer s.Close()
		rs, err := s.Draft().Commit(store.Message{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.WriteTo(io.Discard, rs[0].ID); !errors.Is(err, store.ErrNoMessage) {
			t.Errorf("WriteTo of a message for nobody = %v, want ErrNoMessage", err)
		}
		r2, err := s.Draft().Commit(store.Message{To: []string{"a"}})
		if err != nil {
			t.Fatal(err)
		}
		if r2[0].ID <= rs[0].ID {
			t.Errorf("id %v after %v", r2[0].ID, rs[0].ID)
		}
	})

	t.Run("Reclaim", func(t *testing.T) {
		// Data once: a large draft's chunks stay while any message reading
		// them is queued, and go with the last ack; a spilled draft whose
		// messages read none of its data leaves no chunk behind.
		pl := h.fresh()
		s := h.open(t, pl, 0)
		defer s.Close()
		left := func(kind string) int { return stored(t, s, kind) }
		data := make([]byte, 3*chunkSize+100)
		d := s.Draft()
		d.Write(data)
		env := func(store.ID, time.Time, []store.ID) []byte { return []byte("e") }
		rs, err := d.Commit(
			store.Message{To: []string{"a", "b"}, Off: 10, Len: chunkSize, Envelope: env},
			store.Message{To: []string{"c"}, Off: chunkSize, Len: 2*chunkSize + 100, Envelope: env})
		if err != nil {
			t.Fatal(err)
		}
		if n := left("c"); n != 4 {
			t.Fatalf("%d chunks stored, want 4", n)
		}
		for _, a := range []struct {
			dev    string
			id     store.ID
			chunks int
		}{{"a", rs[0].ID, 4}, {"c", rs[1].ID, 4}, {"b", rs[0].ID, 0}} {
			if err := s.Ack(a.dev, a.id); err != nil {
				t.Fatal(err)
			}
			if n := left("c"); n != a.chunks {
				t.Errorf("after %s's ack: %d chunks left, want %d", a.dev, n, a.chunks)
			}
		}
		for _, kind := range []string{"m", "q", "r", "d"} {
			if n := left(kind); n != 0 {
				t.Errorf("%d %s. messages left after every ack", n, kind)
			}
		}

		d = s.Draft()
		d.Write(data)
		if _, err := d.Commit(store.Message{To: []string{"a"}, Envelope: env}); err != nil {
			t.Fatal(err)
		}
		if n := left("c"); n != 0 {
			t.Errorf("%d chunks left of a draft no message reads", n)
		}
		d = s.Draft()
		d.Write(data)
		d.Abort()
		if n := left("c"); n != 0 {
			t.Errorf("%d chunks left of an aborted draft", n)
		}
	})

	t.Run("OrphanEntry", func(t *testing.T) {
		// Ack deletes the entry and its ref at once: if only the ref's
		// delete succeeds, the entry is left without its ref, and
		// another device's ack may reclaim the message. The entry then
		// names a message that is gone: WriteTo writes nothing and says
		// ErrNoMessage (qlib drops the entry on that), and acking the
		// entry removes it.
		s := h.open(t, h.fresh(), 0)
		defer s.Close()
		rs, err := s.Draft().Commit(store.Message{To: []string{"a", "b"}})
		if err != nil {
			t.Fatal(err)
		}
		id := rs[0].ID
		q, ok, err := s.find("a", id)
		if err != nil || !ok {
			t.Fatalf("find(a, %v) = %v, %v", id, ok, err)
		}
		if err := s.deleteSeq(uint64(int64(q.seq)+q.refOff), false); err != nil {
			t.Fatal(err)
		}
		if err := s.Ack("b", id); err != nil {
			t.Fatal(err)
		}
		if n := stored(t, s, "m"); n != 0 {
			t.Fatalf("%d records left after the last ref's ack", n)
		}
		if head, ok := s.Head("a"); !ok || head != id {
			t.Fatalf("Head(a) = %v, %v; want the orphan entry %v", head, ok, id)
		}
		var buf bytes.Buffer
		n, err := s.WriteTo(&buf, id)
		if !errors.Is(err, store.ErrNoMessage) || n != 0 || buf.Len() != 0 {
			t.Errorf("WriteTo of the orphan = %d (%d bytes), %v; want none, ErrNoMessage", n, buf.Len(), err)
		}
		if err := s.Ack("a", id); err != nil {
			t.Errorf("Ack of the orphan: %v", err)
		}
		if n := s.Len("a"); n != 0 {
			t.Errorf("Len(a) = %d after acking the orphan, want 0", n)
		}
	})

	t.Run("IDsAcrossFrontends", func(t *testing.T) {
		pl := h.fresh()
		// The higher node first: if both issued in one time slot, the
		// second store's id would be the lower one.
		pl.node = 7
		a := h.open(t, pl, 0)
		defer a.Close()
		pl.node = 3
		b := h.open(t, pl, 0)
		defer b.Close()
		var last store.ID
		for i := range 20 {
			s := []*Store{a, b}[i%2]
			rs, err := s.Draft().Commit(store.Message{To: []string{"x"}}, store.Message{To: []string{"y"}})
			if err != nil {
				t.Fatal(err)
			}
			if rs[0].ID <= last || rs[1].ID != rs[0].ID+1 {
				t.Fatalf("commit %d on node %d: ids %v, %v after %v", i, s.opts.Node, rs[0].ID, rs[1].ID, last)
			}
			if node := uint8(rs[0].ID >> countBits); node != s.opts.Node {
				t.Errorf("id %v does not carry node %d", rs[0].ID, s.opts.Node)
			}
			last = rs[1].ID
		}
		// Either store sees the queue both filled.
		if n, m := a.Len("x"), b.Len("x"); n != 20 || m != 20 {
			t.Errorf("Len(x) = %d on a, %d on b; want 20", n, m)
		}
	})

	t.Run("WakeAcrossFrontends", func(t *testing.T) {
		pl := h.fresh()
		pl.node = 1
		a := h.open(t, pl, 0)
		defer a.Close()
		pl.node = 2
		b := h.open(t, pl, 0)
		defer b.Close()
		woken := make(chan store.ID, 10)
		b.Watch("dev", func() {
			if id, ok := b.Head("dev"); ok {
				woken <- id
			}
		})
		rs, err := a.Draft().Commit(store.Message{To: []string{"dev"}})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case id := <-woken:
			if id != rs[0].ID {
				t.Errorf("b's watcher saw %v, committed %v", id, rs[0].ID)
			}
		case <-time.After(testTimeout):
			t.Fatal("b's watcher not called for a commit on a")
		}
		// b acknowledges, a sees the message gone.
		if err := b.Ack("dev", rs[0].ID); err != nil {
			t.Fatal(err)
		}
		if _, err := a.WriteTo(nil, rs[0].ID); !errors.Is(err, store.ErrNoMessage) {
			t.Errorf("WriteTo on a after b's ack = %v, want ErrNoMessage", err)
		}
	})
}

// TestCopyQueueAcrossFrontends: CopyQueue's guard against commits from
// another frontend (queue.go).
func TestCopyQueueAcrossFrontends(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	h := newHarness(t, c)
	// A device is added on frontend a while frontend b commits for
	// its member's devices every 20 ms (fifty posts a second to one
	// member: a flood; at 5 ms a loaded CI machine under -race saw 20
	// attempts refused in a row): the copy's guard is tripped by b's
	// commits, which a's pipeline cannot hold back, and the copy goes
	// again, reading only what arrived, until it lands between two.
	// dst ends with src's queue, in order, each entry once.
	pl := h.fresh()
	pl.node = 1
	a := h.open(t, pl, 0)
	defer a.Close()
	pl.node = 2
	b := h.open(t, pl, 0)
	defer b.Close()
	for range 15 {
		if _, err := b.Draft().Commit(store.Message{To: []string{"src"}}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		defer func() { done <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := b.Draft().Commit(store.Message{To: []string{"src", "dst"}}); err != nil {
				t.Errorf("commit on b: %v", err)
				return
			}
			n++
			time.Sleep(20 * time.Millisecond) // the flood's pace, not a wait for an event
		}
	}()
	err := a.CopyQueue("src", "dst")
	close(stop)
	n := <-done
	if err != nil {
		t.Fatalf("CopyQueue with %d commits meanwhile: %v", n, err)
	}
	want := a.Queue("src")
	if got := a.Queue("dst"); !slices.Equal(got, want) || len(want) != 15+n {
		t.Errorf("after %d commits meanwhile, dst's queue\n%v\nwant src's (%d)\n%v", n, got, 15+n, want)
	}
	t.Logf("%d commits on the other frontend during the copy", n)
}

// stored counts the messages of s's stream under p.<kind>.>.
func stored(t *testing.T, s *Store, kind string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(s.p+"."+kind+".>"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

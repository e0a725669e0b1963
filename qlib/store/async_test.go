package store

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mnm/durable"
)

// waitTimeout bounds every wait of these tests for an event that must come.
const waitTimeout = 10 * time.Second

// stallFirstSegSync makes the writer block in its first fsync of a segment
// until release is closed; inSync is closed when it gets there. Every fsync
// of a segment then fails with fail (nil: none fails).
func stallFirstSegSync(fsys *durable.MemFS, fail error) (inSync, release chan struct{}) {
	inSync, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	fsys.SetHook(func(op durable.Op, name string) error {
		if op == durable.OpSync && strings.HasSuffix(name, segSuffix) {
			once.Do(func() {
				close(inSync)
				<-release
			})
			return fail
		}
		return nil
	})
	return inSync, release
}

// await waits for an event: a receive from c (or its closing). what names
// the event if it does not come within waitTimeout.
func await(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitFor polls cond until it holds, for state that has no event to wait
// on; after waitTimeout the test fails, naming what it waited for.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

// Async commits made from one goroutine while the writer is busy share one
// fsync, complete in the order made, and each completes only once its
// messages are visible and announced to the watcher.
func TestCommitAsyncSharesFsyncs(t *testing.T) {
	l, fsys := openMem(t, nil)
	inSync, release := stallFirstSegSync(fsys, nil)
	var seen atomic.Int64 // the longest queue a watcher call saw
	l.Watch("a", func() {
		n := int64(l.Len("a"))
		for {
			old := seen.Load()
			if n <= old || seen.CompareAndSwap(old, n) {
				return
			}
		}
	})

	const n = 100
	type result struct {
		i     int
		rcpts []Receipt
		err   error
		seen  int64
	}
	var mu sync.Mutex
	var results []result
	all := make(chan struct{})
	datas := make([][]byte, n)
	syncs0 := l.nSyncs.Load()
	for i := range n {
		datas[i] = fmt.Appendf(nil, "async-%03d", i)
		d := l.Draft()
		d.Write(datas[i])
		err := d.CommitAsync(func(rs []Receipt, err error) {
			mu.Lock()
			defer mu.Unlock()
			results = append(results, result{i, rs, err, seen.Load()})
			if len(results) == n {
				close(all)
			}
		}, Message{To: []string{"a", "b"}, Len: int64(len(datas[i])), Envelope: env("e")})
		if err != nil {
			t.Fatalf("CommitAsync %d: %v", i, err)
		}
		if i == 0 {
			// The writer takes the first commit alone and stalls in its
			// fsync; the others gather meanwhile.
			await(t, "the first fsync", inSync)
		}
	}
	mu.Lock()
	early := len(results)
	mu.Unlock()
	if early != 0 {
		t.Errorf("%d commits completed before their fsync", early)
	}
	close(release)
	await(t, "all commits to complete", all)

	if syncs := l.nSyncs.Load() - syncs0; syncs > 2 {
		t.Errorf("%d async commits took %d fsyncs, want at most 2", n, syncs)
	}
	var last ID
	for k, r := range results {
		if r.i != k {
			t.Fatalf("completion %d is commit %d: out of order", k, r.i)
		}
		if r.err != nil || len(r.rcpts) != 1 {
			t.Fatalf("commit %d: %v, %v", k, r.rcpts, r.err)
		}
		if r.rcpts[0].ID <= last {
			t.Errorf("commit %d: id %v not above %v", k, r.rcpts[0].ID, last)
		}
		last = r.rcpts[0].ID
		if r.seen < int64(k+1) {
			t.Errorf("commit %d completed when the watcher had seen %d entries", k, r.seen)
		}
	}
	qa := l.Queue("a")
	if len(qa) != n {
		t.Fatalf("a has %d entries, want %d", len(qa), n)
	}
	for k, r := range results {
		id := r.rcpts[0].ID
		if qa[k] != id {
			t.Errorf("a[%d] = %v, want %v", k, qa[k], id)
		}
		want := append(env("e")(id, r.rcpts[0].Posted, nil), datas[k]...)
		if got := content(t, l, id); !bytes.Equal(got, want) {
			t.Errorf("message %d = %q, want %q", k, got, want)
		}
	}
}

// Errors Commit would return at once come back from CommitAsync without a
// call of done; I/O errors come through done, for every commit of the
// failed batch and after it.
func TestCommitAsyncErrors(t *testing.T) {
	var called atomic.Int64
	never := func([]Receipt, error) { called.Add(1) }

	l, fsys := openMem(t, nil)
	cases := []struct {
		name string
		msg  Message
		want error
	}{
		{"range", Message{To: []string{"a"}, Off: 1, Len: 2 * chunkSize}, ErrRange},
		{"negative", Message{To: []string{"a"}, Off: -1, Len: 1}, ErrRange},
		{"priority", Message{To: []string{"a"}, Prio: High + 1, Len: 1}, ErrPriority},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := l.Draft().(*draft)
			d.Write(randomData(5, 2*chunkSize)) // with chunks, so the draft holds a pin
			pin := d.pin
			if err := d.CommitAsync(never, c.msg); !errors.Is(err, c.want) {
				t.Errorf("CommitAsync = %v, want %v", err, c.want)
			}
			if n := pin.pins.Load(); n != 0 {
				t.Errorf("segment still pinned %d times after a refused commit", n)
			}
			if err := d.CommitAsync(never, Message{To: []string{"a"}, Len: 1}); !errors.Is(err, ErrDraftDone) {
				t.Errorf("second CommitAsync = %v, want ErrDraftDone", err)
			}
			if _, err := d.Commit(Message{To: []string{"a"}, Len: 1}); !errors.Is(err, ErrDraftDone) {
				t.Errorf("Commit after CommitAsync = %v, want ErrDraftDone", err)
			}
		})
	}

	// An I/O error fails every commit of its batch through done, and the
	// ones handed over after it.
	inSync, release := stallFirstSegSync(fsys, errBoom)
	const n = 5
	errs := make(chan error, n)
	var pins []*segment
	for i := range n {
		d := l.Draft().(*draft)
		d.Write(randomData(uint64(i), 2*chunkSize))
		pins = append(pins, d.pin)
		if err := d.CommitAsync(func(_ []Receipt, err error) { errs <- err },
			Message{To: []string{"a"}, Len: 2 * chunkSize}); err != nil {
			t.Fatalf("CommitAsync %d: %v", i, err)
		}
		if i == 0 {
			await(t, "the failing fsync", inSync)
		}
	}
	close(release)
	for i := range n {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrFailed) || (i == 0 && !errors.Is(err, errBoom)) {
				t.Errorf("commit %d completed with %v, want ErrFailed wrapping the cause", i, err)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("commit %d never completed", i)
		}
	}
	for i, p := range pins {
		if k := p.pins.Load(); k != 0 {
			t.Errorf("commit %d: segment still pinned %d times after failing", i, k)
		}
	}
	if n := l.Len("a"); n != 0 {
		t.Errorf("failed commits left %d entries", n)
	}

	// Once failed, CommitAsync refuses at once.
	d := l.Draft()
	if err := d.CommitAsync(never, Message{To: []string{"a"}}); !errors.Is(err, ErrFailed) {
		t.Errorf("CommitAsync after failure = %v, want ErrFailed", err)
	}
	l.Close()

	l2, _ := openMem(t, nil)
	d = l2.Draft()
	d.Write([]byte("x"))
	l2.Close()
	if err := d.CommitAsync(never, Message{To: []string{"a"}, Len: 1}); !errors.Is(err, ErrClosed) {
		t.Errorf("CommitAsync after Close = %v, want ErrClosed", err)
	}
	if err := l2.Draft().CommitAsync(never); !errors.Is(err, ErrClosed) {
		t.Errorf("empty CommitAsync after Close = %v, want ErrClosed", err)
	}
	if c := called.Load(); c != 0 {
		t.Errorf("done called %d times for commits refused at once", c)
	}
}

// An empty commit stores nothing but completes in turn after the commits
// made before it.
func TestCommitAsyncEmpty(t *testing.T) {
	l, fsys := openMem(t, nil)
	inSync, release := stallFirstSegSync(fsys, nil)
	order := make(chan int, 2)
	d := l.Draft()
	d.Write([]byte("x"))
	if err := d.CommitAsync(func([]Receipt, error) { order <- 1 }, Message{To: []string{"a"}, Len: 1}); err != nil {
		t.Fatal(err)
	}
	await(t, "the first fsync", inSync)
	if err := l.Draft().CommitAsync(func(rs []Receipt, err error) {
		if rs != nil || err != nil {
			t.Errorf("empty commit completed with %v, %v", rs, err)
		}
		order <- 2
	}); err != nil {
		t.Fatal(err)
	}
	close(release)
	for want := 1; want <= 2; want++ {
		select {
		case got := <-order:
			if got != want {
				t.Fatalf("commit %d completed in place %d", got, want)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("commit %d never completed", want)
		}
	}
}

// Close completes the commits already handed over, successfully.
func TestCloseCompletesAsyncCommits(t *testing.T) {
	l, fsys := openMem(t, nil)
	inSync, release := stallFirstSegSync(fsys, nil)
	const n = 10
	var ok atomic.Int64
	for i := range n {
		d := l.Draft()
		d.Write([]byte{byte(i)})
		err := d.CommitAsync(func(rs []Receipt, err error) {
			if err == nil && len(rs) == 1 {
				ok.Add(1)
			}
		}, Message{To: []string{"a"}, Len: 1})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			await(t, "the first fsync", inSync)
		}
	}
	closed := make(chan error)
	go func() { closed <- l.Close() }()
	close(release)
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close never returned")
	}
	if got := ok.Load(); got != n {
		t.Errorf("%d of %d commits completed successfully by Close", got, n)
	}
	l2, _ := openMem(t, fsys.Crash(nil))
	if got := l2.Len("a"); got != n {
		t.Errorf("after restart a has %d entries, want %d", got, n)
	}
}

// A power loss with async commits in flight keeps every commit whose done
// reported success; every commit's done is called exactly once.
func TestCommitAsyncPowerLoss(t *testing.T) {
	tails := map[string]func(string, []byte) []byte{
		"none": nil,
		"all":  func(_ string, b []byte) []byte { return b },
		"half": func(_ string, b []byte) []byte { return b[:len(b)/2] },
	}
	for name, tail := range tails {
		t.Run(name, func(t *testing.T) {
			l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = 8 << 10 })
			const window = 32 // commits in flight, as a link keeps them
			slots := make(chan struct{}, window)
			var mu sync.Mutex
			ok := map[ID][]byte{}
			calls := map[int]int{}
			enough := make(chan struct{})
			var wg sync.WaitGroup
			var crashed *durable.MemFS
			issued := 0
			// One goroutine commits until the store refuses; it loses
			// power once 300 commits have succeeded, with more in flight.
			for i := 0; ; i++ {
				if crashed == nil {
					select {
					case <-enough:
						crashed = fsys.Crash(tail)
					default:
					}
				}
				size := (i * 131) % 3000
				if i%50 == 7 {
					size = 2*chunkSize + 99 // a draft with chunks and a pin
				}
				data := append(fmt.Appendf(nil, "c%d-", i), bytes.Repeat([]byte("z"), size)...)
				select {
				case slots <- struct{}{}:
				case <-time.After(waitTimeout):
					t.Fatal("commits in flight never completed")
				}
				d := l.Draft()
				d.Write(data)
				wg.Add(1)
				err := d.CommitAsync(func(rs []Receipt, err error) {
					defer wg.Done()
					mu.Lock()
					defer mu.Unlock()
					calls[i]++
					if err == nil {
						ok[rs[0].ID] = data
						if len(ok) == 300 {
							close(enough)
						}
					} else if !errors.Is(err, ErrFailed) {
						t.Errorf("commit %d failed with %v, want ErrFailed", i, err)
					}
					<-slots
				}, Message{To: []string{"a"}, Len: int64(len(data))})
				if err != nil {
					wg.Done()
					if crashed == nil || !errors.Is(err, ErrFailed) {
						t.Fatalf("CommitAsync %d = %v, want ErrFailed after the power loss", i, err)
					}
					break
				}
				issued++
			}
			wg.Wait()
			mu.Lock()
			for i := range issued {
				if calls[i] != 1 {
					t.Errorf("commit %d: done called %d times", i, calls[i])
				}
			}
			mu.Unlock()
			if err := l.Close(); !errors.Is(err, ErrFailed) {
				t.Errorf("Close after power loss = %v, want ErrFailed", err)
			}

			l2, _ := openMem(t, crashed)
			qa := l2.Queue("a")
			for _, id := range sortedIDs(ok) {
				if !slices.Contains(qa, id) {
					t.Errorf("message %v lost although its commit completed", id)
					continue
				}
				if got := content(t, l2, id); !bytes.HasSuffix(got, ok[id]) {
					t.Errorf("message %v has wrong content", id)
				}
			}
			if !slices.IsSorted(qa) {
				t.Error("queue out of order after recovery")
			}
			t.Logf("%d commits issued, %d succeeded, %d recovered", issued, len(ok), len(qa))
		})
	}
}

// sortedIDs returns the keys of m, sorted.
func sortedIDs[V any](m map[ID]V) []ID {
	ids := make([]ID, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

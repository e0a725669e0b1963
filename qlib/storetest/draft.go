package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"mnm/qlib/store"
)

// testCommitAsync: done is called exactly once per commit, with the
// receipts; the commits of one caller complete in the order made, with ids
// in that order; errors Commit would return at once come back from
// CommitAsync, and done is not called for them.
func testCommitAsync(t *testing.T, h Harness) {
	s := open(t, h)
	const n = 50
	type result struct {
		i     int
		rcpts []store.Receipt
		err   error
	}
	var mu sync.Mutex
	// Guarded by mu: the completions in the order they came, and how
	// many each commit had.
	var results []result
	calls := make([]int, n)
	all := make(chan struct{})
	datas := make([][]byte, n)
	for i := range n {
		datas[i] = fmt.Appendf(nil, "async-%03d", i)
		d := s.Draft()
		if _, err := d.Write(datas[i]); err != nil {
			t.Fatal(err)
		}
		err := d.CommitAsync(func(rs []store.Receipt, err error) {
			mu.Lock()
			defer mu.Unlock()
			calls[i]++
			results = append(results, result{i, rs, err})
			if len(results) == n {
				close(all)
			}
		}, store.Message{To: []string{"a"}, Len: int64(len(datas[i])), Envelope: envelope("post")})
		if err != nil {
			t.Fatalf("CommitAsync %d: %v", i, err)
		}
		if _, err := d.Write([]byte("x")); !errors.Is(err, store.ErrDraftDone) {
			t.Errorf("Write after CommitAsync = %v, want ErrDraftDone", err)
		}
	}
	await(t, "every commit to complete", all)
	// The caller's next commit completes after all of those: a second
	// call of any done would have come by then.
	last := post(t, s, store.Normal, []byte("last"), "a")

	mu.Lock()
	var want []store.ID
	var rcpts []store.Receipt
	for k, r := range results {
		if r.i != k {
			t.Fatalf("completion %d is of commit %d: out of order", k, r.i)
		}
		if r.err != nil || len(r.rcpts) != 1 {
			t.Fatalf("commit %d completed with %v, %v", k, r.rcpts, r.err)
		}
		if k > 0 && r.rcpts[0].ID <= want[k-1] {
			t.Errorf("commit %d: id %v not above the previous %v", k, r.rcpts[0].ID, want[k-1])
		}
		want = append(want, r.rcpts[0].ID)
		rcpts = append(rcpts, r.rcpts[0])
	}
	for i, c := range calls {
		if c != 1 {
			t.Errorf("done of commit %d called %d times", i, c)
		}
	}
	mu.Unlock()
	if last.ID <= want[n-1] {
		t.Errorf("id %v of a later commit not above %v", last.ID, want[n-1])
	}
	checkQueue(t, s, "a", append(slices.Clone(want), last.ID))
	for k, id := range want {
		if got := content(t, s, id); !bytes.Equal(got, posted(rcpts[k], datas[k])) {
			t.Errorf("message of commit %d = %q", k, got)
		}
	}

	// Refused at once: done is never called.
	var refused atomic.Int64
	never := func([]store.Receipt, error) { refused.Add(1) }
	for _, c := range []struct {
		name string
		msg  store.Message
		want error
	}{
		{"range", store.Message{To: []string{"bad"}, Off: 1, Len: 10}, store.ErrRange},
		{"negative offset", store.Message{To: []string{"bad"}, Off: -1, Len: 1}, store.ErrRange},
		{"priority", store.Message{To: []string{"bad"}, Prio: store.High + 1, Len: 1}, store.ErrPriority},
	} {
		d := s.Draft()
		if _, err := d.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		if err := d.CommitAsync(never, c.msg); !errors.Is(err, c.want) {
			t.Errorf("%s: CommitAsync = %v, want %v", c.name, err, c.want)
		}
		if err := d.CommitAsync(never, store.Message{To: []string{"bad"}, Len: 1}); !errors.Is(err, store.ErrDraftDone) {
			t.Errorf("%s: CommitAsync after a refused one = %v, want ErrDraftDone", c.name, err)
		}
	}
	d := s.Draft()
	if _, err := d.Commit(store.Message{To: []string{"good"}, Envelope: envelope("good")}); err != nil {
		t.Fatal(err)
	}
	if err := d.CommitAsync(never, store.Message{To: []string{"bad"}}); !errors.Is(err, store.ErrDraftDone) {
		t.Errorf("CommitAsync after Commit = %v, want ErrDraftDone", err)
	}
	post(t, s, store.Normal, []byte("after"), "good")
	checkQueue(t, s, "bad", nil)
	s.close()
	if n := refused.Load(); n != 0 {
		t.Errorf("done called %d times for commits refused at once", n)
	}
}

// testDraft: a draft is finished by Commit (successful or not) and by
// Abort: Write, Commit and CommitAsync then return ErrDraftDone; Abort after
// Commit changes nothing; an aborted draft stores nothing; a refused commit
// stores none of its messages.
func testDraft(t *testing.T, h Harness) {
	s := open(t, h)
	never := func([]store.Receipt, error) { t.Error("done called for a finished draft") }
	finished := func(d store.Draft, how string) {
		t.Helper()
		if _, err := d.Write([]byte("x")); !errors.Is(err, store.ErrDraftDone) {
			t.Errorf("Write after %s = %v, want ErrDraftDone", how, err)
		}
		if _, err := d.Commit(store.Message{To: []string{"x"}}); !errors.Is(err, store.ErrDraftDone) {
			t.Errorf("Commit after %s = %v, want ErrDraftDone", how, err)
		}
		if err := d.CommitAsync(never, store.Message{To: []string{"x"}}); !errors.Is(err, store.ErrDraftDone) {
			t.Errorf("CommitAsync after %s = %v, want ErrDraftDone", how, err)
		}
	}

	d := s.Draft()
	if n, err := d.Write([]byte("kept")); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	rs, err := d.Commit(store.Message{To: []string{"x"}, Len: 4, Envelope: envelope("post")})
	if err != nil {
		t.Fatal(err)
	}
	finished(d, "Commit")
	d.Abort()
	checkQueue(t, s, "x", ids(rs))
	if got := content(t, s, rs[0].ID); !bytes.Equal(got, posted(rs[0], []byte("kept"))) {
		t.Errorf("after Abort of the committed draft, WriteTo = %q", got)
	}

	d = s.Draft()
	big := randomData(2, 300_000)
	if n, err := d.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	d.Abort()
	d.Abort()
	finished(d, "Abort")
	checkQueue(t, s, "x", ids(rs))

	for _, c := range []struct {
		name string
		msgs []store.Message
		want error
	}{
		{"range", []store.Message{{To: []string{"y"}, Len: 5}, {To: []string{"y"}, Off: 3, Len: 3}}, store.ErrRange},
		{"priority", []store.Message{{To: []string{"y"}, Len: 5}, {To: []string{"y"}, Prio: store.High + 1, Len: 1}}, store.ErrPriority},
	} {
		d := s.Draft()
		if _, err := d.Write([]byte("12345")); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Commit(c.msgs...); !errors.Is(err, c.want) {
			t.Errorf("%s: Commit = %v, want %v", c.name, err, c.want)
		}
		finished(d, "a refused Commit")
	}
	checkQueue(t, s, "y", nil)
}

// testDraftRange: a message's range must lie within the draft's data
// (ErrRange otherwise); empty ranges at either end are fine.
func testDraftRange(t *testing.T, h Harness) {
	s := open(t, h)
	data := []byte("12345")
	for _, r := range [][2]int64{{0, 6}, {6, 0}, {-1, 2}, {2, -1}, {5, 1}, {4, 2}} {
		d := s.Draft()
		if _, err := d.Write(data); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Commit(store.Message{To: []string{"r"}, Off: r[0], Len: r[1]}); !errors.Is(err, store.ErrRange) {
			t.Errorf("Commit of [%d,+%d) of %d bytes = %v, want ErrRange", r[0], r[1], len(data), err)
		}
	}
	checkQueue(t, s, "r", nil)
	ok := [][2]int64{{0, 0}, {5, 0}, {0, 5}, {4, 1}}
	var msgs []store.Message
	for _, r := range ok {
		msgs = append(msgs, store.Message{To: []string{"r"}, Off: r[0], Len: r[1], Envelope: envelope("r")})
	}
	d := s.Draft()
	if _, err := d.Write(data); err != nil {
		t.Fatal(err)
	}
	rs, err := d.Commit(msgs...)
	if err != nil {
		t.Fatalf("Commit of ranges within the data: %v", err)
	}
	for i, r := range ok {
		want := append(envelope("r")(rs[i].ID, rs[i].Posted, ids(rs)), data[r[0]:r[0]+r[1]]...)
		if got := content(t, s, rs[i].ID); !bytes.Equal(got, want) {
			t.Errorf("[%d,+%d) = %q, want %q", r[0], r[1], got, want)
		}
	}
	checkQueue(t, s, "r", ids(rs))
}

// testLargeDraft: a draft of several megabytes, written in pieces of any
// size, comes back byte for byte, split between messages, before and after
// a restart.
func testLargeDraft(t *testing.T, h Harness) {
	s := open(t, h)
	data := randomData(3, 5<<20+12345)
	rng := rand.New(rand.NewPCG(7, 7))
	d := s.Draft()
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(200_000))
		if w, err := d.Write(rest[:n]); err != nil || w != n {
			t.Fatalf("Write of %d bytes = %d, %v", n, w, err)
		}
		rest = rest[n:]
	}
	// As a post with notifications: the first bytes a note for some, the
	// rest the post for others.
	const noteLen = 1000
	rs, err := d.Commit(
		store.Message{To: []string{"n1", "n2"}, Len: noteLen, Envelope: envelope("note")},
		store.Message{To: []string{"p"}, Off: noteLen, Len: int64(len(data) - noteLen), Envelope: envelope("post")})
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		note := append(envelope("note")(rs[0].ID, rs[0].Posted, ids(rs)), data[:noteLen]...)
		if got := content(t, s, rs[0].ID); !bytes.Equal(got, note) {
			t.Errorf("%s: the note differs (%d bytes, want %d)", when, len(got), len(note))
		}
		post := append(envelope("post")(rs[1].ID, rs[1].Posted, ids(rs)), data[noteLen:]...)
		if got := content(t, s, rs[1].ID); !bytes.Equal(got, post) {
			t.Errorf("%s: the post differs (%d bytes, want %d)", when, len(got), len(post))
		}
		checkQueue(t, s, "n1", []store.ID{rs[0].ID})
		checkQueue(t, s, "n2", []store.ID{rs[0].ID})
		checkQueue(t, s, "p", []store.ID{rs[1].ID})
	}
	check("committed")
	s.reopen()
	check("after a restart")
}

// testConcurrentDrafts: drafts in progress at once, in one goroutine or in
// many, keep their data apart.
func testConcurrentDrafts(t *testing.T, h Harness) {
	s := open(t, h)

	// One goroutine, three drafts written in turns; one is aborted.
	datas := [][]byte{randomData(10, 150_000), randomData(11, 70_000), randomData(12, 90_000)}
	drafts := []store.Draft{s.Draft(), s.Draft(), s.Draft()}
	for off := 0; off < 150_000; off += 10_000 {
		for i, d := range drafts {
			if off >= len(datas[i]) {
				continue
			}
			if _, err := d.Write(datas[i][off:min(off+10_000, len(datas[i]))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	drafts[2].Abort()
	var rcpts []store.Receipt
	for _, i := range []int{1, 0} {
		rs, err := drafts[i].Commit(store.Message{To: []string{"one"}, Len: int64(len(datas[i])), Envelope: envelope("post")})
		if err != nil {
			t.Fatal(err)
		}
		if got := content(t, s, rs[0].ID); !bytes.Equal(got, posted(rs[0], datas[i])) {
			t.Errorf("draft %d written in turns with others: content differs", i)
		}
		rcpts = append(rcpts, rs[0])
	}
	checkQueue(t, s, "one", ids(rcpts))

	// Many goroutines, each committing drafts written in pieces.
	const workers, each = 8, 4
	type sent struct {
		r    store.Receipt
		data []byte
	}
	results := make([][]sent, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				data := randomData(uint64(100+w*each+i), 1000+w*30_000+i*7_777)
				d := s.Draft()
				for off := 0; off < len(data); off += 4096 {
					if _, err := d.Write(data[off:min(off+4096, len(data))]); err != nil {
						t.Errorf("worker %d: Write: %v", w, err)
						return
					}
				}
				rs, err := d.Commit(store.Message{To: []string{"many", fmt.Sprint("w", w)}, Len: int64(len(data)), Envelope: envelope("post")})
				if err != nil {
					t.Errorf("worker %d: Commit: %v", w, err)
					return
				}
				results[w] = append(results[w], sent{rs[0], data})
			}
		}()
	}
	wg.Wait()
	var all []store.ID
	for w, rs := range results {
		var mine []store.ID
		for _, r := range rs {
			if got := content(t, s, r.r.ID); !bytes.Equal(got, posted(r.r, r.data)) {
				t.Errorf("worker %d: message %v differs (%d bytes, want %d)", w, r.r.ID, len(got), len(posted(r.r, r.data)))
			}
			mine = append(mine, r.r.ID)
		}
		checkQueue(t, s, fmt.Sprint("w", w), mine)
		all = append(all, mine...)
	}
	slices.Sort(all)
	checkQueue(t, s, "many", all)
}

package store

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

// Running out of file descriptors is a passing shortage, not a store
// failure: the log keeps accepting commits in its current segment past its
// target size, rotates once files can be opened again, and loses nothing.
// The id ceiling is raised ahead of need, so it too waits for the shortage
// to end; only a commit that needs ids above it is refused meanwhile.
func TestFileShortage(t *testing.T) {
	const segSize = 1 << 10
	logs := &syncBuffer{}
	l, fsys := openMem(t, nil, func(o *Options) {
		o.SegmentSize = segSize
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	l.pendMu.Lock()
	l.rotateRetryMin = 0 // retry at every record, so the test need not wait
	l.pendMu.Unlock()
	segs := func() int { n, _, _ := segStats(l); return n }

	fsys.SetFileLimit(fsys.OpenFiles())
	var ids []ID
	for i := range 20 {
		ids = append(ids, post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 300), "a", "b"))
	}
	if n, total, _ := segStats(l); n != 1 || total < 5*segSize {
		t.Fatalf("during the shortage: %d segments, %d bytes; want one segment past its size", n, total)
	}
	for _, id := range ids[:5] {
		if err := l.Ack("a", id); err != nil {
			t.Fatal(err)
		}
	}
	// Ids close to the ceiling: raising it fails but is not needed yet.
	l.pendMu.Lock()
	l.nextID = l.ceiling - 3
	l.pendMu.Unlock()
	var err error
	for err == nil {
		d := l.Draft()
		d.Write([]byte("near the ceiling"))
		var rs []Receipt
		if rs, err = d.Commit(Message{To: []string{"a", "b"}, Len: 16}); err == nil {
			ids = append(ids, rs[0].ID)
		}
	}
	if !errors.Is(err, ErrNoFiles) || errors.Is(err, ErrFailed) || len(ids) != 23 {
		t.Fatalf("commit needing the ceiling raised = %v after %d commits, want ErrNoFiles after 23", err, len(ids))
	}
	if got := strings.Count(logs.String(), "cannot create a segment"); got != 1 {
		t.Errorf("the segment shortage logged %d times, want once:\n%s", got, logs)
	}
	if got := strings.Count(logs.String(), "cannot raise the id ceiling"); got != 1 {
		t.Errorf("the ceiling shortage logged %d times, want once:\n%s", got, logs)
	}

	fsys.SetFileLimit(0)
	ids = append(ids, post(t, l, Normal, []byte("after the shortage"), "a", "b"))
	if segs() < 2 {
		t.Errorf("no rotation after the shortage ended")
	}
	for _, msg := range []string{"segment created after a shortage", "id ceiling raised after a shortage"} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("no log of the recovery (%q):\n%s", msg, logs)
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	crashed := fsys.Crash(nil)
	l.Close()
	l2, _ := openMem(t, crashed)
	if got := l2.Queue("b"); !slices.Equal(got, ids) {
		t.Errorf("after a power loss b has %v, want %v", got, ids)
	}
	if got := l2.Queue("a"); !slices.Equal(got, ids[5:]) {
		t.Errorf("after a power loss a has %v, want %v", got, ids[5:])
	}
}

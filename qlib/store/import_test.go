package store

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// importOne imports one message and waits until it is durable.
func importOne(t *testing.T, l *Log, id ID, prio Priority, env string, data []byte, devs ...string) {
	t.Helper()
	done := make(chan error, 1)
	if err := l.Import(id, prio, devs, []byte(env), bytes.NewReader(data), func(err error) { done <- err }); err != nil {
		t.Fatalf("Import(%v): %v", id, err)
	}
	if err := l.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Import(%v) done: %v", id, err)
	}
}

func TestImportKeepsIDsOrderAndBytes(t *testing.T) {
	l, fsys := openMem(t, nil)
	// Ids far above the clock, imported out of order, one larger than a
	// chunk (so it streams through chunk records), one high priority.
	base := ID(time.Now().UnixNano()) + 1<<40
	big := bytes.Repeat([]byte("0123456789abcdef"), chunkSize/8)
	importOne(t, l, base+5, Normal, "E5", []byte("five"), "a", "b")
	importOne(t, l, base+2, Normal, "E2", big, "a")
	importOne(t, l, base+9, High, "E9", nil, "b")
	importOne(t, l, base+3, Normal, "E3", []byte("three"), "b", "b")

	check := func(l *Log) {
		t.Helper()
		if got, want := l.Queue("a"), []ID{base + 2, base + 5}; !slices.Equal(got, want) {
			t.Errorf("queue a = %v, want %v", got, want)
		}
		if got, want := l.Queue("b"), []ID{base + 9, base + 3, base + 5}; !slices.Equal(got, want) {
			t.Errorf("queue b = %v, want %v", got, want)
		}
		if got := content(t, l, base+2); !bytes.Equal(got, append([]byte("E2"), big...)) {
			t.Errorf("big message: %d bytes back, want %d", len(got), 2+len(big))
		}
		if got := string(content(t, l, base+5)); got != "E5five" {
			t.Errorf("message 5 = %q", got)
		}
		if got := string(content(t, l, base+9)); got != "E9" {
			t.Errorf("message 9 = %q", got)
		}
	}
	check(l)
	if id := post(t, l, Normal, []byte("after"), "z"); id <= base+9 {
		t.Errorf("id issued after import %v, want above %v", id, base+9)
	}
	l.Close()

	// After a restart (and after a crash that keeps only what was synced),
	// the imports are there and new ids are still above them.
	for _, crash := range []bool{false, true} {
		if crash {
			fsys = fsys.Crash(nil)
		}
		l2, _ := openMem(t, fsys)
		check(l2)
		if id := post(t, l2, Normal, []byte("later"), "c"); id <= base+9 {
			t.Errorf("id issued after reopen %v, want above %v", id, base+9)
		}
		l2.Close()
	}
}

func TestImportRefusals(t *testing.T) {
	l, _ := openMem(t, nil)
	importOne(t, l, 1000, Normal, "E", []byte("x"), "a")
	noDone := func(err error) { t.Errorf("done called for a refused import: %v", err) }
	if err := l.Import(1000, Normal, []string{"a"}, nil, strings.NewReader("y"), noDone); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate id: %v, want ErrDuplicate", err)
	}
	if err := l.Import(0, Normal, []string{"a"}, nil, strings.NewReader("y"), noDone); err == nil {
		t.Error("id 0 accepted")
	}
	if err := l.Import(1001, 7, []string{"a"}, nil, strings.NewReader("y"), noDone); !errors.Is(err, ErrPriority) {
		t.Errorf("bad priority: %v, want ErrPriority", err)
	}
	readErr := errors.New("disk on fire")
	if err := l.Import(1002, Normal, []string{"a"}, nil, io.MultiReader(strings.NewReader("y"), errReader{readErr}), noDone); !errors.Is(err, readErr) {
		t.Errorf("failing reader: %v, want it wrapped", err)
	}
	if got := l.Queue("a"); !slices.Equal(got, []ID{1000}) {
		t.Errorf("queue after refusals = %v, want [1000]", got)
	}
	l.Close()
	if err := l.Import(1003, Normal, []string{"a"}, nil, strings.NewReader("y"), noDone); !errors.Is(err, ErrClosed) {
		t.Errorf("import after close: %v, want ErrClosed", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

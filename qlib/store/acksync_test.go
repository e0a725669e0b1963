package store

import (
	"slices"
	"testing"
	"time"

	"mnm/durable"
)

// setSyncDelay sets how soon the writer fsyncs records written without one.
func setSyncDelay(l *Log, d time.Duration) {
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	l.syncDelay = d
}

// On an idle server, acks reach the disk within the sync delay although no
// commit comes to fsync them.
func TestAcksSyncedWhenIdle(t *testing.T) {
	l, fsys := openMem(t, nil)
	setSyncDelay(l, time.Millisecond)
	keep := post(t, l, Normal, []byte("keep"), "a")
	gone := post(t, l, Normal, []byte("gone"), "a")
	syncs := l.nSyncs.Load()
	if err := l.Ack("a", gone); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ack's fsync", func() bool { return l.nSyncs.Load() > syncs })
	l2, _ := openMem(t, fsys.Crash(nil))
	if got := l2.Queue("a"); !slices.Equal(got, []ID{keep}) {
		t.Errorf("after power loss a = %v, want [%v]: the ack was not durable", got, keep)
	}
}

// Acks are written at once but not fsynced on their own before the delay:
// a power loss before it brings the message back.
func TestAcksWaitForSyncDelay(t *testing.T) {
	l, fsys := openMem(t, nil)
	setSyncDelay(l, time.Hour)
	id := post(t, l, Normal, []byte("x"), "a")
	syncs, writes := l.nSyncs.Load(), fsys.Count(durable.OpWrite)
	if err := l.Ack("a", id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ack's write", func() bool { return fsys.Count(durable.OpWrite) > writes })
	if n := l.nSyncs.Load() - syncs; n != 0 {
		t.Errorf("an ack alone took %d fsyncs before the delay", n)
	}
	l2, _ := openMem(t, fsys.Crash(nil))
	if got := l2.Queue("a"); !slices.Equal(got, []ID{id}) {
		t.Errorf("after power loss a = %v, want [%v] (ack not yet durable)", got, id)
	}
}

// The next commit's fsync makes earlier acks durable, before the delay.
func TestAcksSyncedWithCommit(t *testing.T) {
	l, fsys := openMem(t, nil)
	setSyncDelay(l, time.Hour)
	id := post(t, l, Normal, []byte("x"), "a")
	if err := l.Ack("a", id); err != nil {
		t.Fatal(err)
	}
	next := post(t, l, Normal, []byte("y"), "b")
	l2, _ := openMem(t, fsys.Crash(nil))
	if got := l2.Queue("a"); len(got) != 0 {
		t.Errorf("after power loss a = %v, want empty", got)
	}
	if got := l2.Queue("b"); !slices.Equal(got, []ID{next}) {
		t.Errorf("after power loss b = %v, want [%v]", got, next)
	}
}

// Repeated idle periods each get their fsync: the timer rearms.
func TestAckSyncRearms(t *testing.T) {
	l, fsys := openMem(t, nil)
	setSyncDelay(l, time.Millisecond)
	var ids []ID
	for i := range 3 {
		ids = append(ids, post(t, l, Normal, []byte{byte(i)}, "a"))
	}
	for _, id := range ids {
		syncs := l.nSyncs.Load()
		if err := l.Ack("a", id); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the ack's fsync", func() bool { return l.nSyncs.Load() > syncs })
	}
	l2, _ := openMem(t, fsys.Crash(nil))
	if got := l2.Queue("a"); len(got) != 0 {
		t.Errorf("after power loss a = %v, want empty", got)
	}
}

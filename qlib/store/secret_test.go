package store

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"mnm/durable"
)

// filesContaining returns the files of the store directory whose content
// holds secret.
func filesContaining(t *testing.T, fsys *durable.MemFS, secret []byte) []string {
	t.Helper()
	names, err := fsys.ReadDir(testDir)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, n := range names {
		b, err := fsys.ReadFile(testDir + "/" + n)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, secret) {
			found = append(found, n)
		}
	}
	return found
}

// commitSecret commits, as a device add does, a secret announcement for req
// and a plain one for others, and returns their ids.
func commitSecret(t *testing.T, l *Log, secret []byte, req string, others ...string) (ID, ID) {
	t.Helper()
	envelope := func(b []byte) Envelope {
		return func(ID, time.Time, []ID) []byte { return b }
	}
	rs, err := l.Draft().Commit(
		Message{Prio: High, To: []string{req}, Secret: true, Envelope: envelope(slices.Concat([]byte("user "), secret))},
		Message{Prio: High, To: others, Envelope: envelope([]byte("user"))})
	if err != nil {
		t.Fatal(err)
	}
	return rs[0].ID, rs[1].ID
}

// A secret message is never copied to another queue, and once acknowledged
// its bytes leave the disk: the segments holding it are compacted away even
// though the policy would keep them, in the head (rotated for it) or older,
// and after a restart too.
func TestSecretMessage(t *testing.T) {
	const segSize = 8 << 10
	secret := []byte("NODEID-0123456789-SECRET")
	small := func(o *Options) { o.SegmentSize = segSize }
	for _, where := range []string{"head", "older segment", "acked before a restart"} {
		t.Run(where, func(t *testing.T) {
			l, fsys := openMem(t, nil, small)
			before := post(t, l, Normal, []byte("queued before"), "req", "other")
			sec, plain := commitSecret(t, l, secret, "req", "other", "new")
			if where != "head" {
				for i := range 40 {
					post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 300), "other")
				}
			}
			if err := l.CopyQueue("req", "new"); err != nil {
				t.Fatal(err)
			}
			if got := l.Queue("new"); !slices.Equal(got, []ID{before}) {
				t.Fatalf("new device's queue %v, want [%v]: the secret copied, or the rest not", got, before)
			}
			if got := l.Queue("req"); !slices.Equal(got, []ID{sec, before}) {
				t.Fatalf("requester's queue %v, want [%v %v]", got, sec, before)
			}
			if where != "head" {
				// The flag survives a restart. (Not for "head": the
				// restart would start a new segment.)
				l.Close()
				l, _ = openMem(t, fsys, small)
				if err := l.CopyQueue("req", "new2"); err != nil {
					t.Fatal(err)
				}
				if got := l.Queue("new2"); !slices.Equal(got, []ID{before}) {
					t.Fatalf("after a restart, the copied queue %v, want [%v]", got, before)
				}
			}
			l.mu.Lock()
			inHead := len(l.segs) == 1
			l.mu.Unlock()
			if inHead != (where == "head") {
				t.Fatalf("secret in the head: %v", inHead)
			}
			if got := filesContaining(t, fsys, secret); len(got) == 0 {
				t.Fatal("the secret is nowhere on disk before its ack: the scan proves nothing")
			}

			if where == "acked before a restart" {
				// Keep the compactor off the oldest segment.
				l.mu.Lock()
				l.segs[0].pins.Add(1)
				l.mu.Unlock()
			}
			if err := l.Ack("req", sec); err != nil {
				t.Fatal(err)
			}
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
			// Scrubbing waits for scrubDelay, to gather secrets dying
			// meanwhile into one pass: not yet.
			if !l.compactSync() {
				t.Fatal("store closed")
			}
			if got := filesContaining(t, fsys, secret); len(got) == 0 {
				t.Fatal("the secret was scrubbed before scrubDelay")
			}
			if where == "acked before a restart" {
				// Lose power before compaction: the new run finds
				// the secret dead and reclaims it.
				crashed := fsys.Crash(nil)
				l.Close()
				fsys = crashed
				l, _ = openMem(t, fsys, small)
			}
			// scrubDelay passes (its timer calls scrubNow).
			l.scrubNow()
			if !l.compactSync() {
				t.Fatal("store closed")
			}
			if got := filesContaining(t, fsys, secret); len(got) != 0 {
				t.Errorf("the acknowledged secret is still in %v", got)
			}
			// Nothing else is lost, now or after a restart.
			check := func(l *Log) {
				t.Helper()
				if got := l.Queue("other"); len(got) < 2 || got[0] != plain || got[1] != before {
					t.Errorf("other device's queue %v, want [%v %v …]", got, plain, before)
				}
				if got := content(t, l, plain); string(got) != "user" {
					t.Errorf("plain announcement = %q", got)
				}
				if got := l.Queue("req"); !slices.Equal(got, []ID{before}) {
					t.Errorf("requester's queue %v, want [%v]", got, before)
				}
			}
			check(l)
			l.Close()
			l2, _ := openMem(t, fsys, small)
			check(l2)
			if got := filesContaining(t, fsys, secret); len(got) != 0 {
				t.Errorf("after a restart, the acknowledged secret is in %v", got)
			}
		})
	}
}

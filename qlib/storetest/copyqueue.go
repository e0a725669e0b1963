package storetest

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"mnm/qlib/store"
)

// testCopyQueue: CopyQueue durably gives dst the entries of src's queue,
// replacing what dst had (a message only dst held is forgotten); the two
// queues are independent afterwards.
func testCopyQueue(t *testing.T, h Harness) {
	s := open(t, h)
	var high, normal []store.ID
	for i := range 6 {
		r := post(t, s, store.Priority(i%2), fmt.Appendf(nil, "s%d", i), "src")
		if i%2 == 1 {
			high = append(high, r.ID)
		} else {
			normal = append(normal, r.ID)
		}
	}
	both := post(t, s, store.Normal, []byte("both"), "src", "dst")
	only := post(t, s, store.Normal, []byte("only dst"), "dst")
	if err := s.CopyQueue("src", "dst"); err != nil {
		t.Fatal(err)
	}
	want := slices.Concat(high, normal, []store.ID{both.ID})
	checkQueue(t, s, "src", want)
	checkQueue(t, s, "dst", want)
	gone(t, s, only.ID, "once the only queue holding it was replaced")
	if got := content(t, s, both.ID); !bytes.Equal(got, posted(both, []byte("both"))) {
		t.Errorf("message in both queues before the copy = %q", got)
	}

	if err := s.Ack("src", want[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack("dst", want[1]); err != nil {
		t.Fatal(err)
	}
	srcWant := slices.Delete(slices.Clone(want), 0, 1)
	dstWant := slices.Delete(slices.Clone(want), 1, 2)
	checkQueue(t, s, "src", srcWant)
	checkQueue(t, s, "dst", dstWant)

	if err := s.CopyQueue("dst", "dst"); err != nil {
		t.Errorf("CopyQueue onto itself = %v", err)
	}
	checkQueue(t, s, "dst", dstWant)

	lost := post(t, s, store.Normal, []byte("lost"), "emptied")
	if err := s.CopyQueue("nobody", "emptied"); err != nil {
		t.Fatal(err)
	}
	checkQueue(t, s, "emptied", nil)
	gone(t, s, lost.ID, "once its queue was replaced by an empty one")

	contents := map[store.ID][]byte{}
	for _, id := range want {
		contents[id] = content(t, s, id)
	}
	s.reopen()
	checkQueue(t, s, "src", srcWant)
	checkQueue(t, s, "dst", dstWant)
	checkQueue(t, s, "emptied", nil)
	gone(t, s, only.ID, "after a restart")
	gone(t, s, lost.ID, "after a restart")
	for _, id := range want {
		if got := content(t, s, id); !bytes.Equal(got, contents[id]) {
			t.Errorf("after a restart message %v = %q, want %q", id, got, contents[id])
		}
	}
}

// testSecret: CopyQueue never copies a secret message (a device added later
// must not inherit another's password), also after a restart; for the
// devices it is for, it is an entry like any other.
func testSecret(t *testing.T, h Harness) {
	s := open(t, h)
	fixed := func(b string) store.Envelope {
		return func(store.ID, time.Time, []store.ID) []byte { return []byte(b) }
	}
	const secret = "user NODEID-0123456789-SECRET"
	before := post(t, s, store.Normal, []byte("queued before"), "req", "other")
	// As a device add commits it: the secret for the requester, a plain
	// announcement for the others.
	rs, err := s.Draft().Commit(
		store.Message{Prio: store.High, To: []string{"req", "req2"}, Secret: true, Envelope: fixed(secret)},
		store.Message{Prio: store.High, To: []string{"other"}, Envelope: fixed("user")})
	if err != nil {
		t.Fatal(err)
	}
	sec, plain := rs[0].ID, rs[1].ID
	check := func(when string) {
		t.Helper()
		for i, c := range []struct{ src, dst string }{{"req", "new"}, {"req2", "new2"}, {"other", "new3"}} {
			dst := fmt.Sprint(c.dst, "-", when)
			if err := s.CopyQueue(c.src, dst); err != nil {
				t.Fatal(err)
			}
			want := [][]store.ID{{before.ID}, nil, {plain, before.ID}}[i]
			checkQueue(t, s, dst, want)
		}
		checkQueue(t, s, "req", []store.ID{sec, before.ID})
		checkQueue(t, s, "req2", []store.ID{sec})
		if got := content(t, s, sec); string(got) != secret {
			t.Errorf("%s: the secret message = %q, want %q", when, got, secret)
		}
	}
	check("committed")
	s.reopen()
	check("restarted")

	for _, dev := range []string{"req", "req2"} {
		if err := s.Ack(dev, sec); err != nil {
			t.Fatal(err)
		}
	}
	gone(t, s, sec, "once its devices acknowledged it")
	checkQueue(t, s, "req", []store.ID{before.ID})
}

// testCopyQueueDuringCommits: commits for src and dst go on while
// CopyQueue(src, dst) runs, as when a member adds a device while posts to
// the member arrive (the new device is in the directory before its queue is
// copied). dst ends with exactly src's queue, in src's order: the entries
// src had when the copy was taken, then the commits after it, each once. A
// commit that lands between the copy's reads and its writes must neither
// come before the older entries copied nor be lost or doubled.
func testCopyQueueDuringCommits(t *testing.T, h Harness) {
	s := open(t, h)
	for round := range 6 {
		src, dst := fmt.Sprintf("src%d", round), fmt.Sprintf("dst%d", round)
		for i := range 5 {
			post(t, s, store.Normal, fmt.Appendf(nil, "before %d", i), src)
		}
		stop := make(chan struct{})
		posted := make(chan int)
		go func() {
			n := 0
			defer func() { posted <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := s.Draft()
				data := fmt.Appendf(nil, "during %d", n)
				if _, err := d.Write(data); err != nil {
					t.Errorf("Write: %v", err)
					return
				}
				if _, err := d.Commit(store.Message{Prio: store.Normal, To: []string{src, dst}, Len: int64(len(data)), Envelope: envelope("post")}); err != nil {
					t.Errorf("Commit: %v", err)
					return
				}
				n++
			}
		}()
		err := s.CopyQueue(src, dst)
		close(stop)
		n := <-posted
		after := post(t, s, store.Normal, []byte("after"), src, dst) // at least one commit follows the copy
		if err != nil {
			t.Fatalf("round %d: CopyQueue: %v", round, err)
		}
		want := s.Queue(src)
		if len(want) != 5+n+1 || want[len(want)-1] != after.ID {
			t.Fatalf("round %d: src's queue holds %d entries, want %d ending with %v", round, len(want), 5+n+1, after.ID)
		}
		checkQueue(t, s, dst, want)
	}
}

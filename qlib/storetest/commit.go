package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"mnm/qlib/store"
)

// testCommit: Commit returns one receipt per message, with ids consecutive in
// the order given and above every id issued before, and a time; it calls
// each Envelope once, with that id and time and the ids of the whole commit,
// and WriteTo sends what it returned, then the message's range of the data.
// Duplicate devices count once; a message may have no data, or no device;
// an empty commit is no error.
func testCommit(t *testing.T, h Harness) {
	s := open(t, h)
	one := post(t, s, store.Normal, []byte("one"), "a")
	if one.Posted.IsZero() {
		t.Error("receipt without a time")
	}
	checkQueue(t, s, "a", []store.ID{one.ID})
	if got, want := content(t, s, one.ID), posted(one, []byte("one")); !bytes.Equal(got, want) {
		t.Errorf("WriteTo = %q, want %q", got, want)
	}

	type call struct {
		id     store.ID
		posted time.Time
		batch  []store.ID
	}
	var mu sync.Mutex // the store may call envelopes from any goroutine
	calls := make([][]call, 4)
	env := func(i int) store.Envelope {
		return func(id store.ID, posted time.Time, batch []store.ID) []byte {
			mu.Lock()
			defer mu.Unlock()
			calls[i] = append(calls[i], call{id, posted, slices.Clone(batch)})
			return envelope(fmt.Sprint("m", i))(id, posted, batch)
		}
	}
	data := []byte("notepostuser")
	msgs := []store.Message{
		{To: []string{"a", "b"}, Off: 0, Len: 4, Envelope: env(0)},
		{To: []string{"b", "c", "b"}, Off: 4, Len: 4, Envelope: env(1)},
		{Prio: store.High, To: []string{"a"}, Off: 8, Len: 4, Envelope: env(2)},
		{To: []string{"c"}, Envelope: env(3)}, // no data: the envelope is the message
	}
	d := s.Draft()
	if _, err := d.Write(data); err != nil {
		t.Fatal(err)
	}
	rs, err := d.Commit(msgs...)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != len(msgs) {
		t.Fatalf("Commit of %d messages returned %d receipts", len(msgs), len(rs))
	}
	if rs[0].ID <= one.ID {
		t.Errorf("id %v of a later commit not above %v", rs[0].ID, one.ID)
	}
	mu.Lock()
	for i, r := range rs {
		if i > 0 && r.ID != rs[i-1].ID+1 {
			t.Errorf("receipts %v: ids not consecutive in the order given", ids(rs))
		}
		if r.Posted.IsZero() {
			t.Errorf("receipt %d without a time", i)
		}
		if len(calls[i]) != 1 {
			t.Errorf("envelope of message %d called %d times, want once", i, len(calls[i]))
			continue
		}
		c := calls[i][0]
		if c.id != r.ID || !c.posted.Equal(r.Posted) || !slices.Equal(c.batch, ids(rs)) {
			t.Errorf("envelope of message %d called with (%v, %v, %v), want (%v, %v, %v)",
				i, c.id, c.posted, c.batch, r.ID, r.Posted, ids(rs))
		}
	}
	mu.Unlock()
	for i, r := range rs {
		m := msgs[i]
		want := append(envelope(fmt.Sprint("m", i))(r.ID, r.Posted, ids(rs)), data[m.Off:m.Off+m.Len]...)
		if got := content(t, s, r.ID); !bytes.Equal(got, want) {
			t.Errorf("message %d = %q, want %q", i, got, want)
		}
	}
	checkQueue(t, s, "a", []store.ID{rs[2].ID, one.ID, rs[0].ID})
	checkQueue(t, s, "b", []store.ID{rs[0].ID, rs[1].ID})
	checkQueue(t, s, "c", []store.ID{rs[1].ID, rs[3].ID})

	// Ids go on increasing, also past a message for nobody, which gets a
	// receipt like any other.
	last := rs[len(rs)-1].ID
	for i := range 10 {
		var r store.Receipt
		if i == 5 {
			r = post(t, s, store.Normal, []byte("for nobody"))
		} else {
			r = post(t, s, store.Priority(i%2), []byte("more"), "e")
		}
		if r.ID <= last {
			t.Fatalf("commit %d: id %v not above the previous %v", i, r.ID, last)
		}
		last = r.ID
	}
	if n := s.Len("e"); n != 9 {
		t.Errorf("Len(e) = %d, want 9", n)
	}

	// An empty commit has no receipt, and is not an error.
	if rs, err := s.Draft().Commit(); err != nil || len(rs) != 0 {
		t.Errorf("empty Commit = %v, %v; want no receipts, no error", rs, err)
	}
}

// testHeadOrder: a queue delivers every High entry before any Normal one,
// each priority in id order; Queue, Len, Head and QueueBytes agree; Queue
// is a snapshot; an entry may be acknowledged out of order.
func testHeadOrder(t *testing.T, h Harness) {
	s := open(t, h)
	checkQueue(t, s, "d", nil)
	n1 := post(t, s, store.Normal, []byte("n1"), "d").ID
	n2 := post(t, s, store.Normal, []byte("n2"), "d").ID
	h1 := post(t, s, store.High, []byte("h1"), "d").ID
	n3 := post(t, s, store.Normal, []byte("n3"), "d", "other").ID
	h2 := post(t, s, store.High, []byte("h2"), "d").ID
	checkQueue(t, s, "d", []store.ID{h1, h2, n1, n2, n3})
	checkQueue(t, s, "other", []store.ID{n3})

	snap := s.Queue("d")
	keep := slices.Clone(snap)
	if err := s.Ack("d", h1); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(snap, keep) {
		t.Errorf("a Queue snapshot changed from %v to %v with an ack", keep, snap)
	}
	if err := s.Ack("d", n2); err != nil {
		t.Fatalf("Ack of an entry in the middle: %v", err)
	}
	checkQueue(t, s, "d", []store.ID{h2, n1, n3})
	if got, want := drain(t, s, "d"), []store.ID{h2, n1, n3}; !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
	checkQueue(t, s, "d", nil)
	checkQueue(t, s, "other", []store.ID{n3})
}

// testWriteTo: WriteTo sends the envelope, then the message's range of the
// draft's data, wherever the range lies; a message for several devices is
// one message, the same for each; unknown ids are ErrNoMessage; the
// writer's error comes back.
func testWriteTo(t *testing.T, h Harness) {
	s := open(t, h)
	// Ranges at, across and between the boundaries a backend is likely
	// to cut data at (powers of two).
	data := randomData(1, 300_000)
	n := int64(len(data))
	ranges := [][2]int64{
		{0, 0}, {0, 1}, {0, n}, {65535, 2}, {65536, 65536}, {100_000, 150_001},
		{131071, 131073}, {n - 1, 1}, {n, 0},
	}
	var msgs []store.Message
	for i, r := range ranges {
		msgs = append(msgs, store.Message{To: []string{fmt.Sprint("r", i), "all"}, Off: r[0], Len: r[1], Envelope: envelope("range")})
	}
	d := s.Draft()
	if _, err := d.Write(data); err != nil {
		t.Fatal(err)
	}
	rs, err := d.Commit(msgs...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range ranges {
		want := append(envelope("range")(rs[i].ID, rs[i].Posted, ids(rs)), data[r[0]:r[0]+r[1]]...)
		if got := content(t, s, rs[i].ID); !bytes.Equal(got, want) {
			t.Errorf("range [%d,+%d): %d bytes, differ from the %d wanted", r[0], r[1], len(got), len(want))
		}
		checkQueue(t, s, fmt.Sprint("r", i), []store.ID{rs[i].ID})
	}
	checkQueue(t, s, "all", ids(rs))

	multi := post(t, s, store.Normal, []byte("for three"), "x", "y", "z")
	want := posted(multi, []byte("for three"))
	for _, dev := range []string{"x", "y", "z"} {
		if id, ok := s.Head(dev); !ok || id != multi.ID {
			t.Errorf("Head(%s) = %v, %v; want %v", dev, id, ok, multi.ID)
		}
		if got := content(t, s, multi.ID); !bytes.Equal(got, want) {
			t.Errorf("for %s WriteTo = %q, want %q", dev, got, want)
		}
	}

	if _, err := s.WriteTo(failWriter{}, multi.ID); !errors.Is(err, errWriter) {
		t.Errorf("WriteTo to a failing writer = %v, want its error", err)
	}
	// No commit since multi: the id after it was never issued.
	for _, id := range []store.ID{multi.ID + 1, ^store.ID(0)} {
		gone(t, s, id, "of an id never issued")
	}
}

// testAck: Ack removes the entry from that device's queue only; the message
// stays readable while another device holds it and is forgotten
// (ErrNoMessage) as the last entry goes. Acking what is not in the queue is
// ErrNotQueued.
func testAck(t *testing.T, h Harness) {
	s := open(t, h)
	m1 := post(t, s, store.Normal, []byte("m1"), "a", "b")
	m2 := post(t, s, store.Normal, []byte("m2"), "a")
	if err := s.Ack("a", m1.ID); err != nil {
		t.Fatal(err)
	}
	checkQueue(t, s, "a", []store.ID{m2.ID})
	checkQueue(t, s, "b", []store.ID{m1.ID})
	if got, want := content(t, s, m1.ID), posted(m1, []byte("m1")); !bytes.Equal(got, want) {
		t.Errorf("while b holds it, WriteTo = %q, want %q", got, want)
	}
	for _, c := range []struct {
		dev  string
		id   store.ID
		what string
	}{
		{"a", m1.ID, "a second time"},
		{"c", m1.ID, "by a device it was not for"},
		{"b", m2.ID, "of a stored message not in the queue"},
		{"a", ^store.ID(0), "of an unknown id"},
	} {
		if err := s.Ack(c.dev, c.id); !errors.Is(err, store.ErrNotQueued) {
			t.Errorf("Ack %s = %v, want ErrNotQueued", c.what, err)
		}
	}
	if err := s.Ack("b", m1.ID); err != nil {
		t.Fatal(err)
	}
	gone(t, s, m1.ID, "after its last ack")
	if err := s.Ack("b", m1.ID); !errors.Is(err, store.ErrNotQueued) {
		t.Errorf("Ack of a forgotten message = %v, want ErrNotQueued", err)
	}
	checkQueue(t, s, "a", []store.ID{m2.ID})
	checkQueue(t, s, "b", nil)
}

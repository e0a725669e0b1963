package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// setCacheBudget sets l's cache budget; call it before committing.
func setCacheBudget(l *Log, n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cache.max = n
}

// cached reports whether message id is in l's cache.
func cached(l *Log, id ID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.cache.get(id)
	return ok
}

// uncachedContent returns what WriteTo writes for id when it reads the log.
func uncachedContent(t *testing.T, l *Log, id ID) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := l.writeTo(&buf, id, false); err != nil {
		t.Fatalf("writeTo(%v) without cache: %v", id, err)
	}
	return buf.Bytes()
}

// checkCache checks the cache's invariants: within budget, the charge equal
// to its entries' costs, only live messages, and the eviction list in id
// order, holding every entry and bounded.
func checkCache(t *testing.T, l *Log) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	c := &l.cache
	if c.bytes > c.max {
		t.Fatalf("cache charged %d bytes, budget %d", c.bytes, c.max)
	}
	var sum int64
	for id, p := range c.data {
		sum += cacheCost(len(p))
		if l.msgs[id] == nil {
			t.Fatalf("cache holds %v, which is not stored", id)
		}
	}
	if sum != c.bytes {
		t.Fatalf("cache charged %d bytes, its entries cost %d", c.bytes, sum)
	}
	list := c.order[c.head:]
	if !slices.IsSorted(list) {
		t.Fatal("eviction list not in id order")
	}
	for id := range c.data {
		if _, found := slices.BinarySearch(list, id); !found {
			t.Fatalf("cached %v missing from the eviction list", id)
		}
	}
	if len(list) > 2*len(c.data)+cacheCompactAt {
		t.Fatalf("eviction list has %d ids for %d entries", len(list), len(c.data))
	}
}

// fixedEnv is an Envelope of exactly n bytes naming the id.
func fixedEnv(n int) Envelope {
	return func(id ID, _ time.Time, _ []ID) []byte {
		b := bytes.Repeat([]byte{'.'}, n)
		copy(b, id.String())
		return b
	}
}

// WriteTo writes the same bytes whether the message is cached or read from
// the log: right after the commit, after compaction moved the message, and
// after a restart (when nothing is cached).
func TestCacheSameBytes(t *testing.T) {
	const segSize = 16 << 10
	l, fsys := openMem(t, nil, func(o *Options) { o.SegmentSize = segSize })
	type msg struct {
		name   string
		id     ID
		want   []byte
		cached bool
	}
	var msgs []msg
	add := func(name string, d Draft, data []byte, cache []bool, ms ...Message) {
		t.Helper()
		rs, err := d.Commit(ms...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, m := range ms {
			var e []byte
			if m.Envelope != nil {
				e = m.Envelope(rs[i].ID, rs[i].Posted, nil)
			}
			want := append(e, data[m.Off:m.Off+m.Len]...)
			msgs = append(msgs, msg{fmt.Sprint(name, i), rs[i].ID, want, cache[i]})
		}
	}
	one := func(name string, envLen, n int, prio Priority, cache bool) {
		data := randomData(uint64(len(msgs)), n)
		d := l.Draft()
		d.Write(data)
		m := Message{Prio: prio, To: []string{"away", "here"}, Len: int64(n)}
		if envLen >= 0 {
			m.Envelope = fixedEnv(envLen)
		}
		add(name, d, data, []bool{cache}, m)
	}
	one("post", 200, 1000, Normal, true)
	one("high", 200, 1000, High, true)
	one("empty data", 150, 0, Normal, true)
	one("no envelope", -1, 10, Normal, true)
	one("limit", 300, maxCachedMessage-300, Normal, true)
	one("over limit", 300, maxCachedMessage-299, Normal, false)

	// A note and its post from one draft, both small.
	data := randomData(77, 3000)
	d := l.Draft()
	d.Write(data)
	add("note and post", d, data, []bool{true, true},
		Message{To: []string{"away", "here"}, Off: 1000, Len: 2000, Envelope: fixedEnv(100)},
		Message{To: []string{"away"}, Len: 1000, Envelope: fixedEnv(90)})
	// A big draft: a note at its start is in a chunk record, not cached;
	// a small message at its end is in the commit record, cached.
	data = randomData(78, 3*chunkSize+500)
	d = l.Draft()
	d.Write(data)
	add("big draft", d, data, []bool{false, true, false},
		Message{To: []string{"away"}, Len: 1000, Envelope: fixedEnv(100)},
		Message{To: []string{"away", "here"}, Off: 3 * chunkSize, Len: 500, Envelope: fixedEnv(100)},
		Message{To: []string{"away"}, Off: 1000, Len: int64(len(data) - 1000), Envelope: fixedEnv(100)})

	check := func(l *Log, when string, cacheExpected bool) {
		t.Helper()
		for _, m := range msgs {
			if got, want := cached(l, m.id), m.cached && cacheExpected; got != want {
				t.Errorf("%s: %s: cached %v, want %v", when, m.name, got, want)
			}
			if got := content(t, l, m.id); !bytes.Equal(got, m.want) {
				t.Errorf("%s: %s: WriteTo differs (%d bytes, want %d)", when, m.name, len(got), len(m.want))
			}
			if got := uncachedContent(t, l, m.id); !bytes.Equal(got, m.want) {
				t.Errorf("%s: %s: read from the log differs (%d bytes, want %d)", when, m.name, len(got), len(m.want))
			}
		}
		checkCache(t, l)
	}
	check(l, "after commit", true)
	if _, err := l.WriteTo(failWriter{}, msgs[0].id); !errors.Is(err, errBoom) {
		t.Errorf("WriteTo of a cached message to a failing writer = %v, want errBoom", err)
	}

	// Fill segments with messages that die, several times the live data, so
	// that compaction copies the ones above forward.
	l.mu.Lock()
	oldSeg := l.msgs[msgs[0].id].blob.seg
	l.mu.Unlock()
	for i := range 150 {
		post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 8000), "here")
	}
	drain(t, l, "here")
	if !l.compactSync() {
		t.Fatal("store closed")
	}
	l.mu.Lock()
	moved := l.msgs[msgs[0].id].blob.seg != oldSeg
	l.mu.Unlock()
	if !moved {
		t.Fatal("compaction did not move the messages")
	}
	check(l, "after compaction", true)

	l.Close()
	l2, _ := openMem(t, fsys, func(o *Options) { o.SegmentSize = segSize })
	check(l2, "after restart", false)
}

// The cache never exceeds its budget, evicts oldest first, and holds
// every live cacheable message newer than its oldest entry.
func TestCacheBudget(t *testing.T) {
	l, _ := openMem(t, nil)
	const budget = 40 << 10
	setCacheBudget(l, budget)
	rng := rand.New(rand.NewPCG(3, 4))
	var cacheable []ID // committed messages small enough to cache, in order
	evicted := 0
	for i := range 600 {
		if rng.IntN(3) == 0 {
			// Ack a random device's head, or a random entry.
			dev := []string{"a", "b"}[rng.IntN(2)]
			q := l.Queue(dev)
			if len(q) > 0 {
				id := q[0]
				if rng.IntN(2) == 0 {
					id = q[rng.IntN(len(q))]
				}
				if err := l.Ack(dev, id); err != nil {
					t.Fatal(err)
				}
			}
		} else {
			n := rng.IntN(maxCachedMessage + 200)
			if rng.IntN(10) == 0 {
				n = rng.IntN(10)
			}
			d := l.Draft()
			d.Write(randomData(uint64(i), n))
			rs, err := d.Commit(Message{To: []string{"a", "b"}, Len: int64(n), Envelope: fixedEnv(100)})
			if err != nil {
				t.Fatal(err)
			}
			id := rs[0].ID
			if 100+n <= maxCachedMessage {
				cacheable = append(cacheable, id)
				if !cached(l, id) {
					t.Fatalf("commit %d: a message of %d bytes just committed is not cached", i, 100+n)
				}
			} else if cached(l, id) {
				t.Fatalf("commit %d: a message of %d bytes is cached", i, 100+n)
			}
		}
		checkCache(t, l)

		// Oldest first: every live cacheable message at or after the
		// oldest cached one is cached.
		l.mu.Lock()
		oldest := ID(0)
		for id := range l.cache.data {
			if oldest == 0 || id < oldest {
				oldest = id
			}
		}
		for _, id := range cacheable {
			_, live := l.msgs[id]
			_, in := l.cache.get(id)
			switch {
			case live && id >= oldest && !in:
				l.mu.Unlock()
				t.Fatalf("step %d: %v is live and newer than the oldest cached %v but not cached", i, id, oldest)
			case live && id < oldest && !in:
				evicted++
			}
		}
		l.mu.Unlock()
	}
	if evicted == 0 {
		t.Error("nothing was ever evicted: the test did not reach the budget")
	}
}

// A message leaves the cache with its last queue entry: by Ack, or by
// CopyQueue replacing the queue that held it.
func TestCacheDropOnLastAck(t *testing.T) {
	l, _ := openMem(t, nil)
	id := post(t, l, Normal, []byte("for two"), "a", "b")
	if !cached(l, id) {
		t.Fatal("new message not cached")
	}
	if err := l.Ack("a", id); err != nil {
		t.Fatal(err)
	}
	if !cached(l, id) {
		t.Error("message left the cache while b still has it")
	}
	if err := l.Ack("b", id); err != nil {
		t.Fatal(err)
	}
	if cached(l, id) {
		t.Error("message still cached after its last ack")
	}
	checkCache(t, l)

	id = post(t, l, Normal, []byte("for c"), "c")
	if err := l.CopyQueue("empty", "c"); err != nil {
		t.Fatal(err)
	}
	if cached(l, id) {
		t.Error("message still cached after CopyQueue dropped its last entry")
	}
	checkCache(t, l)
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := &l.cache; c.bytes != 0 || len(c.data) != 0 || len(c.order) != c.head {
		t.Errorf("empty cache charged %d bytes, %d entries, %d listed", c.bytes, len(c.data), len(c.order)-c.head)
	}
}

// Stale ids in the eviction list (messages acked while an older one stays
// cached) are compacted away, so the list stays bounded by the entries.
func TestCacheListBounded(t *testing.T) {
	l, _ := openMem(t, nil)
	away := post(t, l, Normal, []byte("for a device that is away"), "away")
	for i := range 5 * cacheCompactAt {
		id := post(t, l, Normal, []byte{byte(i)}, "here")
		if err := l.Ack("here", id); err != nil {
			t.Fatal(err)
		}
		if i%97 == 0 {
			checkCache(t, l)
		}
	}
	checkCache(t, l)
	if !cached(l, away) {
		t.Error("the old message was evicted although the cache is nearly empty")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.cache.order) - l.cache.head; n > cacheCompactAt+1 {
		t.Errorf("eviction list holds %d ids for %d entries", n, len(l.cache.data))
	}
}

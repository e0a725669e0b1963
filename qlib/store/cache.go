package store

// The cache of recent messages. A message is usually delivered milliseconds
// after its commit, while its bytes were in memory moments before; without a
// cache every delivery reads them back from the segment file (a pread system
// call per piece). So a commit keeps a copy of each small message's envelope
// and data, made while the draft's data and the envelope are in hand, and
// WriteTo writes that copy in one piece when it is there.
//
// The cache is bounded in bytes and evicts oldest first: messages still
// queued long after their commit are for devices that are away, and reading
// those back is the rare case. An entry goes as soon as its message does
// (acknowledged by every device). After a restart the cache starts empty.
//
// Entries live in a map for lookup and in a list in commit order for
// eviction. Entries that left the map before reaching the list's front stay
// in the list as stale ids until it is compacted, which keeps both removal
// and eviction amortised O(1) and the list at most about twice the map.

const (
	// maxCachedMessage is the largest envelope plus data that is cached: a
	// typical post or notification (1–10 KB) fits, while the rare large
	// message, whose delivery costs far more than its read anyway, would
	// take the room of many small ones.
	maxCachedMessage = 16 << 10

	// defaultCacheBudget bounds the cache's memory. At the load benchmark's
	// rates (about 13 MB/s of posts with 1 KB posts, 50 MB/s with 10 KB
	// ones) it holds from a third of a second to over a second of traffic,
	// well above the usual commit-to-delivery time (p50 79 ms, p99 239 ms),
	// and with the garbage collector's headroom it stays well inside the
	// server's 60 MB memory target.
	defaultCacheBudget = 16 << 20

	// cacheEntryOverhead is counted against the budget for each entry on top
	// of its bytes: its map slot and list slot, with their growth slack
	// (measured: 61–72 bytes), so that the budget bounds memory even for
	// tiny messages.
	cacheEntryOverhead = 64

	// cacheCompactAt is the least number of stale list entries at which the
	// list is compacted (when they are also more than the live ones).
	cacheCompactAt = 1024
)

// msgCache is the cache. Guarded by Log.mu.
type msgCache struct {
	max   int64 // budget
	bytes int64 // charged: each entry's length plus cacheEntryOverhead
	data  map[ID][]byte
	order []ID // ids in commit order; order[:head] are gone
	head  int
}

func newMsgCache(budget int64) msgCache {
	return msgCache{max: budget, data: map[ID][]byte{}}
}

// cost is what an entry of n bytes is charged.
func cacheCost(n int) int64 { return int64(n) + cacheEntryOverhead }

// put caches p, the envelope and data of message id, evicting the oldest
// entries as needed to stay within the budget. id must be above every id
// cached before (commits are applied in id order).
func (c *msgCache) put(id ID, p []byte) {
	cost := cacheCost(len(p))
	if cost > c.max {
		return
	}
	for c.bytes+cost > c.max {
		c.evictOldest()
	}
	c.data[id] = p
	c.order = append(c.order, id)
	c.bytes += cost
}

// get returns the cached bytes of id. They are never modified: the caller
// may use them after releasing the lock.
func (c *msgCache) get(id ID) ([]byte, bool) {
	p, ok := c.data[id]
	return p, ok
}

// evictOldest drops the oldest entry. The cache must not be empty.
func (c *msgCache) evictOldest() {
	for c.head < len(c.order) {
		id := c.order[c.head]
		c.head++
		if p, ok := c.data[id]; ok {
			delete(c.data, id)
			c.bytes -= cacheCost(len(p))
			break
		}
	}
	c.compact()
}

// drop forgets message id, if cached.
func (c *msgCache) drop(id ID) {
	p, ok := c.data[id]
	if !ok {
		return
	}
	delete(c.data, id)
	c.bytes -= cacheCost(len(p))
	c.compact()
}

// compact removes stale ids from the list once they are many, and gone
// ones from its front once they are half of it.
func (c *msgCache) compact() {
	n := len(c.order) - c.head
	switch stale := n - len(c.data); {
	case len(c.data) == 0:
		if cap(c.order) > cacheCompactAt {
			c.order = nil
		} else {
			c.order = c.order[:0]
		}
		c.head = 0
	case stale >= cacheCompactAt && stale > len(c.data):
		live := c.order[:0]
		for _, id := range c.order[c.head:] {
			if _, ok := c.data[id]; ok {
				live = append(live, id)
			}
		}
		c.order = live
		c.head = 0
	case c.head >= cacheCompactAt && 2*c.head >= len(c.order):
		k := copy(c.order, c.order[c.head:])
		c.order = c.order[:k]
		c.head = 0
	}
}

// reset empties the cache, releasing its memory.
func (c *msgCache) reset() {
	*c = msgCache{max: c.max, data: map[ID][]byte{}}
}

// cacheCopy returns a copy of env followed by data [off, off+n) of d, for
// the cache, or nil if the message is too big or its data is not all in
// d's buffer (part of it was written to the log as chunks).
func cacheCopy(d *draft, env []byte, off, n int64) []byte {
	size := int64(len(env)) + n
	if size > maxCachedMessage {
		return nil
	}
	base := d.n - int64(len(d.buf)) // offset of d.buf[0] in the draft's data
	if off < base {
		return nil
	}
	p := make([]byte, 0, size)
	p = append(p, env...)
	return append(p, d.buf[off-base:off-base+n]...)
}

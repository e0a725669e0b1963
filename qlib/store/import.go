package store

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrDuplicate: Import named an id that the store already holds.
var ErrDuplicate = errors.New("store: message id already stored")

// Import stores one message under id, an id issued by another server: a site
// taken over from the deployed server keeps its queued messages' ids, which
// their senders were given in acks and may still refer to. env is the frame
// header exactly as devices are to receive it; data is read to EOF. Ids
// issued after Import are above id.
//
// Like CommitAsync, Import does not wait for durability: done is called once,
// from the writer goroutine, when the message is durable (nil) or cannot be;
// Sync waits for every import before it. Errors found at once are returned
// and done is not called. Import is for a store that is not yet serving: the
// check that id is new does not hold against concurrent Imports of the same
// id.
func (l *Log) Import(id ID, prio Priority, to []string, env []byte, data io.Reader, done func(error)) error {
	if id == 0 {
		return fmt.Errorf("store: import: message id 0")
	}
	l.mu.Lock()
	_, dup := l.msgs[id]
	l.mu.Unlock()
	if dup {
		return fmt.Errorf("%w: %v", ErrDuplicate, id)
	}
	d := &draft{l: l}
	if _, err := io.Copy(d, data); err != nil {
		d.Abort()
		return fmt.Errorf("store: import %v: %w", id, err)
	}
	m := Message{Prio: prio, To: to, Len: d.n, Envelope: func(ID, time.Time, []ID) []byte { return env }}
	return d.commitAsync(id, func(_ []Receipt, err error) { done(err) }, []Message{m})
}

// Sync returns once everything accepted before it (commits, imports, acks)
// is durable.
func (l *Log) Sync() error { return l.barrier() }

// Queue returns the ids in dev's queue, in delivery order.
func (l *Log) Queue(dev string) []ID {
	l.mu.Lock()
	defer l.mu.Unlock()
	if q := l.queues[dev]; q != nil {
		return q.ids()
	}
	return nil
}

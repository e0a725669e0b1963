package qlib

import (
	"io"

	"mnm/qlib/store"
)

// Store is the durable message store as qlib sees it: the seam behind which
// another backend (a clustered one) can be put. The server's *store.Log
// implements it. All methods are safe for concurrent use.
//
// Life cycle: the owner opens the store and hands it to NewServer in Config;
// qlib calls it from link goroutines and from the callbacks below until
// Shutdown returns; the owner then calls Close.
//
// After an I/O error that may have left stable storage in an unknown state the
// store fails stop: every later call returns an error wrapping
// store.ErrFailed, and the server shuts down rather than acknowledge anything
// it cannot keep (Config.OnFatal).
//
// The types a Store traffics in (store.ID, store.Message, store.Receipt, the
// store.Draft a commit is made through) and the errors it returns are the
// store package's: a backend implements this interface with them.
type Store interface {
	// Draft starts new messages. Data written to the draft is kept with bounded
	// memory whatever its size (large data is written through to storage), but
	// is not durable until Commit.
	Draft() store.Draft

	// Head returns the first entry of dev's queue: highest priority first, then
	// lowest id. ok is false when the queue is empty.
	Head(dev string) (id store.ID, ok bool)

	// WriteTo writes message id (its envelope, then its data) to w.
	// store.ErrNoMessage if the store does not hold id; nothing has been
	// written to w then, so the server can skip a queue entry whose
	// message is gone and go on writing the link.
	WriteTo(w io.Writer, id store.ID) (int64, error)

	// Ack removes id from dev's queue; store.ErrNotQueued if it is not
	// there. The removal is made durable soon, but not before Ack returns:
	// after a crash an acknowledged message may be delivered again.
	Ack(dev string, id store.ID) error

	// Watch registers fn to be called whenever entries are added to dev's queue
	// (after they are durable). fn is called from the store's own goroutine,
	// with none of the store's locks held, and must not block: it may call
	// Head, Len, WriteTo and Ack, but not Commit or CopyQueue, which wait for
	// that goroutine. A nil fn removes the watcher; one removed while entries
	// are being added may be called once more. One watcher per device.
	Watch(dev string, fn func())

	// CopyQueue durably gives dst a queue referencing the same messages as
	// src's queue, but for secret ones (store.Message.Secret), replacing
	// what dst had.
	CopyQueue(src, dst string) error

	// Len reports the number of entries in dev's queue.
	Len(dev string) int

	// Queue returns the ids in dev's queue, in delivery order: a snapshot,
	// for work on a whole queue (the away sweep).
	Queue(dev string) []store.ID

	// QueueBytes reports the size of dev's queue: the sum, over its
	// entries, of the bytes WriteTo sends for each (envelope and data). A
	// message queued for several devices counts for each. It is kept as
	// entries come and go, so it costs no more than Len.
	QueueBytes(dev string) int64

	// Close flushes pending work and releases the store. A commit under way
	// either completes (and is then durable) or fails with store.ErrClosed;
	// drafts, and commits made after Close, fail with store.ErrClosed.
	Close() error
}

// Package store keeps mnm's messages and per-device queues durably.
//
// A message is written once and referenced from the queue of every device it is
// for. Commit returns only after the message and all of its queue entries are on
// stable storage, so the caller may then acknowledge the sender. Entries leave a
// queue when the device acknowledges them; a message is forgotten when its last
// entry goes.
//
// Log is the store; qlib uses it only through its own interface, qlib.Store,
// which documents the contract, so that another backend (a clustered one) can
// be put behind it. Draft, the interface a commit is made through, is defined
// here rather than in qlib because qlib.Store's Draft method returns it, and
// Log's method must return the very same type: qlib imports this package, so
// the interface cannot live in qlib. Its contract is written below.
package store

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// ID identifies a stored message. IDs are issued in increasing order across the
// whole server, never repeat, and never go backwards, across restarts too.
// The wire form (String) is 16 lowercase hex digits, so that ids sort as strings
// in creation order.
type ID uint64

func (id ID) String() string {
	var b [16]byte
	const hex = "0123456789abcdef"
	for i := 15; i >= 0; i-- {
		b[i] = hex[id&0xf]
		id >>= 4
	}
	return string(b[:])
}

// ParseID parses the wire form of an ID.
func ParseID(s string) (ID, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("store: message id %q: want 16 hex digits", s)
	}
	n, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("store: message id %q: %w", s, err)
	}
	return ID(n), nil
}

// Priority orders a queue: all entries of a higher priority are delivered before
// any entry of a lower one; within a priority, entries go in ID order.
type Priority uint8

const (
	Normal Priority = iota
	// High is for account changes ("user" messages) that a device must see
	// before anything else.
	High
)

// Envelope returns the frame header a device receives before the message's data
// (the TMTP header with its 4-hex-digit length prefix). It is called once per
// message, inside Commit, when the message's id and acceptance time are known.
// batch holds the ids of every message of the same Commit, in order, so that one
// message can name another (a notification names its post).
type Envelope func(id ID, posted time.Time, batch []ID) []byte

// Message is one message of a Commit. Its data is the range [Off, Off+Len) of
// the data written to the Draft.
type Message struct {
	Prio     Priority
	To       []string // device keys; duplicates are ignored
	Off, Len int64
	Envelope Envelope
	// Secret marks a message that carries a secret for the devices it is
	// for (a new device's nodeid, its password). CopyQueue does not copy
	// it, so a device added later never inherits it; and once the last of
	// its devices has acknowledged it, the store reclaims the segments
	// holding its bytes within scrubDelay (starting a new segment if it
	// was in the current one) instead of whenever space runs short, so
	// that it does not linger on disk. The flag survives a restart.
	Secret bool
}

// Receipt reports a committed message.
type Receipt struct {
	ID     ID
	Posted time.Time
}

// Errors of the store and its drafts (qlib.Store and Draft say which method
// returns which).
var (
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrNotQueued: Ack named an id that is not in the device's queue.
	ErrNotQueued = errors.New("store: message not in queue")
	// ErrRange: a Message's data range lies outside the draft's data.
	ErrRange = errors.New("store: message range outside draft data")
	// ErrPriority: a Message's priority is neither Normal nor High.
	ErrPriority = errors.New("store: unknown priority")
	// ErrDraftDone: the draft was already committed or aborted.
	ErrDraftDone = errors.New("store: draft already finished")
	// ErrNoMessage: WriteTo named an id that is not stored (it never was,
	// or every device has acknowledged it).
	ErrNoMessage = errors.New("store: no such message")
	// ErrFailed: an earlier I/O error left stable storage in an unknown
	// state and the store has stopped (see qlib.Store). Errors returned after
	// that wrap both ErrFailed and the original error.
	ErrFailed = errors.New("store: failed after an i/o error")
)

// Draft accumulates the data of one or more messages before they are committed.
// A Draft is used by one goroutine.
type Draft interface {
	// Write appends data to the draft. A failed Write fails the Commit: the
	// draft keeps the first write error and Commit and CommitAsync return
	// it (the draft is then finished), so nothing written short is ever
	// stored. ErrFull when the disk is below its free-space watermark;
	// ErrClosed, ErrFailed; ErrDraftDone after Commit or Abort.
	io.Writer

	// Commit durably stores msgs and returns one receipt per message. On
	// success or failure, the draft is finished. All messages of one Commit
	// become durable together or not at all; their ids are consecutive in the
	// order given. ErrRange or ErrPriority for a bad Message, ErrDraftDone if
	// the draft was already finished. Each Envelope is called with the
	// store's append lock held: it must be quick and must not call the store.
	Commit(msgs ...Message) ([]Receipt, error)

	// CommitAsync is Commit without the wait, so that one caller can have
	// several commits in flight and let them share an fsync. Errors that
	// Commit would return at once (ErrRange, ErrPriority, ErrDraftDone,
	// ErrClosed, ErrFailed) are returned here and done is not called.
	// Otherwise done is called exactly once, from the store's writer
	// goroutine, when the messages are durable (receipts) or cannot be
	// (error); commits of one caller complete in the order they were made.
	// done must not block and must not call the store.
	CommitAsync(done func([]Receipt, error), msgs ...Message) error

	// Abort discards the draft. Safe to call after Commit (then a no-op).
	Abort()
}

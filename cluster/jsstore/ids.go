package jsstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/internal/jskv"
	"mnm/qlib/store"
)

// Ids are clock time with the frontend's node number inside, so that
// frontends never issue the same id and ids from different frontends still
// follow the clock:
//
//	id = slot<<slotShift | node<<countBits | n
//
// slot is the time in units of 2^slotShift ns (262 µs), n counts the ids of
// one slot of this node. The contract wants the ids of one commit
// consecutive (+1) in the order given, so a commit takes n..n+k-1 of one
// slot; a commit that does not fit in the rest of the slot takes the next
// slot (at least the current time). A node can issue 1,024 ids per 262 µs,
// ~3.9 million a second, before it runs ahead of the clock.
//
// Across frontends, an id issued after another one was acknowledged is
// larger when the clocks agree to better than the commit round trip (1 ms
// or more at R3 with fsync) minus one slot: true on one machine, and what
// NTP gives a LAN only roughly. The stream sequence is the site-wide order;
// ids are the clients' order and are unique.
const (
	countBits = 10
	nodeBits  = 8
	slotShift = countBits + nodeBits
	// maxCommit is the most messages one commit may have: a commit's ids
	// are consecutive within one slot. With the default batch limit of
	// 1,000 (each message is at least one record) no valid batch exceeds it.
	maxCommit = 1 << countBits
)

// ceilingStep is how far ahead of use the persisted id ceiling is raised:
// a ceiling message (and a purge of the old one) per 2^27 ns (134 ms) of
// ids at most, against at most 134 ms of id time skipped at a restart.
const ceilingStep = 1 << 27

// loadFloor finds where ids resume: above the last record in the stream
// and above this node's persisted ceiling, so that ids increase across
// restarts even when every message has been acknowledged, and even if the
// clock was stepped back.
func (s *Store) loadFloor(ctx context.Context) error {
	var floor store.ID
	m, err := s.lastMsgAtOpen(ctx, s.p+".m.>")
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return fmt.Errorf("jsstore: read last record: %w", err)
	default:
		id, err := store.ParseID(strings.TrimPrefix(m.Subject, s.p+".m."))
		if err != nil {
			return fmt.Errorf("jsstore: last record %s: %w", m.Subject, err)
		}
		floor = id
	}
	m, err = s.lastMsgAtOpen(ctx, s.ceilingSubj())
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return fmt.Errorf("jsstore: read id ceiling: %w", err)
	default:
		id, err := store.ParseID(string(m.Data))
		if err != nil {
			return fmt.Errorf("jsstore: id ceiling: %w", err)
		}
		floor = max(floor, id)
	}
	s.last = floor
	s.ceiling = floor
	return nil
}

// Raising the ceiling at Open: openRetries attempts openRetryWait apart
// (2 s) cover a stream just created, whose subjects a server may not yet
// route to it ("no responders").
const (
	openRetries   = 40
	openRetryWait = 50 * time.Millisecond
)

// raiseCeiling persists a ceiling above the floor and the clock at Open,
// before any id is issued. It is also the Store's first publish: once it is
// acknowledged, the stream takes this connection's batches, whose
// unacknowledged messages would be dropped unseen while it did not.
func (s *Store) raiseCeiling(ctx context.Context) error {
	now := store.ID(s.opts.Now().UnixNano())
	s.ceiling = max(s.last, now) + ceilingStep
	if _, err := s.js.Publish(ctx, s.ceilingSubj(), []byte(s.ceiling.String()),
		jetstream.WithRetryAttempts(openRetries), jetstream.WithRetryWait(openRetryWait)); err != nil {
		return fmt.Errorf("jsstore: publish id ceiling: %w", err)
	}
	s.trimCeiling()
	return nil
}

// issue returns the first of k consecutive new ids, and the new ceiling to
// put in the commit's batch (0 if the persisted one still covers them).
// Called with s.mu held; 1 <= k <= maxCommit.
func (s *Store) issue(k int) (first store.ID, ceiling store.ID) {
	node := store.ID(s.opts.Node)
	now := store.ID(s.opts.Now().UnixNano()) >> slotShift
	lastSlot := s.last >> slotShift
	lastNode := s.last >> countBits & (1<<nodeBits - 1)
	lastN := s.last & (maxCommit - 1)
	if s.last != 0 && lastNode == node && lastSlot >= now && int(lastN)+k < maxCommit {
		first = s.last + 1
	} else {
		first = max(now, lastSlot+1)<<slotShift | node<<countBits
	}
	s.last = first + store.ID(k) - 1
	if s.last >= s.ceiling {
		s.ceiling = s.last + ceilingStep
		ceiling = s.ceiling
	}
	return first, ceiling
}

// lastMsgAtOpen is the stream's last message on subj, retried while the
// stream does not answer (jskv): a stream just created by another
// frontend starting at the same moment has no leader yet. ErrMsgNotFound
// is an answer.
func (s *Store) lastMsgAtOpen(ctx context.Context, subj string) (*jetstream.RawStreamMsg, error) {
	return jskv.Retry(ctx, s.log, "read "+subj, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return s.stream.GetLastMsgForSubject(ctx, subj)
	})
}

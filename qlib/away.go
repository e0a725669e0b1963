package qlib

// Away devices (the "away" extension, Protocol.md): under a policy the
// operator sets, a device that has not logged in for that long loses its
// queue. SweepAway does it, one device at a time, in an order that a crash
// at any point leaves safe:
//
//  1. a notice that the device must resync from the member's other devices
//     is stored for it, at high priority;
//  2. the device is marked away durably in the directory, which checks,
//     under the member's lock, that no login came first (if one did, the
//     notice is taken back);
//  3. every other entry of its queue is dropped;
//  4. the member's other devices are told.
//
// A crash after 1 leaves a notice the device did not need (the next sweep
// stores another): a needless resync. A crash during 3 leaves the device
// marked, part of its queue dropped and the notice in place: it resyncs, as
// it must. Never is part of a queue dropped without the notice. A crash
// before 4 leaves the other devices untold. A device stays a device: it
// keeps its nodeid and receives what is queued for it after the sweep, and
// nothing else is ever dropped.

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// AwayDirectory is the part of a Directory that keeps the away policy. A
// Directory that does not implement it has no policy: SweepAway does
// nothing.
type AwayDirectory interface {
	// AwayDue returns the keys of the live devices, not yet away, that
	// have not logged in for the policy's period at now; none when the
	// policy is off. It may list a device that logs in meanwhile:
	// MarkAway checks again.
	AwayDue(now time.Time) []string

	// MarkAway marks dev away, durably, if it is still due at now, and
	// returns its number (as Nodes gives it) and label and the member's
	// other live devices that are not away. ok is false, and nothing
	// changes, when dev is not due any more (a login since AwayDue), is
	// away already, or is not a live device. A login of dev clears the
	// mark; Login must serialise with MarkAway so that one of the two
	// comes first.
	MarkAway(dev string, now time.Time) (num, label string, others []string, ok bool, err error)
}

// SweepAway drops the queues of the devices due under the directory's away
// policy at now (see the file comment) and returns how many it dropped. A
// device with a live link is never swept, however long ago it logged in. The
// caller runs it on a timer; an error is the store's or the directory's
// failure, which stops the server as any other does.
func (s *Server) SweepAway(now time.Time) (int, error) {
	dir, ok := s.cfg.Directory.(AwayDirectory)
	if !ok {
		return 0, nil
	}
	n := 0
	for _, dev := range dir.AwayDue(now) {
		s.mu.Lock()
		live := s.devices[dev] != nil
		s.mu.Unlock()
		if live {
			continue
		}
		uid := dev[:max(strings.LastIndexByte(dev, '.'), 0)] // a device key is uid.n
		resync, err := s.storeNotice(uid, store.High, []string{dev}, tmtp.String("op", "user"), tmtp.Int("resync", 1))
		if err != nil {
			return n, fmt.Errorf("away: resync notice: %w", err)
		}
		// A login that passes the directory from here on either comes
		// before MarkAway, which then refuses, or after it, and then
		// the device is online when its queue is emptied: it has the
		// resync notice.
		num, label, others, ok, err := dir.MarkAway(dev, now)
		if err != nil {
			return n, fmt.Errorf("away %s: %w", dev, err)
		}
		if !ok {
			// Not away after all: the notice is not needed.
			if err := s.cfg.Store.Ack(dev, resync.ID); err != nil && !errors.Is(err, store.ErrNotQueued) {
				return n, fmt.Errorf("away: take back the resync notice: %w", err)
			}
			continue
		}
		for _, id := range s.cfg.Store.Queue(dev) {
			if id == resync.ID {
				continue
			}
			// The device's link, or a revoke's watcher, may have
			// removed it first.
			if err := s.cfg.Store.Ack(dev, id); err != nil && !errors.Is(err, store.ErrNotQueued) {
				return n, fmt.Errorf("away: drop queue: %w", err)
			}
		}
		if len(others) > 0 {
			if _, err := s.storeNotice(uid, store.High, others, tmtp.String("away", num), tmtp.String("label", label),
				tmtp.String("op", "user")); err != nil {
				return n, fmt.Errorf("away: notice: %w", err)
			}
		}
		s.log.Info("device away, queue dropped", "dev", dev)
		n++
	}
	return n, nil
}

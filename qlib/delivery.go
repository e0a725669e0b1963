package qlib

import (
	"errors"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// Delivery (SPEC §5): a logged-in device receives its queue one message at a
// time, in queue order, and each message waits for the device's Ack before the
// next is sent; without an Ack it is sent again after ResendAfter.
//
// Frames that other links produce for this one (presence notices) are queued
// for deliver instead of being written by the producing goroutine, so that a
// slow or dead link never blocks anyone else. They are coalesced per sender:
// a notice replaces the one still waiting from the same sender, since only
// the latest status means anything. So the notices waiting for a link are at
// most one per member whose presence list names its user, however fast the
// members change their lists, and however often a list names the user: a
// member cannot make another's link overflow by repeating itself.
//
// The deliver goroutine runs only while there is something to send or await.
// wake starts it, or tells a running one to look again; it exits when the
// queue and the pending notices are empty, so idle links hold no goroutine
// besides their reader.

// maxOhiPending bounds the senders with a presence notice waiting for one
// link. Every deliver round writes all of them, so they pile up only while
// the link's writes stall; a link with this many has stopped reading, and is
// disconnected rather than allowed to grow the server's memory (its next
// login reply lists who is online afresh). Reaching it takes this many
// distinct members online, each with the user on its list, changing status
// while the link stalls: far more than the contacts of a person, while an
// entry costs a few dozen bytes, so a stalled link holds at most a few
// hundred KiB until WriteTimeout ends it.
const maxOhiPending = 4096

// wake is the store's Watch callback and is also called at login and when a
// presence notice or an ack is queued. It never blocks: the store calls it
// from its writer goroutine.
func (l *link) wake() {
	l.dmu.Lock()
	defer l.dmu.Unlock()
	if l.closed {
		return
	}
	l.kicked = true
	if l.running {
		select {
		case l.kick <- struct{}{}:
		default:
		}
		return
	}
	l.running = true
	// Counted with the link goroutines, so that Shutdown returns only when
	// nothing touches the store any more. serve is still running (closed is
	// false), so the group's counter cannot be at zero here.
	l.srv.wg.Add(1)
	go func() {
		defer l.srv.wg.Done()
		l.deliver()
	}()
}

// sendOhi queues a presence notice, from's status, for the link's deliver
// goroutine; it replaces a notice from from still waiting. It reports false
// if the link is closed or has let notices from too many senders pile up
// (then it is being closed).
func (l *link) sendOhi(from string, status int64) bool {
	l.dmu.Lock()
	if l.closed {
		l.dmu.Unlock()
		return false
	}
	if _, waiting := l.ohiStatus[from]; !waiting {
		if len(l.ohiOrder) >= maxOhiPending {
			l.dmu.Unlock()
			l.log.Warn("link not reading; closing", "pending", len(l.ohiOrder))
			l.closeHard() // the caller may hold Server.mu
			return false
		}
		if l.ohiStatus == nil {
			l.ohiStatus = make(map[string]int64)
		}
		l.ohiOrder = append(l.ohiOrder, from)
	}
	l.ohiStatus[from] = status
	l.dmu.Unlock()
	l.wake()
	return true
}

// ohiFrames returns the frames of the presence notices taken from sendOhi,
// in one buffer, in the order their senders first queued them.
func ohiFrames(order []string, status map[string]int64) []byte {
	var b []byte
	for _, from := range order {
		b = tmtp.AppendFrame(b, tmtp.String("from", from), tmtp.String("op", "ohi"), tmtp.Int("status", status[from]))
	}
	return b
}

// queueAck queues the ack of a committed post for the deliver goroutine. It
// is called from the store's writer goroutine, so it must not block; the
// number of queued acks is bounded by maxInflight.
func (l *link) queueAck(frame []byte) {
	l.dmu.Lock()
	if l.closed {
		l.dmu.Unlock()
		return
	}
	l.acks = append(l.acks, frame)
	l.acksQueued++
	l.dmu.Unlock()
	l.wake()
}

// deliver writes the acks and presence notices, sends the queue's head and
// waits for its Ack (or resends it), until there is nothing left to do or the
// link ends.
func (l *link) deliver() {
	st := l.srv.cfg.Store
	timer := time.NewTimer(l.srv.cfg.ResendAfter)
	timer.Stop()
	defer timer.Stop()
	var inFlight store.ID // sent and not yet acked
	for {
		l.dmu.Lock()
		l.kicked = false
		acks := uint64(len(l.acks))
		out := l.acks
		order, status := l.ohiOrder, l.ohiStatus
		l.acks, l.ohiOrder, l.ohiStatus = nil, nil, nil
		l.dmu.Unlock()
		if len(order) > 0 {
			out = append(out, ohiFrames(order, status))
		}

		var send store.ID
		if inFlight == 0 {
			if id, ok := st.Head(l.dev); ok {
				send = id
				l.dmu.Lock()
				l.awaiting = id
				l.dmu.Unlock()
			}
		}
		if len(out) > 0 || send != 0 {
			// One write for everything ready: fewer system calls and
			// TLS records than a write per frame.
			n, err := l.writeFrames(out, send)
			gone := errors.Is(err, errGone)
			if gone {
				// The frames before it went out; the entry whose
				// message is gone is dropped and the queue moves on.
				if !l.skipGone(send) {
					// Left in place it would come back at once:
					// the link ends, and the client's next one
					// tries again.
					l.stopDelivery()
					l.closeHard()
					return
				}
				send, n = 0, 0
			} else if err != nil {
				l.log.Info("delivery failed", "err", err)
				l.stopDelivery()
				return
			}
			if acks > 0 {
				l.dmu.Lock()
				l.acksWritten += acks
				l.ackCond.Broadcast()
				l.dmu.Unlock()
			}
			if send != 0 {
				inFlight = send
				timer.Reset(l.srv.cfg.ResendAfter)
				l.srv.metrics.deliveries.Inc()
				l.srv.metrics.deliveryBytes.Add(float64(n))
			}
			if gone {
				continue // the next entry, at once
			}
		}
		if inFlight == 0 {
			l.dmu.Lock()
			if l.kicked || len(l.ohiOrder) > 0 || len(l.acks) > 0 || l.closed {
				// Work arrived since the top of the loop (or the
				// link is going: let the select see done).
				l.dmu.Unlock()
				if l.isDone() {
					l.stopDelivery()
					return
				}
				continue
			}
			l.running = false
			l.dmu.Unlock()
			return
		}

		select {
		case id := <-l.acked:
			if id == inFlight {
				l.dmu.Lock()
				l.awaiting = 0
				l.dmu.Unlock()
				inFlight = 0
				timer.Stop()
			}
		case <-timer.C:
			l.log.Info("delivery not acked; resending", "id", inFlight.String())
			l.srv.metrics.resends.Inc()
			l.dmu.Lock()
			if l.awaiting == inFlight {
				l.awaiting = 0
			}
			l.dmu.Unlock()
			inFlight = 0
		case <-l.kick:
			// New notices, acks or queue entries: handled at the top;
			// a message in flight keeps waiting for its ack.
		case <-l.done:
			l.stopDelivery()
			return
		}
	}
}

func (l *link) isDone() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// stopDelivery ends deliver for good. The link is ending (or can no longer
// be written): acks still queued will not be written, and drainAcks stops
// waiting for them.
func (l *link) stopDelivery() {
	l.dmu.Lock()
	l.running = false
	l.awaiting = 0
	l.ackFailed = true
	l.ackCond.Broadcast()
	l.dmu.Unlock()
}

// onAck handles an Ack (op 10) from the device: the awaited message leaves the
// queue and the next one may go. Any other id is logged and ignored (SPEC §5):
// it may be a late duplicate of an ack after a resend.
//
// The message leaves the store's queue before deliver hears of the ack, and
// deliver alone clears awaiting: so deliver never finds the acked message
// still at the head and sends it again.
func (l *link) onAck(idText string) error {
	id, err := store.ParseID(idText)
	l.dmu.Lock()
	match := err == nil && id != 0 && id == l.awaiting
	l.dmu.Unlock()
	if !match {
		l.log.Debug("ack ignored: not the awaited message", "id", idText)
		return nil
	}
	if err := l.srv.cfg.Store.Ack(l.dev, id); errors.Is(err, store.ErrNotQueued) {
		// A second ack of the same message, before deliver moved on.
		l.log.Debug("ack of a message no longer queued", "id", idText)
		return nil
	} else if err != nil {
		return err
	}
	l.srv.metrics.acks.Inc()
	select {
	case l.acked <- id:
	default:
	}
	return nil
}

// errGone is writeFrames's report that the queue's head names a message the
// store no longer holds (store.ErrNoMessage), after writing the frames
// before it. A clustered store can come to that: a queue copied while the
// message's last other entry was acked on another frontend, or an entry
// whose ack's deletes were cut short. On one machine it does not happen.
var errGone = errors.New("queued message is gone")

// skipGone drops the link's device's queue entry id, whose message the
// store no longer holds: it could never be delivered, and leaving it would
// stop the queue behind it for good, on every reconnect. false: the entry
// could not be dropped.
func (l *link) skipGone(id store.ID) bool {
	l.log.Warn("queued message is gone from the store; its entry is dropped", "id", id.String())
	l.dmu.Lock()
	if l.awaiting == id {
		l.awaiting = 0
	}
	l.dmu.Unlock()
	if err := l.srv.cfg.Store.Ack(l.dev, id); err != nil && !errors.Is(err, store.ErrNotQueued) {
		l.log.Warn("dropping the entry of a message that is gone failed", "id", id.String(), "err", err)
		return false
	}
	return true
}

package qlib

import (
	"errors"
	"time"

	"mnm/qlib/store"
)

// Delivery (SPEC §5): a logged-in device receives its queue one message at a
// time, in queue order, and each message waits for the device's Ack before the
// next is sent; without an Ack it is sent again after ResendAfter.
//
// Frames that other links produce for this one (presence notices) go through
// a small outbox instead of being written by the producing goroutine, so that
// a slow or dead link never blocks anyone else.
//
// The deliver goroutine runs only while there is something to send or await.
// wake starts it, or tells a running one to look again; it exits when the
// queue and the outbox are empty, so idle links hold no goroutine besides
// their reader.

// maxOutbox bounds the presence notices waiting for one link. A client that
// lets this many pile up has stopped reading; it is disconnected rather than
// allowed to grow the server's memory.
const maxOutbox = 256

// wake is the store's Watch callback and is also called at login and when a
// frame is queued in the outbox. It never blocks: the store calls it from its
// writer goroutine.
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

// send queues a frame that is not a stored message (a presence notice) for
// the link's deliver goroutine. It reports false if the link is closed or has
// let too many frames pile up (then it is being closed).
func (l *link) send(frame []byte) bool {
	l.dmu.Lock()
	if l.closed {
		l.dmu.Unlock()
		return false
	}
	if len(l.outbox) >= maxOutbox {
		l.dmu.Unlock()
		l.log.Warn("link not reading; closing", "outbox", len(l.outbox))
		l.closeHard() // the caller may hold Server.mu
		return false
	}
	l.outbox = append(l.outbox, frame)
	l.dmu.Unlock()
	l.wake()
	return true
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

// deliver writes the outbox, sends the queue's head and waits for its Ack (or
// resends it), until there is nothing left to do or the link ends.
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
		out := append(l.acks, l.outbox...)
		l.acks, l.outbox = nil, nil
		l.dmu.Unlock()

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
			if err := l.writeFrames(out, send); err != nil {
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
			}
		}
		if inFlight == 0 {
			l.dmu.Lock()
			if l.kicked || len(l.outbox) > 0 || len(l.acks) > 0 || l.closed {
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
			l.dmu.Lock()
			if l.awaiting == inFlight {
				l.awaiting = 0
			}
			l.dmu.Unlock()
			inFlight = 0
		case <-l.kick:
			// New outbox frames or queue entries: handled at the top;
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
	select {
	case l.acked <- id:
	default:
	}
	return nil
}

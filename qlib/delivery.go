package qlib

import (
	"time"

	"mnm/qlib/store"
)

// Delivery (SPEC §5): a logged-in device receives its queue one message at a
// time, in queue order, and each message waits for the device's Ack before the
// next is sent; without an Ack it is sent again after ResendAfter.
//
// The deliver goroutine runs only while there is something to send or await.
// wake starts it (or tells a running one to look again); it exits when the
// queue is empty, so idle links hold no goroutine besides their reader.

// wake is the store's Watch callback and is also called at login. It must not
// block: the store calls it from its writer goroutine.
func (l *link) wake() {
	l.dmu.Lock()
	defer l.dmu.Unlock()
	if l.closed {
		return
	}
	if l.running {
		l.kicked = true
		return
	}
	l.running = true
	go l.deliver()
}

// deliver sends the queue's head, waits for its Ack (or resends it), and
// repeats until the queue is empty or the link ends.
func (l *link) deliver() {
	st := l.srv.cfg.Store
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		id, ok := st.Head(l.dev)
		if !ok {
			l.dmu.Lock()
			if l.kicked && !l.closed {
				// An entry arrived between Head and now: look again.
				l.kicked = false
				l.dmu.Unlock()
				continue
			}
			l.running = false
			l.dmu.Unlock()
			return
		}

		l.dmu.Lock()
		if l.closed {
			l.running = false
			l.dmu.Unlock()
			return
		}
		l.kicked = false
		l.awaiting = id
		l.dmu.Unlock()
		// Drain a stale signal from an ack that raced a resend.
		select {
		case <-l.acked:
		default:
		}

		if err := l.writeStored(id); err != nil {
			l.log.Info("delivery failed", "id", id.String(), "err", err)
			l.stopDelivery()
			return
		}

		if timer == nil {
			timer = time.NewTimer(l.srv.cfg.ResendAfter)
		} else {
			timer.Reset(l.srv.cfg.ResendAfter)
		}
		select {
		case <-l.acked:
		case <-timer.C:
			l.log.Info("delivery not acked; resending", "id", id.String())
		case <-l.done:
			l.stopDelivery()
			return
		}
	}
}

func (l *link) stopDelivery() {
	l.dmu.Lock()
	l.running = false
	l.awaiting = 0
	l.dmu.Unlock()
}

// onAck handles an Ack (op 10) from the device: the awaited message leaves the
// queue and the next one may go. Any other id is logged and ignored (SPEC §5):
// it may be a late duplicate of an ack after a resend.
func (l *link) onAck(idText string) error {
	id, err := store.ParseID(idText)
	l.dmu.Lock()
	match := err == nil && id != 0 && id == l.awaiting
	if match {
		l.awaiting = 0
	}
	l.dmu.Unlock()
	if !match {
		l.log.Debug("ack ignored: not the awaited message", "id", idText)
		return nil
	}
	if err := l.srv.cfg.Store.Ack(l.dev, id); err != nil {
		return err
	}
	select {
	case l.acked <- struct{}{}:
	default:
	}
	return nil
}

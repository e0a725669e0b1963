package qlib

import (
	"bufio"
	"container/list"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// A link is one client connection. One goroutine at a time (serve, then
// resume after each idle spell) reads and handles its requests in order; a
// second goroutine (deliver) exists only while the device's queue has
// something to send. An idle link costs a parked goroutine with a small stack
// and the connection's TLS state (see run).
type link struct {
	srv  *Server
	conn net.Conn
	in   *input       // conn's reading side
	rd   *tmtp.Reader // reads from in
	log  *slog.Logger

	// Set by serve at login and read-only afterwards.
	uid, dev string

	accepted time.Time     // when the connection arrived
	reqStart time.Time     // when the current request's header arrived (metrics)
	stranger *list.Element // in Server.strangers until login; guarded by Server.mu

	// state is owned by the goroutine serving the link (see run).
	state linkState

	// wmu serialises writes: replies from serve and messages from deliver
	// never interleave inside a frame.
	wmu sync.Mutex

	// dmu guards the delivery state below.
	dmu      sync.Mutex
	running  bool     // a deliver goroutine is running
	kicked   bool     // work arrived since deliver last looked
	awaiting store.ID // the id sent and not yet acked; 0 = none
	acks     [][]byte // acks of committed posts, for deliver to write
	closed   bool
	// Presence notices for deliver to write, coalesced per sender
	// (sendOhi): the latest status of each sender, and the senders in
	// the order they first queued one since deliver last took them.
	ohiStatus map[string]int64
	ohiOrder  []string
	// Acks of committed posts queued and written: deliver is their only
	// writer, so that they go out in request order and none is lost to
	// another writer closing the link (drainAcks). ackFailed: deliver
	// can no longer write. ackCond (on dmu) signals progress.
	acksQueued, acksWritten uint64
	ackFailed               bool
	ackCond                 sync.Cond

	// inflight holds a token per post whose commit is in flight (see
	// opPost); made at login.
	inflight chan struct{}

	kick  chan struct{} // wake → deliver: look again (cap 1)
	acked chan store.ID // serve → deliver: this awaited id was acked (cap 1)
	done  chan struct{} // closed when the link ends
}

func newLink(s *Server, conn net.Conn) *link {
	in := newInput(conn, s.cfg.ParkAfter)
	l := &link{
		srv:   s,
		conn:  conn,
		in:    in,
		rd:    tmtp.NewReader(in),
		log:   s.log.With("remote", conn.RemoteAddr().String()),
		kick:  make(chan struct{}, 1),
		acked: make(chan store.ID, 1),
		done:  make(chan struct{}),

		accepted: s.limits.now(),
	}
	l.ackCond.L = &l.dmu
	if s.preLogin != nil {
		// Until login, a long header needs its share of the budget;
		// loop lifts the gate at login.
		l.rd.SetLargeGate(s.preLogin.reserve)
	}
	return l
}

// ErrStorageFull refuses a request that would store a message while the
// disk's free space is below the watermark (the config's minFreeBytes):
// nothing is stored, the link stays up, and the client may try again later.
var ErrStorageFull = errors.New("server storage full")

// errQuit ends the request loop after a reply that closes the link (logout).
var errQuit = errors.New("quit")

// link states, SPEC §2.
type linkState int

const (
	stateNew      linkState = iota // nothing received yet
	stateRev                       // TmtpRev received
	stateLoggedIn                  // Register or Login succeeded
)

// serve runs the link from its first byte to its end.
func (l *link) serve() {
	l.in.extend(l.srv.cfg.LoginTimeout)
	l.run()
}

// run handles requests until the link ends, or until it has been idle for
// Config.ParkAfter: then the link parks. Its read buffer goes back to a
// shared pool, and a fresh goroutine with a small stack takes over, waiting
// for input, while this one ends. Handling requests grows a goroutine's stack
// to 8 KiB, which a goroutine parked in a TLS read would keep for the life of
// the link, and an idle link is little more than its goroutine (BENCHMARKS.md,
// "What idle links cost").
func (l *link) run() {
	if !l.loop() {
		l.finish()
		return
	}
	l.rd.Park()
	// This goroutine is counted in srv.wg until it returns, so the group's
	// counter cannot be at zero here.
	l.srv.wg.Add(1)
	go func() {
		defer l.srv.wg.Done()
		l.resume()
	}()
}

// resume waits for the idle link's next request, then serves it.
func (l *link) resume() {
	l.srv.parked.Add(1)
	err := l.in.awaitReadable()
	l.srv.parked.Add(-1)
	if err != nil {
		l.readFailed(l.state, err)
		l.finish()
		return
	}
	l.run()
}

// loop is the request loop. It reports true when the link went idle between
// requests, false when the link is to end.
func (l *link) loop() (idle bool) {
	for {
		if l.rd.Buffered() == 0 {
			l.in.mayPark()
		}
		h, err := l.rd.Next()
		if errors.Is(err, errIdle) {
			return true
		}
		if err != nil {
			l.readFailed(l.state, err)
			return false
		}
		l.reqStart = time.Now()
		state := l.state
		if state == stateLoggedIn {
			l.in.extend(l.srv.cfg.IdleTimeout)
		}
		switch {
		case state == stateNew && h.Op != tmtp.OpTmtpRev:
			// No protocol version agreed: close without a reply.
			reason := "first frame not tmtprev"
			if h.Op == tmtp.OpRegister || h.Op == tmtp.OpLogin {
				reason = tmtp.QuitNoTmtpRev
			}
			l.log.Info("link refused", "reason", reason, "op", int(h.Op))
			return false
		case h.Op == tmtp.OpTmtpRev && state != stateNew:
			l.quit(tmtp.QuitRepetition)
			return false
		case (h.Op == tmtp.OpRegister || h.Op == tmtp.OpLogin) && state == stateLoggedIn:
			l.quit(tmtp.QuitConnected)
			return false
		case state == stateRev && h.Op != tmtp.OpRegister && h.Op != tmtp.OpLogin:
			l.quit(tmtp.QuitUnauthed)
			return false
		}
		err = l.handle(h)
		var pe *tmtp.ProtocolError
		switch {
		case err == nil:
			if h.Op == tmtp.OpPost || h.Op == tmtp.OpPostNotify {
				l.srv.metrics.postBytes.Add(float64(h.Datalen))
			}
		case errors.As(err, &pe):
			l.quit(pe.Reason)
			return false
		case errors.Is(err, errQuit):
			return false
		case errors.Is(err, store.ErrFull) && h.ID != "":
			// Refused, not failed: nothing was stored and the request's
			// data was read to its end, so the link goes on.
			l.log.Warn("request refused: storage full", "op", int(h.Op))
			l.drainAcks() // earlier posts are answered first
			if l.ackError(h.ID, ErrStorageFull) != nil {
				return false
			}
		case errors.Is(err, store.ErrFailed):
			l.srv.fatal(err)
			return false
		default:
			l.log.Info("link closed", "op", int(h.Op), "err", err)
			return false
		}
		switch h.Op {
		case tmtp.OpTmtpRev:
			l.state = stateRev
		case tmtp.OpRegister, tmtp.OpLogin:
			l.state = stateLoggedIn
			l.rd.SetLargeGate(nil)
			l.in.allowParking()
			l.in.extend(l.srv.cfg.IdleTimeout)
		}
		if l.isInterrupted() {
			return false
		}
	}
}

// quitBusy is the quit reason for a link that is not logged in and was
// refused a buffer for a long header because the links not logged in hold
// all they may (Limits.PreLoginBytes): the server is short of memory for
// strangers, the client is not at fault, and it may try again later.
const quitBusy = "server busy"

// readFailed logs why reading a frame failed and answers protocol errors with a
// quit once a protocol version was agreed.
func (l *link) readFailed(state linkState, err error) {
	var pe *tmtp.ProtocolError
	switch {
	case errors.Is(err, tmtp.ErrLongHeaderRefused):
		// Counted in the budget (Stats.PreLoginRefused); the line is
		// throttled, since a flood of strangers is what spends it.
		l.srv.limits.hit(hitPreLoginBytes, "link refused: links not logged in hold all the memory they may", "prelogin",
			"limit", l.srv.preLogin.limit)
		if state != stateNew {
			l.quit(quitBusy)
		}
	case errors.As(err, &pe):
		if state == stateNew {
			l.log.Info("link refused", "reason", pe.Reason)
			return
		}
		l.quit(pe.Reason)
	case errors.Is(err, io.EOF):
		l.log.Debug("link closed by peer")
	case errors.Is(err, os.ErrDeadlineExceeded):
		if l.isInterrupted() {
			return
		}
		if state == stateLoggedIn {
			l.log.Info("link idle timeout")
		} else {
			l.log.Info("link login timeout")
		}
	default:
		l.log.Info("link read failed", "err", err)
	}
}

// quit sends {"error":reason,"op":"quit"}; the caller then closes the link.
func (l *link) quit(reason string) {
	l.log.Info("link quit", "reason", reason)
	l.srv.metrics.quits.WithLabelValues(quitLabel(reason)).Inc()
	l.write(tmtp.Quit(reason))
}

// interrupt makes serve return at the next frame boundary; a request being
// handled is finished first. Called by Shutdown.
func (l *link) interrupt() { l.in.interrupt() }

func (l *link) isInterrupted() bool { return l.in.isInterrupted() }

// finish tears the link down: it runs once, when serve returns.
func (l *link) finish() {
	// Posts already handed to the store are answered before the link goes,
	// so that a post made durable is acked when the link is still up.
	l.drainAcks()
	l.dmu.Lock()
	l.closed = true
	l.dmu.Unlock()
	close(l.done)
	// A link ending in the middle of a long header still holds its
	// buffer, and before login a share of the budget.
	l.rd.Release()
	// The device is released (and its queue unwatched) before the
	// connection closes, so that a client that logs in again as soon as it
	// sees the close finds it free.
	l.srv.dropLink(l)
	l.conn.Close()
	if l.dev != "" {
		l.log.Info("logout")
	}
}

// closeHard closes the connection under TLS at once, for a link that must
// go now (taken over, not reading, past the shutdown grace). Closing the TLS
// connection itself would first send close_notify, which waits up to
// WriteTimeout on a peer that does not read; that must never happen while
// holding Server.mu, which every link needs. The link's reader then fails
// and the link finishes as usual.
func (l *link) closeHard() {
	if tc, ok := l.conn.(interface{ NetConn() net.Conn }); ok {
		tc.NetConn().Close()
		return
	}
	l.conn.Close()
}

// write sends one complete frame. A failed write closes the connection, which
// ends serve's read with an error.
func (l *link) write(frame []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(time.Now().Add(l.srv.cfg.WriteTimeout))
	_, err := l.conn.Write(frame)
	if err != nil {
		l.conn.Close()
	}
	return err
}

// writeBufSize is the size of writerPool's buffers: the plaintext of the
// largest TLS record (2^14 bytes, RFC 8446 §5.1). A smaller buffer would cut
// a message into more writes and records than TLS needs; a larger one would
// cost memory per writing link without making fewer records.
const writeBufSize = 16 << 10

// writerPool holds buffers that coalesce a stored message's envelope and data
// into few TLS records; links borrow one only while writing.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}

// writeFrames sends frames and then, unless id is 0, stored message id, in
// one buffered write. n is the stored message's bytes. errGone: the store
// no longer holds id; the frames went out, the message did not, and the
// link is still up.
func (l *link) writeFrames(frames [][]byte, id store.ID) (n int64, err error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(time.Now().Add(l.srv.cfg.WriteTimeout))
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(l.conn)
	for _, f := range frames {
		if _, err = bw.Write(f); err != nil {
			break
		}
	}
	if err == nil && id != 0 {
		n, err = l.srv.cfg.Store.WriteTo(bw, id)
	}
	gone := errors.Is(err, store.ErrNoMessage)
	if gone {
		// Nothing of the message was written (store.go): the frames
		// before it are whole and go out.
		n, err = 0, nil
	}
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writerPool.Put(bw)
	if err != nil {
		l.conn.Close()
		return n, err
	}
	if gone {
		return 0, errGone
	}
	return n, nil
}

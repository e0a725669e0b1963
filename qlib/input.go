package qlib

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// errIdle is returned by input.Read when a link has waited Config.ParkAfter
// between requests.
var errIdle = errors.New("qlib: link idle")

// input is a link's source of request bytes and the owner of its read
// deadline, which it brings forward while the link is between requests so
// that an idle link can park (see link.run). A TLS read that times out wanting
// socket bytes leaves the connection usable and no whole record undecrypted,
// so a parked link can wait for the socket to become readable and then read
// on; a record it had half received is completed by that read.
type input struct {
	conn      net.Conn
	raw       syscall.RawConn // the socket under conn; nil: links never park
	parkAfter time.Duration

	// parkable is set by mayPark and cleared by the next read; both are
	// called by the goroutine serving the link.
	parkable bool

	mu          sync.Mutex
	deadline    time.Time // the link's read deadline
	parking     bool      // allowParking was called: deadlines come parkAfter early
	interrupted bool      // interrupt was called: the deadline stays in the past
}

func newInput(conn net.Conn, parkAfter time.Duration) *input {
	return &input{conn: conn, raw: rawConn(conn), parkAfter: parkAfter}
}

// rawConn returns the socket under a TLS or plain connection, or nil when
// this platform cannot wait for it to become readable.
func rawConn(conn net.Conn) syscall.RawConn {
	if !canAwaitReadable {
		return nil
	}
	if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// allowParking lets the link park from the next extend on. It is called at
// login: during the TLS handshake a timeout would break the connection for
// good.
func (in *input) allowParking() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.parking = in.raw != nil
}

// extend sets the read deadline to d from now, unless the link was
// interrupted. While parking is allowed the connection's own deadline is set
// at most parkAfter ahead, so that a link waiting that long between requests
// learns it is idle (Read).
func (in *input) extend(d time.Duration) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.interrupted {
		return
	}
	now := time.Now()
	in.deadline = now.Add(d)
	if in.parking && in.parkAfter < d {
		in.conn.SetReadDeadline(now.Add(in.parkAfter))
	} else {
		in.conn.SetReadDeadline(in.deadline)
	}
}

// interrupt makes the read or wait in progress, and every later one, fail
// with os.ErrDeadlineExceeded.
func (in *input) interrupt() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.interrupted = true
	in.deadline = time.Now()
	in.conn.SetReadDeadline(in.deadline)
}

func (in *input) isInterrupted() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.interrupted
}

// mayPark lets the next read return errIdle if it meets the early deadline
// that extend set. The caller is between requests, with nothing buffered.
func (in *input) mayPark() {
	in.parkable = true
}

// Read reads from the connection. When it meets the early deadline set by
// extend, it puts the link's own deadline in force and returns errIdle,
// having read nothing, after mayPark, or else reads on.
func (in *input) Read(p []byte) (int, error) {
	for {
		n, err := in.conn.Read(p)
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			in.parkable = false
			return n, err
		}
		in.mu.Lock()
		early := !in.interrupted && time.Now().Before(in.deadline)
		if early {
			in.conn.SetReadDeadline(in.deadline)
		}
		in.mu.Unlock()
		if !early {
			return n, err
		}
		if in.parkable {
			in.parkable = false
			return 0, errIdle
		}
	}
}

// awaitReadable waits, under the link's deadline, until the connection has
// something to read.
func (in *input) awaitReadable() error {
	return awaitReadable(in.raw)
}

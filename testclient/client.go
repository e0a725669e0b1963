package testclient

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// AckType is the "type" this client sends with Ack (op 10). SPEC §4 requires
// a non-empty type but lists no values, and the server does nothing with it
// beyond requiring it; "n" is this client's choice. Should the deployed
// client's value turn out to matter, change it here.
const AckType = "n"

// Quit reasons this package acts on (SPEC §2).
const (
	ReasonLogoutOK      = "logout ok"              // the answer to Quit
	ReasonNodeConnected = "node already connected" // Login of a device with a live link
)

// DefaultBuffer is the default capacity of Messages and Others. The server
// sends one stored message at a time until it is acked, so a client that
// acks only what it has read needs one slot; AutoAck lets messages run ahead
// of the consumer up to this many.
const DefaultBuffer = 256

// Errors of Client.
var (
	// ErrClosed: the Client was closed by Close.
	ErrClosed = errors.New("testclient: link closed")
	// ErrTimeout: no reply within Options.Timeout.
	ErrTimeout = errors.New("testclient: timed out")
)

// QuitError is the server's quit message: the link was closed with Reason.
type QuitError struct{ Reason string }

func (e *QuitError) Error() string { return "testclient: server quit: " + e.Reason }

// Options configure a Client. The zero value is usable.
type Options struct {
	// TLS configures the link; nil skips certificate verification, as for a
	// "=host:port" site.
	TLS *tls.Config
	// AutoAck acks every stored message as it arrives, after handing it to
	// Messages (or OnMessage). A message not handed over because the Client
	// is closing is not acked, so the server keeps it.
	AutoAck bool
	// Timeout bounds dialling, the handshake, each write and the wait of the
	// synchronous requests (Post, Quit, ...). 0 means DefaultTimeout.
	Timeout time.Duration
	// Logger receives the Client's events; nil discards them. Nodeids and
	// tokens are never logged.
	Logger *slog.Logger
	// Token is the third-party ("oidc") token sent with Register, for sites
	// that require one.
	Token string
	// Buffer is the capacity of Messages and Others; 0 means DefaultBuffer.
	Buffer int
	// OnMessage, if set, receives the stored messages instead of Messages.
	// It runs on the reader goroutine: the next frame (and any ack for a
	// request) is read only after it returns. It must not call Close or Quit.
	OnMessage func(*Frame)
	// OnOther, if set, receives the other frames instead of Others, under the
	// same rules as OnMessage.
	OnOther func(*Frame)
	// PulseInterval, if positive, sends a Pulse this often while the link is
	// up, so that a device with nothing to say is not closed by the server's
	// idle deadline (2 minutes, SPEC §2).
	PulseInterval time.Duration
	// Lax turns off CheckFrame on received frames. By default a frame that
	// breaks the contract ends the link with an error wrapping ErrProtocol,
	// so that tests notice server bugs they did not look for.
	Lax bool
	// Ext asks the server, in TmtpRev, for the protocol extensions it
	// offers ("ext":1); Client.Extensions returns them. Without it the
	// TmtpRev is the deployed client's.
	Ext bool
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Buffer <= 0 {
		o.Buffer = DefaultBuffer
	}
	return o
}

// Client is a logged-in device. A reader goroutine sorts incoming frames:
// acks (op "ack") go to the request with that id; stored messages (frames
// with "from" and "id") go to Messages in arrival order; everything else
// (ohi, quit, info, and acks nobody waits for) goes to Others.
//
// A slow consumer of Messages or Others blocks the reader (nothing is ever
// dropped), which also holds back the acks of pending requests: consume both
// channels, or set OnMessage/OnOther. All methods may be called concurrently.
type Client struct {
	conn   *Conn
	o      Options
	log    *slog.Logger
	uid    string
	site   *Frame // the tmtprev reply
	nextID atomic.Uint64

	msgs    chan *Frame
	others  chan *Frame
	closing chan struct{} // closed by Close or Quit: stop handing frames over
	stop    sync.Once     // closes closing
	done    chan struct{} // closed when the reader has finished

	mu sync.Mutex
	// Guarded by mu:
	pending map[string]chan AckResult // requests awaiting their ack, by id; nil once the link ended
	err     error                     // why the link ended
	quit    *QuitError                // the server's quit message, if one came
}

// Registration is the result of Register.
type Registration struct {
	UID        string
	NodeID     string // the device's password: keep it secret, never log it
	AliasError string // why the requested alias was refused; the account exists anyway
}

// LoginInfo is the result of Login.
type LoginInfo struct {
	Ohi []string // online users that have this user on their presence list
}

// Register creates a user with one device labelled label, with alias ("_" or
// "" for none), and returns it logged in. It sends TmtpRev and Register back
// to back and waits for the tmtprev, registered and info replies; a quit
// reply is returned as a *QuitError.
func Register(addr, label, alias string, o Options) (*Client, Registration, error) {
	if alias == "" {
		alias = "_"
	}
	req := map[string]any{"Op": 1, "NewNode": label, "NewAlias": alias}
	if o.Token != "" {
		req["Oidc"] = o.Token
	}
	c, err := handshake(addr, req, o)
	if err != nil {
		return nil, Registration{}, err
	}
	f, err := c.expect("registered")
	if err != nil {
		return nil, Registration{}, err
	}
	reg := Registration{UID: f.Str("uid"), NodeID: f.Str("nodeid"), AliasError: f.Str("error")}
	if reg.UID == "" || reg.NodeID == "" {
		c.conn.Close()
		return nil, Registration{}, fmt.Errorf("%w: registered reply without uid or nodeid", ErrProtocol)
	}
	if _, err := c.expect("info"); err != nil {
		return nil, Registration{}, err
	}
	c.uid = reg.UID
	c.start()
	return c, reg, nil
}

// Login logs device nodeid of user uid in. It sends TmtpRev and Login back to
// back and waits for the tmtprev and info replies; a quit reply (login
// failed, node already connected, ...) is returned as a *QuitError.
func Login(addr, uid, nodeid string, o Options) (*Client, LoginInfo, error) {
	c, err := handshake(addr, map[string]any{"Op": 2, "Uid": uid, "Node": nodeid}, o)
	if err != nil {
		return nil, LoginInfo{}, err
	}
	f, err := c.expect("info")
	if err != nil {
		return nil, LoginInfo{}, err
	}
	c.uid = uid
	c.start()
	return c, LoginInfo{Ohi: f.Strings("ohi")}, nil
}

// handshake dials, sends TmtpRev and req, and reads the tmtprev reply.
func handshake(addr string, req map[string]any, o Options) (*Client, error) {
	o = o.withDefaults()
	conn, err := DialTimeout(addr, o.TLS, o.Timeout)
	if err != nil {
		return nil, err
	}
	conn.SetReadTimeout(o.Timeout)
	conn.SetWriteTimeout(o.Timeout)
	c := &Client{
		conn:    conn,
		o:       o,
		log:     o.Logger,
		msgs:    make(chan *Frame, o.Buffer),
		others:  make(chan *Frame, o.Buffer),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		pending: make(map[string]chan AckResult),
	}
	// Pipelined, as SPEC §1 allows: the server must parse both from one read.
	rev := map[string]any{"Op": 0, "Id": "1"}
	if o.Ext {
		rev["Ext"] = 1
	}
	if err := conn.WriteFrame(rev, nil); err != nil {
		conn.Close()
		return nil, err
	}
	if err := conn.WriteFrame(req, nil); err != nil {
		conn.Close()
		return nil, err
	}
	f, err := c.expect("tmtprev")
	if err != nil {
		return nil, err
	}
	if !o.Lax && f.Str("id") != "1" {
		conn.Close()
		return nil, fmt.Errorf("%w: tmtprev reply with id %q, want \"1\"", ErrProtocol, f.Str("id"))
	}
	c.site = f
	return c, nil
}

// expect reads the next handshake frame and requires op; a quit becomes a
// *QuitError. On error the link is closed.
func (c *Client) expect(op string) (*Frame, error) {
	f, err := c.conn.ReadFrame()
	if err == nil && !c.o.Lax {
		err = CheckFrame(f)
	}
	switch {
	case err != nil:
		err = fmt.Errorf("testclient: awaiting %s: %w", op, err)
	case f.Op() == "quit":
		err = &QuitError{Reason: f.Str("error")}
	case f.Op() != op:
		err = fmt.Errorf("%w: got %s while awaiting %s", ErrProtocol, f, op)
	}
	if err != nil {
		c.conn.Close()
		return nil, err
	}
	return f, nil
}

// start hands the link to the reader goroutine. The read timeout is lifted:
// a logged-in link may be silent for as long as the caller likes.
func (c *Client) start() {
	c.log = c.log.With("uid", c.uid)
	c.conn.SetReadTimeout(0)
	go c.read()
	if c.o.PulseInterval > 0 {
		go c.pulse()
	}
}

// pulse sends a Pulse every PulseInterval until the link ends. A failed
// write leaves the link unusable, so it is closed, which ends the reader.
func (c *Client) pulse() {
	t := time.NewTicker(c.o.PulseInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			if err := c.Pulse(); err != nil {
				c.conn.Close()
				return
			}
		}
	}
}

// read is the reader goroutine: it sorts frames until the link ends.
func (c *Client) read() {
	for {
		f, err := c.conn.ReadFrame()
		if err == nil && !c.o.Lax {
			err = CheckFrame(f)
		}
		if err != nil {
			c.finish(err)
			return
		}
		switch {
		case f.Op() == "ack":
			c.resolve(f)
		case f.Stored():
			if c.hand(c.msgs, c.o.OnMessage, f) && c.o.AutoAck {
				if err := c.Ack(f.Str("id")); err != nil {
					c.finish(err)
					return
				}
			}
		default:
			if f.Op() == "quit" {
				c.mu.Lock()
				c.quit = &QuitError{Reason: f.Str("error")}
				c.mu.Unlock()
			}
			c.hand(c.others, c.o.OnOther, f)
		}
	}
}

// hand gives f to fn or ch, blocking until taken, unless the Client is
// closing. It reports whether f was handed over.
func (c *Client) hand(ch chan *Frame, fn func(*Frame), f *Frame) bool {
	if fn != nil {
		select {
		case <-c.closing:
			return false
		default:
		}
		fn(f)
		return true
	}
	select {
	case ch <- f:
		return true
	case <-c.closing:
		return false
	}
}

// resolve delivers an ack to the request that awaits it.
func (c *Client) resolve(f *Frame) {
	id := f.Str("id")
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		c.log.Warn("ack for no pending request", "id", id)
		c.hand(c.others, c.o.OnOther, f)
		return
	}
	ch <- AckResult{Ack: ackOf(f)}
}

// finish ends the Client after the reader stopped: it records why, fails the
// pending requests and closes the channels.
func (c *Client) finish(err error) {
	c.conn.Close()
	c.mu.Lock()
	if c.err == nil {
		switch {
		case c.quit != nil:
			c.err = c.quit
		default:
			c.err = fmt.Errorf("testclient: link ended: %w", err)
		}
	}
	err, pending := c.err, c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, ch := range pending {
		ch <- AckResult{Err: err}
	}
	if errors.Is(err, ErrProtocol) {
		c.log.Error("link ended", "err", err)
	} else {
		c.log.Debug("link ended", "err", err)
	}
	close(c.msgs)
	close(c.others)
	close(c.done)
}

// UID returns the user's uid.
func (c *Client) UID() string { return c.uid }

// Extensions returns the protocol extensions the server listed in its
// tmtprev reply ("ext"), which it does when Options.Ext asked; nil if none.
func (c *Client) Extensions() []string { return c.site.Strings("ext") }

// Site returns the tmtprev reply (site "name", "auth", "authby").
func (c *Client) Site() *Frame { return c.site }

// Conn returns the link, for writing raw frames in tests. Do not read from it:
// the reader goroutine owns reading.
func (c *Client) Conn() *Conn { return c.conn }

// Messages returns the stored messages in arrival order. It is closed when the
// link ends. Unused if Options.OnMessage is set.
func (c *Client) Messages() <-chan *Frame { return c.msgs }

// Others returns the frames that are neither acks of pending requests nor
// stored messages: ohi, quit, stray acks. It is closed when the link ends.
// Unused if Options.OnOther is set.
func (c *Client) Others() <-chan *Frame { return c.others }

// Done is closed when the link has ended and the channels are closed.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the link ended (a *QuitError if the server sent quit,
// ErrClosed after Close, an error wrapping ErrProtocol if the server broke the
// contract), or nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Ack is the server's reply to a request.
type Ack struct {
	ID     string // the request's id
	MsgID  string // id of the stored message, for requests that store one
	Posted string // time of acceptance, with MsgID
	Error  string // the server's refusal; the link stays up
	Frame  *Frame // the whole reply
}

func ackOf(f *Frame) Ack {
	return Ack{ID: f.Str("id"), MsgID: f.Str("msgid"), Posted: f.Str("posted"), Error: f.Str("error"), Frame: f}
}

// AckResult is the outcome of an asynchronous request: the ack, or why none
// will come.
type AckResult struct {
	Ack Ack
	Err error
}

// Request sends head and data, and returns a channel that receives the ack,
// or an error if the link ends first. It sets head["Id"] to a fresh request
// id (deleting any other spelling of "id"); otherwise head is sent as given
// (no datalen is added), so tests can send any request. There is no timeout:
// the caller decides how long to wait.
func (c *Client) Request(head map[string]any, data []byte) (<-chan AckResult, error) {
	_, ch, err := c.request(head, data)
	return ch, err
}

func (c *Client) request(head map[string]any, data []byte) (string, chan AckResult, error) {
	for k := range head {
		if strings.EqualFold(k, "id") {
			delete(head, k)
		}
	}
	id := strconv.FormatUint(c.nextID.Add(1), 10)
	head["Id"] = id
	ch := make(chan AckResult, 1)
	// Registered before writing: the ack may arrive before Write returns.
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return "", nil, err
	}
	c.pending[id] = ch
	c.mu.Unlock()
	if err := c.conn.WriteFrame(head, data); err != nil {
		c.forget(id)
		c.conn.Close() // a failed write leaves the link unusable; the reader ends
		return "", nil, err
	}
	return id, ch, nil
}

// forget drops a pending request; a late ack for it goes to Others.
func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Do sends a request like Request and waits up to Options.Timeout for its ack.
func (c *Client) Do(head map[string]any, data []byte) (Ack, error) {
	id, ch, err := c.request(head, data)
	if err != nil {
		return Ack{}, err
	}
	t := time.NewTimer(c.o.Timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.Ack, r.Err
	case <-t.C:
		c.forget(id)
		return Ack{}, fmt.Errorf("%w: ack of request %s", ErrTimeout, id)
	}
}

// Ack acknowledges the stored message msgid (op 10), so the server removes it
// from this device's queue and sends the next. The server does not reply.
func (c *Client) Ack(msgid string) error {
	return c.conn.WriteFrame(map[string]any{"Op": 10, "Id": msgid, "Type": AckType}, nil)
}

// Pulse resets the server's idle deadline (op 11). The server does not reply.
func (c *Client) Pulse() error {
	return c.conn.WriteFrame(map[string]any{"Op": 11}, nil)
}

// Quit logs out (op 12) and waits for the server's "logout ok" and the end of
// the link. Frames arriving after Quit is called are not handed over (nor
// acked, so the server keeps them).
func (c *Client) Quit() error {
	c.stop.Do(func() { close(c.closing) })
	if err := c.conn.WriteFrame(map[string]any{"Op": 12}, nil); err != nil {
		c.Close()
		return err
	}
	t := time.NewTimer(c.o.Timeout)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		c.Close()
		return fmt.Errorf("%w: awaiting %q", ErrTimeout, ReasonLogoutOK)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.quit != nil && c.quit.Reason == ReasonLogoutOK {
		return nil
	}
	return c.err
}

// Close closes the link at once, without a Quit, and waits for the reader to
// finish. Pending requests fail with ErrClosed. It must not be called from
// OnMessage or OnOther.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	c.stop.Do(func() { close(c.closing) })
	c.conn.Close()
	<-c.done
	return nil
}

// Package qlib is mnm's TMTP engine: it accepts links, runs each link's request
// loop, persists messages through a store.Store and fans them out to the live
// links of their recipients' devices.
//
// Life cycle: NewServer validates the Config; Serve accepts links until the
// listener closes; ServeConn runs one link (Serve calls it, tests and the
// in-process simulation may call it directly); Shutdown stops accepting, lets
// requests already being handled finish, closes every link and waits for their
// goroutines. The Store and Directory belong to the caller, who closes them
// after Shutdown returns.
package qlib

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"mnm/qlib/store"
)

// Timeouts of SPEC §2 and §5. They are defaults; Config may shorten them for tests.
const (
	// DefaultLoginTimeout bounds the TLS handshake, TmtpRev and Login together,
	// so that a connection that never authenticates costs little.
	DefaultLoginTimeout = 5 * time.Second
	// DefaultIdleTimeout closes a logged-in link that sends nothing; Pulse
	// exists to reset it.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultResendAfter is how long a delivered message waits for its Ack
	// before it is sent again.
	DefaultResendAfter = 30 * time.Second
	// DefaultWriteTimeout bounds one write to a link; a client that stops
	// reading for this long is disconnected rather than allowed to pin a
	// goroutine and its buffers.
	DefaultWriteTimeout = time.Minute
	// DefaultParkAfter is how long a logged-in link waits for its next
	// request before it parks: its goroutine, whose stack handling requests
	// grew, hands over to a fresh one that waits for the socket, and its
	// read buffer goes back to a shared pool (link.run).
	DefaultParkAfter = time.Second
	// DefaultMaxPostBytes is the largest data a post may carry unless the
	// operator sets another limit.
	DefaultMaxPostBytes = 256 << 20
)

// Config is what a Server needs. Directory and Store are required.
type Config struct {
	Name      string // site name, sent in the tmtprev reply
	Directory Directory
	Store     store.Store
	Logger    *slog.Logger

	// Auth is the site's third-party sign-up mode (SPEC §4 op 0): 0 none,
	// 1 required for registration, 2 for registration and login. AuthBy is
	// the provider list as sent in the tmtprev reply (a JSON array).
	// AuthOptional (an empty first provider entry) lets a client go without
	// a token; one that sends a token must still send a valid one.
	// Verifier checks the tokens; it is required when Auth > 0.
	Auth         int
	AuthBy       []byte
	AuthOptional bool
	Verifier     TokenVerifier

	MaxPostBytes int64 // 0 = DefaultMaxPostBytes

	// MaxLinks bounds the open links; a connection beyond it is closed at
	// once. It keeps a flood of connections from using up the process's
	// file descriptors, which the store and user database need to write.
	// 0 = no bound.
	MaxLinks int

	// Limits bound what one remote address or one member may do
	// (limits.go); nil = DefaultLimits().
	Limits *Limits

	// OnFatal is called (once, from a link goroutine) when the store has
	// failed and nothing more can be acknowledged: the owner should shut
	// the server down. nil: the failure is only logged.
	OnFatal func(error)

	LoginTimeout time.Duration // 0 = DefaultLoginTimeout
	IdleTimeout  time.Duration // 0 = DefaultIdleTimeout
	ResendAfter  time.Duration // 0 = DefaultResendAfter
	WriteTimeout time.Duration // 0 = DefaultWriteTimeout
	ParkAfter    time.Duration // 0 = DefaultParkAfter
}

// Server runs TMTP links.
type Server struct {
	cfg    Config
	log    *slog.Logger
	limits *limiter

	wg        sync.WaitGroup // one per running link goroutine
	fatalOnce sync.Once
	refused   atomic.Int64 // connections closed at MaxLinks
	parked    atomic.Int64 // links waiting for input in resume

	// mu guards the fields below it.
	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	links     map[*link]remote           // every open link, and its address
	devices   map[string]*link           // logged-in links by device key
	users     map[string][]*link         // logged-in links by uid
	ohi       map[string]map[string]bool // uid → uids told of its presence (presence.go)
}

// NewServer checks cfg and returns a Server ready to Serve.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Directory == nil || cfg.Store == nil {
		return nil, errors.New("qlib: Config needs a Directory and a Store")
	}
	if cfg.Auth > 0 && (cfg.Verifier == nil || len(cfg.AuthBy) == 0) {
		return nil, errors.New("qlib: Config.Auth needs a Verifier and AuthBy")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxPostBytes <= 0 {
		cfg.MaxPostBytes = DefaultMaxPostBytes
	}
	setDefault(&cfg.LoginTimeout, DefaultLoginTimeout)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.ResendAfter, DefaultResendAfter)
	setDefault(&cfg.WriteTimeout, DefaultWriteTimeout)
	setDefault(&cfg.ParkAfter, DefaultParkAfter)
	limits := DefaultLimits()
	if cfg.Limits != nil {
		limits = *cfg.Limits
	}
	return &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		limits:    newLimiter(limits, cfg.Logger),
		listeners: make(map[net.Listener]struct{}),
		links:     make(map[*link]remote),
		devices:   make(map[string]*link),
		users:     make(map[string][]*link),
		ohi:       make(map[string]map[string]bool),
	}, nil
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("qlib: server closed")

// Accept-error backoff: a listener failing on every call (out of file
// descriptors, say) must not spin a core, yet should recover quickly.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Serve accepts links on ln (normally a TLS listener) until Shutdown, running
// each in its own goroutine. It returns ErrServerClosed after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			s.log.Warn("accept failed; backing off", "err", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.ServeConn(conn) {
			conn.Close()
		}
	}
}

// ServeConn runs a link on conn in a new goroutine. It reports false, leaving
// conn to the caller, when the server is shutting down or the link is over
// a limit: the total (MaxLinks) or its address's (Limits.LinksPerAddr).
// Nothing has been read from or written to conn then, so a TLS connection
// is closed before its handshake, at the least cost to the server.
func (s *Server) ServeConn(conn net.Conn) bool {
	rem := s.limits.remoteOf(conn.RemoteAddr())
	if !s.limits.openLink(rem) {
		s.refused.Add(1)
		return false
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.limits.closeLink(rem)
		return false
	}
	if s.cfg.MaxLinks > 0 && len(s.links) >= s.cfg.MaxLinks {
		s.mu.Unlock()
		s.limits.closeLink(rem)
		s.refused.Add(1)
		s.log.Warn("link refused: at the link limit", "remote", conn.RemoteAddr().String(), "limit", s.cfg.MaxLinks)
		return false
	}
	l := newLink(s, conn)
	s.links[l] = rem
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		l.serve()
	}()
	return true
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops accepting, interrupts every link between requests (a request
// already being handled is finished and answered first), and waits for all
// link goroutines or for ctx to end. The caller then closes the Store.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	for l := range s.links {
		l.interrupt()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for l := range s.links {
			l.closeHard()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// remote returns l's address as the limits see it.
func (s *Server) remote(l *link) remote {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links[l]
}

// fatal reports a store failure to the owner, once. Links keep refusing work
// (every store call fails) until the owner shuts the server down.
func (s *Server) fatal(err error) {
	s.fatalOnce.Do(func() {
		s.log.Error("store failed; the server must stop", "err", err)
		if s.cfg.OnFatal != nil {
			s.cfg.OnFatal(err)
		}
	})
}

// Stats is a snapshot of the server's links.
type Stats struct {
	Links   int   // open links, logged in or not
	Devices int   // logged-in devices
	Users   int   // users with at least one logged-in device
	Parked  int64 // links idle long enough to have parked (DefaultParkAfter)
	Refused int64 // connections closed at MaxLinks or LinksPerAddr since start
}

// Stats reports the server's current links.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Links: len(s.links), Devices: len(s.devices), Users: len(s.users), Parked: s.parked.Load(), Refused: s.refused.Load()}
}

// claimDevice registers l as the live link of its device and returns the
// online users whose presence lists include l's user (for the login reply).
// It fails only when the server is shutting down.
//
// A device that already has a live link is taken over: the newest
// successful login wins, and the old link is closed. A laptop that slept or
// a phone that changed networks leaves its old connection open without a
// FIN; refusing the new login ("node already connected", as the deployed
// server does) would lock the member out until the old link's idle timeout.
// Nothing is lost: the old link's message awaiting an Ack stays at the head
// of the queue, and the new link sends it first.
func (s *Server) claimDevice(l *link) (ohi []string, ok bool) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, false
	}
	old := s.devices[l.dev]
	if old != nil {
		s.forgetDeviceLocked(old)
	}
	s.devices[l.dev] = l
	s.users[l.uid] = append(s.users[l.uid], l)
	ohi = s.ohiForLocked(l.uid)
	s.mu.Unlock()
	if old != nil {
		l.log.Info("device taken over from its previous link", "previous", old.conn.RemoteAddr().String())
		old.closeHard()
	}
	return ohi, true
}

// forgetDeviceLocked removes l as its device's live link; the caller has
// checked that it is. Watching the device's queue stops with it, under s.mu,
// so that a link taking the device over cannot have its watcher removed by
// the link it replaced. s.mu is held.
func (s *Server) forgetDeviceLocked(l *link) {
	s.cfg.Store.Watch(l.dev, nil)
	delete(s.devices, l.dev)
	ls := s.users[l.uid]
	for i, x := range ls {
		if x == l {
			ls = append(ls[:i], ls[i+1:]...)
			break
		}
	}
	if len(ls) == 0 {
		delete(s.users, l.uid)
	} else {
		s.users[l.uid] = ls
	}
}

// dropLink forgets l; called once when its goroutine ends. A link whose
// device was taken over is no longer its device's link, and its user is
// still online.
func (s *Server) dropLink(l *link) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limits.closeLink(s.links[l])
	delete(s.links, l)
	if l.dev == "" || s.devices[l.dev] != l {
		return
	}
	s.forgetDeviceLocked(l)
	if len(s.users[l.uid]) == 0 {
		s.userOfflineLocked(l.uid)
	}
}

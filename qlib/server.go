// Package qlib is mnm's TMTP engine: it accepts links, runs each link's request
// loop, persists messages through a Store and fans them out to the live
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
	"container/list"
	"context"
	"errors"
	"github.com/prometheus/client_golang/prometheus"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
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
	// operator sets another limit: large enough for photos and documents,
	// small enough that a single post cannot fill a modest disk (every post
	// is written and fsynced before its ack).
	DefaultMaxPostBytes = 256 << 20
)

// Config is what a Server needs. Directory and Store are required.
type Config struct {
	Name      string // site name, sent in the tmtprev reply
	Directory Directory
	Store     Store
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

	// MayReach names what a receive-only member (Directory.ReceiveOnly)
	// may still reach: users' aliases (a Ping to one, a post to the uid
	// that holds one) and group ids (a post to the group). nil: nothing.
	// Aliases are resolved at each request, so an alias claimed later
	// counts from then on.
	MayReach map[string]bool

	// MaxLinks bounds the open links; a connection beyond it is closed at
	// once. It keeps a flood of connections from using up the process's
	// file descriptors, which the store and user database need to write.
	// 0 = no bound.
	MaxLinks int

	// Limits bound what one remote address or one member may do
	// (limits.go); nil = DefaultLimits().
	Limits *Limits

	// Registerer takes the server's metrics (metrics.go); nil: they are
	// kept but not exported.
	Registerer prometheus.Registerer

	// Sessions coordinates the devices' links with a site's other
	// frontends (sessions.go); nil: this server is the only one.
	Sessions Sessions

	// Presence keeps the users' presence and lists across a site's
	// frontends (presence_cluster.go); nil: this server is the only one.
	Presence Presence

	// OnFatal is called (once, from a link goroutine or from the store's
	// writer goroutine, for a commit that failed there, so it must not
	// block) when the store has failed and nothing more can be
	// acknowledged: the owner should shut the server down. nil: the
	// failure is only logged.
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
	live   liveConfig // settings a reload changes (reload.go)

	wg        sync.WaitGroup // one per running link goroutine
	fatalOnce sync.Once
	refused   atomic.Int64 // connections closed at MaxLinks
	parked    atomic.Int64 // links waiting for input in resume
	evicted   atomic.Int64 // links not logged in closed to make room (PreLoginLinks)
	preLogin  *budget      // long-header buffers of links not logged in; nil = unbounded
	metrics   *metrics

	// pmu serialises the calls to Config.Presence.SetOnline (setOnline).
	// It nests outside mu.
	pmu sync.Mutex

	// mu guards the fields below it. It nests outside the links' locks and
	// the Store's (locksordering.txt).
	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	links     map[*link]remote           // every open link, and its address
	strangers list.List                  // the links not logged in, oldest first (Limits.PreLoginLinks)
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
	var preLogin *budget
	if limits.PreLoginBytes > 0 {
		preLogin = &budget{limit: limits.PreLoginBytes}
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		limits:    newLimiter(limits, cfg.Logger),
		preLogin:  preLogin,
		listeners: make(map[net.Listener]struct{}),
		links:     make(map[*link]remote),
		devices:   make(map[string]*link),
		users:     make(map[string][]*link),
		ohi:       make(map[string]map[string]bool),
	}
	s.live.init(&cfg)
	s.metrics = newMetrics(s, cfg.Registerer)
	s.limits.hits = s.metrics.limitHits
	return s, nil
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
	// acceptLogEvery spaces the lines of a long run of failures: the first
	// failure is logged at once, then one line per interval with the count
	// so far, and one when accepting works again. A shortage of
	// descriptors fails every call for as long as it lasts, and a line per
	// call would flood the log while telling nothing new.
	acceptLogEvery = time.Minute
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

	var (
		backoff  time.Duration
		failures int       // since the last accept that worked
		began    time.Time // the first of them
		logged   time.Time // the last line about them
	)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			now := time.Now()
			failures++
			switch {
			case failures == 1:
				began, logged = now, now
				s.log.Warn("accept failing; backing off", "err", err)
			case now.Sub(logged) >= acceptLogEvery:
				logged = now
				s.log.Warn("accept still failing", "err", err, "failures", failures, "for", now.Sub(began).Round(time.Millisecond))
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			time.Sleep(backoff)
			continue
		}
		if failures > 0 {
			s.log.Warn("accept recovered", "failures", failures, "for", time.Since(began).Round(time.Millisecond))
			failures = 0
		}
		backoff = 0
		if !s.ServeConn(conn) {
			conn.Close()
		}
	}
}

// preLoginEvictAge is how long a link that has not logged in is safe from
// being closed to make room for a newcomer (Limits.PreLoginLinks). A real
// client completes its handshake and login in a few round trips; one that
// has taken a second is slow or not trying, and a flood of strangers must
// then open links faster than PreLoginLinks a second to keep newcomers out,
// which LinksPerAddr and the network make hard. Younger links are kept, so
// that a crowd of real clients reconnecting at once is refused at the door
// (and retries) rather than closed halfway through its logins.
const preLoginEvictAge = time.Second

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
		// Throttled: a flood of connections is what reaches the limit.
		s.limits.hit(hitMaxLinks, "link refused: at the link limit", "maxlinks", "limit", s.cfg.MaxLinks)
		return false
	}
	var evicted *link
	if limit := s.limits.cfg().PreLoginLinks; limit > 0 && s.strangers.Len() >= limit {
		oldest := s.strangers.Front().Value.(*link)
		if s.limits.now().Sub(oldest.accepted) < preLoginEvictAge {
			s.mu.Unlock()
			s.limits.closeLink(rem)
			s.refused.Add(1)
			s.limits.hit(hitPreLoginLinks, "link refused: too many links not logged in", "prelogin-links", "limit", limit)
			return false
		}
		s.strangers.Remove(oldest.stranger)
		oldest.stranger = nil
		evicted = oldest
	}
	l := newLink(s, conn)
	s.links[l] = rem
	l.stranger = s.strangers.PushBack(l)
	s.wg.Add(1)
	s.mu.Unlock()
	if evicted != nil {
		s.evicted.Add(1)
		s.limits.hit(hitPreLoginEvict, "link closed: the oldest link not logged in, to make room", "prelogin-evict",
			"limit", s.limits.cfg().PreLoginLinks)
		evicted.closeHard()
	}
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

	// PreLoginBytes is the memory that links not logged in hold in
	// long-header buffers now, within Limits.PreLoginBytes;
	// PreLoginRefused counts the links closed since start because it was
	// spent.
	PreLoginBytes   int64
	PreLoginRefused int64

	// PreLoginLinks is the links not logged in now (Limits.PreLoginLinks);
	// Evicted counts those closed since start to make room for newcomers.
	PreLoginLinks int
	Evicted       int64
}

// Stats reports the server's current links.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Links: len(s.links), Devices: len(s.devices), Users: len(s.users), Parked: s.parked.Load(), Refused: s.refused.Load(),
		PreLoginLinks: s.strangers.Len(), Evicted: s.evicted.Load()}
	if s.preLogin != nil {
		st.PreLoginBytes, st.PreLoginRefused = s.preLogin.used.Load(), s.preLogin.refused.Load()
	}
	return st
}

// budget is memory shared by many links, lent in reservations: the
// long-header buffers of the links that have not logged in
// (Limits.PreLoginBytes). It is safe for concurrent use.
type budget struct {
	limit   int64
	used    atomic.Int64 // octets reserved now, never above limit
	refused atomic.Int64 // reservations refused since start
}

// reserve is a tmtp.LargeGate: it reserves size octets, or refuses when
// that would take the budget over its limit.
func (b *budget) reserve(size int) (release func(), ok bool) {
	n := int64(size)
	for {
		used := b.used.Load()
		if used+n > b.limit {
			b.refused.Add(1)
			return nil, false
		}
		if b.used.CompareAndSwap(used, used+n) {
			break
		}
	}
	// The Reader calls release once; the flag keeps a mistake from giving
	// the budget more than it lent.
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			b.used.Add(-n)
		}
	}, true
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
	if l.stranger != nil {
		s.strangers.Remove(l.stranger)
		l.stranger = nil
	}
	old := s.devices[l.dev]
	if old != nil {
		s.forgetDeviceLocked(old)
	}
	s.devices[l.dev] = l
	s.users[l.uid] = append(s.users[l.uid], l)
	first := len(s.users[l.uid]) == 1
	if s.cfg.Presence == nil {
		ohi = s.ohiForLocked(l.uid)
	}
	s.mu.Unlock()
	if old != nil {
		l.log.Info("device taken over from its previous link", "previous", old.conn.RemoteAddr().String())
		old.closeHard()
	}
	if s.cfg.Presence != nil {
		if first {
			s.setOnline(l.uid)
		}
		ohi = s.presenceForLogin(l.uid)
	}
	return ohi, true
}

// evictDevice closes the live link of dev at once, as a takeover closes the
// link it replaces: the device is forgotten under s.mu, which stops its
// delivery, and the connection closed after. It serves a device just
// retired (UserEdit dropnode, an operator's revoke: a login that passed the
// directory before the retirement and claims the device after this is
// refused by startSession's second look) and a device another frontend
// has taken (EvictDevice). why is the log line of the closing.
func (s *Server) evictDevice(dev, why string) {
	s.mu.Lock()
	old := s.devices[dev]
	gone := false
	if old != nil {
		s.forgetDeviceLocked(old)
		gone = len(s.users[old.uid]) == 0
		if gone && s.cfg.Presence == nil {
			s.userOfflineLocked(old.uid)
		}
	}
	s.mu.Unlock()
	if old != nil {
		old.log.Info(why)
		old.closeHard()
	}
	if gone && s.cfg.Presence != nil {
		s.setOnline(old.uid)
	}
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
	s.limits.closeLink(s.links[l])
	delete(s.links, l)
	if l.stranger != nil {
		s.strangers.Remove(l.stranger)
		l.stranger = nil
	}
	live := l.dev != "" && s.devices[l.dev] == l
	gone := false
	if live {
		s.forgetDeviceLocked(l)
		gone = len(s.users[l.uid]) == 0
		if gone && s.cfg.Presence == nil {
			s.userOfflineLocked(l.uid)
		}
	}
	s.mu.Unlock()
	if gone && s.cfg.Presence != nil {
		s.setOnline(l.uid)
	}
	// The session goes with the device's live link; a link taken over on
	// this server, or evicted for another frontend, has none to give up.
	if live && s.cfg.Sessions != nil {
		s.cfg.Sessions.Release(l.dev)
	}
}

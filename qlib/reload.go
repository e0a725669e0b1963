package qlib

// Settings changed while the server runs (the daemon's SIGHUP reload): the
// limits, the receive-only reach and the post size bound. Each is read by
// many link goroutines at once, so each is swapped whole through an atomic
// pointer: a link sees the old value or the new one, never a mix, and no
// lock is added to the paths that read them. The limiter's tables (who
// registered, pinged, failed to log in) are kept: a new limit applies to
// the counts already made. Their token buckets are capped at the new size
// when next used, so a lowered limit leaves each member at most the new
// allowance, and a raised one refills at its new rate.

import (
	"maps"
	"sync/atomic"
)

// liveConfig holds the reloadable settings of a Server.
type liveConfig struct {
	mayReach atomic.Pointer[map[string]bool] // Config.MayReach
	maxPost  atomic.Int64                    // Config.MaxPostBytes
}

// init takes the settings of cfg, as NewServer completed it.
func (lc *liveConfig) init(cfg *Config) {
	reach := maps.Clone(cfg.MayReach)
	lc.mayReach.Store(&reach)
	lc.maxPost.Store(cfg.MaxPostBytes)
}

// cfg returns the limits in force. The caller must not change them.
func (lm *limiter) cfg() *Limits { return lm.conf.Load() }

// SetLimits puts limits in force for every link from now on. Now and
// PreLoginBytes (the budget of links not logged in is made at start) are
// kept as they were. nil is DefaultLimits.
func (s *Server) SetLimits(limits *Limits) {
	next := DefaultLimits()
	if limits != nil {
		next = *limits
	}
	cur := s.limits.cfg()
	next.Now, next.PreLoginBytes = cur.Now, cur.PreLoginBytes
	s.limits.conf.Store(&next)
}

// Limits returns a copy of the limits in force.
func (s *Server) Limits() Limits { return *s.limits.cfg() }

// SetMayReach replaces Config.MayReach.
func (s *Server) SetMayReach(reach map[string]bool) {
	reach = maps.Clone(reach)
	s.live.mayReach.Store(&reach)
}

// SetMaxPostBytes replaces Config.MaxPostBytes (0 is DefaultMaxPostBytes).
// A post already being received keeps the bound it was checked against.
func (s *Server) SetMaxPostBytes(n int64) {
	if n <= 0 {
		n = DefaultMaxPostBytes
	}
	s.live.maxPost.Store(n)
}

// mayReach is Config.MayReach as last set. The caller must not change it.
func (s *Server) mayReach() map[string]bool { return *s.live.mayReach.Load() }

// maxPostBytes is Config.MaxPostBytes as last set.
func (s *Server) maxPostBytes() int64 { return s.live.maxPost.Load() }

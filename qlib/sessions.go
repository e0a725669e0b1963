package qlib

import (
	"context"
	"time"
)

// Sessions is qlib's view of a site's other frontends, when several servers
// share one Store and Directory (the clustered backend, cluster/DESIGN.md):
// which frontend holds each device's link. On one machine there is none
// (Config.Sessions nil) and Server's own map of devices is the whole truth.
//
// The invariant it keeps with the Server: at no time do two frontends
// deliver to one device. A login claims the device's session before the
// server makes the link the device's live link; another frontend holding
// it closes its link first (EvictDevice) and only then lets the claim
// return.
type Sessions interface {
	// Claim makes this frontend the holder of dev's session. When another
	// frontend holds it, Claim returns once that frontend's link to the
	// device is closed (its Server.EvictDevice returned), or that frontend
	// is known to be gone. ctx bounds the wait; an error refuses the login.
	Claim(ctx context.Context, dev string) error
	// Release gives dev's session up if this frontend still holds it: the
	// device's live link has ended here. A session another frontend has
	// claimed since is left alone. Called from the ending link's
	// goroutine, with none of the Server's locks held.
	Release(dev string)
}

// sessionClaimTimeout bounds a login's Claim: long enough to outlast a
// dead frontend's liveness (the bus lets a claim through once the old
// holder has not been heard of for its TTL, seconds), short enough that a
// client is answered within its own patience.
const sessionClaimTimeout = 30 * time.Second

// claimSession claims dev for l's login across frontends; a no-op on one
// machine.
func (s *Server) claimSession(l *link, dev string) error {
	if s.cfg.Sessions == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sessionClaimTimeout)
	defer cancel()
	if err := s.cfg.Sessions.Claim(ctx, dev); err != nil {
		l.log.Warn("login refused: the device's session could not be taken from another frontend", "err", err)
		return err
	}
	return nil
}

// EvictDevice closes this server's link of dev, if it has one, for a
// Sessions whose device another frontend has claimed; the device stays a
// member's and may log in here again. It returns once the link can deliver
// nothing more: the device is forgotten (its queue unwatched) under s.mu
// and its connection closed.
func (s *Server) EvictDevice(dev string) { s.evictDevice(dev, "device taken over by another frontend") }

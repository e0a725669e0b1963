// Package cluster assembles mnm's clustered backend (DESIGN.md): the pieces
// that let several frontends serve one site over a NATS JetStream cluster,
// put behind qlib's seams. Its subpackages do the work: bus (device
// sessions, takeover, presence), jsstore (the message store), natstest (an
// embedded cluster for tests).
package cluster

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"mnm/cluster/bus"
	"mnm/qlib"
)

// releaseTimeout bounds the release of a device's session when its link
// ends. Release runs on the ending link's goroutine; a cluster that does
// not answer in time leaves the record to the next claim, which resolves
// it through this frontend (which then answers "released" at once).
const releaseTimeout = 5 * time.Second

// Sessions is qlib.Sessions over a bus.
type Sessions struct {
	Bus *bus.Bus
	Log *slog.Logger // nil discards
}

var _ qlib.Sessions = (*Sessions)(nil)

// Claim claims dev's session through the bus.
func (s *Sessions) Claim(ctx context.Context, dev string) error { return s.Bus.Claim(ctx, dev) }

// Release releases dev's session if this frontend still holds it. A failure
// is only logged: the session's record then still names this frontend, and
// the next claim of the device resolves it by asking this frontend, which
// holds nothing and answers at once.
func (s *Sessions) Release(dev string) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := s.Bus.Release(ctx, dev); err != nil && s.Log != nil {
		s.Log.Warn("session release failed; the next claim resolves it", "err", err)
	}
}

// editTimeout bounds an OhiEdit's write of the list: a compare-and-set or
// a few (~1 ms each), through an election at worst.
const editTimeout = 10 * time.Second

// Presence is qlib.Presence over a bus. The bus's callbacks reach the
// server, which is made after the bus: make the Presence first, give its
// OnPresence and OnUserGone to bus.Options, set Bus once the bus is made,
// and Attach the server once it is made. Callbacks before Attach are
// dropped: the server holds no device yet.
type Presence struct {
	Bus *bus.Bus
	Log *slog.Logger // nil discards

	srv atomic.Pointer[qlib.Server]
}

var _ qlib.Presence = (*Presence)(nil)

// Attach makes srv the server the bus's callbacks reach.
func (p *Presence) Attach(srv *qlib.Server) { p.srv.Store(srv) }

// OnPresence is bus.Options.OnPresence: a notice from another frontend.
func (p *Presence) OnPresence(to, from string, status int64) {
	if s := p.srv.Load(); s != nil {
		s.PresenceNotice(to, from, status)
	}
}

// OnUserGone is bus.Options.OnUserGone: uid is online on no frontend.
func (p *Presence) OnUserGone(uid string, list []string) {
	if s := p.srv.Load(); s != nil {
		s.UserGone(uid, list)
	}
}

// SetOnline announces uid's change on this frontend. A failed announce is
// logged: the other frontends see the gap at the next one and resync.
func (p *Presence) SetOnline(uid string, online bool) {
	if err := p.Bus.SetOnline(uid, online); err != nil {
		p.warn("presence announce failed", err)
	}
}

// Edit edits uid's list in the site's bucket.
func (p *Presence) Edit(uid string, edit func(list map[string]bool)) error {
	ctx, cancel := context.WithTimeout(context.Background(), editTimeout)
	defer cancel()
	return p.Bus.Edit(ctx, uid, edit)
}

// Notify sends a notice to the frontends holding to's devices; best effort.
func (p *Presence) Notify(to, from string, status int64) {
	if err := p.Bus.Notify(to, from, status); err != nil {
		p.warn("presence notice not sent", err)
	}
}

// Naming lists the online users whose lists name uid, from memory.
func (p *Presence) Naming(uid string) []string { return p.Bus.Naming(uid) }

func (p *Presence) warn(msg string, err error) {
	if p.Log != nil {
		p.Log.Warn(msg, "err", err)
	}
}

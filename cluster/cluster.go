// Package cluster assembles mnm's clustered backend (DESIGN.md): the pieces
// that let several frontends serve one site over a NATS JetStream cluster,
// put behind qlib's seams. Its subpackages do the work: bus (device
// sessions, takeover, presence), jsstore (the message store), natstest (an
// embedded cluster for tests).
package cluster

import (
	"context"
	"log/slog"
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

package bus

import (
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// frontendHeader names the publishing frontend of a presence notice, so
// that a Bus can skip its own.
const frontendHeader = "Mnm-Frontend"

// Publish sends uid's presence status to the other frontends, best effort
// (core NATS, never stored), as ohi notices are on one machine.
func (b *Bus) Publish(uid string, status int64) error {
	if uid == "" {
		return ErrBadName
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	m := nats.NewMsg(b.opts.Prefix + ".ohi." + encode(uid))
	m.Header.Set(frontendHeader, b.opts.Frontend)
	m.Data = strconv.AppendInt(nil, status, 10)
	if err := b.nc.PublishMsg(m); err != nil {
		return err
	}
	return nil
}

// onPresence delivers another frontend's notice to OnPresence. A notice
// that does not parse is logged and dropped.
func (b *Bus) onPresence(m *nats.Msg) {
	if m.Header.Get(frontendHeader) == b.opts.Frontend {
		return
	}
	tok := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	uid, err := decode(tok)
	if err != nil || uid == "" {
		b.log.Warn("presence notice with a bad uid dropped", "subject", m.Subject)
		return
	}
	status, err := strconv.ParseInt(string(m.Data), 10, 64)
	if err != nil {
		b.log.Warn("presence notice with a bad status dropped", "subject", m.Subject)
		return
	}
	if b.opts.OnPresence != nil {
		b.opts.OnPresence(uid, status)
	}
}

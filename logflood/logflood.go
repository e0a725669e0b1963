// Package logflood keeps a flood of repeated events from flooding the log.
// Its Handler wraps a slog.Handler: per kind of event (its level, message
// and a few chosen attributes) it lets the first lines of each interval
// through, counts the rest, and writes one summary line for them when the
// interval ends, or at Close. A stranger who can make the server log a line
// per connection can then make it log a few lines per interval, however
// many connections it opens, while the counts say how many there were.
//
// The name says what it guards against: it is not a general sampler, and
// records at or above a level (Options.Keep, default Error) always pass.
package logflood

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of Options.
const (
	// DefaultInterval is the window over which lines of one kind are
	// counted: long enough that a flood costs few lines, short enough
	// that its summary comes while an operator is still looking.
	DefaultInterval = time.Minute

	// DefaultBurst is the lines of one kind passed per interval. It is
	// above what one kind of event makes in ordinary use (keyed per
	// member where the line names one: Options.KeyAttrs), so that only
	// floods are cut, and a flood still leaves enough lines to show its
	// shape (addresses, errors).
	DefaultBurst = 20

	// DefaultMaxKeys bounds the kinds of event tracked at once, and with
	// them the Handler's memory (an entry is about 200 bytes): far more
	// than a server's messages times the members active in an interval on
	// a small site. Past it, new kinds share one overflow entry, so that
	// the log stays bounded however many kinds a flood makes.
	DefaultMaxKeys = 4096
)

// Options configures a Handler. The zero value takes every default.
type Options struct {
	Interval time.Duration // 0 = DefaultInterval
	Burst    int           // lines per kind per interval; 0 = DefaultBurst
	MaxKeys  int           // kinds tracked at once; 0 = DefaultMaxKeys

	// Keep is the level from which records always pass, uncounted: errors
	// are rare, each may need action, and none must be hidden behind a
	// count. nil = slog.LevelError.
	Keep slog.Leveler

	// KeyAttrs names the attributes whose values, with the level and the
	// message, make a kind of event: "reason" keeps refusals for different
	// reasons apart, "uid" keeps one member's logins from hiding another's.
	// They are looked up among the record's attributes and those added by
	// WithAttrs outside any group.
	KeyAttrs []string

	// Now is the clock of the intervals; nil = time.Now.
	Now func() time.Time
}

// Handler is a slog.Handler that suppresses repeated lines (see the package
// comment). It is safe for concurrent use; the Handlers that WithAttrs and
// WithGroup return share its counts. Call Close when done, to write the
// summaries still pending and stop its timer.
type Handler struct {
	inner slog.Handler
	keyed []slog.Attr // attributes of WithAttrs named in KeyAttrs
	group bool        // WithGroup was called: later attributes are not top-level
	st    *state
}

// state is what a Handler and those derived from it share.
type state struct {
	root     slog.Handler // the wrapped handler as given: summaries go there
	interval time.Duration
	burst    int
	maxKeys  int
	keep     slog.Leveler
	keyAttrs []string
	now      func() time.Time

	mu sync.Mutex
	// Guarded by mu:
	kinds    map[string]*kind
	overflow *kind       // the kinds past maxKeys, together; nil = none
	timer    *time.Timer // sweeps ended intervals; nil until first needed
	due      time.Time   // when timer fires; zero = not armed
	closed   bool
}

// kind counts the lines of one kind of event in its current interval.
type kind struct {
	level      slog.Level
	msg        string
	attrs      []slog.Attr // the key attributes, for the summary
	start      time.Time   // the interval began with its first line
	lines      int         // lines in the interval, passed or not
	suppressed int         // lines not passed
}

// overflowMsg is the summary message of the kinds past MaxKeys.
const overflowMsg = "log lines suppressed"

// New returns a Handler writing to inner.
func New(inner slog.Handler, o Options) *Handler {
	st := &state{
		root:     inner,
		interval: o.Interval,
		burst:    o.Burst,
		maxKeys:  o.MaxKeys,
		keep:     o.Keep,
		keyAttrs: slices.Clone(o.KeyAttrs),
		now:      o.Now,
		kinds:    make(map[string]*kind),
	}
	if st.interval <= 0 {
		st.interval = DefaultInterval
	}
	if st.burst <= 0 {
		st.burst = DefaultBurst
	}
	if st.maxKeys <= 0 {
		st.maxKeys = DefaultMaxKeys
	}
	if st.keep == nil {
		st.keep = slog.LevelError
	}
	if st.now == nil {
		st.now = time.Now
	}
	return &Handler{inner: inner, st: st}
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	keyed := h.keyed
	if !h.group {
		for _, a := range as {
			if slices.Contains(h.st.keyAttrs, a.Key) {
				keyed = append(slices.Clip(keyed), a)
			}
		}
	}
	return &Handler{inner: h.inner.WithAttrs(as), keyed: keyed, group: h.group, st: h.st}
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &Handler{inner: h.inner.WithGroup(name), keyed: h.keyed, group: true, st: h.st}
}

// Handle implements slog.Handler: it passes r on, or counts it.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	st := h.st
	if r.Level >= st.keep.Level() {
		return h.inner.Handle(ctx, r)
	}
	key, attrs := h.key(r)
	now := st.now()
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return h.inner.Handle(ctx, r)
	}
	var summaries []slog.Record
	k := st.kinds[key]
	if k != nil && now.Sub(k.start) >= st.interval {
		summaries = st.end(summaries, key, k)
		k = nil
	}
	if k == nil {
		k = st.open(key, r, attrs, now)
		if k == st.overflow && now.Sub(k.start) >= st.interval {
			summaries = st.end(summaries, "", k)
			k = st.open(key, r, attrs, now)
		}
	}
	k.lines++
	pass := k.lines <= st.burst
	if !pass {
		k.suppressed++
	}
	st.mu.Unlock()
	for _, s := range summaries {
		st.root.Handle(context.Background(), s)
	}
	if !pass {
		return nil
	}
	return h.inner.Handle(ctx, r)
}

// key returns the kind of r as a map key, and its key attributes.
func (h *Handler) key(r slog.Record) (string, []slog.Attr) {
	var b strings.Builder
	b.WriteString(r.Level.String())
	b.WriteByte(0)
	b.WriteString(r.Message)
	var attrs []slog.Attr
	add := func(a slog.Attr) {
		attrs = append(attrs, a)
		b.WriteByte(0)
		b.WriteString(a.Key)
		b.WriteByte('=')
		b.WriteString(a.Value.Resolve().String())
	}
	for _, a := range h.keyed {
		add(a)
	}
	if len(h.st.keyAttrs) > 0 && !h.group {
		r.Attrs(func(a slog.Attr) bool {
			if slices.Contains(h.st.keyAttrs, a.Key) {
				add(a)
			}
			return true
		})
	}
	return b.String(), attrs
}

// open starts counting a kind, or the overflow when maxKeys kinds are
// counted already, and arms the timer for the end of its interval. st.mu
// is held.
func (st *state) open(key string, r slog.Record, attrs []slog.Attr, now time.Time) *kind {
	if len(st.kinds) >= st.maxKeys {
		if st.overflow == nil {
			st.overflow = &kind{level: r.Level, msg: overflowMsg, start: now}
			st.arm(now.Add(st.interval), now)
		}
		st.overflow.level = max(st.overflow.level, r.Level)
		return st.overflow
	}
	k := &kind{level: r.Level, msg: r.Message, attrs: attrs, start: now}
	st.kinds[key] = k
	st.arm(now.Add(st.interval), now)
	return k
}

// end forgets kind k, whose interval is over, and appends its summary to
// summaries if it suppressed anything. st.mu is held.
func (st *state) end(summaries []slog.Record, key string, k *kind) []slog.Record {
	msg := k.msg + " (suppressed)"
	if k == st.overflow {
		st.overflow = nil
		msg = overflowMsg // of many kinds
	} else {
		delete(st.kinds, key)
	}
	if k.suppressed == 0 {
		return summaries
	}
	s := slog.NewRecord(st.now(), k.level, msg, 0)
	s.AddAttrs(k.attrs...)
	s.AddAttrs(slog.Int("count", k.suppressed), slog.Duration("interval", st.interval))
	return append(summaries, s)
}

// arm makes the timer fire by at. st.mu is held.
func (st *state) arm(at, now time.Time) {
	if !st.due.IsZero() && !st.due.After(at) {
		return
	}
	st.due = at
	if st.timer == nil {
		st.timer = time.AfterFunc(at.Sub(now), st.sweep)
		return
	}
	st.timer.Reset(at.Sub(now))
}

// sweep ends every interval that is over, writing the summaries of those
// that suppressed lines, and arms the timer for the next one to end. It
// runs on the timer; tests call it after moving their clock.
func (st *state) sweep() {
	now := st.now()
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	var summaries []slog.Record
	var next time.Time
	consider := func(key string, k *kind) {
		end := k.start.Add(st.interval)
		if !now.Before(end) {
			summaries = st.end(summaries, key, k)
			return
		}
		if next.IsZero() || end.Before(next) {
			next = end
		}
	}
	for key, k := range st.kinds {
		consider(key, k)
	}
	if st.overflow != nil {
		consider("", st.overflow)
	}
	st.due = time.Time{}
	if !next.IsZero() {
		st.arm(next, now)
	}
	st.mu.Unlock()
	for _, s := range summaries {
		st.root.Handle(context.Background(), s)
	}
}

// Close writes the summaries of the lines suppressed so far and stops the
// timer. Records handled after it pass unchanged. The Handlers derived from
// h are closed with it.
func (h *Handler) Close() error {
	st := h.st
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	if st.timer != nil {
		st.timer.Stop()
	}
	var summaries []slog.Record
	for key, k := range st.kinds {
		summaries = st.end(summaries, key, k)
	}
	if st.overflow != nil {
		summaries = st.end(summaries, "", st.overflow)
	}
	st.mu.Unlock()
	var err error
	for _, s := range summaries {
		if e := st.root.Handle(context.Background(), s); e != nil && err == nil {
			err = e
		}
	}
	return err
}

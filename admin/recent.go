package admin

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Recent keeps the latest warnings and errors logged, for the status page:
// an operator who opens it sees what went wrong lately without reading the
// log. Its Handler wraps the daemon's log handler; every record still goes
// to the log.
//
// A Recent is safe for concurrent use; a nil *Recent keeps nothing.
type Recent struct {
	n int

	mu sync.Mutex
	// Guarded by mu:
	ring  []Entry // the entries kept, oldest first once full; at most n
	next  int     // where the next entry goes once ring is full
	total int     // entries ever kept, repeats folded in
}

// Entry is a warning or error kept by Recent.
type Entry struct {
	Time    time.Time
	Level   slog.Level
	Message string
	// Attrs are the record's attributes as key=value, space-separated,
	// groups joined to the key with dots.
	Attrs string
	// Repeats counts the records after the first that were the same as
	// this one (level, message and attrs) and came right after it; Time is
	// the last one's.
	Repeats int
}

// Bounds of what an Entry holds: a record is for a person to read in a
// table, and a log line with a huge value (a peer's garbage quoted in an
// error) must not make the page or the memory grow with it.
const (
	maxEntryMessage = 512
	maxEntryAttrs   = 1024
)

// secretKeys are attribute keys whose values are never kept, whatever
// their group. The daemon does not log them; this makes sure of it.
var secretKeys = map[string]bool{"nodeid": true, "token": true}

// NewRecent returns a Recent that keeps the last n warnings and errors (at
// least 1).
func NewRecent(n int) *Recent {
	return &Recent{n: max(n, 1)}
}

// Handler returns a handler that passes every record to next and keeps
// those at slog.LevelWarn or above.
func (r *Recent) Handler(next slog.Handler) slog.Handler {
	return &recentHandler{r: r, next: next}
}

// Entries returns the entries kept, newest first.
func (r *Recent) Entries() []Entry {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Entry, 0, len(r.ring))
	newest := r.newest()
	for i := range r.ring {
		out = append(out, r.ring[(newest-i+len(r.ring))%len(r.ring)])
	}
	return out
}

// Total returns how many entries were ever kept, repeats folded in: more
// than len(Entries()) when older ones were dropped.
func (r *Recent) Total() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// add keeps e, folding it into the newest entry when it repeats it.
func (r *Recent) add(e Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ring) > 0 {
		last := &r.ring[r.newest()]
		if last.Level == e.Level && last.Message == e.Message && last.Attrs == e.Attrs {
			last.Repeats++
			last.Time = e.Time
			return
		}
	}
	r.total++
	if len(r.ring) < r.n {
		r.ring = append(r.ring, e)
		return
	}
	r.ring[r.next] = e
	r.next = (r.next + 1) % r.n
}

// newest is the index of the newest entry in the ring, which is not empty.
// Guarded by mu.
func (r *Recent) newest() int {
	if len(r.ring) < r.n {
		return len(r.ring) - 1
	}
	return (r.next - 1 + r.n) % r.n
}

// recentHandler is Recent's slog.Handler. attrs and prefix are what
// WithAttrs and WithGroup added, already formatted, since the records
// handed to Handle do not carry them.
type recentHandler struct {
	r      *Recent
	next   slog.Handler
	attrs  string // key=value pairs of WithAttrs, space-separated
	prefix string // the open groups, each followed by "."
}

func (h *recentHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *recentHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn && h.r != nil {
		var b strings.Builder
		b.WriteString(h.attrs)
		rec.Attrs(func(a slog.Attr) bool {
			appendAttr(&b, h.prefix, a)
			return true
		})
		t := rec.Time
		if t.IsZero() {
			t = time.Now()
		}
		h.r.add(Entry{Time: t, Level: rec.Level, Message: clip(rec.Message, maxEntryMessage),
			Attrs: clip(b.String(), maxEntryAttrs)})
	}
	if !h.next.Enabled(ctx, rec.Level) {
		return nil
	}
	return h.next.Handle(ctx, rec)
}

func (h *recentHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		appendAttr(&b, h.prefix, a)
	}
	return &recentHandler{r: h.r, next: h.next.WithAttrs(as), attrs: b.String(), prefix: h.prefix}
}

func (h *recentHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &recentHandler{r: h.r, next: h.next.WithGroup(name), attrs: h.attrs, prefix: h.prefix + name + "."}
}

// appendAttr writes a as key=value to b, a group's attributes each with
// the group's name before the key, leaving out secrets and empty
// attributes as slog's handlers do. A value with spaces or quotes is
// quoted.
func appendAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) || secretKeys[strings.ToLower(a.Key)] {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			appendAttr(b, prefix, g)
		}
		return
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	b.WriteString(prefix)
	b.WriteString(a.Key)
	b.WriteByte('=')
	v := a.Value.String()
	if v == "" || strings.ContainsAny(v, " \t\r\n\"=") {
		v = quote(v)
	}
	b.WriteString(v)
}

// quote is v in double quotes with quotes, backslashes and line breaks
// escaped, as slog's text handler writes such values.
func quote(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`, "\t", `\t`)
	return `"` + r.Replace(v) + `"`
}

// clip cuts s to at most n bytes, on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

package admin

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// newRecentLogger returns a logger through r.Handler to a text handler at
// level, and the text handler's output.
func newRecentLogger(r *Recent, level slog.Level) (*slog.Logger, *recentBuffer) {
	var out recentBuffer
	next := slog.NewTextHandler(&out, &slog.HandlerOptions{Level: level})
	return slog.New(r.Handler(next)), &out
}

type recentBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *recentBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *recentBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestRecentKeepsLastWarnings(t *testing.T) {
	r := NewRecent(3)
	log, out := newRecentLogger(r, slog.LevelDebug)
	log.Debug("debug line")
	log.Info("info line")
	for i := range 5 {
		log.Warn(fmt.Sprintf("warning %d", i))
	}
	log.Error("an error", "err", "disk full")

	// Every record reached the next handler.
	for _, want := range []string{"debug line", "info line", "warning 0", "warning 4", "an error"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("next handler missed %q; it got:\n%s", want, out)
		}
	}
	got := r.Entries()
	var msgs []string
	for _, e := range got {
		msgs = append(msgs, e.Level.String()+" "+e.Message)
	}
	want := []string{"ERROR an error", "WARN warning 4", "WARN warning 3"}
	if strings.Join(msgs, "|") != strings.Join(want, "|") {
		t.Fatalf("entries %q, want %q (newest first, WARN and above, last 3)", msgs, want)
	}
	if got[0].Attrs != "err=\"disk full\"" {
		t.Errorf("attrs %q", got[0].Attrs)
	}
	if got[0].Time.IsZero() {
		t.Error("entry without a time")
	}
	if n := r.Total(); n != 6 {
		t.Errorf("total %d, want 6", n)
	}
}

func TestRecentAttrs(t *testing.T) {
	r := NewRecent(10)
	log, out := newRecentLogger(r, slog.LevelInfo)
	log = log.With("listener", "admin", "nodeid", "SECRETNODE").WithGroup("link")
	log.Warn("refused", "remote", "203.0.113.7", "token", "SECRETTOKEN",
		slog.Group("limit", "kind", "max_links", "n", 256), "why", `say "no"`)
	es := r.Entries()
	if len(es) != 1 {
		t.Fatalf("%d entries", len(es))
	}
	const want = `listener=admin link.remote=203.0.113.7 link.limit.kind=max_links link.limit.n=256 link.why="say \"no\""`
	if es[0].Attrs != want {
		t.Errorf("attrs\n%s\nwant\n%s", es[0].Attrs, want)
	}
	if strings.Contains(es[0].Attrs, "SECRET") {
		t.Errorf("a secret was kept: %s", es[0].Attrs)
	}
	// The next handler gets the record as logged: dropping secrets is
	// Recent's own caution, not a filter on the log.
	if !strings.Contains(out.String(), "link.remote=203.0.113.7") {
		t.Errorf("next handler got:\n%s", out)
	}
}

func TestRecentFoldsRepeats(t *testing.T) {
	r := NewRecent(2)
	log, _ := newRecentLogger(r, slog.LevelInfo)
	log.Warn("other")
	for range 4 {
		log.Warn("flood", "reason", "x")
	}
	log.Warn("flood", "reason", "y")
	es := r.Entries()
	if len(es) != 2 || es[0].Attrs != "reason=y" || es[1].Attrs != "reason=x" || es[1].Repeats != 3 || es[0].Repeats != 0 {
		t.Fatalf("entries %+v", es)
	}
	if n := r.Total(); n != 3 {
		t.Errorf("total %d, want 3", n)
	}
}

// A next handler that drops warnings (a level of ERROR) does not stop
// Recent from keeping them.
func TestRecentBelowNextLevel(t *testing.T) {
	r := NewRecent(5)
	log, out := newRecentLogger(r, slog.LevelError)
	log.Warn("kept here only")
	if out.String() != "" {
		t.Errorf("next handler got %q", out)
	}
	if es := r.Entries(); len(es) != 1 || es[0].Message != "kept here only" {
		t.Fatalf("entries %+v", es)
	}
	if !log.Enabled(context.Background(), slog.LevelWarn) || log.Enabled(context.Background(), slog.LevelInfo) {
		t.Error("Enabled: want WARN on, INFO off")
	}
}

func TestRecentClipsLongValues(t *testing.T) {
	r := NewRecent(1)
	log, _ := newRecentLogger(r, slog.LevelInfo)
	log.Warn(strings.Repeat("é", maxEntryMessage), "blob", strings.Repeat("x", 10*maxEntryAttrs))
	e := r.Entries()[0]
	if len(e.Message) > maxEntryMessage+len("…") || !strings.HasSuffix(e.Message, "…") || !strings.HasSuffix(strings.TrimSuffix(e.Message, "…"), "é") {
		t.Errorf("message of %d bytes: %q...", len(e.Message), e.Message[:20])
	}
	if len(e.Attrs) > maxEntryAttrs+len("…") {
		t.Errorf("attrs of %d bytes", len(e.Attrs))
	}
}

func TestRecentNil(t *testing.T) {
	var r *Recent
	if r.Entries() != nil || r.Total() != 0 {
		t.Fatal("a nil Recent has entries")
	}
}

// Run with -race: loggers on many goroutines and readers at once.
func TestRecentConcurrent(t *testing.T) {
	r := NewRecent(16)
	log, _ := newRecentLogger(r, slog.LevelInfo)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range 200 {
				log.With("g", g).Warn("concurrent", "i", i)
			}
		}()
		go func() {
			defer wg.Done()
			for range 200 {
				if n := len(r.Entries()); n > 16 {
					t.Errorf("%d entries kept, over 16", n)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n, total := len(r.Entries()), r.Total(); n != 16 || total != 1600 {
		t.Fatalf("%d entries of %d, want 16 of 1600", n, total)
	}
}

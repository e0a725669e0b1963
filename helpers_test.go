package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Helpers shared by the package's tests.

// lockedBuffer collects log output for assertions; safe for the concurrent
// writers a server's goroutines are.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func newLockedBuffer() *lockedBuffer { return &lockedBuffer{} }

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newTestLogger returns a logger writing text lines, debug level and up, to
// the returned buffer.
func newTestLogger() (*slog.Logger, *lockedBuffer) {
	b := newLockedBuffer()
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// writeConfigFile writes cfg as dir's mnm.config and returns its path.
// Unless cfg says otherwise, its admin listener takes a free loopback port,
// so that tests never contend for the default one.
func writeConfigFile(t *testing.T, dir string, cfg map[string]any) string {
	t.Helper()
	if _, ok := cfg["admin"]; !ok {
		cfg["admin"] = map[string]any{"laddr": "127.0.0.1:0"}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "mnm.config")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitFor polls cond until it holds, for state that has no event to wait
// on; after 10 s the test fails, naming what it waited for.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

package store_test

import (
	"io"
	"log/slog"
	"sync"
	"testing"

	"mnm/durable"
	"mnm/qlib"
	"mnm/qlib/store"
	"mnm/qlib/storetest"
)

// TestContract holds the Log to qlib.Store's contract, on the real file
// system.
func TestContract(t *testing.T) {
	storetest.Run(t, &dirHarness{dirs: map[qlib.Store]string{}})
}

// TestContractMemFS runs the contract again on an in-memory file system that
// can lose power, for the suite's crash checks.
func TestContractMemFS(t *testing.T) {
	storetest.Run(t, &memHarness{fss: map[qlib.Store]*durable.MemFS{}})
}

// quiet is the stores' logger: the suite looks at behaviour, not logs.
func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// open opens a Log in dir on fsys (nil: the OS), failing t if it cannot.
func open(t *testing.T, dir string, fsys durable.FS) *store.Log {
	t.Helper()
	l, err := store.Open(store.Options{Dir: dir, FS: fsys, Logger: quiet()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// dirHarness opens each store in a temporary directory of its own.
type dirHarness struct {
	mu   sync.Mutex
	dirs map[qlib.Store]string // guarded by mu: each store's directory
}

func (h *dirHarness) Open(t *testing.T) qlib.Store {
	return h.openIn(t, t.TempDir())
}

func (h *dirHarness) Reopen(t *testing.T, old qlib.Store) qlib.Store {
	h.mu.Lock()
	dir := h.dirs[old]
	delete(h.dirs, old)
	h.mu.Unlock()
	return h.openIn(t, dir)
}

func (h *dirHarness) openIn(t *testing.T, dir string) qlib.Store {
	l := open(t, dir, nil)
	h.mu.Lock()
	h.dirs[l] = dir
	h.mu.Unlock()
	return l
}

// memHarness opens each store on an in-memory file system of its own, and
// crashes it by cutting the power to that file system (durable.MemFS.Crash).
type memHarness struct {
	mu  sync.Mutex
	fss map[qlib.Store]*durable.MemFS // guarded by mu: each store's file system
}

// memDir is the store directory on each MemFS.
const memDir = "/q/qstore"

func (h *memHarness) Open(t *testing.T) qlib.Store {
	return h.openOn(t, durable.NewMemFS())
}

func (h *memHarness) Reopen(t *testing.T, old qlib.Store) qlib.Store {
	return h.openOn(t, h.take(old))
}

// Crash keeps what the file system had made durable, then closes old, which
// fails (its file system is gone) but waits for its goroutines, so that none
// of its callbacks runs after Crash returns.
func (h *memHarness) Crash(t *testing.T, old qlib.Store) qlib.Store {
	crashed := h.take(old).Crash(nil)
	old.Close()
	return h.openOn(t, crashed)
}

// take returns old's file system, forgetting old.
func (h *memHarness) take(old qlib.Store) *durable.MemFS {
	h.mu.Lock()
	defer h.mu.Unlock()
	fsys := h.fss[old]
	delete(h.fss, old)
	return fsys
}

func (h *memHarness) openOn(t *testing.T, fsys *durable.MemFS) qlib.Store {
	l := open(t, memDir, fsys)
	h.mu.Lock()
	h.fss[l] = fsys
	h.mu.Unlock()
	return l
}

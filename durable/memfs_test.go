package durable

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"syscall"
	"testing"
)

func mustOpen(t *testing.T, m *MemFS, name string, flag int) File {
	t.Helper()
	f, err := m.OpenFile(name, flag, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func fileIs(t *testing.T, m *MemFS, name, want string) {
	t.Helper()
	got, err := m.ReadFile(name)
	if want == "<none>" {
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists (%q, %v), want it gone", name, got, err)
		}
		return
	}
	if err != nil || string(got) != want {
		t.Errorf("%s = %q, %v; want %q", name, got, err, want)
	}
}

func TestMemFSPowerLoss(t *testing.T) {
	m := NewMemFS()
	if err := m.MkdirAll("/d", 0o700); err != nil {
		t.Fatal(err)
	}
	// synced: data and entry durable.
	f := mustOpen(t, m, "/d/synced", os.O_RDWR|os.O_CREATE)
	f.Write([]byte("abc"))
	f.Sync()
	f.Write([]byte("def")) // not synced
	// nodirsync: data synced, entry not.
	g := mustOpen(t, m, "/d/nodirsync", os.O_RDWR|os.O_CREATE)
	g.Write([]byte("x"))
	g.Sync()
	m.SyncDir("/d")
	// Created after the directory sync: gone.
	h := mustOpen(t, m, "/d/late", os.O_RDWR|os.O_CREATE)
	h.Write([]byte("y"))
	h.Sync()
	// A rename not followed by a directory sync is undone.
	m.Rename("/d/nodirsync", "/d/renamed")
	// A removal not followed by a directory sync is undone.
	m.Remove("/d/synced")

	c := m.Crash(nil)
	fileIs(t, c, "/d/synced", "abc")
	fileIs(t, c, "/d/nodirsync", "x")
	fileIs(t, c, "/d/renamed", "<none>")
	fileIs(t, c, "/d/late", "<none>")

	// The old file system and its files are dead.
	if _, err := f.Write([]byte("z")); !errors.Is(err, ErrCrashed) {
		t.Errorf("write after crash = %v, want ErrCrashed", err)
	}
	if _, err := m.OpenFile("/d/x", os.O_CREATE|os.O_RDWR, 0); !errors.Is(err, ErrCrashed) {
		t.Errorf("open after crash = %v, want ErrCrashed", err)
	}

	// A torn tail keeps what the callback says.
	f = mustOpen(t, c, "/d/synced", os.O_RDWR|os.O_APPEND)
	f.Write([]byte("12345"))
	var saw []byte
	c2 := c.Crash(func(name string, b []byte) []byte {
		if name == "/d/synced" {
			saw = b
			return b[:2]
		}
		return nil
	})
	if string(saw) != "12345" {
		t.Errorf("tail callback saw %q, want the unsynced bytes", saw)
	}
	fileIs(t, c2, "/d/synced", "abc12")
}

func TestMemFSTruncateBelowSynced(t *testing.T) {
	m := NewMemFS()
	m.MkdirAll("/d", 0o700)
	f := mustOpen(t, m, "/d/f", os.O_RDWR|os.O_CREATE)
	f.Write([]byte("durable"))
	f.Sync()
	m.SyncDir("/d")
	f.Truncate(3)
	f.Write([]byte("XY")) // at offset 7: extends with zeroes
	fileIs(t, m, "/d/f", "dur\x00\x00\x00\x00XY")
	fileIs(t, m.Crash(nil), "/d/f", "durable")
}

func TestMemFSFaults(t *testing.T) {
	m := NewMemFS()
	m.MkdirAll("/d", 0o700)
	f := mustOpen(t, m, "/d/f", os.O_RDWR|os.O_CREATE)
	boom := errors.New("boom")
	m.FailNth(OpWrite, 2, boom)
	if _, err := f.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("b")); !errors.Is(err, boom) {
		t.Errorf("second write = %v, want boom", err)
	}
	if _, err := f.Write([]byte("c")); err != nil {
		t.Errorf("third write = %v; a fault fires once", err)
	}
	fileIs(t, m, "/d/f", "ac") // the failed write had no effect
	if n := m.Count(OpWrite); n != 3 {
		t.Errorf("Count(write) = %d, want 3", n)
	}
	var seen []Op
	m.SetHook(func(op Op, name string) error {
		seen = append(seen, op)
		if op == OpSync {
			return boom
		}
		return nil
	})
	if err := f.Sync(); !errors.Is(err, boom) {
		t.Errorf("hooked sync = %v, want boom", err)
	}
	buf := make([]byte, 4)
	if n, err := f.ReadAt(buf, 1); n != 1 || err != io.EOF {
		t.Errorf("ReadAt past end = %d, %v; want 1, EOF", n, err)
	}
	if !slices.Equal(seen, []Op{OpSync, OpRead}) {
		t.Errorf("hook saw %v", seen)
	}
	m.SetHook(nil)
	if _, err := m.OpenFile("/d/f", os.O_CREATE|os.O_EXCL|os.O_RDWR, 0); !errors.Is(err, fs.ErrExist) {
		t.Errorf("O_EXCL on existing file = %v", err)
	}
	if _, err := m.OpenFile("/d/missing", os.O_RDONLY, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("open of missing file = %v", err)
	}
	r := mustOpen(t, m, "/d/f", os.O_RDONLY)
	if _, err := r.Write([]byte("x")); err == nil {
		t.Error("write to a read-only file succeeded")
	}
	r.Close()
	if _, err := r.ReadAt(buf, 0); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("read after close = %v", err)
	}
	names, _ := m.ReadDir("/d")
	if !slices.Equal(names, []string{"f"}) {
		t.Errorf("ReadDir = %v", names)
	}
}

func TestMemFSFileLimit(t *testing.T) {
	m := NewMemFS()
	m.MkdirAll("/d", 0o700)
	a := mustOpen(t, m, "/d/a", os.O_RDWR|os.O_CREATE)
	m.SetFileLimit(2)
	b := mustOpen(t, m, "/d/b", os.O_RDWR|os.O_CREATE)
	if _, err := m.OpenFile("/d/c", os.O_RDWR|os.O_CREATE, 0); !errors.Is(err, syscall.EMFILE) {
		t.Errorf("third open with a limit of 2 = %v, want EMFILE", err)
	}
	if _, err := m.ReadFile("/d/c"); err == nil {
		t.Error("the refused open created its file")
	}
	if n := m.OpenFiles(); n != 2 {
		t.Errorf("OpenFiles = %d, want 2", n)
	}
	b.Close()
	c := mustOpen(t, m, "/d/c", os.O_RDWR|os.O_CREATE) // room again
	m.SetFileLimit(0)
	mustOpen(t, m, "/d/d", os.O_RDWR|os.O_CREATE).Close()
	a.Close()
	c.Close()
	if n := m.OpenFiles(); n != 0 {
		t.Errorf("OpenFiles after closing all = %d", n)
	}
}

func TestMemFSLinkLstatOpenDir(t *testing.T) {
	m := NewMemFS()
	m.MkdirAll("/d", 0o700)
	f := mustOpen(t, m, "/d/a", os.O_RDWR|os.O_CREATE)
	f.Write([]byte("abc"))
	f.Sync()
	if err := f.Chmod(0o640); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := m.Link("/d/a", "/d/b"); err != nil {
		t.Fatal(err)
	}
	if err := m.Link("/d/a", "/d/b"); !errors.Is(err, fs.ErrExist) {
		t.Errorf("link over an existing name = %v, want ErrExist", err)
	}
	if err := m.Link("/d/missing", "/d/c"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("link of a missing file = %v, want ErrNotExist", err)
	}
	fi, err := m.Lstat("/d/b")
	if err != nil || fi.Size() != 3 || fi.Mode() != 0o640 || fi.IsDir() || fi.Name() != "b" {
		t.Errorf("Lstat of the link = %v, %v; want 3 bytes, 0640, a file named b", fi, err)
	}
	if fi, err := m.Lstat("/d"); err != nil || !fi.IsDir() {
		t.Errorf("Lstat of a directory = %v, %v", fi, err)
	}
	if _, err := m.Lstat("/d/c"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Lstat of a missing file = %v", err)
	}

	// The link is durable only once the directory is synced, here through
	// a handle opened before it was made.
	d, err := m.OpenDir("/d")
	if err != nil {
		t.Fatal(err)
	}
	if n := m.OpenFiles(); n != 1 {
		t.Errorf("OpenFiles with the directory open = %d, want 1", n)
	}
	fileIs(t, m.Crash(nil), "/d/b", "<none>")
	m = NewMemFS()
	m.MkdirAll("/d", 0o700)
	d, _ = m.OpenDir("/d")
	m.WriteFile("/d/a", []byte("abc"))
	m.Link("/d/a", "/d/b")
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := d.Sync(); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("sync of a closed directory = %v", err)
	}
	c := m.Crash(nil)
	fileIs(t, c, "/d/a", "abc")
	fileIs(t, c, "/d/b", "abc")

	// A directory open counts against the file limit.
	c.SetFileLimit(1)
	mustOpen(t, c, "/d/a", os.O_RDONLY)
	if _, err := c.OpenDir("/d"); !errors.Is(err, syscall.EMFILE) {
		t.Errorf("OpenDir beyond the file limit = %v, want EMFILE", err)
	}
	if _, err := c.OpenDir("/missing"); err == nil {
		t.Error("OpenDir of a missing directory succeeded")
	}
}

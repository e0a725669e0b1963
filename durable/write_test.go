package durable

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

var errCut = errors.New("injected: power lost")

// tails are what of the bytes written since a file's last fsync reach the
// disk in a power loss.
var tails = map[string]func(string, []byte) []byte{
	"none":    nil,
	"half":    func(_ string, b []byte) []byte { return b[:len(b)/2] },
	"all":     func(_ string, b []byte) []byte { return b },
	"garbage": func(_ string, b []byte) []byte { return bytes.Repeat([]byte{0xff}, len(b)) },
}

// cutAt has m lose power just before its cut'th operation from now (1: the
// very next), after syncing directory dir if dirSynced, as another write's
// directory fsync would. crashed returns what survived; after the cut
// point, or if it is never reached, it loses power then.
func cutAt(m *MemFS, cut int, dir string, dirSynced bool, tail func(string, []byte) []byte) (crashed func() *MemFS) {
	var c *MemFS
	n, cutting := 0, false
	crash := func() {
		cutting = true
		if dirSynced {
			m.SyncDir(dir)
		}
		c = m.Crash(tail)
	}
	m.SetHook(func(Op, string) error {
		if cutting {
			return nil
		}
		if n++; n == cut {
			crash()
			return errCut
		}
		return nil
	})
	return func() *MemFS {
		if c == nil {
			crash()
		}
		return c
	}
}

// countOps returns the operations write makes on a MemFS made by prepare.
func countOps(t *testing.T, prepare func() *MemFS, write func(*MemFS) error) int {
	m := prepare()
	n := 0
	m.SetHook(func(Op, string) error { n++; return nil })
	if err := write(m); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestReplacePowerLoss(t *testing.T) {
	prepare := func() *MemFS {
		m := NewMemFS()
		m.MkdirAll("/d", 0o700)
		m.WriteFile("/d/rec", []byte("old record"))
		return m
	}
	write := func(m *MemFS) error { return Replace(m, "/d/rec", []byte("the new record"), 0o600) }
	ops := countOps(t, prepare, write)
	seen := map[string]int{}
	for cut := 1; cut <= ops+1; cut++ {
		for _, dirSynced := range []bool{false, true} {
			for tname, tail := range tails {
				m := prepare()
				crashed := cutAt(m, cut, "/d", dirSynced, tail)
				err := write(m)
				got, rerr := crashed().ReadFile("/d/rec")
				switch {
				case rerr != nil:
					t.Fatalf("cut %d of %d, dirSynced %v, tail %s: record gone: %v", cut, ops, dirSynced, tname, rerr)
				case string(got) == "old record" && err == nil:
					t.Fatalf("cut %d of %d, dirSynced %v, tail %s: Replace succeeded but the old record is back", cut, ops, dirSynced, tname)
				case string(got) != "old record" && string(got) != "the new record":
					t.Fatalf("cut %d of %d, dirSynced %v, tail %s: record %q is neither old nor new", cut, ops, dirSynced, tname, got)
				}
				seen[string(got)]++
			}
		}
	}
	if len(seen) != 2 {
		t.Errorf("records seen: %v; want both old and new", seen)
	}
}

func TestCreateOncePowerLoss(t *testing.T) {
	prepare := func() *MemFS {
		m := NewMemFS()
		m.MkdirAll("/d", 0o700)
		return m
	}
	write := func(m *MemFS) error { return CreateOnce(m, "/d/cert", []byte("the certificate"), 0o644) }
	ops := countOps(t, prepare, write)
	seen := map[string]int{}
	for cut := 1; cut <= ops+1; cut++ {
		for _, dirSynced := range []bool{false, true} {
			for tname, tail := range tails {
				m := prepare()
				crashed := cutAt(m, cut, "/d", dirSynced, tail)
				err := write(m)
				got, rerr := crashed().ReadFile("/d/cert")
				switch {
				case errors.Is(rerr, fs.ErrNotExist) && err == nil:
					t.Fatalf("cut %d of %d, dirSynced %v, tail %s: CreateOnce succeeded but the file is gone", cut, ops, dirSynced, tname)
				case errors.Is(rerr, fs.ErrNotExist):
					seen["none"]++
				case rerr != nil || string(got) != "the certificate":
					t.Fatalf("cut %d of %d, dirSynced %v, tail %s: file %q, %v; want it whole or absent", cut, ops, dirSynced, tname, got, rerr)
				default:
					seen["whole"]++
				}
			}
		}
	}
	if len(seen) != 2 {
		t.Errorf("outcomes: %v; want both absent and whole", seen)
	}
}

func TestCreateOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		fsys func(t *testing.T) (FS, string)
	}{
		{"os", func(t *testing.T) (FS, string) { return OSFS{}, t.TempDir() }},
		{"mem", func(t *testing.T) (FS, string) {
			m := NewMemFS()
			m.MkdirAll("/d", 0o700)
			return m, "/d"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys, dir := tc.fsys(t)
			path := filepath.Join(dir, "f")
			// An unusual mode, which a umask would not produce, is set exactly.
			if err := CreateOnce(fsys, path, []byte("one"), 0o604); err != nil {
				t.Fatal(err)
			}
			if err := CreateOnce(fsys, path, []byte("two"), 0o604); !errors.Is(err, fs.ErrExist) {
				t.Errorf("second CreateOnce = %v, want ErrExist", err)
			}
			if got, err := ReadFile(fsys, path); err != nil || string(got) != "one" {
				t.Errorf("content %q, %v; want the first write's", got, err)
			}
			if fi, err := fsys.Lstat(path); err != nil || fi.Mode().Perm() != 0o604 {
				t.Errorf("mode %v, %v; want 0604", fi.Mode(), err)
			}
			if names, _ := fsys.ReadDir(dir); !slices.Equal(names, []string{"f"}) {
				t.Errorf("directory holds %q; the temporary file must be gone", names)
			}
		})
	}
}

func TestReplaceFailures(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name   string
		arm    func(m *MemFS)
		doubt  bool
		cause  error
		prefix string
	}{
		{"directory open", func(m *MemFS) { m.FailNth(OpOpen, 1, syscall.EMFILE) }, false, nil, "open /d: "},
		{"temp open", func(m *MemFS) { m.FailNth(OpOpen, 2, syscall.EMFILE) }, false, nil, "create /d/rec.tmp: "},
		{"write", func(m *MemFS) { m.FailNth(OpWrite, 1, boom) }, false, nil, "write /d/rec.tmp: "},
		{"fsync", func(m *MemFS) { m.FailNth(OpSync, 1, boom) }, false, nil, "write /d/rec.tmp: "},
		{"fsync, then the removal", func(m *MemFS) {
			m.FailNth(OpSync, 1, boom)
			m.FailNth(OpRemove, 1, syscall.EIO)
		}, true, syscall.EIO, "write /d/rec.tmp: "},
		{"rename", func(m *MemFS) { m.FailNth(OpRename, 1, boom) }, true, boom, "rename /d/rec.tmp: "},
		{"directory fsync", func(m *MemFS) { m.FailNth(OpSyncDir, 1, boom) }, true, boom, "sync /d: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemFS()
			m.MkdirAll("/d", 0o700)
			m.WriteFile("/d/rec", []byte("old"))
			tc.arm(m)
			err := Replace(m, "/d/rec", []byte("new"), 0o600)
			if err == nil || !strings.HasPrefix(err.Error(), tc.prefix) {
				t.Fatalf("Replace = %v, want an error starting %q", err, tc.prefix)
			}
			cause, doubt := InDoubt(err)
			if doubt != tc.doubt || (tc.cause != nil && !errors.Is(cause, tc.cause)) {
				t.Errorf("InDoubt = %v, %v; want %v, %v", cause, doubt, tc.doubt, tc.cause)
			}
			if n := m.OpenFiles(); n != 0 {
				t.Errorf("%d files left open", n)
			}
			if !tc.doubt {
				fileIs(t, m, "/d/rec", "old")
				if names, _ := m.ReadDir("/d"); !slices.Equal(names, []string{"rec"}) {
					t.Errorf("directory holds %q after a refused write", names)
				}
			}
		})
	}
}

func TestReadFileAndWriteFile(t *testing.T) {
	m := NewMemFS()
	m.MkdirAll("/d", 0o700)
	for _, data := range []string{"", "x", strings.Repeat("abc", 1000)} {
		if err := WriteFile(m, "/d/f", []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := ReadFile(m, "/d/f"); err != nil || string(got) != data {
			t.Errorf("ReadFile = %d bytes, %v; want %d", len(got), err, len(data))
		}
	}
	if _, err := ReadFile(m, "/d/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile of a missing file = %v", err)
	}
	m.FailNth(OpOpen, 1, syscall.EMFILE)
	if err := WriteFile(m, "/d/f", nil, 0o600); !errors.Is(err, syscall.EMFILE) || !strings.HasPrefix(err.Error(), "create /d/f: ") {
		t.Errorf("WriteFile with opens failing = %v", err)
	}
	if _, err := ReadFile(OSFS{}, filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OSFS ReadFile of a missing file = %v", err)
	}
}

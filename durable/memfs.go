package durable

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Op is a kind of file system operation, as MemFS counts and fails them.
type Op int

// The operations of FS and File.
const (
	OpOpen Op = iota
	OpRead
	OpWrite
	OpSync
	OpTruncate
	OpSize
	OpClose
	OpRemove
	OpRename
	OpReadDir
	OpMkdir
	OpSyncDir
	OpLink
	OpLstat
	OpChmod
	numOps
)

func (o Op) String() string {
	switch o {
	case OpOpen:
		return "open"
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpSync:
		return "sync"
	case OpTruncate:
		return "truncate"
	case OpSize:
		return "size"
	case OpClose:
		return "close"
	case OpRemove:
		return "remove"
	case OpRename:
		return "rename"
	case OpReadDir:
		return "readdir"
	case OpMkdir:
		return "mkdir"
	case OpSyncDir:
		return "syncdir"
	case OpLink:
		return "link"
	case OpLstat:
		return "lstat"
	case OpChmod:
		return "chmod"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// ErrCrashed is the error of every operation on a MemFS, and on its open
// files, after Crash.
var ErrCrashed = errors.New("memfs: power lost")

// MemFS is an in-memory FS that models what survives a power loss, for crash
// and fault tests.
//
// Each file has its current content and its durable content (as of its last
// Sync); each directory has its current entries and its durable entries (as of
// its last SyncDir, or Sync of a Dir from OpenDir): a creation, rename, link
// or removal survives a crash only once its directory is synced. Crash returns a new MemFS holding only the durable state,
// as a machine would find its disk after losing power. Directories themselves
// are durable as soon as MkdirAll returns.
//
// Faults: FailNth makes the nth next operation of a kind fail, SetHook sees
// every operation before it happens and may fail it (or call Crash), and
// SetCapacity and SetFileLimit model a full disk and a process out of file
// descriptors. A failed operation has no effect.
//
// All methods are safe for concurrent use.
type MemFS struct {
	mu sync.Mutex
	// Guarded by mu.
	dirs    map[string]*memDir
	crashed bool
	counts  [numOps]int
	faults  []memFault
	hook    func(op Op, name string) error
	// capacity, if positive, is the size of the disk: a write that would
	// take the files past it fails with ENOSPC, and Free reports what is
	// left.
	capacity int64
	// open counts the files open (not closed); fileLimit, if positive, is
	// the most there may be: OpenFile beyond it fails with EMFILE, as when
	// a process runs out of file descriptors.
	open      int
	fileLimit int
}

// SetFileLimit limits the files open at once to n (0: unlimited): OpenFile
// fails with syscall.EMFILE while n are open, as in a process that has used
// up its file descriptors.
func (m *MemFS) SetFileLimit(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fileLimit = n
}

// OpenFiles returns the number of files opened and not yet closed.
func (m *MemFS) OpenFiles() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.open
}

// SetCapacity gives the file system a size (0: unlimited): writes beyond it
// fail with syscall.ENOSPC and have no effect, as on a full disk.
func (m *MemFS) SetCapacity(n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.capacity = n
}

// Free implements SpaceFS: the capacity less the bytes of every file.
func (m *MemFS) Free(string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.capacity <= 0 {
		return 0, errors.ErrUnsupported
	}
	return m.capacity - m.usedLocked(), nil
}

// Used returns the bytes held by the current files.
func (m *MemFS) Used() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.usedLocked()
}

// usedLocked is the bytes held by the current files. m.mu is held.
func (m *MemFS) usedLocked() int64 {
	seen := map[*memNode]bool{}
	var n int64
	for _, d := range m.dirs {
		for _, nd := range d.cur {
			if !seen[nd] {
				seen[nd] = true
				n += int64(len(nd.data))
			}
		}
	}
	return n
}

type memDir struct {
	cur     map[string]*memNode // entries as the running system sees them
	durable map[string]*memNode // entries as of the last SyncDir
}

// memNode is a file's content. Writes only ever append in the common case, so
// the durable content is kept as a prefix length of the current content and
// copied out only when a write or truncation reaches below it.
type memNode struct {
	data      []byte
	syncedLen int
	synced    []byte      // durable content when data[:syncedLen] no longer is
	mode      fs.FileMode // permission bits; metadata is taken as durable at once
}

type memFault struct {
	op  Op
	n   int
	err error
}

// NewMemFS returns an empty MemFS.
func NewMemFS() *MemFS {
	return &MemFS{dirs: map[string]*memDir{}}
}

// FailNth makes the nth next operation of kind op fail with err (n = 1: the
// very next one). Each call arms one failure.
func (m *MemFS) FailNth(op Op, n int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.faults = append(m.faults, memFault{op: op, n: n, err: err})
}

// SetHook installs fn to be called before every operation, with the file's
// name; a non-nil result fails the operation with that error. fn may call
// Crash. nil removes the hook.
func (m *MemFS) SetHook(fn func(op Op, name string) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hook = fn
}

// Count returns the number of operations of kind op attempted so far.
func (m *MemFS) Count(op Op) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[op]
}

// Crash simulates a power loss. It returns a new MemFS holding what was
// durable: the entries of each directory as of its last SyncDir, each with the
// content of its file as of its last Sync. From now on every operation on m
// and on its open files fails with ErrCrashed.
//
// tail, if not nil, models a torn write: it is given the bytes each surviving
// file had appended since its last Sync and returns what of them reached the
// disk (a prefix, zeroes, garbage…); those bytes follow the synced content. A
// nil tail keeps none.
func (m *MemFS) Crash(tail func(name string, unsynced []byte) []byte) *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.crashed = true
	n := NewMemFS()
	nodes := map[*memNode]*memNode{}
	for _, dir := range slices.Sorted(maps.Keys(m.dirs)) {
		d := m.dirs[dir]
		nd := &memDir{cur: map[string]*memNode{}, durable: map[string]*memNode{}}
		for _, base := range slices.Sorted(maps.Keys(d.durable)) {
			old := d.durable[base]
			nn, ok := nodes[old]
			if !ok {
				var data []byte
				if old.synced != nil {
					data = slices.Clone(old.synced)
				} else {
					data = slices.Clone(old.data[:old.syncedLen])
					if tail != nil {
						data = append(data, tail(filepath.Join(dir, base), slices.Clone(old.data[old.syncedLen:]))...)
					}
				}
				nn = &memNode{data: data, syncedLen: len(data), mode: old.mode}
				nodes[old] = nn
			}
			nd.cur[base] = nn
			nd.durable[base] = nn
		}
		n.dirs[dir] = nd
	}
	return n
}

// ReadFile returns a copy of the current content of file name.
func (m *MemFS) ReadFile(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	nd, err := m.lookup("readfile", name)
	if err != nil {
		return nil, err
	}
	return slices.Clone(nd.data), nil
}

// WriteFile sets the content of file name, creating it, and makes both the
// content and the directory entry durable. Tests use it to prepare or damage
// the files of what they test.
func (m *MemFS) WriteFile(name string, data []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	name = filepath.Clean(name)
	d := m.dirs[filepath.Dir(name)]
	if d == nil {
		return &fs.PathError{Op: "writefile", Path: name, Err: fs.ErrNotExist}
	}
	base := filepath.Base(name)
	nd := d.cur[base]
	if nd == nil {
		nd = &memNode{mode: 0o600}
		d.cur[base] = nd
	}
	nd.data = slices.Clone(data)
	nd.syncedLen = len(data)
	nd.synced = nil
	d.durable[base] = nd
	return nil
}

// before counts op and decides whether it fails.
func (m *MemFS) before(op Op, name string) error {
	m.mu.Lock()
	if m.crashed {
		m.mu.Unlock()
		return &fs.PathError{Op: op.String(), Path: name, Err: ErrCrashed}
	}
	m.counts[op]++
	var err error
	for i := 0; i < len(m.faults); i++ {
		f := &m.faults[i]
		if f.op != op {
			continue
		}
		f.n--
		if f.n <= 0 {
			if err == nil {
				err = f.err
			}
			m.faults = slices.Delete(m.faults, i, i+1)
			i--
		}
	}
	hook := m.hook
	m.mu.Unlock()
	if err == nil && hook != nil {
		err = hook(op, name)
	}
	if err != nil {
		return &fs.PathError{Op: op.String(), Path: name, Err: err}
	}
	return nil
}

// lookup finds the file name. m.mu must be held.
func (m *MemFS) lookup(op, name string) (*memNode, error) {
	if m.crashed {
		return nil, &fs.PathError{Op: op, Path: name, Err: ErrCrashed}
	}
	name = filepath.Clean(name)
	d := m.dirs[filepath.Dir(name)]
	if d == nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	nd := d.cur[filepath.Base(name)]
	if nd == nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return nd, nil
}

// OpenFile implements FS.
func (m *MemFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	name = filepath.Clean(name)
	if err := m.before(OpOpen, name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, &fs.PathError{Op: "open", Path: name, Err: ErrCrashed}
	}
	if m.fileLimit > 0 && m.open >= m.fileLimit {
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EMFILE}
	}
	if m.dirs[name] != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("is a directory")}
	}
	d := m.dirs[filepath.Dir(name)]
	if d == nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	base := filepath.Base(name)
	nd := d.cur[base]
	switch {
	case nd == nil && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case nd == nil:
		nd = &memNode{mode: perm.Perm()}
		d.cur[base] = nd
	case flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	}
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	f := &memFile{
		m:      m,
		name:   name,
		node:   nd,
		read:   acc != os.O_WRONLY,
		write:  acc != os.O_RDONLY,
		append: flag&os.O_APPEND != 0,
	}
	if flag&os.O_TRUNC != 0 && f.write {
		nd.truncate(0)
	}
	m.open++
	return f, nil
}

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	name = filepath.Clean(name)
	if err := m.before(OpRemove, name); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.lookup("remove", name); err != nil {
		return err
	}
	delete(m.dirs[filepath.Dir(name)].cur, filepath.Base(name))
	return nil
}

// Rename implements FS. Only files can be renamed.
func (m *MemFS) Rename(oldpath, newpath string) error {
	oldpath, newpath = filepath.Clean(oldpath), filepath.Clean(newpath)
	if err := m.before(OpRename, oldpath); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	nd, err := m.lookup("rename", oldpath)
	if err != nil {
		return err
	}
	nd2 := m.dirs[filepath.Dir(newpath)]
	if nd2 == nil || m.dirs[newpath] != nil {
		return &fs.PathError{Op: "rename", Path: newpath, Err: fs.ErrInvalid}
	}
	delete(m.dirs[filepath.Dir(oldpath)].cur, filepath.Base(oldpath))
	nd2.cur[filepath.Base(newpath)] = nd
	return nil
}

// OpenDir implements FS. The handle counts as an open file, so SetFileLimit
// and failures of OpOpen apply to it; its Sync is an OpSyncDir.
func (m *MemFS) OpenDir(name string) (Dir, error) {
	name = filepath.Clean(name)
	if err := m.before(OpOpen, name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, &fs.PathError{Op: "open", Path: name, Err: ErrCrashed}
	}
	if m.fileLimit > 0 && m.open >= m.fileLimit {
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EMFILE}
	}
	if m.dirs[name] == nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	m.open++
	return &memDirFile{m: m, name: name}, nil
}

// Lstat implements FS. Directories report fs.ModeDir|0o700.
func (m *MemFS) Lstat(name string) (fs.FileInfo, error) {
	name = filepath.Clean(name)
	if err := m.before(OpLstat, name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: ErrCrashed}
	}
	if m.dirs[name] != nil {
		return memInfo{name: filepath.Base(name), mode: fs.ModeDir | 0o700}, nil
	}
	nd, err := m.lookup("lstat", name)
	if err != nil {
		return nil, err
	}
	return memInfo{name: filepath.Base(name), size: int64(len(nd.data)), mode: nd.mode}, nil
}

// Link implements FS. Only files can be linked.
func (m *MemFS) Link(oldname, newname string) error {
	oldname, newname = filepath.Clean(oldname), filepath.Clean(newname)
	if err := m.before(OpLink, oldname); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	nd, err := m.lookup("link", oldname)
	if err != nil {
		return err
	}
	d := m.dirs[filepath.Dir(newname)]
	switch {
	case d == nil:
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: fs.ErrNotExist}
	case d.cur[filepath.Base(newname)] != nil || m.dirs[newname] != nil:
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: fs.ErrExist}
	}
	d.cur[filepath.Base(newname)] = nd
	return nil
}

// ReadDir implements FS.
func (m *MemFS) ReadDir(name string) ([]string, error) {
	name = filepath.Clean(name)
	if err := m.before(OpReadDir, name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: ErrCrashed}
	}
	d := m.dirs[name]
	if d == nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrNotExist}
	}
	names := slices.Collect(maps.Keys(d.cur))
	for dir := range m.dirs {
		if dir != name && filepath.Dir(dir) == name {
			names = append(names, filepath.Base(dir))
		}
	}
	slices.Sort(names)
	return names, nil
}

// MkdirAll implements FS. New directories are durable at once.
func (m *MemFS) MkdirAll(name string, perm fs.FileMode) error {
	name = filepath.Clean(name)
	if err := m.before(OpMkdir, name); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return &fs.PathError{Op: "mkdir", Path: name, Err: ErrCrashed}
	}
	for p := name; ; p = filepath.Dir(p) {
		if m.dirs[p] == nil {
			if parent := m.dirs[filepath.Dir(p)]; parent != nil && parent.cur[filepath.Base(p)] != nil {
				return &fs.PathError{Op: "mkdir", Path: p, Err: errors.New("not a directory")}
			}
			m.dirs[p] = &memDir{cur: map[string]*memNode{}, durable: map[string]*memNode{}}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// SyncDir implements FS.
func (m *MemFS) SyncDir(name string) error {
	name = filepath.Clean(name)
	if err := m.before(OpSyncDir, name); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashed {
		return &fs.PathError{Op: "syncdir", Path: name, Err: ErrCrashed}
	}
	return m.syncDirLocked(name)
}

// syncDirLocked makes directory name's entries durable. m.mu is held.
func (m *MemFS) syncDirLocked(name string) error {
	d := m.dirs[name]
	if d == nil {
		return &fs.PathError{Op: "syncdir", Path: name, Err: fs.ErrNotExist}
	}
	d.durable = maps.Clone(d.cur)
	return nil
}

// memInfo is what Lstat reports.
type memInfo struct {
	name string
	size int64
	mode fs.FileMode
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return i.mode }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return i.mode.IsDir() }
func (i memInfo) Sys() any           { return nil }

// memDirFile is a directory opened by OpenDir.
type memDirFile struct {
	m    *MemFS
	name string
	// Guarded by m.mu.
	closed bool
}

func (d *memDirFile) Sync() error {
	if err := d.m.before(OpSyncDir, d.name); err != nil {
		return err
	}
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	switch {
	case d.m.crashed:
		return &fs.PathError{Op: "syncdir", Path: d.name, Err: ErrCrashed}
	case d.closed:
		return &fs.PathError{Op: "syncdir", Path: d.name, Err: fs.ErrClosed}
	}
	return d.m.syncDirLocked(d.name)
}

func (d *memDirFile) Close() error {
	if err := d.m.before(OpClose, d.name); err != nil {
		return err
	}
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	switch {
	case d.m.crashed:
		return &fs.PathError{Op: "close", Path: d.name, Err: ErrCrashed}
	case d.closed:
		return &fs.PathError{Op: "close", Path: d.name, Err: fs.ErrClosed}
	}
	d.closed = true
	d.m.open--
	return nil
}

// keepSynced preserves the durable content before data[:syncedLen] changes.
func (nd *memNode) keepSynced() {
	if nd.synced == nil {
		nd.synced = slices.Clone(nd.data[:nd.syncedLen])
		if nd.synced == nil {
			nd.synced = []byte{}
		}
	}
}

func (nd *memNode) truncate(size int) {
	if size < nd.syncedLen {
		nd.keepSynced()
	}
	if size <= len(nd.data) {
		nd.data = nd.data[:size]
		return
	}
	nd.data = append(nd.data, make([]byte, size-len(nd.data))...)
}

type memFile struct {
	m                   *MemFS
	name                string
	node                *memNode
	read, write, append bool
	// Guarded by m.mu.
	pos    int64
	closed bool
}

// check reports why f cannot be used. f.m.mu must be held.
func (f *memFile) check(op Op) error {
	switch {
	case f.m.crashed:
		return &fs.PathError{Op: op.String(), Path: f.name, Err: ErrCrashed}
	case f.closed:
		return &fs.PathError{Op: op.String(), Path: f.name, Err: fs.ErrClosed}
	}
	return nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.m.before(OpRead, f.name); err != nil {
		return 0, err
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check(OpRead); err != nil {
		return 0, err
	}
	if !f.read || off < 0 {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: fs.ErrInvalid}
	}
	data := f.node.data
	if off >= int64(len(data)) {
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Write(p []byte) (int, error) {
	if err := f.m.before(OpWrite, f.name); err != nil {
		return 0, err
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check(OpWrite); err != nil {
		return 0, err
	}
	if !f.write {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: fs.ErrInvalid}
	}
	nd := f.node
	if f.append {
		f.pos = int64(len(nd.data))
	}
	if grow := f.pos + int64(len(p)) - int64(len(nd.data)); grow > 0 && f.m.capacity > 0 && f.m.usedLocked()+grow > f.m.capacity {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: syscall.ENOSPC}
	}
	if f.pos < int64(nd.syncedLen) {
		nd.keepSynced()
	}
	end := int(f.pos) + len(p)
	if end > len(nd.data) {
		nd.data = append(nd.data, make([]byte, end-len(nd.data))...)
	}
	copy(nd.data[f.pos:], p)
	f.pos = int64(end)
	return len(p), nil
}

func (f *memFile) Sync() error {
	if err := f.m.before(OpSync, f.name); err != nil {
		return err
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check(OpSync); err != nil {
		return err
	}
	f.node.syncedLen = len(f.node.data)
	f.node.synced = nil
	return nil
}

func (f *memFile) Truncate(size int64) error {
	if err := f.m.before(OpTruncate, f.name); err != nil {
		return err
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check(OpTruncate); err != nil {
		return err
	}
	if !f.write || size < 0 {
		return &fs.PathError{Op: "truncate", Path: f.name, Err: fs.ErrInvalid}
	}
	f.node.truncate(int(size))
	return nil
}

func (f *memFile) Size() (int64, error) {
	if err := f.m.before(OpSize, f.name); err != nil {
		return 0, err
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check(OpSize); err != nil {
		return 0, err
	}
	return int64(len(f.node.data)), nil
}

func (f *memFile) Chmod(mode fs.FileMode) error {
	if err := f.m.before(OpChmod, f.name); err != nil {
		return err
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check(OpChmod); err != nil {
		return err
	}
	f.node.mode = mode.Perm()
	return nil
}

func (f *memFile) Close() error {
	if err := f.m.before(OpClose, f.name); err != nil {
		return err
	}
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check(OpClose); err != nil {
		return err
	}
	f.closed = true
	f.m.open--
	return nil
}

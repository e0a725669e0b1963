// Package durable is mnm's one layer of crash-safe files: the FS interface
// that the message store and the user database work through, OSFS (the real
// thing), MemFS (an in-memory FS that fails operations on demand and loses
// power), and the two ways of writing a whole file that survive a crash at
// any moment, CreateOnce and Replace.
//
// Persistence order, everywhere: write a temporary file, fsync it, rename or
// link it into place, fsync the directory. A directory entry (a creation, a
// rename, a link, a removal) is durable only after its directory is synced.
package durable

import (
	"io"
	"io/fs"
	"os"
	"slices"
)

// FS is the file system the store and the user database work through. They
// open, read, append, sync, rename, link and remove files in directories
// they own; nothing else. OSFS is the real thing; MemFS is an in-memory one
// for tests that can fail operations and lose power.
type FS interface {
	// OpenFile opens name as os.OpenFile does. Callers use the flags
	// os.O_RDONLY, O_WRONLY, O_RDWR, O_CREATE, O_EXCL, O_TRUNC and O_APPEND.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)

	// OpenDir opens directory name so that its entries can be synced
	// later through the handle. A writer opens the directory before it
	// changes anything: opening is what fails when the process is out of
	// file descriptors, and failing then leaves the disk as it was.
	OpenDir(name string) (Dir, error)

	// Lstat describes name without following a final symbolic link.
	Lstat(name string) (fs.FileInfo, error)

	// Remove removes the file name. The removal is durable only after
	// SyncDir of its directory.
	Remove(name string) error

	// Rename renames oldpath to newpath, replacing newpath. The rename is
	// durable only after SyncDir of the directory.
	Rename(oldpath, newpath string) error

	// Link makes newname a second name of the file oldname; it fails with
	// fs.ErrExist if newname exists, which is what makes a create-once
	// write safe where a rename would replace. The link is durable only
	// after SyncDir of newname's directory.
	Link(oldname, newname string) error

	// ReadDir returns the names of the entries of directory name, sorted.
	ReadDir(name string) ([]string, error)

	// MkdirAll creates directory name and its parents as needed.
	MkdirAll(name string, perm fs.FileMode) error

	// SyncDir makes the directory's entries (creations, renames, links,
	// removals) durable.
	SyncDir(name string) error
}

// SpaceFS is an FS that can tell how much space is left. The store checks it
// against its free-space watermark; on an FS that is not a SpaceFS, or whose
// Free fails, there is no watermark.
type SpaceFS interface {
	// Free returns the bytes available for new data in directory dir.
	Free(dir string) (int64, error)
}

// File is an open file of an FS. ReadAt may be called concurrently with
// Write: the store reads committed records while it appends new ones.
type File interface {
	io.ReaderAt
	// Write writes at the file's offset (the end, for files opened with
	// O_APPEND).
	io.Writer
	// Sync makes the file's data and size durable.
	Sync() error
	Truncate(size int64) error
	Size() (int64, error)
	// Chmod sets the file's permission bits, whatever the umask.
	Chmod(mode fs.FileMode) error
	Close() error
}

// Dir is a directory opened by FS.OpenDir.
type Dir interface {
	// Sync makes the directory's entries durable, as FS.SyncDir does.
	Sync() error
	Close() error
}

// OSFS is the operating system's file system.
type OSFS struct{}

// OpenFile implements FS.
func (OSFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// OpenDir implements FS.
func (OSFS) OpenDir(name string) (Dir, error) {
	d, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Lstat implements FS.
func (OSFS) Lstat(name string) (fs.FileInfo, error) { return os.Lstat(name) }

// Remove implements FS.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// Rename implements FS.
func (OSFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

// Link implements FS.
func (OSFS) Link(oldname, newname string) error { return os.Link(oldname, newname) }

// ReadDir implements FS.
func (OSFS) ReadDir(name string) ([]string, error) {
	ents, err := os.ReadDir(name)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	slices.Sort(names)
	return names, nil
}

// MkdirAll implements FS.
func (OSFS) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }

// SyncDir implements FS.
func (OSFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

type osFile struct{ *os.File }

func (f osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

package store

import (
	"io"
	"io/fs"
	"os"
	"slices"
)

// FS is the file system the store works through. The store opens, reads,
// appends, syncs and removes files in one directory; nothing else. OSFS is the
// real thing; MemFS is an in-memory one for tests that can fail operations
// and lose power.
type FS interface {
	// OpenFile opens name as os.OpenFile does. The store uses the flags
	// os.O_RDONLY, O_WRONLY, O_RDWR, O_CREATE, O_EXCL and O_TRUNC.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)

	// Remove removes the file name. The removal is durable only after
	// SyncDir of its directory.
	Remove(name string) error

	// Rename renames oldpath to newpath, replacing newpath. The rename is
	// durable only after SyncDir of the directory.
	Rename(oldpath, newpath string) error

	// ReadDir returns the names of the entries of directory name, sorted.
	ReadDir(name string) ([]string, error)

	// MkdirAll creates directory name and its parents as needed.
	MkdirAll(name string, perm fs.FileMode) error

	// SyncDir makes the directory's entries (creations, renames, removals)
	// durable.
	SyncDir(name string) error
}

// SpaceFS is an FS that can tell how much space is left. The store checks it
// against Options.MinFree; on an FS that is not a SpaceFS, or whose Free
// fails, there is no watermark.
type SpaceFS interface {
	// Free returns the bytes available for new data in directory dir.
	Free(dir string) (int64, error)
}

// File is an open file of an FS. ReadAt may be called concurrently with
// Write: the store reads committed records while it appends new ones.
type File interface {
	io.ReaderAt
	// Write appends at the file's offset (the end, for files the store
	// writes).
	io.Writer
	// Sync makes the file's data and size durable.
	Sync() error
	Truncate(size int64) error
	Size() (int64, error)
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

// Remove implements FS.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// Rename implements FS.
func (OSFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

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

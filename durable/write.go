package durable

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
)

// TempSuffix ends the name of Replace's temporary file: path+TempSuffix. A
// crash may leave one behind; the owner of the directory decides at start
// whether it completes or discards it.
const TempSuffix = ".tmp"

// WriteFile writes data to name, creating it with perm or truncating it,
// and fsyncs it. The file's directory entry is durable only after SyncDir:
// callers that write many files in a new directory sync it once at the end.
func WriteFile(fsys FS, name string, data []byte, perm fs.FileMode) error {
	f, err := fsys.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	return writeSyncClose(f, name, data, 0)
}

// writeSyncClose writes data to the new file f, sets its permissions to perm
// unless perm is 0, fsyncs it and closes it.
func writeSyncClose(f File, name string, data []byte, perm fs.FileMode) error {
	_, err := f.Write(data)
	if err == nil && perm != 0 {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// Replace makes data the content of path, replacing the file there if any,
// so that a crash at any moment leaves path with either its old content or
// data, whole. Persistence order: open the directory, write path+TempSuffix
// (created with perm or truncated), fsync it, rename it over path, fsync the
// directory through the handle opened first.
//
// The directory is opened before anything on disk changes, and held for the
// fsync that ends the write: opening is what fails when the process or the
// system is out of file descriptors (EMFILE, ENFILE). Failing then, or when
// creating the temporary file, leaves the disk as it was, so the write is
// merely refused; opened after the rename, the same failure would leave the
// rename not durable and the disk in doubt.
//
// One Replace of a given path at a time: concurrent ones share the temporary
// file. A failed Replace for which InDoubt reports false left path as it
// was, and no temporary file; otherwise memory and disk may disagree until a
// restart reads the disk again.
func Replace(fsys FS, path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	d, err := fsys.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	// Read-only: closing it can lose nothing.
	defer d.Close()
	tmp := path + TempSuffix
	if err := WriteFile(fsys, tmp, data, perm); err != nil {
		if rmErr := fsys.Remove(tmp); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			return &doubtError{err: err, cause: rmErr}
		}
		return err
	}
	if err := fsys.Rename(tmp, path); err != nil {
		return &doubtError{err: fmt.Errorf("rename %s: %w", tmp, err), cause: err}
	}
	if err := d.Sync(); err != nil {
		return &doubtError{err: fmt.Errorf("sync %s: %w", dir, err), cause: err}
	}
	return nil
}

// CreateOnce creates path holding data, with permissions perm, crash-safely
// and without ever replacing an existing file. Persistence order: write a
// temporary file in the same directory, fsync it, hard-link it to path
// (which fails with fs.ErrExist if path exists, where a rename would
// replace it), fsync the directory, then remove the temporary name. After a
// crash, path either does not exist or is complete; a stray temporary file
// (named "."+base+".tmp" and digits) is harmless.
func CreateOnce(fsys FS, path string, data []byte, perm fs.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, tmp, err := createTemp(fsys, dir, "."+base+".tmp")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer fsys.Remove(tmp) // after the link, only the temporary name goes
	if err := writeSyncClose(f, tmp, data, perm); err != nil {
		return err
	}
	if err := fsys.Link(tmp, path); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return &doubtError{err: fmt.Errorf("create %s: %w", path, err), cause: err}
	}
	return nil
}

// maxTempTries bounds createTemp's attempts at a free name, as os.CreateTemp
// does: a directory where 10000 random names are all taken is not one to
// keep trying in.
const maxTempTries = 10000

// createTemp creates a new file in dir named prefix plus random digits,
// readable and writable by its owner only, as os.CreateTemp does.
func createTemp(fsys FS, dir, prefix string) (File, string, error) {
	for range maxTempTries {
		name := filepath.Join(dir, prefix+strconv.FormatUint(uint64(rand.Uint32()), 10))
		f, err := fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, name, err
	}
	return nil, "", &fs.PathError{Op: "createtemp", Path: filepath.Join(dir, prefix+"*"), Err: fs.ErrExist}
}

// doubtError is a failed write after which the disk is in doubt: a change
// may or may not survive a crash.
type doubtError struct {
	err   error // what the caller is told
	cause error // the failure that put the disk in doubt
}

func (e *doubtError) Error() string { return e.err.Error() }
func (e *doubtError) Unwrap() error { return e.err }

// InDoubt reports whether err, returned by Replace or CreateOnce, leaves the
// disk in an unknown state (a rename or link that may or may not survive a
// crash, a temporary file that could not be removed), and if so returns the
// failure that did it. Memory and disk may then disagree, and only a restart,
// which reads the disk again, can reconcile them.
func InDoubt(err error) (cause error, ok bool) {
	var d *doubtError
	if errors.As(err, &d) {
		return d.cause, true
	}
	return nil, false
}

// ReadFile returns the content of file name.
func ReadFile(fsys FS, name string) ([]byte, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	data := make([]byte, size)
	n, err := f.ReadAt(data, 0)
	if err == io.EOF && int64(n) == size {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	return data, nil
}

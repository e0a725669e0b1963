package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"mnm/durable"
)

// The id ceiling: ids continue from the clock at start, but a clock stepped
// back (or a restart within the same nanoseconds) must not reissue ids. So a
// ceiling is persisted ahead of use, and no id at or above it is issued before
// a higher one is persisted. At start, ids resume at or above the ceiling.
const (
	floorName = "idfloor"

	// idStep is how far ahead of use the ceiling is raised: rare writes (one
	// per 16M ids, minutes at full load) against at most 17 ms of clock skipped
	// at a restart.
	idStep = 1 << 24

	// maxFloorFile bounds the ceiling file read at start.
	maxFloorFile = 64
)

// readCeiling returns the persisted ceiling, or 0 if there is none.
func readCeiling(fsys durable.FS, dir string) (ID, error) {
	name := dir + string(os.PathSeparator) + floorName
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", name, err)
	}
	if size > maxFloorFile {
		return 0, fmt.Errorf("store: %s: %d bytes, want a 16-digit id", name, size)
	}
	buf := make([]byte, size)
	if n, err := f.ReadAt(buf, 0); n < len(buf) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("store: %s: %w", name, err)
	}
	id, err := ParseID(strings.TrimSpace(string(buf)))
	if err != nil {
		return 0, fmt.Errorf("store: %s: %w", name, err)
	}
	return id, nil
}

// raiseCeiling persists a ceiling idStep above need and adopts it. The order
// is the crash-safe one: write a temporary file, fsync it, rename it into
// place, fsync the directory. pendMu must be held (or Open running).
func (l *Log) raiseCeiling(need ID) error {
	c := need + idStep
	if c < need {
		return errors.New("store: message id space exhausted")
	}
	name := l.path(floorName)
	tmp := name + tmpSuffix
	f, err := l.fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filePerm)
	if err != nil {
		return fmt.Errorf("store: id ceiling: %w", err)
	}
	_, err = io.WriteString(f, c.String()+"\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = l.fs.Rename(tmp, name)
	}
	if err == nil {
		err = l.fs.SyncDir(l.dir)
	}
	if err != nil {
		return fmt.Errorf("store: id ceiling: %w", err)
	}
	l.ceiling = c
	return nil
}

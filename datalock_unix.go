//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDataDir takes the data directory's lock (dataLockName in dir, created
// if missing) without waiting: an exclusive flock, which the kernel drops
// when the process ends, however it ends, so a crashed server leaves no
// stale lock behind. ErrDataDirInUse when another holder has it: the
// server, or mnm member. The returned file holds the lock until closed.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, dataLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if pid := lockHolder(f); pid > 0 {
				return nil, fmt.Errorf("%w (pid %d): %s", ErrDataDirInUse, pid, dir)
			}
			return nil, fmt.Errorf("%w: %s", ErrDataDirInUse, dir)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	// The pid is for the message of whoever finds the lock taken; it
	// needs no fsync: after a crash the lock is free and nobody reads it.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// maxLockFile bounds what lockHolder reads: a pid and a newline.
const maxLockFile = 32

// lockHolder returns the pid the lock's holder wrote into f, or 0 when it
// has not (yet) or the file holds something else.
func lockHolder(f *os.File) int {
	buf := make([]byte, maxLockFile)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestDataDirLockNamesHolder: the refusal of a held data directory says
// another mnm uses it and names the holder's pid, which the holder wrote.
func TestDataDirLockNamesHolder(t *testing.T) {
	dir := t.TempDir()
	lock, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	_, err = lockDataDir(dir)
	if !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second lock: %v", err)
	}
	if want := fmt.Sprintf("another mnm is using this data directory (pid %d): %s", os.Getpid(), dir); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// A lock file holding no pid (written by an older mnm) still refuses,
	// without one.
	if err := os.Truncate(dir+"/"+dataLockName, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := lockDataDir(dir); !errors.Is(err, ErrDataDirInUse) || strings.Contains(err.Error(), "pid") {
		t.Errorf("lock file without a pid: %v", err)
	}
}

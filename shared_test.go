package main

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// readShared reads a file of ../shared. Without ../shared (a clone on its
// own) the test is skipped, unless MNM_REQUIRE_SHARED=1 (set by .ci/run),
// which makes that a failure.
func readShared(t *testing.T, path string) []byte {
	t.Helper()
	path = filepath.FromSlash(path)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if os.Getenv("MNM_REQUIRE_SHARED") == "1" {
			t.Fatalf("%s is absent and MNM_REQUIRE_SHARED=1", path)
		}
		t.Skipf("%s is absent (no ../shared checkout); set MNM_REQUIRE_SHARED=1 to make this a failure", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// buildBinary builds the mnm binary into dir, for tests that run (and kill)
// it as a separate process.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "mnm")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

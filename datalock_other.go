//go:build !unix

package main

import "os"

// lockDataDir: there is no flock here (Windows), so the data directory is
// not locked and nothing is detected; the operator stops the server before
// running mnm member (README.md).
func lockDataDir(string) (*os.File, error) { return nil, nil }

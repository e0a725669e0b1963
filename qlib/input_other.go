//go:build !linux

package qlib

import (
	"errors"
	"syscall"
)

// Elsewhere an idle link's goroutine stays parked in its TLS read.
const canAwaitReadable = false

func awaitReadable(syscall.RawConn) error { return errors.ErrUnsupported }

package qlib

import "syscall"

const canAwaitReadable = true

// awaitReadable returns when the socket has bytes to read, has reached end
// of file or has failed, or when its read deadline passes (the error then is
// os.ErrDeadlineExceeded). It peeks rather than waiting for the runtime's
// readiness notification alone, because starting the wait clears a
// notification for bytes that arrived before it.
func awaitReadable(raw syscall.RawConn) error {
	var b [1]byte
	return raw.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err != syscall.EINTR {
				return err != syscall.EAGAIN
			}
		}
	})
}

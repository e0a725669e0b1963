package qlib

import (
	"syscall"
	"testing"
	"time"
)

// Bytes already waiting in the socket when the wait starts end it at once:
// the runtime's readiness notification for them is gone by then.
func TestInputAwaitSeesWaitingBytes(t *testing.T) {
	in, client, _ := tlsPair(t, 5*time.Millisecond)
	in.extend(time.Minute)
	in.mayPark()
	if _, err := in.Read(make([]byte, 16)); err != errIdle {
		t.Fatalf("idle read: %v", err)
	}
	if _, err := client.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	// The bytes are in the socket, and their notification has come and
	// gone, before the wait starts.
	waitFor(t, "bytes readable on the socket", func() bool {
		var n int
		in.raw.Control(func(fd uintptr) {
			n, _, _ = syscall.Recvfrom(int(fd), make([]byte, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		})
		return n > 0
	})
	// Let the scheduler poll the network, consuming the notification. (Not
	// synchronisation: the wait below must work however long this is.)
	time.Sleep(20 * time.Millisecond)
	waited := make(chan error, 1)
	go func() { waited <- in.awaitReadable() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("awaitReadable missed bytes that arrived before it")
	}
	if got := readN(t, in, 5); got != "early" {
		t.Fatalf("read %q", got)
	}
}

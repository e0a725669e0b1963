//go:build unix

package main

import (
	"errors"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// TestReloadOnSIGHUP: waitForStop reloads on a real SIGHUP.
func TestReloadOnSIGHUP(t *testing.T) {
	s := startE2E(t, t.TempDir())
	// Our own registration first: a SIGHUP arriving before waitForStop's
	// must not end the test process (the default action).
	mine := make(chan os.Signal, 16)
	signal.Notify(mine, syscall.SIGHUP)
	defer signal.Stop(mine)
	editConfig(t, s.cfg, func(m map[string]any) { m["limits"] = map[string]any{"pingsPerDay": 3} })
	d := s.d
	code := make(chan int, 1)
	go func() { code <- waitForStop(d, d.log) }()
	deadline := time.Now().Add(10 * time.Second)
	for d.srv.Limits().PingsPerDay != 3 {
		if time.Now().After(deadline) {
			t.Fatal("no reload after SIGHUP")
		}
		// Until waitForStop has registered, the signal reaches only ours.
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		select {
		case <-mine:
		case <-time.After(time.Second):
		}
		time.Sleep(10 * time.Millisecond) // the reload runs on waitForStop's goroutine
	}
	d.failed(errors.New("test: stop"))
	if c := <-code; c != exitFailure {
		t.Errorf("waitForStop returned %d", c)
	}
	s.d = nil // shut down by waitForStop
}

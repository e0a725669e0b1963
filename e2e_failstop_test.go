package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestE2EUserDBFailureStopsServer: a userdb write that leaves the disk in
// doubt is refused to the client and reported to the daemon, which stops
// the server (waitForStop) as it does for a store failure.
func TestE2EUserDBFailureStopsServer(t *testing.T) {
	s := startE2E(t, t.TempDir())
	c, reg := s.register("_")
	// A non-empty directory where the record is: the rename fails.
	rec := s.d.users.recordPath(reg.UID)
	if err := os.Remove(rec); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rec, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	ack, err := c.NewAlias("blocked alias")
	if err != nil {
		t.Fatal(err)
	}
	if ack.Error == "" {
		t.Error("alias accepted although its write failed")
	}
	select {
	case err := <-s.d.fatal:
		if err == nil {
			t.Error("nil failure reported")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon was not told of the userdb failure")
	}
	// Put the record back so that shutdown has nothing in its way.
	os.RemoveAll(rec)
}

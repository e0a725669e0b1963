package qlib

import (
	"errors"
	"testing"
)

// TestAdminBlock: the operator's Block and Unblock change the member's
// list as its own UserEdit would, and tell its devices only when the list
// changed.
func TestAdminBlock(t *testing.T) {
	ts := startServer(t, nil)
	c, reg := ts.register()
	_, other := ts.register()

	added, err := ts.srv.Block(reg.UID, other.UID)
	if err != nil || !added {
		t.Fatalf("Block: %t, %v", added, err)
	}
	u := nextUser(t, c)
	if u.Str("block") != other.UID || u.Str("from") != reg.UID {
		t.Fatalf("block notice %s", u.Raw)
	}
	c.Ack(u.Str("id"))
	if !ts.dir.Blocked(reg.UID, other.UID) {
		t.Fatal("not blocked")
	}
	if added, err := ts.srv.Block(reg.UID, other.UID); err != nil || added {
		t.Fatalf("Block again: %t, %v", added, err)
	}
	if _, err := ts.srv.Block(reg.UID, reg.UID); !errors.Is(err, ErrBlockSelf) {
		t.Fatalf("Block of itself: %v", err)
	}
	if _, err := ts.srv.Block(reg.UID, "nobody at all"); !errors.Is(err, ErrAliasUnknown) {
		t.Fatalf("Block of nobody: %v", err)
	}
	removed, err := ts.srv.Unblock(reg.UID, other.UID)
	if err != nil || !removed {
		t.Fatalf("Unblock: %t, %v", removed, err)
	}
	// The refusals and the repeated Block stored nothing: the next
	// notice is the unblock's.
	if u := nextUser(t, c); u.Str("unblock") != other.UID || u.Has("block") {
		t.Fatalf("unblock notice %s", u.Raw)
	}
	if removed, err := ts.srv.Unblock(reg.UID, other.UID); err != nil || removed {
		t.Fatalf("Unblock again: %t, %v", removed, err)
	}
}

// TestAdminRevokeRefused: RevokeDevice returns the directory's refusal
// as it is and leaves the device's link alone. (The fake directory retires
// nothing: revoking is tested end to end with the real user database.)
func TestAdminRevokeRefused(t *testing.T) {
	ts := startServer(t, nil)
	_, reg := ts.register()
	dev := reg.UID + ".0"
	if err := ts.srv.RevokeDevice(reg.UID, "0"); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("RevokeDevice refused by the directory: %v", err)
	}
	if !ts.srv.Online([]string{dev})[dev] {
		t.Fatal("the device's link was closed")
	}
}

// TestAdminOnline: Online names the devices logged in now, and no others.
func TestAdminOnline(t *testing.T) {
	ts := startServer(t, nil)
	c, reg := ts.register()
	dev := reg.UID + ".0"
	got := ts.srv.Online([]string{dev, reg.UID + ".9", "not a device"})
	if len(got) != 1 || !got[dev] {
		t.Fatalf("Online = %v, want %s only", got, dev)
	}
	c.Close()
	waitFor(t, "the device offline", func() bool { return len(ts.srv.Online([]string{dev})) == 0 })
}

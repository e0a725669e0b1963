package qlib

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"mnm/durable"
	"mnm/qlib/store"
	"mnm/testclient"
)

// nextUser returns the next "user" message on c, acking what comes before
// it (login notices).
func nextUser(t *testing.T, c *testclient.Client) *testclient.Frame {
	t.Helper()
	for {
		f := nextMessage(t, c)
		if f.Op() == "user" {
			return f
		}
		c.Ack(f.Str("id"))
	}
}

// TestNewNodeSecret: a member with two devices adds a third. Only the
// requesting device gets the new device's nodeid; the other two get the
// announcement without it. Once the requesting device has acknowledged it,
// the nodeid is in no file of the store.
func TestNewNodeSecret(t *testing.T) {
	const storeDir = "/qstore" // startServerFS's directory on a MemFS
	fsys := durable.NewMemFS()
	ts := startServerFS(t, fsys, nil)
	req, reg := ts.register()
	otherNode, _ := ts.dir.device(reg.UID)
	other := ts.login(reg.UID, otherNode)

	if ack, err := req.NewNode("tablet"); err != nil || ack.Error != "" {
		t.Fatalf("newnode: %v %s", err, ack.Error)
	}
	mine := nextUser(t, req)
	nodeid := mine.Str("nodeid")
	if mine.Str("newnode") != "tablet" || len(nodeid) != 40 {
		t.Fatalf("requesting device got %s, want newnode and a nodeid", mine.Raw)
	}
	theirs := nextUser(t, other)
	if theirs.Str("newnode") != "tablet" || theirs.Has("nodeid") || bytes.Contains(theirs.Raw, []byte(nodeid)) {
		t.Errorf("other device got %s, want the announcement without the nodeid", theirs.Raw)
	}
	// The new device logs in with the nodeid and gets the announcement
	// without it too (its queue started as a copy of the requester's,
	// which must not have brought the requester's copy along).
	tablet := ts.login(reg.UID, nodeid)
	f := nextMessage(t, tablet)
	if f.Op() != "user" || f.Has("nodeid") || f.Str("id") != theirs.Str("id") {
		t.Errorf("new device's first message %s, want %s", f.Raw, theirs.Raw)
	}
	tablet.Ack(f.Str("id"))
	if f := nextMessage(t, tablet); f.Op() != "login" {
		t.Errorf("new device's next message %s, want its login notice", f.Raw)
	}

	scan := func() []string {
		t.Helper()
		names, err := fsys.ReadDir(storeDir)
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for _, n := range names {
			b, err := fsys.ReadFile(storeDir + "/" + n)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(nodeid)) {
				found = append(found, n)
			}
		}
		return found
	}
	if len(scan()) == 0 {
		t.Fatal("the nodeid is in no file before its ack: the scan proves nothing")
	}
	secret, err := store.ParseID(mine.Str("id"))
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Ack(mine.Str("id")); err != nil {
		t.Fatal(err)
	}
	// Acknowledged by its only device, the message is gone from the store.
	waitFor(t, "the secret forgotten", func() bool {
		_, err := ts.store.WriteTo(io.Discard, secret)
		return errors.Is(err, store.ErrNoMessage)
	})
	if err := ts.store.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if found := scan(); len(found) != 0 {
		t.Errorf("the nodeid is still in %v after the requesting device acknowledged it", found)
	}
	// The others' announcement is still there for whoever has not acked.
	if n := ts.store.Len(reg.UID + ".1"); n == 0 {
		t.Error("other device's queue emptied by the reclaim")
	}
}

package qlib

import (
	"bytes"
	"fmt"
	"testing"

	"mnm/testclient"
)

// TestBlockIndistinguishable: a recipient who blocks the sender is left out
// of what the sender's requests store, and nothing else changes for the
// sender: the recipient's full queue refuses the blocked sender's post,
// ping and invitation with the error any other sender gets.
func TestBlockIndistinguishable(t *testing.T) {
	const limit = 64 << 10
	ts, _ := limitServer(t, func(l *Limits) { l.QueueBytesPerDevice = limit })
	blocked, _ := ts.aliasUser("blocked sender")
	filler, _ := ts.aliasUser("filler sender")
	target, reg := ts.aliasUser("target person")
	if _, _, err := ts.dir.Block(reg.UID, "blocked sender"); err != nil {
		t.Fatal(err)
	}
	target.Close() // offline: its queue grows
	targetDev := reg.UID + ".0"
	to := []testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}

	// Accepted as usual, and nothing stored for the target.
	before := ts.store.Len(targetDev)
	ack, err := blocked.Post(to, []byte("hello"))
	if err != nil || ack.Error != "" || ack.MsgID == "" {
		t.Fatalf("blocked post: %v %+v", err, ack)
	}
	if ack, err := blocked.Ping("blocked sender", "target person", "hi"); err != nil || ack.Error != "" || ack.MsgID == "" {
		t.Fatalf("blocked ping: %v %+v", err, ack)
	}
	if n := ts.store.Len(targetDev); n != before {
		t.Fatalf("%d messages from a blocked sender stored for the blocker", n-before)
	}

	// Fill the target's queue from a sender it does not block.
	data := bytes.Repeat([]byte("x"), 4<<10)
	want := fmt.Sprintf("recipient queue full: %s", reg.UID)
	fillQueue(t, filler, to, data, limit, want)
	for name, send := range map[string]func() (testclient.Ack, error){
		"post": func() (testclient.Ack, error) { return blocked.Post(to, data) },
		"ping": func() (testclient.Ack, error) { return blocked.Ping("blocked sender", "target person", "hi") },
		"invite": func() (testclient.Ack, error) {
			return blocked.GroupInvite("some group", "blocked sender", "target person", "hi")
		},
	} {
		if ack, err := send(); err != nil || ack.Error != want {
			t.Errorf("blocked %s to a full queue: %v %+v, want %q", name, err, ack, want)
		}
	}
}

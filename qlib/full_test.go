package qlib

import (
	"bytes"
	"testing"

	"mnm/durable"
	"mnm/qlib/store"
	"mnm/testclient"
)

// TestStorageFull: with the disk's free space below the watermark, posts
// (small, and large ones refused halfway through their data), pings and
// edits that store a message get the ack error "server storage full" and the
// link stays up; logins and acks go on; once space returns, posts are
// accepted again.
func TestStorageFull(t *testing.T) {
	fsys := durable.NewMemFS()
	ts := startServerStore(t, fsys, func(o *store.Options) { o.MinFree = 1 << 20 }, nil)
	sender, sreg := ts.register()
	rcpt, reg := ts.register()
	for uid, alias := range map[string]string{sreg.UID: "sender alias", reg.UID: "recipient alias"} {
		if err := ts.dir.AddAlias(uid, alias); err != nil {
			t.Fatal(err)
		}
	}
	to := []testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}
	before, err := sender.Post(to, []byte("before"))
	if err != nil || before.Error != "" {
		t.Fatalf("post before: %v %s", err, before.Error)
	}

	fsys.SetCapacity(fsys.Used() + 512<<10) // half a MiB left: below the watermark
	waitFor(t, "a post refused for want of space", func() bool {
		ack, err := sender.Post(to, []byte("probe"))
		return err == nil && ack.Error == ErrStorageFull.Error()
	})
	for name, data := range map[string][]byte{"small": []byte("hello"), "large": bytes.Repeat([]byte("L"), 300<<10)} {
		t.Run(name+" post", func(t *testing.T) {
			ack, err := sender.Post(to, data)
			if err != nil || ack.Error != ErrStorageFull.Error() {
				t.Errorf("post on a full disk: %v, ack %+v", err, ack)
			}
		})
	}
	if ack, err := sender.NewAlias("while the disk is full"); err != nil || ack.Error != ErrStorageFull.Error() {
		t.Errorf("alias notice on a full disk: %v, ack %+v", err, ack)
	}
	if ack, err := sender.Ping("sender alias", "recipient alias", "hi"); err != nil || ack.Error != ErrStorageFull.Error() {
		t.Errorf("ping on a full disk: %v, ack %+v", err, ack)
	}
	// Logins and acks go on: the recipient logs in again and acks what it
	// had, which is what frees space.
	rcpt.Close()
	r2 := ts.login(reg.UID, reg.NodeID)
	for f := nextMessage(t, r2); ; f = nextMessage(t, r2) {
		if err := r2.Ack(f.Str("id")); err != nil {
			t.Fatal(err)
		}
		if f.Str("id") == before.MsgID {
			break
		}
	}
	if err := sender.Err(); err != nil {
		t.Fatalf("sender's link ended: %v", err)
	}

	fsys.SetCapacity(0) // space returns
	waitFor(t, "a post accepted again", func() bool {
		ack, err := sender.Post(to, []byte("after"))
		return err == nil && ack.Error == "" && ack.MsgID != ""
	})
}

package qlib

import (
	"bytes"
	"fmt"
	"testing"

	"mnm/testclient"
)

// TestPipelinedPostsThenQuit: a client writes 16 posts and Quit back to back.
// Every post is stored, so every one must be acked, in request order, and
// "logout ok" must come after the last ack: a lost ack makes the client send
// the post again and its recipients get it twice. (Before acks had one
// writer, 6–8 % of such sequences lost acks or the logout reply.)
func TestPipelinedPostsThenQuit(t *testing.T) {
	ts := startServer(t, nil)
	_, reg := ts.register()
	_, to := ts.register() // stays online and acks nothing: its queue grows
	nodeid, _ := ts.dir.device(reg.UID)
	const rounds, posts = 300, 16
	for round := range rounds {
		c := ts.dialRev()
		if err := c.WriteFrame(map[string]any{"Op": 2, "Uid": reg.UID, "Node": nodeid}, nil); err != nil {
			t.Fatal(err)
		}
		if f := mustRead(t, c); f.Op() != "info" {
			t.Fatalf("round %d: login reply %s", round, f.Raw)
		}
		// One write: the posts and the Quit arrive together.
		var batch bytes.Buffer
		for i := range posts {
			head := fmt.Sprintf(`{"Op":7,"Id":"p%d","For":[{"Id":"%s","Type":1}],"Datalen":5}`, i, to.UID)
			fmt.Fprintf(&batch, "%04x%shello", len(head), head)
		}
		fmt.Fprintf(&batch, "%04x%s", len(`{"Op":12}`), `{"Op":12}`)
		if err := c.WriteRaw(batch.Bytes()); err != nil {
			t.Fatal(err)
		}
		next := 0
		logout := false
		for {
			f, err := c.ReadFrame()
			if err != nil {
				break // closed after the quit
			}
			switch {
			case f.Op() == "ack":
				if logout {
					t.Fatalf("round %d: ack %s after logout ok", round, f.Str("id"))
				}
				if want := fmt.Sprintf("p%d", next); f.Str("id") != want || f.Str("msgid") == "" {
					t.Fatalf("round %d: ack %s, want a stored ack of %s", round, f.Raw, want)
				}
				next++
			case f.Op() == "quit":
				if f.Str("error") != testclient.ReasonLogoutOK {
					t.Fatalf("round %d: quit %s", round, f.Raw)
				}
				logout = true
			case f.Stored():
				// the login notices of this device's earlier rounds
			default:
				t.Fatalf("round %d: unexpected %s", round, f.Raw)
			}
		}
		if next != posts || !logout {
			t.Fatalf("round %d: %d of %d acks, logout ok %v", round, next, posts, logout)
		}
		c.Close()
	}
}

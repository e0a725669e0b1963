package qlib

import (
	"io"
	"strings"
	"sync"
	"testing"

	"mnm/qlib/store"
	"mnm/testclient"
)

// goneStore is a Store that has lost some messages while their entries
// stayed queued, as a clustered store can (a queue copied while the
// message's last other entry was acked elsewhere): WriteTo says
// store.ErrNoMessage for them, writing nothing.
type goneStore struct {
	Store
	mu   sync.Mutex
	gone map[store.ID]bool
}

func (g *goneStore) lose(id store.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gone[id] = true
}

func (g *goneStore) WriteTo(w io.Writer, id store.ID) (int64, error) {
	g.mu.Lock()
	lost := g.gone[id]
	g.mu.Unlock()
	if lost {
		return 0, store.ErrNoMessage
	}
	return g.Store.WriteTo(w, id)
}

// TestDeliveryOfGoneMessage: a queue entry whose message the store no
// longer holds is dropped, with a warning, and the queue goes on behind it
// on the same link: the messages before and after it arrive, it does not,
// and the queue ends empty.
func TestDeliveryOfGoneMessage(t *testing.T) {
	var gs *goneStore
	ts := startServer(t, func(c *Config) {
		gs = &goneStore{Store: c.Store, gone: map[store.ID]bool{}}
		c.Store = gs
	})
	sender, _ := ts.register()
	_, reg := ts.register()
	nodeid, dev := ts.dir.device(reg.UID)
	var ids []string
	for _, text := range []string{"before", "lost", "after"} {
		ack, err := sender.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte(text))
		if err != nil || ack.Error != "" {
			t.Fatalf("post: %v %s", err, ack.Error)
		}
		ids = append(ids, ack.MsgID)
	}
	lost, err := store.ParseID(ids[1])
	if err != nil {
		t.Fatal(err)
	}
	gs.lose(lost)

	c := ts.login(reg.UID, nodeid)
	var got []string
	for len(got) < 2 {
		f := nextMessage(t, c)
		c.Ack(f.Str("id"))
		if f.Op() == "delivery" {
			got = append(got, string(f.Data))
		}
	}
	if strings.Join(got, ",") != "before,after" {
		t.Fatalf("delivered %q, want before and after", got)
	}
	// The login notice may come after them; it is acked as it comes.
	waitFor(t, "the queue empty", func() bool {
		select {
		case f := <-c.Messages():
			if f.Op() == "delivery" {
				t.Errorf("delivered %q too", f.Data)
			}
			c.Ack(f.Str("id"))
		default:
		}
		return ts.store.Len(dev) == 0
	})
	if !strings.Contains(ts.logs.String(), "queued message is gone from the store") {
		t.Error("the dropped entry is not logged")
	}
	select {
	case <-c.Done():
		t.Fatalf("the link ended: %v", c.Err())
	default:
	}
}

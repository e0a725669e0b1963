package qlib

import (
	"testing"
	"time"

	"mnm/testclient"
)

// awayDir is the test directory with an away policy that lists one device
// as due and lets MarkAway answer as the test says.
type awayDir struct {
	*fakeDir
	due    string
	markOK bool
}

func (d *awayDir) AwayDue(time.Time) []string { return []string{d.due} }

func (d *awayDir) MarkAway(dev string, _ time.Time) (num, label string, others []string, ok bool, err error) {
	return "0", "dev", nil, d.markOK, nil
}

// TestSweepAwayOrder checks the order that makes a sweep crash-safe: the
// resync notice is stored before anything is dropped, and taken back when
// the directory refuses the mark (a login came first); when the mark is
// made, the queue keeps the notice and nothing else.
func TestSweepAwayOrder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		markOK bool
	}{{"mark refused", false}, {"marked", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := &awayDir{markOK: tc.markOK}
			ts := startServer(t, func(c *Config) {
				dir.fakeDir = c.Directory.(*fakeDir)
				c.Directory = dir
			})
			sender, _ := ts.register()
			away, reg := ts.register()
			dev := reg.UID + ".0"
			dir.due = dev
			away.Close()
			waitFor(t, "the away device offline", func() bool { return ts.srv.Stats().Devices == 1 })
			for range 3 {
				if ack, err := sender.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte("queued")); err != nil || ack.Error != "" {
					t.Fatalf("post: %v %+v", err, ack)
				}
			}
			before := ts.store.Queue(dev)
			n, err := ts.srv.SweepAway(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			after := ts.store.Queue(dev)
			if !tc.markOK {
				if n != 0 || len(after) != len(before) {
					t.Fatalf("refused mark: %d swept, queue %d entries, want 0 and the %d it had", n, len(after), len(before))
				}
				for i := range after {
					if after[i] != before[i] {
						t.Fatalf("refused mark changed the queue: %v, was %v", after, before)
					}
				}
				return
			}
			if n != 1 || len(after) != 1 {
				t.Fatalf("marked: %d swept, queue %v; want 1 and the resync notice alone", n, after)
			}
			for _, id := range before {
				if id == after[0] {
					t.Fatalf("the entry kept is %v, one of the old ones, not the resync notice", id)
				}
			}
		})
	}
}

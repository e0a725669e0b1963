package natstest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// opTimeout bounds one JetStream call in these tests: generous for a loaded
// 2-core machine, short enough that a hang fails the test.
const opTimeout = 10 * time.Second

// failoverTimeout bounds how long publishes may keep failing while a new
// stream leader is elected.
const failoverTimeout = 30 * time.Second

// newStream creates an R3 file stream "T" on subjects t.> and waits until
// every replica is current.
func newStream(t *testing.T, c *Cluster, nc *nats.Conn) (jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     "T",
		Subjects: []string{"t.>"},
		Storage:  jetstream.FileStorage,
		Replicas: 3,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	c.WaitStreamCurrent("T")
	return js, st
}

// publish publishes payload i with message id i, retrying through a leader
// change; the id makes a retry of a publish that was stored but not acked a
// duplicate the stream drops. It returns the acked sequence.
func publish(t *testing.T, js jetstream.JetStream, i int) uint64 {
	t.Helper()
	deadline := time.Now().Add(failoverTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ack, err := js.Publish(ctx, "t.x", fmt.Appendf(nil, "m%d", i), jetstream.WithMsgID(fmt.Sprint(i)))
		cancel()
		if err == nil {
			return ack.Sequence
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

func TestStartPublish(t *testing.T) {
	c := Start(t, Options{})
	if got := len(c.URLs()); got != DefaultNodes {
		t.Fatalf("%d URLs, want %d", got, DefaultNodes)
	}
	for i := range DefaultNodes {
		if c.Node(i) == nil || !c.Node(i).JetStreamEnabled() {
			t.Fatalf("node %d: JetStream not running", i)
		}
	}
	nc := c.Connect(t)
	js, st := newStream(t, c, nc)
	if seq := publish(t, js, 1); seq != 1 {
		t.Fatalf("first publish got sequence %d, want 1", seq)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream cluster info %+v: want a leader and 2 replicas", info.Cluster)
	}
	if c.Leader("T") < 0 {
		t.Fatal("no stream leader")
	}
	if c.Leader("NOPE") != -1 {
		t.Fatal("leader for a stream that does not exist")
	}
}

// TestKillLeader kills the stream leader between two runs of acked
// publishes, reads everything back from the survivors, then restarts the
// killed node and checks that its replica caught up.
func TestKillLeader(t *testing.T) {
	const before, after = 50, 50
	c := Start(t, Options{})
	nc := c.Connect(t)
	js, st := newStream(t, c, nc)
	for i := 1; i <= before; i++ {
		if seq := publish(t, js, i); seq != uint64(i) {
			t.Fatalf("publish %d got sequence %d", i, seq)
		}
	}

	old := c.Leader("T")
	if old < 0 {
		t.Fatal("no stream leader")
	}
	c.Kill(old)
	if c.Node(old) != nil {
		t.Fatal("killed node still reported running")
	}
	if _, ok := c.StreamState(old, "T"); ok {
		t.Fatal("killed node reports stream state")
	}
	for i := before + 1; i <= before+after; i++ {
		if seq := publish(t, js, i); seq != uint64(i) {
			t.Fatalf("publish %d after kill got sequence %d", i, seq)
		}
	}
	if now := c.Leader("T"); now < 0 || now == old {
		t.Fatalf("leader after kill is %d, killed %d", now, old)
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for i := 1; i <= before+after; i++ {
		m, err := st.GetMsg(ctx, uint64(i))
		if err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		if want := fmt.Sprintf("m%d", i); string(m.Data) != want {
			t.Fatalf("message %d is %q, want %q", i, m.Data, want)
		}
	}
	if _, err := st.GetMsg(ctx, before+after+1); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("get past the end: %v, want not found", err)
	}

	c.Restart(old)
	c.WaitStreamCurrent("T")
	state, ok := c.StreamState(old, "T")
	if !ok {
		t.Fatal("restarted node has no replica")
	}
	if state.LastSeq != before+after || state.Msgs != before+after {
		t.Fatalf("restarted node holds %d messages up to %d, want %d", state.Msgs, state.LastSeq, before+after)
	}
}

func TestKillTwice(t *testing.T) {
	c := Start(t, Options{Nodes: 1})
	c.Kill(0)
	// A second kill is a test bug that must be reported, not ignored.
	ft := &fakeTB{TB: t}
	c.t = ft
	func() {
		defer func() { recover() }()
		c.Kill(0)
	}()
	c.t = t
	if !ft.failed {
		t.Fatal("second kill of a node not reported")
	}
}

// fakeTB records Fatalf instead of ending the test, for testing the
// harness's own misuse checks.
type fakeTB struct {
	testing.TB
	failed bool
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	panic("fatal")
}

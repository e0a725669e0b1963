package natstest

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// contribConfigs are the example cluster's node configurations, which the
// README's walk-through starts.
var contribConfigs = []string{"nats-1.conf", "nats-2.conf", "nats-3.conf"}

// TestContribConfigs reads contrib/nats with nats-server's own parser: each
// node fsyncs every write (the setting mnm's durability rests on), takes
// atomic batches big enough for the largest post, and the three form one
// cluster with distinct names, ports and folders.
func TestContribConfigs(t *testing.T) {
	names, ports, dirs := map[string]bool{}, map[int]bool{}, map[string]bool{}
	for _, f := range contribConfigs {
		o, err := server.ProcessConfigFile(filepath.Join("..", "..", "contrib", "nats", f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		switch {
		case !o.JetStream || !o.SyncAlways:
			t.Errorf("%s: jetstream %v, sync always %v; want both", f, o.JetStream, o.SyncAlways)
		case o.JetStreamLimits.MaxBatchSize != contribBatch:
			t.Errorf("%s: batch max_msgs %d, want %d", f, o.JetStreamLimits.MaxBatchSize, contribBatch)
		case o.Cluster.Name != "mnm" || len(o.Routes) != 3:
			t.Errorf("%s: cluster %q with %d routes, want mnm with 3", f, o.Cluster.Name, len(o.Routes))
		}
		for _, p := range []int{o.Port, o.HTTPPort, o.Cluster.Port} {
			if ports[p] {
				t.Errorf("%s: port %d used twice", f, p)
			}
			ports[p] = true
		}
		if names[o.ServerName] || dirs[o.StoreDir] {
			t.Errorf("%s: name %q or store %q used twice", f, o.ServerName, o.StoreDir)
		}
		names[o.ServerName], dirs[o.StoreDir] = true, true
	}
}

// contribBatch is contrib/nats's batch max_msgs: one message, and an entry
// and a ref for each of mnm's default devicesPerPost (20,000) devices.
const contribBatch = 2*20_000 + 1

// The servers accept the batch limit the configs set: a batch over the
// default 1,000 commits whole on a 3-node cluster started with it.
func TestContribBatchLimit(t *testing.T) {
	c := Start(t, Options{MaxBatchSize: contribBatch})
	nc := c.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "B", Subjects: []string{"b.>"},
		Storage: jetstream.FileStorage, Replicas: 3, AllowAtomicPublish: true}); err != nil {
		t.Fatal(err)
	}
	const n = 2500
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		msgs[i] = &nats.Msg{Subject: fmt.Sprintf("b.%d", i%7), Data: []byte("x")}
	}
	ack, err := jetstreamext.PublishMsgBatch(ctx, js, msgs)
	if err != nil {
		t.Fatalf("batch of %d: %v", n, err)
	}
	if ack.BatchSize != n {
		t.Fatalf("batch ack for %d messages, want %d", ack.BatchSize, n)
	}
	info, err := js.Stream(ctx, "B")
	if err != nil {
		t.Fatal(err)
	}
	if st := info.CachedInfo().State; st.Msgs != n || st.LastSeq != n {
		t.Fatalf("stream holds %d messages up to %d, want %d", st.Msgs, st.LastSeq, n)
	}
}

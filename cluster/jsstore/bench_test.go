package jsstore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/natstest"
	"mnm/qlib/store"
)

// The single-machine store's benchmarks (qlib/store bench_test.go) on the
// clustered store, for the figures side by side in BENCHMARKS.md: a 3-node
// embedded cluster (every node in this process, fsync on every write), the
// same 1 KB messages.
//
//	go test -run '^$' -bench . -benchtime 2000x ./cluster/jsstore/

// openBench opens a Store on a fresh 3-node cluster.
func openBench(b *testing.B) *Store {
	b.Helper()
	c := natstest.Start(b, natstest.Options{})
	nc := c.Connect(b)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, err := Open(ctx, Options{JS: js, Conn: nc, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func benchEnvelope(id store.ID, _ time.Time, _ []store.ID) []byte { return []byte(id.String()) }

// BenchmarkCommit: n committers, each committing 1 KB messages to two
// devices, one commit at a time (as n links posting).
func BenchmarkCommit(b *testing.B) {
	for _, n := range []int{8, 64} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			s := openBench(b)
			data := bytes.Repeat([]byte("m"), 1000)
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					to := []string{fmt.Sprint("dev", i), fmt.Sprint("dev", i+1)}
					for left.Add(-1) >= 0 {
						d := s.Draft()
						d.Write(data)
						if _, err := d.Commit(store.Message{To: to, Len: int64(len(data)), Envelope: benchEnvelope}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
		})
	}
}

// BenchmarkDeliver: one device's backlog read and acked, one message at a
// time (Head, WriteTo, Ack), as a link delivers.
func BenchmarkDeliver(b *testing.B) {
	s := openBench(b)
	data := bytes.Repeat([]byte("m"), 1000)
	var wg sync.WaitGroup
	for range b.N {
		d := s.Draft()
		d.Write(data)
		wg.Add(1)
		if err := d.CommitAsync(func(_ []store.Receipt, err error) {
			if err != nil {
				b.Error(err)
			}
			wg.Done()
		}, store.Message{To: []string{"dev"}, Len: int64(len(data)), Envelope: benchEnvelope}); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	var sink bytes.Buffer
	b.ResetTimer()
	for range b.N {
		id, ok := s.Head("dev")
		if !ok {
			b.Fatal("queue empty early")
		}
		sink.Reset()
		if _, err := s.WriteTo(&sink, id); err != nil {
			b.Fatal(err)
		}
		if err := s.Ack("dev", id); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}

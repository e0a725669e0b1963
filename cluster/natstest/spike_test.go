package natstest

// Spike benchmarks for the scale-out design (issue #14): what an R3
// JetStream stream with fsync on every write can take. They only run with
// -bench; results and what they imply are in cluster/SPIKE.md.
//
//	go test -run '^$' -bench . -benchtime 2s ./cluster/natstest/

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// postSize is the payload of one post copy: a typical small TMTP message.
const postSize = 1024

// entrySize is a queue entry that only refers to a post stored once.
const entrySize = 64

// benchTimeout bounds one JetStream call in a benchmark.
const benchTimeout = 30 * time.Second

// benchStream creates an R3 file stream allowing atomic batches.
func benchStream(b *testing.B, js jetstream.JetStream, name string, subjects ...string) jetstream.Stream {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:               name,
		Subjects:           subjects,
		Storage:            jetstream.FileStorage,
		Replicas:           3,
		AllowAtomicPublish: true,
	})
	if err != nil {
		b.Fatalf("create stream %s: %v", name, err)
	}
	return st
}

// latencies collects per-operation durations from concurrent workers.
type latencies struct {
	mu sync.Mutex // guards d
	d  []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

// report adds p50 and p99 in microseconds to b's results.
func (l *latencies) report(b *testing.B) {
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	b.ReportMetric(float64(l.d[len(l.d)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(l.d[len(l.d)*99/100].Microseconds()), "p99-µs")
}

// run spreads b.N operations over workers goroutines, timing each, and
// reports ops/s under unit as well as latency percentiles.
func run(b *testing.B, workers int, unit string, op func(worker, i int) error) {
	b.Helper()
	var next atomic.Int64
	var lat latencies
	var failMu sync.Mutex // guards failed
	var failed error
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			var mine []time.Duration
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					break
				}
				t0 := time.Now()
				if err := op(w, i); err != nil {
					failMu.Lock()
					if failed == nil {
						failed = err
					}
					failMu.Unlock()
					break
				}
				mine = append(mine, time.Since(t0))
			}
			lat.add(mine)
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), unit+"/s")
	lat.report(b)
}

// BenchmarkBatchPublish measures atomic batch commits of n ~1 KB messages
// on distinct subjects (a post to n recipient devices, data in every entry)
// with concurrent publishers, at SyncAlways and, for comparison only, at a
// 2-minute sync interval.
func BenchmarkBatchPublish(b *testing.B) {
	for _, mode := range []struct {
		name     string
		interval time.Duration
	}{{"sync=always", 0}, {"sync=2m-UNSAFE", 2 * time.Minute}} {
		b.Run(mode.name, func(b *testing.B) {
			c := Start(b, Options{UnsafeSyncInterval: mode.interval})
			nc := c.Connect(b)
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			benchStream(b, js, "MBOX", "mbox.>")
			payload := make([]byte, postSize)
			for _, n := range []int{1, 3, 10, 100} {
				for _, workers := range []int{1, 8, 32} {
					b.Run(fmt.Sprintf("batch=%d/pub=%d", n, workers), func(b *testing.B) {
						run(b, workers, "posts", func(w, i int) error {
							msgs := make([]*nats.Msg, n)
							for k := range msgs {
								msgs[k] = &nats.Msg{Subject: fmt.Sprintf("mbox.%d.%d", w, (i*n+k)%1000), Data: payload}
							}
							return publishBatch(js, msgs)
						})
						b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
					})
				}
			}
		})
	}
}

// publishBatch commits msgs as one atomic batch, or publishes a single
// message plainly (a batch of one is a plain publish).
func publishBatch(js jetstream.JetStream, msgs []*nats.Msg) error {
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	if len(msgs) == 1 {
		_, err := js.PublishMsg(ctx, msgs[0])
		return err
	}
	ack, err := jetstreamext.PublishMsgBatch(ctx, js, msgs)
	if err != nil {
		return err
	}
	if ack.BatchSize != uint64(len(msgs)) {
		return fmt.Errorf("batch ack for %d messages, sent %d", ack.BatchSize, len(msgs))
	}
	return nil
}

// BenchmarkFanout compares two layouts of a post to r recipients, each one
// atomic batch in one stream (a batch cannot span streams): the 1 KB data
// in every recipient's entry, or the data once on its own subject plus r
// 64-byte entries that refer to it.
func BenchmarkFanout(b *testing.B) {
	c := Start(b, Options{})
	nc := c.Connect(b)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	benchStream(b, js, "MBOX", "mbox.>", "data.>")
	payload := make([]byte, postSize)
	entry := make([]byte, entrySize)
	const workers = 8
	for _, r := range []int{2, 100} {
		b.Run(fmt.Sprintf("rcpt=%d/data-per-entry", r), func(b *testing.B) {
			run(b, workers, "posts", func(w, i int) error {
				msgs := make([]*nats.Msg, r)
				for k := range msgs {
					msgs[k] = &nats.Msg{Subject: fmt.Sprintf("mbox.%d", k), Data: payload}
				}
				return publishBatch(js, msgs)
			})
		})
		b.Run(fmt.Sprintf("rcpt=%d/data-once", r), func(b *testing.B) {
			run(b, workers, "posts", func(w, i int) error {
				msgs := make([]*nats.Msg, 0, r+1)
				msgs = append(msgs, &nats.Msg{Subject: fmt.Sprintf("data.%d.%d", w, i), Data: payload})
				for k := range r {
					msgs = append(msgs, &nats.Msg{Subject: fmt.Sprintf("mbox.%d", k), Data: entry})
				}
				return publishBatch(js, msgs)
			})
		})
	}
}

// fill publishes count messages of size bytes round-robin over subjects
// subjects of prefix, pipelined, and waits for every ack.
func fill(b *testing.B, js jetstream.JetStream, prefix string, subjects, count, size int) {
	b.Helper()
	data := make([]byte, size)
	for i := range count {
		if _, err := js.PublishAsync(fmt.Sprintf("%s.%d", prefix, i%subjects), data); err != nil {
			b.Fatalf("publish %d: %v", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("fill: acks did not arrive")
	}
}

// BenchmarkFirstBySubject reads the first message of one of 10,000
// subjects (a device's next queue entry) from the stream leader.
func BenchmarkFirstBySubject(b *testing.B) {
	const subjects = 10_000
	c := Start(b, Options{})
	nc := c.Connect(b)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024))
	if err != nil {
		b.Fatal(err)
	}
	st := benchStream(b, js, "MBOX", "mbox.>")
	fill(b, js, "mbox", subjects, 2*subjects, postSize)
	for _, workers := range []int{1, 8} {
		b.Run(fmt.Sprintf("readers=%d", workers), func(b *testing.B) {
			run(b, workers, "reads", func(w, i int) error {
				ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
				defer cancel()
				subj := fmt.Sprintf("mbox.%d", (i*7919)%subjects)
				m, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
				if err != nil {
					return err
				}
				if m.Subject != subj {
					return fmt.Errorf("asked for %s, got %s", subj, m.Subject)
				}
				return nil
			})
		})
	}
}

// BenchmarkDeleteMsg deletes messages by sequence (a device's ack).
func BenchmarkDeleteMsg(b *testing.B) {
	c := Start(b, Options{})
	nc := c.Connect(b)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024))
	if err != nil {
		b.Fatal(err)
	}
	for _, workers := range []int{1, 8} {
		b.Run(fmt.Sprintf("deleters=%d", workers), func(b *testing.B) {
			name := fmt.Sprintf("DEL%d_%d", workers, b.N)
			st := benchStream(b, js, name, name+".>")
			fill(b, js, name, 1000, b.N, entrySize)
			info, err := st.Info(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			first := info.State.FirstSeq
			run(b, workers, "deletes", func(w, i int) error {
				ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
				defer cancel()
				return st.DeleteMsg(ctx, first+uint64(i))
			})
		})
	}
}

// BenchmarkKV measures R3 KV Create of unique keys (aliases) and
// compare-and-set Update (device leases, directory records).
func BenchmarkKV(b *testing.B) {
	c := Start(b, Options{})
	nc := c.Connect(b)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "DIR", Replicas: 3, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	value := make([]byte, 200)
	var round atomic.Int64
	b.Run("create", func(b *testing.B) {
		r := round.Add(1)
		run(b, 1, "ops", func(w, i int) error {
			_, err := kv.Create(ctx, fmt.Sprintf("alias.%d.%d", r, i), value)
			return err
		})
	})
	b.Run("create-exists", func(b *testing.B) {
		if _, err := kv.Create(ctx, "taken", value); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			b.Fatal(err)
		}
		run(b, 1, "ops", func(w, i int) error {
			if _, err := kv.Create(ctx, "taken", value); !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("create of taken key: %v", err)
			}
			return nil
		})
	})
	b.Run("update-cas", func(b *testing.B) {
		rev, err := kv.Put(ctx, "lease", value)
		if err != nil {
			b.Fatal(err)
		}
		run(b, 1, "ops", func(w, i int) error {
			rev, err = kv.Update(ctx, "lease", value, rev)
			return err
		})
	})
}

// BenchmarkBatchLimit tries atomic batches around the message limit, with
// the default limit and with a raised one, and logs what the server says.
// It does the same work whatever b.N is; read the log, not ns/op.
func BenchmarkBatchLimit(b *testing.B) {
	for _, limit := range []int{0, 5000} {
		b.Run(fmt.Sprintf("max_msgs=%d", limit), func(b *testing.B) {
			c := Start(b, Options{MaxBatchSize: limit})
			nc := c.Connect(b)
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			benchStream(b, js, "MBOX", "mbox.>")
			for _, size := range []struct{ n, bytes int }{{1000, postSize}, {1001, postSize}, {5000, postSize}, {5000, entrySize}} {
				msgs := make([]*nats.Msg, size.n)
				for k := range msgs {
					msgs[k] = &nats.Msg{Subject: fmt.Sprintf("mbox.%d", k), Data: make([]byte, size.bytes)}
				}
				t0 := time.Now()
				err := publishBatch(js, msgs)
				b.Logf("max_msgs=%d: batch of %d x %d B: %v after %v", limit, size.n, size.bytes, err, time.Since(t0))
			}
		})
	}
}

// BenchmarkFootprint stores count small messages on count subjects and on
// one subject, and reports disk per message (per node) and heap per
// message (all three in-process nodes together); the difference between
// the two is the cost of a subject.
func BenchmarkFootprint(b *testing.B) {
	const count = 50_000
	for _, subjects := range []int{1, count} {
		b.Run(fmt.Sprintf("subjects=%d", subjects), func(b *testing.B) {
			c := Start(b, Options{})
			nc := c.Connect(b)
			js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024))
			if err != nil {
				b.Fatal(err)
			}
			benchStream(b, js, "MBOX", "mbox.>")
			c.WaitStreamCurrent("MBOX")
			heap0, disk0 := heapBytes(), dirBytes(b, c.Node(0).StoreDir())
			fill(b, js, "mbox", subjects, count, entrySize)
			c.WaitStreamCurrent("MBOX")
			heap1, disk1 := heapBytes(), dirBytes(b, c.Node(0).StoreDir())
			b.ReportMetric(float64(disk1-disk0)/count, "disk-B/msg/node")
			b.ReportMetric(float64(heap1-heap0)/count, "heap-B/msg/cluster")
		})
	}
}

func heapBytes() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func dirBytes(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

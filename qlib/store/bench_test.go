package store

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCommit measures durable commits on the real file system: 1 KB
// messages for two devices, from many goroutines, each commit fsynced before
// it returns. It reports commits/s and fsyncs per commit (group commit makes
// that well below one).
func BenchmarkCommit(b *testing.B) {
	l, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	data := bytes.Repeat([]byte("m"), 1000)
	envelope := func(id ID, _ time.Time, _ []ID) []byte { return []byte(id.String()) }
	var n atomic.Int64
	syncs0 := l.nSyncs.Load()
	b.SetParallelism(32) // goroutines per CPU: many links posting at once
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := n.Add(1)
		to := []string{fmt.Sprint("dev", i), fmt.Sprint("dev", i+1)}
		for pb.Next() {
			d := l.Draft()
			d.Write(data)
			if _, err := d.Commit(Message{To: to, Len: int64(len(data)), Envelope: envelope}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
	b.ReportMetric(float64(l.nSyncs.Load()-syncs0)/float64(b.N), "fsyncs/commit")
}

// BenchmarkDeliver measures the read side: Head, WriteTo and Ack of 1 KB
// messages.
func BenchmarkDeliver(b *testing.B) {
	l, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	data := bytes.Repeat([]byte("m"), 1000)
	for range b.N {
		d := l.Draft()
		d.Write(data)
		d.Commit(Message{To: []string{"dev"}, Len: int64(len(data))})
	}
	var sink bytes.Buffer
	b.ResetTimer()
	for range b.N {
		id, _ := l.Head("dev")
		sink.Reset()
		if _, err := l.WriteTo(&sink, id); err != nil {
			b.Fatal(err)
		}
		if err := l.Ack("dev", id); err != nil {
			b.Fatal(err)
		}
	}
}

package store

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCommit measures durable commits on the real file system: 1 KB
// messages for two devices, from n goroutines at once (links posting), each
// commit fsynced before it returns. It reports commits/s and fsyncs per
// commit: group commit makes that well below one.
func BenchmarkCommit(b *testing.B) {
	for _, n := range []int{8, 64, 256} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			l, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			data := bytes.Repeat([]byte("m"), 1000)
			envelope := func(id ID, _ time.Time, _ []ID) []byte { return []byte(id.String()) }
			var left atomic.Int64
			left.Store(int64(b.N))
			syncs0 := l.nSyncs.Load()
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					to := []string{fmt.Sprint("dev", i), fmt.Sprint("dev", i+1)}
					for left.Add(-1) >= 0 {
						d := l.Draft()
						d.Write(data)
						if _, err := d.Commit(Message{To: to, Len: int64(len(data)), Envelope: envelope}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
			b.ReportMetric(float64(l.nSyncs.Load()-syncs0)/float64(b.N), "fsyncs/commit")
		})
	}
}

// BenchmarkCommitSerial is one committer: every commit waits for its own
// fsync, so this measures the disk's fsync latency.
func BenchmarkCommitSerial(b *testing.B) {
	l, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	data := bytes.Repeat([]byte("m"), 1000)
	b.ResetTimer()
	for range b.N {
		d := l.Draft()
		d.Write(data)
		if _, err := d.Commit(Message{To: []string{"a", "b"}, Len: int64(len(data))}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}

// fill commits n messages of 1 KB for dev, many per commit so that setup
// does not wait for n fsyncs.
func fill(b *testing.B, l *Log, n int, dev string) {
	const per = 1000
	data := bytes.Repeat([]byte("m"), 1000)
	for n > 0 {
		k := min(n, per)
		d := l.Draft()
		msgs := make([]Message, k)
		for i := range msgs {
			d.Write(data)
			msgs[i] = Message{To: []string{dev}, Off: int64(i * len(data)), Len: int64(len(data))}
		}
		if _, err := d.Commit(msgs...); err != nil {
			b.Fatal(err)
		}
		n -= k
	}
}

// BenchmarkDeliver measures the read side: Head, WriteTo and Ack of 1 KB
// messages. "recent" delivers each message soon after its commit, as a
// server with its devices online does (rounds of 1,000 single-message
// commits, the commits untimed); "backlog" drains a queue filled beforehand
// with messages whose data is in chunk records.
func BenchmarkDeliver(b *testing.B) {
	b.Run("recent", func(b *testing.B) {
		l, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		const round = 1000
		data := bytes.Repeat([]byte("m"), 1000)
		envelope := func(id ID, _ time.Time, _ []ID) []byte { return []byte(id.String()) }
		var sink bytes.Buffer
		b.ResetTimer()
		for left := b.N; left > 0; {
			b.StopTimer()
			k := min(left, round)
			commitAsync(b, l, k, data, envelope, "dev")
			b.StartTimer()
			for range k {
				id, _ := l.Head("dev")
				sink.Reset()
				if _, err := l.WriteTo(&sink, id); err != nil {
					b.Fatal(err)
				}
				if err := l.Ack("dev", id); err != nil {
					b.Fatal(err)
				}
			}
			left -= k
		}
	})
	b.Run("backlog", func(b *testing.B) {
		l, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		fill(b, l, b.N, "dev")
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
	})
}

// commitAsync commits n messages of data for dev, one per commit, all in
// flight at once, and waits for them.
func commitAsync(b *testing.B, l *Log, n int, data []byte, e Envelope, dev string) {
	var wg sync.WaitGroup
	to := []string{dev}
	for range n {
		d := l.Draft()
		d.Write(data)
		wg.Add(1)
		err := d.CommitAsync(func(_ []Receipt, err error) {
			if err != nil {
				b.Error(err)
			}
			wg.Done()
		}, Message{To: to, Len: int64(len(data)), Envelope: e})
		if err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
}

// BenchmarkIndex reports the index memory per queued message and the time to
// recover a store of 200k queued messages, each committed on its own.
func BenchmarkIndex(b *testing.B) {
	const n = 200_000
	dir := b.TempDir()
	l, err := Open(Options{Dir: dir, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	// One message per commit, as posts arrive, from many goroutines.
	var wg sync.WaitGroup
	var left atomic.Int64
	left.Store(n)
	data := bytes.Repeat([]byte("m"), 1000)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				d := l.Draft()
				d.Write(data)
				if _, err := d.Commit(Message{To: []string{"dev"}, Len: int64(len(data))}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	l.Close()
	var before, after runtime.MemStats
	b.ResetTimer()
	for range b.N {
		runtime.GC()
		runtime.ReadMemStats(&before)
		l, err := Open(Options{Dir: dir, Logger: quiet()})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		if l.Len("dev") != n {
			b.Fatalf("recovered %d of %d", l.Len("dev"), n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-bytes/msg")
		l.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "open-ns/msg")
}

// groupDevices returns n device keys shaped like the server's (uid.node).
func groupDevices(n int) []string {
	devs := make([]string, n)
	for i := range devs {
		devs[i] = fmt.Sprintf("u%031d.%d", i, i%3)
	}
	return devs
}

// BenchmarkGroupPost measures what a post to a big group costs the log: 1-byte
// posts, each committed on its own, to the same 5,000 devices. bytes/post is
// what each commit appends to the log on average; first-post-bytes is the
// first one's share (it defines the device set) and later-post-bytes the
// others'.
func BenchmarkGroupPost(b *testing.B) {
	const members = 5000
	l, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	devs := groupDevices(members)
	data := []byte("x")
	envelope := func(id ID, _ time.Time, _ []ID) []byte { return []byte(id.String()) }
	_, total0, _ := segStats(l)
	var first int64
	b.ResetTimer()
	for i := range b.N {
		d := l.Draft()
		d.Write(data)
		if _, err := d.Commit(Message{To: devs, Len: 1, Envelope: envelope}); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			_, total, _ := segStats(l)
			first = total - total0
		}
	}
	b.StopTimer()
	_, total, _ := segStats(l)
	b.ReportMetric(float64(total-total0)/float64(b.N), "bytes/post")
	b.ReportMetric(float64(first), "first-post-bytes")
	if b.N > 1 {
		b.ReportMetric(float64(total-total0-first)/float64(b.N-1), "later-post-bytes")
	}
}

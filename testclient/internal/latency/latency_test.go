package latency

import (
	"sync"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	var h Hist
	if _, ok := h.Counts().Quantile(0.5); ok {
		t.Error("quantile of no samples")
	}
	for ms := 1; ms <= 100; ms++ {
		h.Observe(time.Duration(ms) * time.Millisecond)
	}
	c := h.Counts()
	for _, tc := range []struct {
		name string
		q    float64
		want time.Duration
	}{
		{"p50", 0.5, 50 * time.Millisecond},
		{"p99", 0.99, 99 * time.Millisecond},
		{"p1", 0.01, time.Millisecond},
		{"max", 1, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := c.Quantile(tc.q)
			// Buckets are an eighth of an octave: within 5% of the truth.
			if !ok || got < tc.want*95/100 || got > tc.want*105/100 {
				t.Errorf("q%.2f = %v, want about %v", tc.q, got, tc.want)
			}
		})
	}
}

// TestOneSample: every quantile of one sample is that sample.
func TestOneSample(t *testing.T) {
	var h Hist
	h.Observe(7 * time.Millisecond)
	for _, q := range []float64{0.01, 0.5, 0.99, 1} {
		if got, ok := h.Counts().Quantile(q); !ok || got < 6650*time.Microsecond || got > 7350*time.Microsecond {
			t.Errorf("q%.2f of 7ms = %v", q, got)
		}
	}
}

func TestSubAndBounds(t *testing.T) {
	var h Hist
	for ms := 1; ms <= 100; ms++ {
		h.Observe(time.Duration(ms) * time.Millisecond)
	}
	before := h.Counts()
	h.Observe(10 * time.Second)
	h.Observe(0)
	h.Observe(-time.Second)     // a clock step: counted, not a crash
	h.Observe(1000 * time.Hour) // beyond the last bucket
	d := h.Counts().Sub(before)
	if got, _ := d.Quantile(1); got < 18*time.Hour { // the last bucket: 2^36 µs
		t.Errorf("max of the difference %v, want the last bucket", got)
	}
	if got, _ := d.Quantile(0.25); got > 2*time.Microsecond {
		t.Errorf("min of the difference %v, want the first bucket", got)
	}
	var total uint64
	for _, n := range d {
		total += n
	}
	if total != 4 {
		t.Errorf("difference holds %d samples, want 4", total)
	}
}

// TestConcurrent: samples from many goroutines are all counted (run with
// -race).
func TestConcurrent(t *testing.T) {
	const goroutines, each = 8, 1000
	var h Hist
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				h.Observe(time.Duration(g*each+i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	var total uint64
	for _, n := range h.Counts() {
		total += n
	}
	if total != goroutines*each {
		t.Errorf("%d samples counted, want %d", total, goroutines*each)
	}
}

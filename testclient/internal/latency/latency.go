// Package latency is the latency statistic of the simulation and the load
// benchmark: a histogram that any number of goroutines add to without a
// lock, and whose snapshots give percentiles, overall or over an interval.
package latency

import (
	"math"
	"sync/atomic"
	"time"
)

// The buckets cover 1 µs to 2^36 µs (19 hours) in eighths of an octave:
// about 9% apart, so a percentile is within 5% of the true one, which is
// finer than run-to-run variation.
const (
	perOctave = 8
	buckets   = perOctave * 36
)

// Hist counts durations in buckets an eighth of an octave wide, so
// percentiles cost no memory per sample and no lock. The zero value is
// ready to use.
type Hist struct{ n [buckets]atomic.Uint64 }

// Observe adds one sample. Durations under 2 µs, negative ones (a clock
// step) included, count in the first bucket; those beyond the last bucket
// in the last.
func (h *Hist) Observe(d time.Duration) {
	b := 0
	if us := d.Microseconds(); us > 1 {
		b = min(int(perOctave*math.Log2(float64(us))), buckets-1)
	}
	h.n[b].Add(1)
}

// Counts is a snapshot of a Hist.
type Counts [buckets]uint64

// Counts returns a snapshot of h.
func (h *Hist) Counts() Counts {
	var c Counts
	for i := range h.n {
		c[i] = h.n[i].Load()
	}
	return c
}

// Sub returns the counts added since o, an earlier snapshot of the same Hist.
func (c Counts) Sub(o Counts) Counts {
	for i := range c {
		c[i] -= o[i]
	}
	return c
}

// Quantile returns the q-quantile (0 < q ≤ 1) as the geometric middle of
// its bucket, and false if there are no samples.
func (c Counts) Quantile(q float64) (time.Duration, bool) {
	var total uint64
	for _, n := range c {
		total += n
	}
	if total == 0 {
		return 0, false
	}
	rank := max(uint64(math.Ceil(q*float64(total))), 1)
	var cum uint64
	for b, n := range c {
		if cum += n; cum >= rank {
			us := math.Exp2((float64(b) + 0.5) / perOctave)
			return time.Duration(us * float64(time.Microsecond)), true
		}
	}
	return 0, false // not reached: cum ends at total ≥ rank
}

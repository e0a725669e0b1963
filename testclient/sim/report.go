package sim

import (
	"fmt"
	"time"

	"mnm/testclient/internal/latency"
	"mnm/testclient/proc"
)

// Reporting: status lines and the summary.

// snapshot is a snapshot of the counters in a status line.
type snapshot struct {
	at                                time.Time
	online                            int64
	posts, postBytes                  uint64
	deliveries, deliveryBytes, errors uint64
	integrity                         uint64
	ack, delivery                     latency.Counts
	proc                              proc.Stats // of the process cfg.Proc reads
	procOK                            bool       // proc was read
	selfCPU                           time.Duration
}

func (sim *simulation) counts() snapshot {
	st := &sim.st
	c := snapshot{
		at:            time.Now(),
		online:        st.online.Load(),
		posts:         st.posts.Load(),
		postBytes:     st.postBytes.Load(),
		deliveries:    st.deliveries.Load(),
		deliveryBytes: st.deliveryBytes.Load(),
		errors:        st.errors.Load(),
		integrity:     st.corrupt.Load() + st.duplicates.Load() + st.misdelivered.Load() + st.skipped.Load(),
		ack:           st.ackLatency.Counts(),
		delivery:      st.deliveryLatency.Counts(),
		selfCPU:       proc.SelfCPU(),
	}
	if sim.cfg.Proc != nil {
		ps, err := sim.cfg.Proc()
		c.proc, c.procOK = ps, err == nil
	}
	return c
}

// status prints a status line every interval, from the counts first at
// the start, until stop is closed.
func (sim *simulation) status(first snapshot, stop <-chan struct{}) {
	t := time.NewTicker(sim.cfg.Interval)
	defer t.Stop()
	prev := first
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			cur := sim.counts()
			sim.printf("%s\n", sim.statusLine(prev, cur, cur.at.Sub(first.at)))
			prev = cur
		}
	}
}

// statusLine renders the counters, with rates and latencies over the time
// since prev.
func (sim *simulation) statusLine(prev, cur snapshot, elapsed time.Duration) string {
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(a, b uint64) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(b-a) / secs
	}
	ack, deliv := cur.ack.Sub(prev.ack), cur.delivery.Sub(prev.delivery)
	line := fmt.Sprintf("sim: %s online %d/%d, posts %d (%.0f/s, %.1f MB/s), deliveries %d (%.0f/s, %.1f MB/s), "+
		"ack p50/p99 %s/%s, delivery p50/p99 %s/%s, errors %d, integrity %d",
		elapsed.Round(time.Second), cur.online, len(sim.members),
		cur.posts, rate(prev.posts, cur.posts), rate(prev.postBytes, cur.postBytes)/1e6,
		cur.deliveries, rate(prev.deliveries, cur.deliveries), rate(prev.deliveryBytes, cur.deliveryBytes)/1e6,
		fmtLatency(ack.Quantile(0.5)), fmtLatency(ack.Quantile(0.99)),
		fmtLatency(deliv.Quantile(0.5)), fmtLatency(deliv.Quantile(0.99)),
		cur.errors, cur.integrity)
	if cur.procOK {
		// Whose figures these are is in the line: the server's alone, or
		// the whole process's when the members share it.
		line += fmt.Sprintf(", %s rss %.0f MB", sim.cfg.ProcName, float64(cur.proc.RSS)/1e6)
		if prev.procOK && secs > 0 {
			line += fmt.Sprintf(" cpu %.0f%%", 100*(cur.proc.CPU-prev.proc.CPU).Seconds()/secs)
		}
	}
	return line
}

// cores renders CPU time used over a wall-clock time as a share of one
// core, as top does.
func cores(cpu, wall time.Duration) string {
	if wall <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%% of a core", 100*cpu.Seconds()/wall.Seconds())
}

// fmtLatency renders a latency to about two significant digits; "-" when
// there were no samples.
func fmtLatency(d time.Duration, ok bool) string {
	switch {
	case !ok:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

// summary gathers the final counts; members have logged out.
func (sim *simulation) summary() Summary {
	st := &sim.st
	// Every skipped delivery has either arrived since (reordered) or not
	// (lost): its post stays in the ledger until all recipients have it.
	lost, inFlight := sim.unsettled()
	ack, deliv := st.ackLatency.Counts(), st.deliveryLatency.Counts()
	s := Summary{
		Members:       len(sim.members),
		Logins:        st.logins.Load(),
		Posts:         st.posts.Load(),
		PostBytes:     st.postBytes.Load(),
		Unacked:       st.unacked.Load(),
		Deliveries:    st.deliveries.Load(),
		DeliveryBytes: st.deliveryBytes.Load(),
		Errors:        st.errors.Load(),
		Corrupt:       st.corrupt.Load(),
		Duplicates:    st.duplicates.Load(),
		Misdelivered:  st.misdelivered.Load(),
		Reordered:     st.reordered.Load(),
		Lost:          lost,
		InFlight:      inFlight,
	}
	s.AckP50, _ = ack.Quantile(0.5)
	s.AckP99, _ = ack.Quantile(0.99)
	s.DeliveryP50, _ = deliv.Quantile(0.5)
	s.DeliveryP99, _ = deliv.Quantile(0.99)
	if sim.cfg.Proc != nil {
		if ps, err := sim.cfg.Proc(); err == nil {
			s.RSS, s.PeakRSS = ps.RSS, ps.HWM
		}
	}
	return s
}

func (sim *simulation) printSummary(s Summary) {
	drain := "complete"
	if !s.Drained {
		drain = "bound reached"
	}
	sim.printf("sim: summary: %d members, %s of traffic, %s of drain (%s), %d logins\n",
		s.Members, s.Traffic.Round(time.Millisecond), s.Drain.Round(time.Millisecond), drain, s.Logins)
	sim.printf("  posts       %d acked, %.1f MB; post→ack p50 %s, p99 %s; %d without ack\n",
		s.Posts, float64(s.PostBytes)/1e6, fmtLatency(s.AckP50, s.AckP50 > 0), fmtLatency(s.AckP99, s.AckP99 > 0), s.Unacked)
	sim.printf("  deliveries  %d, %.1f MB (mean %.1f KB); post→delivery p50 %s, p99 %s (from the post or the recipient's login, whichever is later)\n",
		s.Deliveries, float64(s.DeliveryBytes)/1e6, float64(s.DeliveryBytes)/1e3/float64(max(s.Deliveries, 1)),
		fmtLatency(s.DeliveryP50, s.DeliveryP50 > 0), fmtLatency(s.DeliveryP99, s.DeliveryP99 > 0))
	if secs := s.Traffic.Seconds(); secs > 0 {
		sim.printf("  traffic     %.0f posts/s, %.0f deliveries/s, %.1f MB/s delivered; post→delivery p50 %s, p99 %s (until the stop)\n",
			float64(s.TrafficPosts)/secs, float64(s.TrafficDeliveries)/secs, float64(s.TrafficDeliveryBytes)/1e6/secs,
			fmtLatency(s.TrafficDeliveryP50, s.TrafficDeliveryP50 > 0), fmtLatency(s.TrafficDeliveryP99, s.TrafficDeliveryP99 > 0))
	}
	sim.printf("  errors      %d (failed logins or posts, broken links)\n", s.Errors)
	sim.printf("  integrity   %d (corrupt %d, duplicate %d, misdelivered %d, reordered %d, lost %d)\n",
		s.IntegrityErrors(), s.Corrupt, s.Duplicates, s.Misdelivered, s.Reordered, s.Lost)
	sim.printf("  in flight   %d acked deliveries not received when the drain ended (not losses)\n", s.InFlight)
	if s.RSS > 0 {
		sim.printf("  %-11s rss %.1f MB, peak %.1f MB; cpu %s during the traffic (%s)\n",
			sim.cfg.ProcName, float64(s.RSS)/1e6, float64(s.PeakRSS)/1e6, s.CPU.Round(10*time.Millisecond), cores(s.CPU, s.Traffic))
	}
	sim.printf("  self        cpu %s during the traffic (%s; this process)\n", s.SelfCPU.Round(10*time.Millisecond), cores(s.SelfCPU, s.Traffic))
	if n := s.IntegrityErrors(); n > 0 {
		sim.printf("sim: FAIL: %d integrity errors\n", n)
	} else {
		sim.printf("sim: PASS: no integrity errors\n")
	}
}

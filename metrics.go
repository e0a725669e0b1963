package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"mnm/qlib/store"
)

// newRegistry returns the daemon's metrics registry with the Go runtime's
// and the process's collectors and the build's version. qlib registers its
// own (qlib/metrics.go); registerDataMetrics adds the store's and the user
// database's once they are open.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mnm_build_info", Help: "Always 1; the version is a label.",
			ConstLabels: prometheus.Labels{"version": version}}, func() float64 { return 1 }),
	)
	return reg
}

// commitHistogram is the store's commit latency: writing a batch of commits
// and fsyncing it. Buckets from a battery-backed cache's tens of
// microseconds to a struggling disk's seconds.
func commitHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mnm_store_commit_seconds",
		Help:    "Durable writes of the store: a batch of commits written and fsynced.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
}

// registerDataMetrics adds the gauges read from the store, the user
// database and the clock at each scrape.
func (d *daemon) registerDataMetrics() {
	if d.store != nil { // a frontend of a cluster holds no queues of its own
		d.registry.MustRegister(&backlogCollector{st: d.store, now: d.now})
	}
	d.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mnm_users", Help: "Members."},
			func() float64 { return float64(d.users.UserCount()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mnm_groups", Help: "Groups."},
			func() float64 { return float64(d.users.GroupCount()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mnm_ntp_offset_seconds",
			Help: "NTP time minus the local clock at the last check (0 when NTP is not used)."},
			func() float64 {
				if d.ntpOffset == nil {
					return 0
				}
				return d.ntpOffset().Seconds()
			}),
	)
}

// backlogCollector reports the store's backlog, taking one Backlog per
// scrape for all its gauges.
type backlogCollector struct {
	st  *store.Log
	now func() time.Time
}

var (
	queuedMessagesDesc = prometheus.NewDesc("mnm_queued_messages", "Queue entries over all devices.", nil, nil)
	queuedBytesDesc    = prometheus.NewDesc("mnm_queued_bytes", "Bytes of queued messages, a message counted once per device queue.", nil, nil)
	backloggedDesc     = prometheus.NewDesc("mnm_devices_backlogged", "Devices with at least one queued message.", nil, nil)
	oldestDesc         = prometheus.NewDesc("mnm_oldest_queued_seconds",
		"Age of the oldest queued message (counted from the server's start for messages queued before it).", nil, nil)
	storeBytesDesc = prometheus.NewDesc("mnm_store_bytes", "Bytes of the store's files.", nil, nil)
)

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queuedMessagesDesc
	ch <- queuedBytesDesc
	ch <- backloggedDesc
	ch <- oldestDesc
	ch <- storeBytesDesc
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	b := c.st.Backlog()
	var age float64
	if !b.Oldest.IsZero() {
		age = max(0, c.now().Sub(b.Oldest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(queuedMessagesDesc, prometheus.GaugeValue, float64(b.Messages))
	ch <- prometheus.MustNewConstMetric(queuedBytesDesc, prometheus.GaugeValue, float64(b.Bytes))
	ch <- prometheus.MustNewConstMetric(backloggedDesc, prometheus.GaugeValue, float64(b.Devices))
	ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(b.StoreBytes))
}

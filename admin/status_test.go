package admin

import (
	"errors"
	"html"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// statusBackend is a Backend whose Status the test sets; the other methods
// are not called by the page (the nil embedded Backend would panic).
type statusBackend struct {
	Backend
	mu sync.Mutex
	st Status
}

func (b *statusBackend) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st
}

func (b *statusBackend) Ready() error { return nil }

// statusMetrics are the mnm_* metrics the test drives, registered under
// the daemon's names.
type statusMetrics struct {
	reg                          *prometheus.Registry
	posts, postBytes, deliveries prometheus.Counter
	deliveryBytes, acks, logins  prometheus.Counter
	loginFailures, limitHits     *prometheus.CounterVec
	linksOpen, queued            prometheus.Gauge
	postAck, commit              prometheus.Histogram
}

func newStatusMetrics() *statusMetrics {
	c := func(name string) prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: name}) }
	m := &statusMetrics{
		reg:           prometheus.NewRegistry(),
		posts:         c(mPosts),
		postBytes:     c(mPostBytes),
		deliveries:    c(mDeliveries),
		deliveryBytes: c(mDeliveryBytes),
		acks:          c(mAcks),
		logins:        c(mLogins),
		loginFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: mLoginFailures}, []string{"reason"}),
		limitHits:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: mLimitHits}, []string{"kind"}),
		linksOpen:     prometheus.NewGauge(prometheus.GaugeOpts{Name: mLinksOpen}),
		queued:        prometheus.NewGauge(prometheus.GaugeOpts{Name: mQueued}),
		postAck: prometheus.NewHistogram(prometheus.HistogramOpts{Name: mPostAck,
			Buckets: []float64{.001, .002, .004, .008, .016}}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{Name: mCommit,
			Buckets: []float64{.0001, .001, .01}}),
	}
	m.reg.MustRegister(m.posts, m.postBytes, m.deliveries, m.deliveryBytes, m.acks, m.logins,
		m.loginFailures, m.limitHits, m.linksOpen, m.queued, m.postAck, m.commit)
	return m
}

var statusT0 = time.Date(2025, 3, 4, 12, 0, 0, 0, time.UTC)

// newStatusServer returns a Server over m and b whose sampler never ticks
// by itself: the test calls page.sample.
func newStatusServer(t *testing.T, m *statusMetrics, b Backend, recent *Recent) *Server {
	t.Helper()
	s := New(Options{Backend: b, Gatherer: m.reg, Now: func() time.Time { return statusT0 },
		SampleEvery: 5 * time.Second, Recent: recent})
	s.page.close() // the test samples by hand, with its own times
	t.Cleanup(s.Close)
	return s
}

// getPage GETs / from loopback and returns the body.
func getPage(t *testing.T, s *Server) string {
	t.Helper()
	r := httptest.NewRequest("GET", "http://127.0.0.1:5480/", nil)
	r.RemoteAddr = "127.0.0.1:40000"
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("GET /: %d %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	body, _ := io.ReadAll(w.Body)
	return string(body)
}

func testStatus() Status {
	return Status{
		Version: "1.2.3-test", Site: "relay.example", Listen: "0.0.0.0:5443",
		Started: statusT0.Add(-26 * time.Hour), Now: statusT0.Add(10 * time.Second),
		Ready: true, CertNames: []string{"relay.example"}, CertUntil: statusT0.Add(60 * 24 * time.Hour),
		NTPOffset: 0.0032, LinksOpen: 1234, LinksLoggedIn: 1200, UsersOnline: 987, Users: 5000, Groups: 12,
		Queued: 42, QueuedBytes: 2_500_000, BackloggedDevs: 3, OldestQueued: statusT0.Add(-90 * time.Minute),
		StoreBytes: 3_000_000_000, FreeBytes: 40_000_000_000,
	}
}

func TestStatusPageFigures(t *testing.T) {
	m := newStatusMetrics()
	recent := NewRecent(10)
	s := newStatusServer(t, m, &statusBackend{st: testStatus()}, recent)
	log := slog.New(recent.Handler(slog.DiscardHandler))
	log.Warn("peer sent <script>alert(1)</script>", "remote", "<img src=x>")
	log.Error("store: write failed", "err", "no space left on device")

	// 100 posts, 250 deliveries and 5 kB in 5 s; post→ack latencies in
	// the bucket (2 ms, 4 ms].
	m.posts.Add(100)
	m.postBytes.Add(5000)
	m.deliveries.Add(250)
	m.deliveryBytes.Add(2_000_000)
	m.acks.Add(250)
	m.logins.Add(10)
	m.loginFailures.WithLabelValues("credentials").Add(5)
	m.loginFailures.WithLabelValues("backoff").Add(5)
	m.linksOpen.Set(1234)
	for range 100 {
		m.postAck.Observe(.003)
	}
	m.commit.Observe(.0005)
	s.page.sample(statusT0.Add(5 * time.Second))
	// Then a quieter interval.
	m.posts.Add(10)
	for range 10 {
		m.postAck.Observe(.003)
	}
	s.page.sample(statusT0.Add(10 * time.Second))

	body := getPage(t, s)
	text := html.UnescapeString(body)
	for _, want := range []string{
		`<meta http-equiv="refresh" content="5">`,
		"relay.example", "mnm 1.2.3-test", "ready",
		"1 d 2 h",                       // uptime
		"1\u202f234",                    // links open
		"987",                           // members online
		"+3.2 ms",                       // NTP offset
		"40 GB",                         // free disk
		"59 days left",                  // the certificate
		"1 h 30 min",                    // the oldest queued message
		"2.5 MB",                        // queued bytes
		"2/s",                           // posts, latest interval: 10 in 5 s
		"max 20/s",                      // posts, the first interval: 100 in 5 s
		"max 50/s",                      // deliveries
		"max 1 kB/s",                    // bytes in
		"max 400 kB/s",                  // bytes out
		"max 2/s",                       // login failures, over their labels
		"max 3.98 ms",                   // post→ack p99, interpolated in its bucket
		">3 ms<",                        // post→ack median, a tile
		"store: write failed",           // a warning
		`err="no space left on device"`, // its attrs
		"last 10 s",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if !strings.Contains(body, "peer sent &lt;script&gt;alert(1)&lt;/script&gt;") || !strings.Contains(body, "&lt;img src=x&gt;") {
		t.Error("the warning is not there, escaped")
	}
	if strings.Contains(body, "<script") || strings.Contains(body, "<img") {
		t.Error("the page has a script or an unescaped tag")
	}
	if n := strings.Count(body, "<svg"); n != len(charted) {
		t.Errorf("%d charts, want %d", n, len(charted))
	}
	if n := strings.Count(body, "<polyline"); n != len(charted) {
		t.Errorf("%d polylines, want one per chart (%d)", n, len(charted))
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Error("the page names an external URL")
	}
	if re := regexp.MustCompile(`(?i)(src|href)\s*=\s*"?[a-z]+:`); re.MatchString(body) {
		t.Errorf("the page loads something: %s", re.FindString(body))
	}
}

// Before a second sample there are no rates: the page says so rather than
// showing zeros.
func TestStatusPageNoSamples(t *testing.T) {
	m := newStatusMetrics()
	st := testStatus()
	st.Ready, st.NotReady = false, "store: disk full"
	st.CertUntil, st.FreeBytes, st.OldestQueued = st.Now.Add(-time.Hour), -1, time.Time{}
	s := newStatusServer(t, m, &statusBackend{st: st}, nil)
	body := getPage(t, s)
	for _, want := range []string{"not ready: store: disk full", "no data yet", "Warnings are not recorded",
		"expired 1 h ago", "Free disk</span><b>unknown", "nothing queued"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<polyline") {
		t.Error("a chart without samples has a line")
	}
}

func TestStatusSampler(t *testing.T) {
	m := newStatusMetrics()
	s := newStatusServer(t, m, &statusBackend{st: testStatus()}, nil)
	p := s.page
	at := statusT0
	step := func(d time.Duration) {
		at = at.Add(d)
		p.sample(at)
	}
	m.posts.Add(50)
	step(10 * time.Second)
	pts, _ := p.history()
	if len(pts) != 1 || pts[0].v[sPosts] != 5 {
		t.Fatalf("points %+v, want one at 5 posts/s", pts)
	}
	if !math.IsNaN(pts[0].v[sPostAckP99]) {
		t.Errorf("p99 without posts: %v, want NaN", pts[0].v[sPostAckP99])
	}
	// A clock that steps back makes no interval.
	step(-time.Second)
	if pts, _ := p.history(); len(pts) != 1 {
		t.Fatalf("%d points after the clock stepped back", len(pts))
	}
	// The history is bounded by historySpan.
	for range p.keep + 10 {
		m.posts.Inc()
		step(5 * time.Second)
	}
	pts, _ = p.history()
	if len(pts) != p.keep || p.keep != int(historySpan/(5*time.Second)) {
		t.Fatalf("%d points kept, keep %d", len(pts), p.keep)
	}
	if !pts[len(pts)-1].at.Equal(at) || pts[0].v[sPosts] != 0.2 {
		t.Errorf("newest at %v (want %v), oldest %v posts/s", pts[len(pts)-1].at, at, pts[0].v[sPosts])
	}
}

// The sampler started by New samples on its own and stops with Close.
func TestStatusSamplerTicks(t *testing.T) {
	m := newStatusMetrics()
	s := New(Options{Backend: &statusBackend{st: testStatus()}, Gatherer: m.reg, SampleEvery: time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pts, _ := s.page.history(); len(pts) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no samples within 10 s")
		}
		time.Sleep(time.Millisecond) // polling a condition with a deadline
	}
	s.Close()
	s.Close() // twice is harmless
	select {
	case <-s.page.done:
	default:
		t.Fatal("the sampler still runs after Close")
	}
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	prev := &snapshot{hists: map[string]map[float64]float64{"h": {1: 10, 2: 10, 4: 10, inf: 10}}}
	cur := &snapshot{hists: map[string]map[float64]float64{"h": {1: 10, 2: 60, 4: 110, inf: 120}}}
	// In the interval: 50 in (1,2], 50 in (2,4], 10 above 4.
	for _, c := range []struct {
		q, want float64
	}{
		{.25, 1.55},  // rank 27.5 of 50 into (1,2]
		{.5, 2.2},    // rank 55: 5 of 50 into (2,4]
		{.99, 4},     // rank 108.9: above the highest finite bound
		{.01, 1.022}, // rank 1.1 of 50 into (1,2]
	} {
		if got := quantile(c.q, "h", prev, cur); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("q%v = %v, want %v", c.q, got, c.want)
		}
	}
	if got := quantile(.5, "h", cur, cur); !math.IsNaN(got) {
		t.Errorf("no observations: %v, want NaN", got)
	}
	if got := quantile(.5, "missing", prev, cur); !math.IsNaN(got) {
		t.Errorf("no histogram: %v, want NaN", got)
	}
	// A reset histogram (a new registry) counts from zero.
	if got := quantile(.5, "h", cur, prev); got != 0.5 {
		t.Errorf("after a reset: %v, want 0.5", got)
	}
}

func TestIncreaseReset(t *testing.T) {
	if increase(100, 130) != 30 || increase(100, 7) != 7 {
		t.Fatal("increase")
	}
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{formatRate(20), "20/s"},
		{formatRate(0), "0/s"},
		{formatRate(0.25), "0.25/s"},
		{formatRate(2.5), "2.5/s"},
		{formatRate(12.34), "12.3/s"},
		{formatRate(1500), "1.5k/s"},
		{formatRate(2_000_000), "2M/s"},
		{formatCount(1234567), "1\u202f234\u202f567"},
		{formatCount(999), "999"},
		{formatBytes(512), "512 B"},
		{formatBytes(1500), "1.5 kB"},
		{formatBytes(2.3e9), "2.3 GB"},
		{formatByteRate(1000), "1 kB/s"},
		{formatSeconds(0.00025), "250 µs"},
		{formatSeconds(0.0032), "3.2 ms"},
		{formatSeconds(1.5), "1.5 s"},
		{formatDuration(12 * time.Second), "12 s"},
		{formatDuration(4*time.Minute + 10*time.Second), "4 min 10 s"},
		{formatDuration(2*time.Hour + 5*time.Minute), "2 h 5 min"},
		{formatDuration(3*24*time.Hour + 4*time.Hour + 5*time.Minute), "3 d 4 h"},
		{formatDuration(2 * time.Hour), "2 h"},
		{formatAge(300 * time.Millisecond), "< 1 s"},
		{formatAge(90 * time.Second), "1 min 30 s"},
		{formatOffset(-1.5), "−1.5 s"},
		{formatOffset(0), "0"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

// A failed gathering is shown and skipped: the next good one measures
// from the last good one, rather than reading the missing counters as a
// reset and then a burst.
func TestStatusGatherFailure(t *testing.T) {
	m := newStatusMetrics()
	broken := &brokenCollector{desc: prometheus.NewDesc("broken", "", nil, nil)}
	m.reg.MustRegister(broken)
	fail := &broken.fail
	s := New(Options{Backend: &statusBackend{st: testStatus()}, Gatherer: m.reg, Now: func() time.Time { return statusT0 },
		SampleEvery: time.Hour})
	s.page.close()
	t.Cleanup(s.Close)

	m.posts.Add(100)
	fail.Store(true)
	s.page.sample(statusT0.Add(5 * time.Second))
	if pts, _ := s.page.history(); len(pts) != 0 {
		t.Fatalf("%d points from a failed gathering", len(pts))
	}
	if body := getPage(t, s); !strings.Contains(body, "Metrics could not all be gathered") || !strings.Contains(body, "collector broke") {
		t.Error("the page does not show the failure")
	}
	fail.Store(false)
	s.page.sample(statusT0.Add(10 * time.Second))
	pts, _ := s.page.history()
	if len(pts) != 1 || pts[0].v[sPosts] != 10 {
		t.Fatalf("points %+v, want one of 100 posts over 10 s", pts)
	}
	if body := getPage(t, s); strings.Contains(body, "collector broke") {
		t.Error("the page still shows the failure")
	}
}

// brokenCollector fails while fail is set, as a collector whose source
// broke does.
type brokenCollector struct {
	desc *prometheus.Desc
	fail atomic.Bool
}

func (c *brokenCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *brokenCollector) Collect(ch chan<- prometheus.Metric) {
	if c.fail.Load() {
		ch <- prometheus.NewInvalidMetric(c.desc, errors.New("collector broke"))
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1)
}

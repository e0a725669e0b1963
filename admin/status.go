package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The status page, GET /: one server-rendered HTML page for a person, with
// the server's figures now, its rates over the last minutes as small
// charts, and the latest warnings. It refreshes itself and needs no
// JavaScript and nothing from elsewhere, so that it works from an offline
// VPS through an SSH tunnel.
//
// The rates come from a sampler: every SampleEvery it gathers the metrics
// registry and keeps, for each interval, the counters' increase per second,
// the gauges' values and the latency histograms' quantiles over the
// interval (from the buckets' increase). The page reads the samples; a
// request never gathers the registry.

// DefaultSampleEvery is the sampler's interval unless Options.SampleEvery
// says otherwise: fine enough to see a burst, coarse enough that gathering
// the registry costs nothing noticeable.
const DefaultSampleEvery = 5 * time.Second

const (
	// historySpan is how far back the charts go: enough to see how the
	// last incident began, short enough to read at a glance.
	historySpan = 15 * time.Minute
	// maxPoints bounds the samples kept however short the interval.
	maxPoints = 900
	// refreshSeconds is the page's own refresh period.
	refreshSeconds = 5
)

// The metrics the page reads: mnm's own (qlib/metrics.go and the daemon's
// metrics.go). A metric that is absent reads as 0.
const (
	mPosts         = "mnm_posts_total"
	mPostBytes     = "mnm_post_bytes_total"
	mDeliveries    = "mnm_deliveries_total"
	mDeliveryBytes = "mnm_delivery_bytes_total"
	mAcks          = "mnm_acks_total"
	mLogins        = "mnm_logins_total"
	mLoginFailures = "mnm_login_failures_total"
	mLimitHits     = "mnm_limit_hits_total"
	mLinksOpen     = "mnm_links_open"
	mLinksLoggedIn = "mnm_links_logged_in"
	mQueued        = "mnm_queued_messages"
	mOldestQueued  = "mnm_oldest_queued_seconds"
	mPostAck       = "mnm_post_ack_seconds"
	mCommit        = "mnm_store_commit_seconds"
)

// snapshot is one gathering of the registry: counters and gauges summed
// over their labels, histograms as cumulative counts by upper bound.
type snapshot struct {
	at     time.Time
	values map[string]float64
	hists  map[string]map[float64]float64 // +Inf holds the sample count
}

// takeSnapshot gathers g at now.
func takeSnapshot(g prometheus.Gatherer, now time.Time) (*snapshot, error) {
	s := &snapshot{at: now, values: map[string]float64{}, hists: map[string]map[float64]float64{}}
	if g == nil {
		return s, nil
	}
	mfs, err := g.Gather()
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				s.values[name] += m.Counter.GetValue()
			case m.Gauge != nil:
				s.values[name] += m.Gauge.GetValue()
			case m.Untyped != nil:
				s.values[name] += m.Untyped.GetValue()
			case m.Histogram != nil:
				h := s.hists[name]
				if h == nil {
					h = map[float64]float64{}
					s.hists[name] = h
				}
				for _, b := range m.Histogram.GetBucket() {
					if ub := b.GetUpperBound(); !math.IsInf(ub, 1) {
						h[ub] += float64(b.GetCumulativeCount())
					}
				}
				// The +Inf bucket is the sample count, whether the
				// collector listed it or not.
				h[math.Inf(1)] += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return s, err
}

// increase is how much counter name grew from prev to cur. A counter that
// went down was reset (a new registry): all of its value is new, as
// Prometheus' rate() takes it.
func increase(prev, cur float64) float64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}

// quantile is the q-quantile of the observations histogram name received
// between prev and cur, interpolated within its bucket as Prometheus'
// histogram_quantile does; NaN when there were none. Observations above
// the highest finite bound read as that bound.
func quantile(q float64, name string, prev, cur *snapshot) float64 {
	c := cur.hists[name]
	if len(c) == 0 {
		return math.NaN()
	}
	bounds := make([]float64, 0, len(c))
	for ub := range c {
		bounds = append(bounds, ub)
	}
	sort.Float64s(bounds)
	p := prev.hists[name]
	if c[math.Inf(1)] < p[math.Inf(1)] {
		p = nil // reset (a new registry): every observation is new
	}
	delta := make([]float64, len(bounds))
	for i, ub := range bounds {
		delta[i] = c[ub] - p[ub]
	}
	total := delta[len(delta)-1]
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for i, ub := range bounds {
		if delta[i] >= rank {
			if math.IsInf(ub, 1) {
				return lower
			}
			if delta[i] == below {
				return ub
			}
			return lower + (ub-lower)*(rank-below)/(delta[i]-below)
		}
		lower, below = ub, delta[i]
	}
	return lower
}

// series is one figure the sampler keeps for each interval, charted on the
// page.
type series struct {
	title string
	class string // the chart's colour, a class of the page's style
	// value is the figure over the interval from prev to cur (secs long);
	// NaN when there is none (no posts, no latency).
	value  func(prev, cur *snapshot, secs float64) float64
	format func(float64) string
}

func rateOf(name string) func(prev, cur *snapshot, secs float64) float64 {
	return func(prev, cur *snapshot, secs float64) float64 {
		return increase(prev.values[name], cur.values[name]) / secs
	}
}

func gaugeOf(name string) func(prev, cur *snapshot, secs float64) float64 {
	return func(prev, cur *snapshot, secs float64) float64 { return cur.values[name] }
}

func quantileOf(q float64, name string) func(prev, cur *snapshot, secs float64) float64 {
	return func(prev, cur *snapshot, secs float64) float64 { return quantile(q, name, prev, cur) }
}

// The series, in the order the page charts them; the tiles read them by
// index.
const (
	sPosts = iota
	sDeliveries
	sAcks
	sBytesIn
	sBytesOut
	sLogins
	sLoginFailures
	sLimitHits
	sPostAckP50
	sPostAckP99
	sCommitP50
	sCommitP99
	sLinksOpen
	sLinksLoggedIn
	sQueued
	sOldestQueued
	nSeries
)

// allSeries is the table of series, indexed by the constants above.
var allSeries = [nSeries]series{
	sPosts:         {"Posts", "blue", rateOf(mPosts), formatRate},
	sDeliveries:    {"Deliveries", "blue", rateOf(mDeliveries), formatRate},
	sAcks:          {"Acks", "blue", rateOf(mAcks), formatRate},
	sBytesIn:       {"Bytes in (posts)", "teal", rateOf(mPostBytes), formatByteRate},
	sBytesOut:      {"Bytes out (deliveries)", "teal", rateOf(mDeliveryBytes), formatByteRate},
	sLogins:        {"Logins", "green", rateOf(mLogins), formatRate},
	sLoginFailures: {"Login failures", "red", rateOf(mLoginFailures), formatRate},
	sLimitHits:     {"Limit hits", "red", rateOf(mLimitHits), formatRate},
	sPostAckP50:    {"Post → ack, median", "purple", quantileOf(.5, mPostAck), formatSeconds},
	sPostAckP99:    {"Post → ack, p99", "purple", quantileOf(.99, mPostAck), formatSeconds},
	sCommitP50:     {"Store commit, median", "purple", quantileOf(.5, mCommit), formatSeconds},
	sCommitP99:     {"Store commit, p99", "purple", quantileOf(.99, mCommit), formatSeconds},
	sLinksOpen:     {"Links open", "gray", gaugeOf(mLinksOpen), formatCount},
	sLinksLoggedIn: {"Links logged in", "gray", gaugeOf(mLinksLoggedIn), formatCount},
	sQueued:        {"Queued messages", "gray", gaugeOf(mQueued), formatCount},
	sOldestQueued:  {"Oldest queued", "gray", gaugeOf(mOldestQueued), formatAgeSeconds},
}

// charted are the series drawn as charts, in the page's order; the others
// show in tiles only.
var charted = []int{sPosts, sDeliveries, sAcks, sBytesIn, sBytesOut, sLogins, sLoginFailures, sLimitHits,
	sPostAckP99, sCommitP99, sLinksOpen, sQueued}

// point is one interval's figures, ending at at.
type point struct {
	at time.Time
	v  [nSeries]float64
}

// statusPage is the page at / and its sampler.
type statusPage struct {
	backend  Backend
	gatherer prometheus.Gatherer
	recent   *Recent
	now      func() time.Time
	every    time.Duration
	keep     int // points kept: historySpan's worth, at most maxPoints

	stop     chan struct{} // closed by close: the sampler ends
	done     chan struct{} // closed when the sampler has ended
	stopOnce sync.Once

	mu sync.Mutex
	// Guarded by mu:
	last      *snapshot // the latest gathering, the start of the next interval
	points    []point   // oldest first, at most keep
	gatherErr string    // the latest gathering's error, "" when it went well
}

// newStatusPage returns the page for opts and starts its sampler, having
// taken the first gathering: the start of the first interval.
func newStatusPage(opts Options) *statusPage {
	every := opts.SampleEvery
	if every <= 0 {
		every = DefaultSampleEvery
	}
	p := &statusPage{
		backend:  opts.Backend,
		gatherer: opts.Gatherer,
		recent:   opts.Recent,
		now:      opts.Now,
		every:    every,
		keep:     min(max(int(historySpan/every), 2), maxPoints),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	p.sample(p.now())
	go p.run()
	return p
}

// run samples every p.every until close.
func (p *statusPage) run() {
	defer close(p.done)
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.sample(p.now())
		}
	}
}

// close stops the sampler and waits for it to end.
func (p *statusPage) close() {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
}

// sample gathers the registry at now and adds the interval since the last
// gathering to the history. Tests call it instead of waiting for ticks.
func (p *statusPage) sample(now time.Time) {
	snap, err := takeSnapshot(p.gatherer, now)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		// A partial gathering would read missing counters as reset,
		// and the next one as a burst: the interval runs on to the
		// next good gathering instead.
		p.gatherErr = err.Error()
		return
	}
	p.gatherErr = ""
	prev := p.last
	p.last = snap
	if prev == nil {
		return
	}
	secs := now.Sub(prev.at).Seconds()
	if secs <= 0 {
		// The clock stepped back: no interval to measure; the next
		// one starts from here.
		return
	}
	pt := point{at: now}
	for i, s := range allSeries {
		pt.v[i] = s.value(prev, snap, secs)
	}
	if len(p.points) == p.keep {
		p.points = append(p.points[:0], p.points[1:]...)
	}
	p.points = append(p.points, pt)
}

// history returns a copy of the points and the gathering error.
func (p *statusPage) history() ([]point, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]point(nil), p.points...), p.gatherErr
}

// serve renders the page.
func (p *statusPage) serve(w http.ResponseWriter, r *http.Request) {
	points, gatherErr := p.history()
	v := p.view(p.backend.Status(), points, gatherErr)
	var b bytes.Buffer
	if err := statusTemplate.Execute(&b, v); err != nil {
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	w.Write(b.Bytes())
}

// The page's view: everything formatted for people, for the template to
// print.
type (
	pageView struct {
		Refresh   int
		Site      string
		Version   string
		Ready     bool
		NotReady  string
		Facts     []fact
		Tiles     []tile
		Charts    []chart
		Window    string // what the charts span, "last 15 min"
		Every     string // the sampling interval
		Warnings  []warning
		Dropped   int  // warnings no longer kept
		NoRecent  bool // no Recent: warnings are not recorded
		GatherErr string
		Now       string
	}
	fact struct {
		Label, Value string
		Warn         bool
	}
	tile struct {
		Label, Value, Sub string
		Warn              bool
	}
	chart struct {
		Title   string
		Class   string
		Current string // the latest interval's value
		Max     string // the top of the chart
		Line    string // the polyline's points; "" when there is no data
		Area    string // the polygon under it
		Span    string // how far back the left edge is
	}
	warning struct {
		Time, Level, Message, Attrs string
		Repeats                     int
		Error                       bool
	}
)

// Thresholds that mark a figure as a warning on the page.
const (
	// certWarnDays: a certificate this close to its end needs a look (a
	// renewal that keeps failing).
	certWarnDays = 14
	// ntpWarnOffset: message ids and "posted" stamps are off by this much.
	ntpWarnOffset = 0.5
	// freeWarnBytes: a disk this full is near minFreeBytes' refusals.
	freeWarnBytes = 1 << 30
	// oldestWarn: a message queued this long waits for a device that is
	// away, which is normal, but worth knowing when it grows.
	oldestWarn = 7 * 24 * time.Hour
)

// view builds the page's view of st and points.
func (p *statusPage) view(st Status, points []point, gatherErr string) pageView {
	now := st.Now
	if now.IsZero() {
		now = p.now()
	}
	v := pageView{
		Refresh:   refreshSeconds,
		Site:      st.Site,
		Version:   st.Version,
		Ready:     st.Ready,
		NotReady:  st.NotReady,
		Every:     formatDuration(p.every),
		GatherErr: gatherErr,
		Now:       now.Format("2006-01-02 15:04:05 MST"),
	}
	if v.Site == "" {
		v.Site = "mnm"
	}
	v.Facts = append(v.Facts, fact{Label: "Up", Value: formatDuration(now.Sub(st.Started)) + " (since " + st.Started.Format("2 Jan 15:04") + ")"})
	if st.Listen != "" {
		v.Facts = append(v.Facts, fact{Label: "TMTP", Value: st.Listen})
	}
	v.Facts = append(v.Facts, certFact(st, now))
	v.Facts = append(v.Facts, fact{Label: "NTP offset", Value: formatOffset(st.NTPOffset), Warn: math.Abs(st.NTPOffset) > ntpWarnOffset})
	disk := fact{Label: "Free disk", Value: "unknown"}
	if st.FreeBytes >= 0 {
		disk.Value, disk.Warn = formatBytes(float64(st.FreeBytes)), st.FreeBytes < freeWarnBytes
	}
	v.Facts = append(v.Facts, disk, fact{Label: "Store", Value: formatBytes(float64(st.StoreBytes))})

	var latest *point
	if len(points) > 0 {
		latest = &points[len(points)-1]
	}
	rate := func(i int) string {
		if latest == nil || math.IsNaN(latest.v[i]) {
			return "–"
		}
		return allSeries[i].format(latest.v[i])
	}
	oldest, oldestSub := "–", "nothing queued"
	var oldestAge time.Duration
	if !st.OldestQueued.IsZero() {
		oldestAge = now.Sub(st.OldestQueued)
		oldest, oldestSub = formatAge(oldestAge), "waiting for its device"
	}
	v.Tiles = []tile{
		{Label: "Links open", Value: formatCount(float64(st.LinksOpen)),
			Sub: fmt.Sprintf("%s logged in · %s parked", formatCount(float64(st.LinksLoggedIn)), formatCount(float64(st.LinksParked)))},
		{Label: "Members online", Value: formatCount(float64(st.UsersOnline)),
			Sub: fmt.Sprintf("of %s members · %s groups", formatCount(float64(st.Users)), formatCount(float64(st.Groups)))},
		{Label: "Posts", Value: rate(sPosts), Sub: rate(sBytesIn) + " in"},
		{Label: "Deliveries", Value: rate(sDeliveries), Sub: rate(sBytesOut) + " out · acks " + rate(sAcks)},
		{Label: "Post → ack", Value: rate(sPostAckP50), Sub: "median · p99 " + rate(sPostAckP99)},
		{Label: "Store commit", Value: rate(sCommitP50), Sub: "median · p99 " + rate(sCommitP99)},
		{Label: "Queued", Value: formatCount(float64(st.Queued)),
			Sub: fmt.Sprintf("%s · %s devices", formatBytes(float64(st.QueuedBytes)), formatCount(float64(st.BackloggedDevs)))},
		{Label: "Oldest queued", Value: oldest, Sub: oldestSub, Warn: oldestAge > oldestWarn},
		{Label: "Logins", Value: rate(sLogins), Sub: "failures " + rate(sLoginFailures),
			Warn: latest != nil && latest.v[sLoginFailures] > latest.v[sLogins] && latest.v[sLoginFailures] > 0},
		{Label: "Limit hits", Value: rate(sLimitHits), Sub: "refusals by a limit",
			Warn: latest != nil && latest.v[sLimitHits] > 0},
	}

	span := historySpan
	if len(points) > 0 {
		span = min(historySpan, points[len(points)-1].at.Sub(points[0].at)+p.every)
	}
	v.Window = "last " + formatDuration(span.Round(time.Second))
	for _, i := range charted {
		v.Charts = append(v.Charts, drawChart(i, points))
	}

	if p.recent == nil {
		v.NoRecent = true
	}
	entries := p.recent.Entries()
	for _, e := range entries {
		v.Warnings = append(v.Warnings, warning{
			Time:    e.Time.In(now.Location()).Format("Jan 2 15:04:05"),
			Level:   e.Level.String(),
			Message: e.Message,
			Attrs:   e.Attrs,
			Repeats: e.Repeats,
			Error:   e.Level >= slog.LevelError,
		})
	}
	v.Dropped = p.recent.Total() - len(entries)
	return v
}

// certFact is the certificate's line: its names and how long it has left.
func certFact(st Status, now time.Time) fact {
	f := fact{Label: "Certificate"}
	if len(st.CertNames) == 0 && st.CertUntil.IsZero() {
		f.Value = "managed outside mnm"
		return f
	}
	names := strings.Join(st.CertNames, ", ")
	if names == "" {
		names = "no names"
	}
	left := st.CertUntil.Sub(now)
	days := int(math.Floor(left.Hours() / 24))
	switch {
	case left < 0:
		f.Value = fmt.Sprintf("%s — expired %s ago", names, formatDuration(-left))
		f.Warn = true
	case days >= 2:
		f.Value = fmt.Sprintf("%s — until %s (%d days left)", names, st.CertUntil.Format("2 Jan 2006"), days)
		f.Warn = days < certWarnDays
	default:
		f.Value = fmt.Sprintf("%s — until %s (%s left)", names, st.CertUntil.Format("2 Jan 2006 15:04"), formatDuration(left))
		f.Warn = true
	}
	if st.CertACME {
		f.Value += ", ACME"
	}
	return f
}

// The charts' geometry, in the SVG's own units; the SVG scales to the
// card's width.
const (
	chartW      = 300.0
	chartTop    = 18.0 // room for the max label above the plot
	chartBottom = 68.0
)

// drawChart draws series i over points, from the oldest point on the left
// to the latest on the right.
func drawChart(i int, points []point) chart {
	s := allSeries[i]
	c := chart{Title: s.title, Class: s.class, Current: "–", Span: "–"}
	var span time.Duration
	if len(points) > 0 {
		span = points[len(points)-1].at.Sub(points[0].at)
		c.Span = formatDuration(span.Round(time.Second)) + " ago"
	}
	top := 0.0
	n := 0
	for _, pt := range points {
		if x := pt.v[i]; !math.IsNaN(x) {
			top = max(top, x)
			n++
		}
	}
	if len(points) > 0 {
		if x := points[len(points)-1].v[i]; !math.IsNaN(x) {
			c.Current = s.format(x)
		}
	}
	c.Max = s.format(top)
	if n == 0 {
		return c
	}
	scale := top
	if scale <= 0 {
		scale = 1 // all zero: a flat line at the bottom
	}
	end := points[len(points)-1].at
	var xs, ys []float64
	for _, pt := range points {
		if math.IsNaN(pt.v[i]) {
			continue
		}
		x := chartW
		if span > 0 {
			x = chartW * (1 - float64(end.Sub(pt.at))/float64(span))
		}
		y := chartBottom - (chartBottom-chartTop)*pt.v[i]/scale
		xs, ys = append(xs, x), append(ys, y)
	}
	if len(xs) == 1 {
		// One value: a level line across, rather than an invisible dot.
		xs, ys = []float64{0, chartW}, []float64{ys[0], ys[0]}
	}
	var line strings.Builder
	for j := range xs {
		if j > 0 {
			line.WriteByte(' ')
		}
		fmt.Fprintf(&line, "%.1f,%.1f", xs[j], ys[j])
	}
	c.Line = line.String()
	c.Area = fmt.Sprintf("%.1f,%.1f %s %.1f,%.1f", xs[0], chartBottom, c.Line, xs[len(xs)-1], chartBottom)
	return c
}

// statusHTML is the page's template: the view (pageView), inline CSS, and
// nothing to fetch.
//
//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Parse(statusHTML))

// Formatting for people.

// formatNumber is v with two or three significant digits and a k, M or G
// suffix above a thousand.
func formatNumber(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a < 0.01:
		return "<0.01"
	case a < 10:
		return trimZeros(fmt.Sprintf("%.2f", v))
	case a < 100:
		return trimZeros(fmt.Sprintf("%.1f", v))
	case a < 1e3:
		return fmt.Sprintf("%.0f", v)
	}
	for _, u := range []struct {
		div    float64
		suffix string
	}{{1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if a >= u.div {
			return formatNumber(v/u.div) + u.suffix
		}
	}
	return fmt.Sprint(v)
}

// trimZeros drops a decimal fraction's trailing zeros: "2.50" → "2.5".
func trimZeros(s string) string {
	if !strings.Contains(s, ".") {
		return s
	}
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

func formatRate(v float64) string { return formatNumber(v) + "/s" }

// formatCount is a whole number with thin separators: "12 345".
func formatCount(v float64) string {
	n := int64(math.Round(v))
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + formatCount(-v)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteRune(c)
	}
	return b.String()
}

// formatBytes is a size in decimal units: "512 B", "1.5 kB", "2.3 GB".
func formatBytes(v float64) string {
	units := []string{"B", "kB", "MB", "GB", "TB", "PB"}
	i := 0
	for math.Abs(v) >= 1000 && i < len(units)-1 {
		v /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", v)
	}
	return formatNumber(v) + " " + units[i]
}

func formatByteRate(v float64) string { return formatBytes(v) + "/s" }

// formatSeconds is a latency: "250 µs", "3.2 ms", "1.5 s".
func formatSeconds(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 1e-3:
		return formatNumber(v*1e6) + " µs"
	case v < 1:
		return formatNumber(v*1e3) + " ms"
	}
	return formatNumber(v) + " s"
}

func formatAgeSeconds(v float64) string { return formatAge(time.Duration(v * float64(time.Second))) }

// formatAge is how long something has waited, to the second: "< 1 s",
// "4 min 10 s".
func formatAge(d time.Duration) string {
	if d < time.Second {
		return "< 1 s"
	}
	return formatDuration(d)
}

// formatDuration is a span of time in its two largest units: "3 d 4 h",
// "2 h 5 min", "4 min 10 s", "12 s".
func formatDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	if d < time.Second {
		return formatSeconds(d.Seconds())
	}
	s := int64(d / time.Second)
	days, hours, mins, secs := s/86400, s/3600%24, s/60%60, s%60
	join := func(a int64, ua string, b int64, ub string) string {
		if b == 0 {
			return fmt.Sprintf("%d %s", a, ua)
		}
		return fmt.Sprintf("%d %s %d %s", a, ua, b, ub)
	}
	switch {
	case days > 0:
		return join(days, "d", hours, "h")
	case hours > 0:
		return join(hours, "h", mins, "min")
	case mins > 0:
		return join(mins, "min", secs, "s")
	}
	return fmt.Sprintf("%d s", secs)
}

// formatOffset is a clock offset with its sign: "+3.2 ms", "-1.5 s".
func formatOffset(v float64) string {
	if v == 0 {
		return "0"
	}
	if v < 0 {
		return "−" + formatSeconds(-v)
	}
	return "+" + formatSeconds(v)
}

package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"mnm/testclient"
)

// scrape fetches /metrics from the daemon's admin listener and parses it
// with Prometheus' own text parser, as a Prometheus server would.
func scrape(t *testing.T, s *e2eServer) map[string]*dto.MetricFamily {
	t.Helper()
	body := adminGet(t, s, "/metrics", http.StatusOK)
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return mfs
}

// adminGet GETs path from the admin listener and checks the status.
func adminGet(t *testing.T, s *e2eServer, path string, status int) string {
	t.Helper()
	resp, err := http.Get("http://" + s.d.adminAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %d, want %d: %s", path, resp.StatusCode, status, b)
	}
	return string(b)
}

// metricValue is the value of the series of family name whose labels
// include labels ("k=v" each); it fails the test when there is none.
func metricValue(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	v, ok := findMetric(mfs, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return v
}

func findMetric(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		match := true
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if have[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// TestMetricsScrape drives a live server and checks that /metrics, scraped
// and parsed as Prometheus does, counts exactly what happened: sign-ups,
// posts and their bytes, deliveries and acks, a failed login and its quit,
// the latency histograms, the backlog of an offline device, and the user
// database's and the runtime's figures.
func TestMetricsScrape(t *testing.T) {
	s := startE2E(t, t.TempDir())
	alice, _ := s.register("alice")
	bob, rb := s.register("bob")

	const posts, size = 10, 100
	for i := range posts {
		ack, err := alice.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, bytes.Repeat([]byte{'a' + byte(i)}, size))
		if err != nil || ack.Error != "" {
			t.Fatalf("post %d: %v %q", i, err, ack.Error)
		}
	}
	recvDeliveries(t, bob, posts)
	waitFor(t, "bob's acks", func() bool { return s.d.store.Backlog().Messages == 0 })

	// A wrong nodeid: one login failure, one quit.
	if _, _, err := testclient.Login(s.addr, rb.UID, strings.Repeat("B", 40), testclient.Options{}); err == nil {
		t.Fatal("login with a wrong nodeid succeeded")
	}

	mfs := scrape(t, s)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"mnm_registrations_total", nil, 2},
		{"mnm_posts_total", nil, posts},
		{"mnm_post_bytes_total", nil, posts * size},
		{"mnm_deliveries_total", nil, posts},
		{"mnm_acks_total", nil, posts},
		{"mnm_post_ack_seconds", nil, posts}, // the histogram's count
		{"mnm_login_failures_total", []string{"reason=credentials"}, 1},
		{"mnm_login_failures_total", []string{"reason=backoff"}, 0},
		{"mnm_quits_sent_total", []string{"reason=login failed"}, 1},
		{"mnm_limit_hits_total", []string{"kind=pings_per_day"}, 0},
		{"mnm_users", nil, 2},
		{"mnm_groups", nil, 0},
		{"mnm_links_logged_in", nil, 2},
		{"mnm_users_online", nil, 2},
		{"mnm_queued_messages", nil, 0},
		{"mnm_devices_backlogged", nil, 0},
		{"mnm_build_info", []string{"version=" + version}, 1},
	} {
		if got := metricValue(t, mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := metricValue(t, mfs, "mnm_delivery_bytes_total"); got <= posts*size {
		t.Errorf("mnm_delivery_bytes_total = %v, want more than the data (%d): envelopes count too", got, posts*size)
	}
	if got := metricValue(t, mfs, "mnm_store_commit_seconds"); got < 1 {
		t.Errorf("mnm_store_commit_seconds counted %v commits", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "mnm_ntp_offset_seconds",
		"mnm_store_bytes", "mnm_oldest_queued_seconds", "mnm_links_open"} {
		if _, ok := findMetric(mfs, name); !ok {
			t.Errorf("no %s", name)
		}
	}

	// Bob goes away; what alice sends now waits in his queue.
	bob.Close()
	waitFor(t, "bob offline", func() bool { return s.d.srv.Stats().Devices == 1 })
	for i := range 3 {
		if ack, err := alice.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, fmt.Appendf(nil, "later %d", i)); err != nil || ack.Error != "" {
			t.Fatalf("post: %v %q", err, ack.Error)
		}
	}
	mfs = scrape(t, s)
	for name, want := range map[string]float64{"mnm_queued_messages": 3, "mnm_devices_backlogged": 1, "mnm_links_logged_in": 1} {
		if got := metricValue(t, mfs, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := metricValue(t, mfs, "mnm_queued_bytes"); got < float64(3*len("later 0")) {
		t.Errorf("mnm_queued_bytes = %v", got)
	}
}

// Every label of mnm's own metrics takes its values from a fixed set: a
// flood of strangers quitting for every reason, with odd uids, adds no
// series beyond the known ones.
func TestMetricsLabelsBounded(t *testing.T) {
	s := startE2E(t, t.TempDir())
	for i := range 20 {
		testclient.Login(s.addr, fmt.Sprintf("NoSuchUID%02d", i), strings.Repeat("C", 40), testclient.Options{})
	}
	mfs := scrape(t, s)
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "mnm_") {
			continue
		}
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				switch lp.GetName() {
				case "reason", "kind", "version":
				default:
					t.Errorf("%s has label %s=%q: labels must come from fixed sets", name, lp.GetName(), lp.GetValue())
				}
				if strings.Contains(lp.GetValue(), "NoSuchUID") {
					t.Errorf("%s has a uid in a label: %s", name, lp.GetValue())
				}
			}
		}
	}
	if got := metricValue(t, mfs, "mnm_login_failures_total", "reason=credentials"); got != 20 {
		t.Errorf("login failures = %v, want 20", got)
	}
}

// The probes: /healthz answers while the process serves, /readyz while it
// can serve members, and neither needs a token.
func TestAdminProbes(t *testing.T) {
	s := startE2E(t, t.TempDir())
	if got := adminGet(t, s, "/healthz", http.StatusOK); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
	if got := adminGet(t, s, "/readyz", http.StatusOK); got != "ready\n" {
		t.Errorf("/readyz = %q", got)
	}
	// Once shutdown begins the server is no longer ready, while the
	// listener still answers.
	close(s.d.stopping)
	if got := adminGet(t, s, "/readyz", http.StatusServiceUnavailable); got != "not ready: shutting down\n" {
		t.Errorf("/readyz while stopping = %q", got)
	}
	s.d.stopping = make(chan struct{}) // for the test's own shutdown
}

package qlib

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mnm/qlib/tmtp"
)

// The server's metrics, in Prometheus' terms. Every label takes values
// from a fixed set named here (reasons, kinds), never from a member, a
// device or an address, so the number of series is bounded whatever the
// traffic.
type metrics struct {
	logins        prometheus.Counter
	loginFailures *prometheus.CounterVec // by loginFailure
	registrations prometheus.Counter
	quits         *prometheus.CounterVec // by quit reason (quitLabel)
	posts         prometheus.Counter     // requests that stored messages: posts, pings, invitations
	postBytes     prometheus.Counter     // their data
	deliveries    prometheus.Counter     // stored messages written to a device, resends included
	resends       prometheus.Counter     // of which resent after no ack
	deliveryBytes prometheus.Counter
	acks          prometheus.Counter // devices' acks that took a message off a queue
	postAck       prometheus.Histogram
	limitHits     *prometheus.CounterVec // by limitHit
}

// latencyBuckets are for post→ack: an fsync takes from tens of microseconds
// (a battery-backed cache) to tens of milliseconds (a cloud disk), and a big
// post's upload takes seconds.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

func newMetrics(s *Server, reg prometheus.Registerer) *metrics {
	m := &metrics{
		logins: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_logins_total",
			Help: "Successful logins (registrations not included)."}),
		loginFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mnm_login_failures_total",
			Help: "Refused logins, by reason."}, []string{"reason"}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_registrations_total",
			Help: "New members registered."}),
		quits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mnm_quits_sent_total",
			Help: "Quit messages sent to clients, by reason (the quit's text)."}, []string{"reason"}),
		posts: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_posts_total",
			Help: "Requests that stored messages and were acked: posts, pings, invitations."}),
		postBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_post_bytes_total",
			Help: "Data bytes of posts received."}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_deliveries_total",
			Help: "Stored messages written to devices, resends included."}),
		resends: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_resends_total",
			Help: "Deliveries made again because the device did not ack in time."}),
		deliveryBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_delivery_bytes_total",
			Help: "Bytes of stored messages (envelope and data) written to devices."}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{Name: "mnm_acks_total",
			Help: "Device acks that took a message off a queue."}),
		postAck: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mnm_post_ack_seconds",
			Help:    "From a post's header arriving to its ack being queued, once the message is durable.",
			Buckets: latencyBuckets}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mnm_limit_hits_total",
			Help: "Requests or links refused by a limit, by kind."}, []string{"kind"}),
	}
	// The labels every dashboard expects are there from the start, at 0,
	// rather than appearing on their first event.
	for _, r := range loginFailureReasons {
		m.loginFailures.WithLabelValues(string(r))
	}
	for _, k := range limitHits {
		m.limitHits.WithLabelValues(string(k))
	}
	if reg == nil {
		return m
	}
	gauge := func(name, help string, fn func(Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return fn(s.Stats()) })
	}
	reg.MustRegister(m.logins, m.loginFailures, m.registrations, m.quits, m.posts, m.postBytes,
		m.deliveries, m.resends, m.deliveryBytes, m.acks, m.postAck, m.limitHits,
		gauge("mnm_links_open", "Open TMTP links, logged in or not.",
			func(st Stats) float64 { return float64(st.Links) }),
		gauge("mnm_links_logged_in", "Links with a logged-in device.",
			func(st Stats) float64 { return float64(st.Devices) }),
		gauge("mnm_links_parked", "Logged-in links idle long enough to have parked their goroutine and buffers.",
			func(st Stats) float64 { return float64(st.Parked) }),
		gauge("mnm_links_prelogin", "Links not logged in yet.",
			func(st Stats) float64 { return float64(st.PreLoginLinks) }),
		gauge("mnm_users_online", "Members with at least one device logged in.",
			func(st Stats) float64 { return float64(st.Users) }),
		gauge("mnm_prelogin_buffer_bytes", "Memory held in long-header buffers by links not logged in.",
			func(st Stats) float64 { return float64(st.PreLoginBytes) }),
	)
	return m
}

// loginFailure is why a login was refused, a label of
// mnm_login_failures_total.
type loginFailure string

const (
	failCredentials loginFailure = "credentials" // no such uid or device, or a wrong nodeid
	failBackoff     loginFailure = "backoff"     // the address or uid is backing off (Limits)
	failMalformed   loginFailure = "malformed"   // the nodeid is not base32
	failToken       loginFailure = "token"       // a third-party token missing, invalid or another account's
	failTakenOver   loginFailure = "unavailable" // shutting down, or the device was revoked meanwhile
	failError       loginFailure = "error"       // the directory failed
)

var loginFailureReasons = []loginFailure{failCredentials, failBackoff, failMalformed, failToken, failTakenOver, failError}

// limitHit is the kind of a limit that refused something, a label of
// mnm_limit_hits_total.
type limitHit string

const (
	hitMaxLinks       limitHit = "max_links"
	hitLinksPerAddr   limitHit = "links_per_address"
	hitPreLoginLinks  limitHit = "prelogin_links"
	hitPreLoginEvict  limitHit = "prelogin_evict"
	hitPreLoginBytes  limitHit = "prelogin_bytes"
	hitRegistrations  limitHit = "registrations_per_hour"
	hitLoginBackoff   limitHit = "login_backoff"
	hitPings          limitHit = "pings_per_day"
	hitInvitations    limitHit = "invitations_per_day"
	hitGroups         limitHit = "groups_per_day"
	hitInvitee        limitHit = "invitations_per_invitee_per_day"
	hitDevicesPerPost limitHit = "devices_per_post"
	hitQueueBytes     limitHit = "queue_bytes_per_device"
)

var limitHits = []limitHit{hitMaxLinks, hitLinksPerAddr, hitPreLoginLinks, hitPreLoginEvict, hitPreLoginBytes,
	hitRegistrations, hitLoginBackoff, hitPings, hitInvitations, hitGroups, hitInvitee, hitDevicesPerPost, hitQueueBytes}

// quitReasons are the quit texts the server sends; quitLabel maps any other
// to "other", so that the label's values stay a fixed set.
var quitReasons = map[string]bool{
	tmtp.QuitHeaderLength: true, tmtp.QuitHeader: true, tmtp.QuitRepetition: true, tmtp.QuitUnauthed: true,
	tmtp.QuitConnected: true, tmtp.QuitNoTmtpRev: true, tmtp.QuitAuthRequired: true, tmtp.QuitRegister: true,
	tmtp.QuitBase32: true, tmtp.QuitLoginFailed: true, tmtp.QuitNodeConnected: true, tmtp.QuitLogout: true,
	tmtp.QuitDataTooLong: true, tmtp.QuitDataTooShort: true, tmtp.QuitNotUTF8: true, tmtp.QuitRecipientEmpty: true,
	quitBusy: true,
}

func quitLabel(reason string) string {
	if quitReasons[reason] {
		return reason
	}
	return "other"
}

// loginFailed counts a refused login.
func (m *metrics) loginFailed(why loginFailure) { m.loginFailures.WithLabelValues(string(why)).Inc() }

// since is the seconds from start to now.
func since(start time.Time) float64 { return time.Since(start).Seconds() }

// posted counts a request whose messages are durable and acked, and its
// latency from start, when its header arrived.
func (m *metrics) posted(start time.Time) {
	m.posts.Inc()
	m.postAck.Observe(since(start))
}

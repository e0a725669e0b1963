package main

import (
	"fmt"
	"net/url"
	"strings"

	"mnm/qlib"
)

// ClusterConfig runs this server as one frontend of a site spread over
// several machines (cluster/DESIGN.md): messages, queues, users and groups
// live in a NATS JetStream cluster instead of the data directory, and
// members may connect to any frontend. Absent, the server keeps everything
// in its data directory, as a single machine does.
type ClusterConfig struct {
	// Frontend is this frontend's number, 1…255, unique in the site: it
	// names the frontend to the others and is part of every message id it
	// issues, so that no two frontends ever issue the same.
	Frontend int `json:"frontend"`
	// NATS is how to reach the JetStream cluster.
	NATS NATSConfig `json:"nats"`
	// Prefix names the site's streams, buckets and subjects, so that
	// several sites may share one NATS cluster; absent, "MNM".
	Prefix string `json:"prefix,omitempty"`
	// Replicas is how many nodes hold each stream and bucket: 1, 3 or 5;
	// absent, 3.
	Replicas int `json:"replicas,omitempty"`
	// MaxBatch is the NATS cluster's limit on an atomic batch's messages
	// (jetstream.limits.batch.max_msgs): a post is one batch of one message
	// and two per recipient device, so it bounds a post's devices. Absent,
	// 1,000, the NATS default; contrib/nats sets 40,001.
	MaxBatch int `json:"maxBatch,omitempty"`
	// LivenessSeconds is how long a frontend that stops answering keeps its
	// members' devices before another frontend may serve them; it must
	// outlast a JetStream election. Absent, 15.
	LivenessSeconds int `json:"livenessSeconds,omitempty"`
}

// NATSConfig is a NATS client's settings.
type NATSConfig struct {
	// URLs are the cluster's nodes: nats://host:port or tls://host:port.
	URLs []string `json:"urls"`
	// CredsFile is a NATS credentials file (a user JWT and its key);
	// absent, the connection authenticates by the URLs' user info, if any.
	CredsFile string `json:"credsFile,omitempty"`
	// CAFile verifies the nodes' certificates (TLS); absent, the system's
	// roots do, when the URLs say tls://.
	CAFile string `json:"caFile,omitempty"`
	// CertFile and KeyFile are this frontend's client certificate, for a
	// cluster that verifies its clients; both or neither.
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
}

// Bounds of the cluster section.
const (
	maxFrontend = 255 // jsstore's ids give a frontend 8 bits
	// maxNATSURLs bounds the node list: a JetStream cluster has 3 or 5
	// nodes, and a few more seed URLs are plenty.
	maxNATSURLs = 16
	// maxLivenessSeconds: a minute of a dead frontend's members waiting is
	// already more than anyone should want.
	maxLivenessSeconds = 60
	// minLivenessSeconds: a JetStream election takes 4–9 s on real
	// machines; a shorter TTL would have every frontend fence itself when
	// a bucket's leader dies.
	minLivenessSeconds = 5
	// maxMaxBatch is far above any batch a post makes (2 × 20,000
	// devices + 1): a typo, not a setting.
	maxMaxBatch            = 1 << 20
	minMaxBatch            = 8 // a post to one device: clusterDevicesPerPost
	defaultMaxBatch        = 1000
	defaultClusterPrefix   = "MNM"
	defaultClusterReplicas = 3
	defaultLivenessSeconds = 15
)

// validate checks the cluster section; c is the whole configuration, for
// the settings a cluster cannot honour.
func (cc *ClusterConfig) validate(c *Config, present map[string]bool, bad func(field, format string, args ...any)) {
	if cc.Frontend < 1 || cc.Frontend > maxFrontend {
		bad("cluster.frontend", "%d is outside 1…%d", cc.Frontend, maxFrontend)
	}
	switch {
	case len(cc.NATS.URLs) == 0:
		bad("cluster.nats.urls", "empty: name the NATS cluster's nodes")
	case len(cc.NATS.URLs) > maxNATSURLs:
		bad("cluster.nats.urls", "%d URLs, at most %d", len(cc.NATS.URLs), maxNATSURLs)
	}
	for i, u := range cc.NATS.URLs {
		if err := checkNATSURL(u); err != nil {
			bad(fmt.Sprintf("cluster.nats.urls[%d]", i), "%v", err)
		}
	}
	if (cc.NATS.CertFile == "") != (cc.NATS.KeyFile == "") {
		bad("cluster.nats.certFile", "certFile and keyFile go together")
	}
	if present["cluster.prefix"] && !validClusterPrefix(cc.Prefix) {
		bad("cluster.prefix", "%q: 1 to 32 capital letters, digits, - or _", cc.Prefix)
	}
	if present["cluster.replicas"] && cc.Replicas != 1 && cc.Replicas != 3 && cc.Replicas != 5 {
		bad("cluster.replicas", "%d is not 1, 3 or 5", cc.Replicas)
	}
	if present["cluster.maxBatch"] && (cc.MaxBatch < minMaxBatch || cc.MaxBatch > maxMaxBatch) {
		bad("cluster.maxBatch", "%d is outside %d…%d", cc.MaxBatch, minMaxBatch, maxMaxBatch)
	}
	if present["cluster.livenessSeconds"] && (cc.LivenessSeconds < minLivenessSeconds || cc.LivenessSeconds > maxLivenessSeconds) {
		bad("cluster.livenessSeconds", "%d is outside %d…%d", cc.LivenessSeconds, minLivenessSeconds, maxLivenessSeconds)
	}
	// The away policy stamps logins in the user database; a frontend's
	// logins do not write to the site's directory (clusterdir.go).
	if c.AwayAfterDays != 0 {
		bad("awayAfterDays", "the away policy is not available with cluster (yet): set it to 0")
	}
}

// checkNATSURL accepts nats:// and tls:// URLs with a host and port.
func checkNATSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "nats" && u.Scheme != "tls" {
		return fmt.Errorf("%q: the scheme must be nats or tls", s)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("%q: needs a host and a port", s)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q: a NATS URL has no path, query or fragment", s)
	}
	return nil
}

// validClusterPrefix reports whether p can name streams, buckets and
// subject tokens alike. Capitals only: the store's subjects use the prefix
// in lower case (clusterdaemon.go), so that they never share a subject with
// the frontends' requests, and two sites must not differ by case alone.
func validClusterPrefix(p string) bool {
	if p == "" || len(p) > 32 {
		return false
	}
	return strings.IndexFunc(p, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) < 0
}

// fillDefaults sets what the section left out.
func (cc *ClusterConfig) fillDefaults() {
	if cc.Prefix == "" {
		cc.Prefix = defaultClusterPrefix
	}
	if cc.Replicas == 0 {
		cc.Replicas = defaultClusterReplicas
	}
	if cc.MaxBatch == 0 {
		cc.MaxBatch = defaultMaxBatch
	}
	if cc.LivenessSeconds == 0 {
		cc.LivenessSeconds = defaultLivenessSeconds
	}
}

// resolve makes the section's file paths relative to the config file's
// directory.
func (cc *ClusterConfig) resolve(abs func(string) string) {
	for _, p := range []*string{&cc.NATS.CredsFile, &cc.NATS.CAFile, &cc.NATS.CertFile, &cc.NATS.KeyFile} {
		if *p != "" {
			*p = abs(*p)
		}
	}
}

// qlibLimits is the limits section as qlib takes it. In a cluster a post is
// one atomic batch (cluster/jsstore, draft.check): an entry and a ref per
// device, and for each of its messages (two for a PostNotify) a record and
// a large draft's marker, and maybe its last chunk and an id ceiling. So
// limits.devicesPerPost is lowered to what cluster.maxBatch holds: a post
// over it is refused with the protocol's "too many recipients" rather than
// failing in the store.
func (c *Config) qlibLimits() *qlib.Limits {
	l := c.Limits.Qlib()
	if c.Cluster != nil {
		if fit := clusterDevicesPerPost(c.Cluster.MaxBatch); l.DevicesPerPost <= 0 || l.DevicesPerPost > fit {
			l.DevicesPerPost = fit
		}
	}
	return l
}

// clusterDevicesPerPost is the most devices one post's batch of maxBatch
// messages holds: 2 per device, and 6 for the rest at most.
func clusterDevicesPerPost(maxBatch int) int { return (maxBatch - 6) / 2 }

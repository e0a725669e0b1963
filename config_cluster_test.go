package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"mnm/qlib"
)

// TestParseConfigCluster: the cluster section's values, defaults, paths
// and every refusal.
func TestParseConfigCluster(t *testing.T) {
	const base = `{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}`
	parse := func(extra string) (*Config, error) { return parseConfig([]byte(base+extra+`}`), "/etc/mnm") }

	cfg, err := parse("")
	if err != nil || cfg.Cluster != nil {
		t.Fatalf("absent: %v, %+v", err, cfg.Cluster)
	}
	cfg, err = parse(`,"cluster":{"frontend":2,"nats":{"urls":["nats://10.0.0.1:4222","tls://n2.example:4222"],
		"credsFile":"fe.creds","caFile":"/etc/nats/ca.pem","certFile":"c.pem","keyFile":"k.pem"}}`)
	if err != nil {
		t.Fatal(err)
	}
	want := ClusterConfig{Frontend: 2, Prefix: "MNM", Replicas: 3, MaxBatch: 1000, LivenessSeconds: 15, NATS: NATSConfig{
		URLs:      []string{"nats://10.0.0.1:4222", "tls://n2.example:4222"},
		CredsFile: "/etc/mnm/fe.creds", CAFile: "/etc/nats/ca.pem", CertFile: "/etc/mnm/c.pem", KeyFile: "/etc/mnm/k.pem"}}
	if got, _ := json.Marshal(cfg.Cluster); string(got) != mustJSON(t, want) {
		t.Errorf("parsed %s\nwant   %s", got, mustJSON(t, want))
	}
	cfg, err = parse(`,"cluster":{"frontend":255,"prefix":"SITE_2","replicas":5,"maxBatch":40001,"livenessSeconds":60,"nats":{"urls":["nats://a:1"]}}`)
	if err != nil || cfg.Cluster.Prefix != "SITE_2" || cfg.Cluster.Replicas != 5 || cfg.Cluster.LivenessSeconds != 60 || cfg.Cluster.Frontend != 255 || cfg.Cluster.MaxBatch != 40001 {
		t.Errorf("explicit settings: %v, %+v", err, cfg.Cluster)
	}

	const urls = `"nats":{"urls":["nats://a:1"]}`
	for _, b := range []struct{ extra, want string }{
		{`,"cluster":{` + urls + `}`, "cluster.frontend: 0 is outside 1…255"},
		{`,"cluster":{"frontend":256,` + urls + `}`, "cluster.frontend: 256 is outside"},
		{`,"cluster":{"frontend":1}`, "cluster.nats.urls: empty"},
		{`,"cluster":{"frontend":1,"nats":{"urls":[]}}`, "cluster.nats.urls: empty"},
		{`,"cluster":{"frontend":1,"nats":{"urls":[` + strings.Repeat(`"nats://a:1",`, maxNATSURLs) + `"nats://a:1"]}}`, "17 URLs, at most 16"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["http://a:1"]}}`, "cluster.nats.urls[0]: \"http://a:1\": the scheme must be nats or tls"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://a"]}}`, "needs a host and a port"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://:4222"]}}`, "needs a host and a port"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://a:1/x"]}}`, "no path, query or fragment"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://a:1?x=1"]}}`, "no path, query or fragment"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://a b:1"]}}`, "cluster.nats.urls[0]"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://a:1"],"certFile":"c"}}`, "certFile and keyFile go together"},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://a:1"],"keyFile":"k"}}`, "certFile and keyFile go together"},
		{`,"cluster":{"frontend":1,"prefix":"",` + urls + `}`, `cluster.prefix: ""`},
		{`,"cluster":{"frontend":1,"prefix":"mnm",` + urls + `}`, "capital letters"},
		{`,"cluster":{"frontend":1,"prefix":"A.B",` + urls + `}`, "capital letters"},
		{`,"cluster":{"frontend":1,"prefix":"` + strings.Repeat("A", 33) + `",` + urls + `}`, "capital letters"},
		{`,"cluster":{"frontend":1,"replicas":2,` + urls + `}`, "cluster.replicas: 2 is not 1, 3 or 5"},
		{`,"cluster":{"frontend":1,"maxBatch":2,` + urls + `}`, "cluster.maxBatch: 2 is outside 8…1048576"},
		{`,"cluster":{"frontend":1,"livenessSeconds":4,` + urls + `}`, "cluster.livenessSeconds: 4 is outside 5…60"},
		{`,"cluster":{"frontend":1,"livenessSeconds":61,` + urls + `}`, "cluster.livenessSeconds: 61 is outside"},
		{`,"awayAfterDays":30,"cluster":{"frontend":1,` + urls + `}`, "awayAfterDays: the away policy is not available with cluster"},
		{`,"cluster":{"frontend":1,"nodes":3,` + urls + `}`, `unknown field "cluster.nodes"`},
		{`,"cluster":{"frontend":"1",` + urls + `}`, `want an integer`},
	} {
		if _, err := parse(b.extra); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: got %v, want an error containing %q", b.extra, err, b.want)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExampleConfigCluster: mnm.conf's cluster example, kept under
// "#cluster", is valid once enabled as its comment says.
func TestExampleConfigCluster(t *testing.T) {
	data, err := os.ReadFile("mnm.conf")
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte(`"#cluster":`)); n != 1 {
		t.Fatalf("mnm.conf has %d \"#cluster\" keys, want 1", n)
	}
	cfg, err := parseConfig(bytes.Replace(data, []byte(`"#cluster":`), []byte(`"cluster":`), 1), "/d")
	if err != nil {
		t.Fatalf("mnm.conf with its cluster enabled: %v", err)
	}
	if cc := cfg.Cluster; cc == nil || cc.Frontend != 1 || cc.MaxBatch != 40001 || len(cc.NATS.URLs) != 3 || cc.Replicas != 3 {
		t.Errorf("cluster example parsed as %+v", cfg.Cluster)
	}
}

// TestClusterDevicesPerPost: in a cluster a post's devices are bounded by
// what one atomic batch holds as well as by limits.devicesPerPost.
func TestClusterDevicesPerPost(t *testing.T) {
	const base = `{"name":"s","listen":{"net":"tcp","laddr":":1","certPath":"c","keyPath":"k"}`
	for _, tc := range []struct {
		extra string
		want  int
	}{
		{``, qlib.DefaultDevicesPerPost},
		{`,"limits":{"devicesPerPost":0}`, 0},
		{`,"cluster":{"frontend":1,"nats":{"urls":["nats://a:1"]}}`, 497},
		{`,"cluster":{"frontend":1,"maxBatch":40001,"nats":{"urls":["nats://a:1"]}}`, 19997},
		{`,"limits":{"devicesPerPost":100},"cluster":{"frontend":1,"nats":{"urls":["nats://a:1"]}}`, 100},
		{`,"limits":{"devicesPerPost":0},"cluster":{"frontend":1,"nats":{"urls":["nats://a:1"]}}`, 497},
		{`,"cluster":{"frontend":1,"maxBatch":8,"nats":{"urls":["nats://a:1"]}}`, 1},
	} {
		cfg, err := parseConfig([]byte(base+tc.extra+`}`), "/d")
		if err != nil {
			t.Fatalf("%s: %v", tc.extra, err)
		}
		if got := cfg.qlibLimits().DevicesPerPost; got != tc.want {
			t.Errorf("%s: devicesPerPost %d, want %d", tc.extra, got, tc.want)
		}
	}
}

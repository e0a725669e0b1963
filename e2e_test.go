package main

// End-to-end tests: the whole server (config, userdb, store, qlib) over real
// TLS on loopback, driven by the testclient library.

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mnm/testclient"
)

// e2eServer is a daemon started the way main starts it, from a config file in
// a temporary directory, with a loopback NTP responder as its clock.
type e2eServer struct {
	t    *testing.T
	dir  string
	cfg  string // config path
	d    *daemon
	addr string
	logs *lockedBuffer
}

// writeTestConfig writes a config for a loopback server in dir, with a fresh
// self-signed certificate, and returns its path.
func writeTestConfig(t *testing.T, dir, laddr string) string {
	t.Helper()
	return writeConfigFile(t, dir, testConfig(t, dir, laddr))
}

// testConfig returns writeTestConfig's config, having made its certificate
// in dir (unless one is there) and started its NTP responder.
func testConfig(t *testing.T, dir, laddr string) map[string]any {
	t.Helper()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := os.Stat(cert); err != nil {
		if err := CreateSelfSigned(cert, key, []string{"localhost"}); err != nil {
			t.Fatal(err)
		}
	}
	return map[string]any{
		"name":   "e2e",
		"ntp":    map[string]any{"hosts": []string{startNTPResponder(t, 0)}, "retries": 1, "required": true},
		"listen": map[string]any{"net": "tcp", "laddr": laddr, "certPath": "cert.pem", "keyPath": "key.pem"},
		"auth":   0,
		"authby": []any{},
	}
}

func startE2E(t *testing.T, dir string) *e2eServer {
	t.Helper()
	return serveE2E(t, dir, writeTestConfig(t, dir, "127.0.0.1:0"))
}

// serveE2E starts the daemon on the config file cfg in dir, stopped at the
// end of the test.
func serveE2E(t *testing.T, dir, cfg string) *e2eServer {
	t.Helper()
	s := &e2eServer{t: t, dir: dir, cfg: cfg, logs: newLockedBuffer()}
	s.start()
	t.Cleanup(func() {
		if s.d != nil {
			s.stop()
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs.String())
		}
	})
	return s
}

func (s *e2eServer) start() {
	s.t.Helper()
	logger := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := startDaemon(s.cfg, logger)
	if err != nil {
		s.t.Fatalf("start: %v", err)
	}
	s.d = d
	s.addr = d.ln.Addr().String()
}

func (s *e2eServer) stop() {
	s.t.Helper()
	if err := s.d.shutdown(); err != nil {
		s.t.Errorf("shutdown: %v", err)
	}
	s.d = nil
}

func (s *e2eServer) register(alias string) (*testclient.Client, testclient.Registration) {
	s.t.Helper()
	c, reg, err := testclient.Register(s.addr, "laptop", alias, testclient.Options{})
	if err != nil {
		s.t.Fatalf("register: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c, reg
}

func (s *e2eServer) login(uid, nodeid string) *testclient.Client {
	s.t.Helper()
	c, _, err := testclient.Login(s.addr, uid, nodeid, testclient.Options{})
	if err != nil {
		s.t.Fatalf("login: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *testclient.Client) *testclient.Frame {
	t.Helper()
	select {
	case f, ok := <-c.Messages():
		if !ok {
			t.Fatalf("link ended: %v", c.Err())
		}
		return f
	case <-time.After(15 * time.Second):
		t.Fatal("no message within 15s")
	}
	return nil
}

// recvDeliveries acks everything and returns the data of the first n
// deliveries, skipping login notices.
func recvDeliveries(t *testing.T, c *testclient.Client, n int) []*testclient.Frame {
	t.Helper()
	var out []*testclient.Frame
	for len(out) < n {
		f := recv(t, c)
		if err := c.Ack(f.Str("id")); err != nil {
			t.Fatal(err)
		}
		if f.Op() == "delivery" {
			if !f.HeadsumOK() {
				t.Fatalf("bad headsum: %s", f.Raw)
			}
			out = append(out, f)
		}
	}
	return out
}

// TestE2EPostToTwoDevices: register → second device → posts to a user with
// two devices → both receive in order → acks empty the queues, for good.
func TestE2EPostToTwoDevices(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a, ra := s.register("alice in wonderland")
	if ra.AliasError != "" {
		t.Fatalf("alias refused: %s", ra.AliasError)
	}
	b1, rb := s.register("_")
	b2node, b2dev, err := s.d.users.AddDevice(rb.UID, "phone")
	if err != nil {
		t.Fatal(err)
	}
	a2node, a2dev, err := s.d.users.AddDevice(ra.UID, "phone")
	if err != nil {
		t.Fatal(err)
	}
	b2 := s.login(rb.UID, b2node)
	a2 := s.login(ra.UID, a2node)

	const n = 1000
	acks := make(chan testclient.Ack, n)
	go func() {
		defer close(acks)
		for i := range n {
			ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, fmt.Appendf(nil, "message %d", i))
			if err != nil || ack.Error != "" {
				t.Errorf("post %d: %v %s", i, err, ack.Error)
				return
			}
			acks <- ack
		}
	}()
	var sent []testclient.Ack
	for ack := range acks {
		sent = append(sent, ack)
	}
	if len(sent) != n {
		t.Fatalf("%d posts acked", len(sent))
	}
	for i := 1; i < n; i++ {
		if sent[i].MsgID <= sent[i-1].MsgID {
			t.Fatalf("msgid %s after %s", sent[i].MsgID, sent[i-1].MsgID)
		}
	}
	for name, c := range map[string]*testclient.Client{"b1": b1, "b2": b2, "a2": a2} {
		got := recvDeliveries(t, c, n)
		for i, f := range got {
			if want := fmt.Sprintf("message %d", i); string(f.Data) != want || f.Str("id") != sent[i].MsgID || f.Str("from") != ra.UID {
				t.Fatalf("%s: delivery %d: %s %q, want %q id %s", name, i, f.Raw, f.Data, want, sent[i].MsgID)
			}
		}
	}
	// The sending device gets no copy of its own posts (only a2's login
	// notice).
	for len(a.Messages()) > 0 {
		if f := <-a.Messages(); f.Op() != "login" {
			t.Fatalf("sender's own device received %s", f.Raw)
		}
	}

	for _, dev := range []string{rb.UID + ".0", b2dev, a2dev} {
		waitFor(t, "the queue of "+dev+" to empty", func() bool { return s.d.store.Len(dev) == 0 })
	}
	a.Close()
	b1.Close()
	b2.Close()
	a2.Close()
	s.stop()
	s.start()
	for _, dev := range []string{rb.UID + ".0", b2dev, a2dev} {
		if l := s.d.store.Len(dev); l != 0 {
			t.Errorf("after restart, %s has %d queued entries", dev, l)
		}
	}
}

// TestE2ERestartRedelivers: unacked messages survive a restart on the same
// data and are delivered, in order, after login.
func TestE2ERestartRedelivers(t *testing.T) {
	s := startE2E(t, t.TempDir())
	a, ra := s.register("_")
	b, rb := s.register("_")
	b.Close()
	var ids []string
	for i := range 20 {
		ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, fmt.Appendf(nil, "m%d", i))
		if err != nil || ack.Error != "" {
			t.Fatalf("post: %v %s", err, ack.Error)
		}
		ids = append(ids, ack.MsgID)
	}
	a.Close()
	s.stop()
	s.start()
	b = s.login(rb.UID, rb.NodeID)
	got := recvDeliveries(t, b, len(ids))
	for i, f := range got {
		if f.Str("id") != ids[i] || string(f.Data) != fmt.Sprintf("m%d", i) {
			t.Fatalf("delivery %d after restart: %s %q, want id %s", i, f.Raw, f.Data, ids[i])
		}
	}
	// Ids issued after the restart are above every id before it.
	a = s.login(ra.UID, ra.NodeID)
	ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, []byte("after"))
	if err != nil || ack.Error != "" {
		t.Fatalf("post: %v %s", err, ack.Error)
	}
	if ack.MsgID <= ids[len(ids)-1] {
		t.Fatalf("msgid %s after restart is not above %s", ack.MsgID, ids[len(ids)-1])
	}
}

// freePort reserves a loopback port for a server started later.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

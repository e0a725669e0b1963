package main

// Two frontends of one site over a 3-node JetStream cluster: each a real
// qlib.Server with its own bus (cluster/bus) for the devices' sessions. The
// store and the user database are shared in-process until their clustered
// backends take their place (cluster/DESIGN.md, steps 2 and 3); what this
// tests is the takeover of a device across frontends through the real bus.

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"mnm/cluster"
	"mnm/cluster/bus"
	"mnm/cluster/natstest"
	"mnm/qlib"
	"mnm/qlib/store"
	"mnm/testclient"
)

// frontend is one qlib.Server of the site with its bus.
type frontend struct {
	srv  *qlib.Server
	bus  *bus.Bus
	nc   *nats.Conn // the bus's connection
	addr string
	logs *lockedBuffer
}

// startFrontends starts n frontends named fe0…, sharing users and st.
func startFrontends(t *testing.T, c *natstest.Cluster, n int, users *UserDB, st *store.Log, ttl time.Duration) []*frontend {
	t.Helper()
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := CreateSelfSigned(cert, key, []string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	fes := make([]*frontend, n)
	for i := range fes {
		fe := &frontend{}
		logger, logs := newTestLogger()
		fe.logs, logger = logs, logger.With("frontend", i)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		fe.nc = c.Connect(t)
		fe.bus, err = bus.New(ctx, bus.Options{
			Conn:        fe.nc,
			Frontend:    fmt.Sprintf("fe%d", i),
			LivenessTTL: ttl,
			Logger:      logger,
			OnEvict:     func(dev string) { fe.srv.EvictDevice(dev) },
		})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		fe.srv, err = qlib.NewServer(qlib.Config{Name: "cluster", Directory: users, Store: st, Logger: logger,
			Sessions: &cluster.Sessions{Bus: fe.bus, Log: logger}})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fe.addr = ln.Addr().String()
		served := make(chan error, 1)
		go func() { served <- fe.srv.Serve(tls.NewListener(ln, tlsConf)) }()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			fe.srv.Shutdown(ctx)
			<-served
			fe.bus.Close()
			if t.Failed() {
				t.Logf("frontend %d log:\n%s", i, fe.logs.String())
			}
		})
		fes[i] = fe
	}
	return fes
}

// TestClusterTakeoverAcrossFrontends: a device moves from frontend 0 to
// frontend 1 and back. Each time the link on the frontend it left is closed
// before the new login is answered, and the member gets every message once,
// in order, wherever it is: what was in flight first, then what was posted
// meanwhile on either frontend.
func TestClusterTakeoverAcrossFrontends(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	users, err := OpenUserDB(UserDBOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { users.Close() })
	st, err := store.Open(store.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fes := startFrontends(t, c, 2, users, st, 2*time.Second)

	sender, _, err := testclient.Register(fes[0].addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	member, reg, err := testclient.Register(fes[1].addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	member.Close()

	var sent []string
	post := func(text string) {
		t.Helper()
		ack, err := sender.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte(text))
		if err != nil || ack.Error != "" {
			t.Fatalf("post: %v %s", err, ack.Error)
		}
		sent = append(sent, ack.MsgID)
	}
	var got []string
	// recvOn reads n deliveries on c, acking all but the last when
	// holdLast (it stays in flight for the next move).
	recvOn := func(c *testclient.Client, n int, holdLast bool) {
		t.Helper()
		for read := 0; read < n; {
			f := recv(t, c)
			if f.Op() != "delivery" {
				c.Ack(f.Str("id")) // a login notice
				continue
			}
			got = append(got, f.Str("id"))
			read++
			if !holdLast || read < n {
				c.Ack(f.Str("id"))
			}
		}
	}

	post("one")
	on := make([]*testclient.Client, 0, 3)
	reads := []int{1, 2, 2} // the message held in flight comes again after each move
	for i, fe := range []*frontend{fes[0], fes[1], fes[0]} {
		c, _, err := testclient.Login(fe.addr, reg.UID, reg.NodeID, testclient.Options{})
		if err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		defer c.Close()
		if i > 0 {
			// The previous link was closed before this login's reply.
			select {
			case <-on[i-1].Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("move %d: the link on the frontend left is still open", i)
			}
			post(fmt.Sprintf("posted after move %d", i))
		}
		on = append(on, c)
		recvOn(c, reads[i], i < 2)
	}
	// Every message once, in order, the in-flight ones resent once each.
	want := []string{sent[0], sent[0], sent[1], sent[1], sent[2]}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("deliveries %v, want %v (the held ones twice)", got, want)
	}
}

// TestClusterFrontendDies: a frontend stops at once (its connection to the
// cluster dropped, its links cut, nothing released): its member logs in on
// the other frontend, which takes the device once the dead frontend's
// liveness has run out, and delivers what was queued meanwhile.
func TestClusterFrontendDies(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	users, err := OpenUserDB(UserDBOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { users.Close() })
	st, err := store.Open(store.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	const ttl = time.Second
	fes := startFrontends(t, c, 2, users, st, ttl)

	sender, _, err := testclient.Register(fes[1].addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	member, reg, err := testclient.Register(fes[0].addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()

	// Frontend 0 dies: no release, no goodbye to the cluster.
	fes[0].nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	fes[0].srv.Shutdown(ctx) // cuts its links
	cancel()
	<-member.Done()

	ack, err := sender.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, []byte("while you were away"))
	if err != nil || ack.Error != "" {
		t.Fatalf("post: %v %s", err, ack.Error)
	}
	start := time.Now()
	again, _, err := testclient.Login(fes[1].addr, reg.UID, reg.NodeID, testclient.Options{AutoAck: true})
	if err != nil {
		t.Fatalf("login on the live frontend: %v", err)
	}
	defer again.Close()
	took := time.Since(start)
	if took > 3*ttl+2*time.Second {
		t.Errorf("the takeover from a dead frontend took %v, its liveness lasts %v", took, ttl)
	}
	t.Logf("takeover from the dead frontend after %v (liveness %v)", took.Round(time.Millisecond), ttl)
	for {
		if f := recv(t, again); f.Op() == "delivery" {
			if f.Str("id") != ack.MsgID {
				t.Fatalf("got %s, want %s", f.Str("id"), ack.MsgID)
			}
			break
		}
	}
}

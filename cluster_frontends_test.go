package main

// Two frontends of one site over a 3-node JetStream cluster: each a real
// qlib.Server with its own bus (cluster/bus) for the devices' sessions and,
// in the tests that say so, its own JetStream store (cluster/jsstore) on
// the site's one stream. The user database is shared in-process until its
// clustered backend takes its place (cluster/DESIGN.md, step 3).

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster"
	"mnm/cluster/bus"
	"mnm/cluster/jsstore"
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

// siteStore gives frontend i its store: one shared in-process, or its own
// on the cluster.
type siteStore func(t *testing.T, i int, nc *nats.Conn) qlib.Store

// sharedStore is a siteStore handing every frontend st.
func sharedStore(st *store.Log) siteStore {
	return func(*testing.T, int, *nats.Conn) qlib.Store { return st }
}

// jetStreamStore is a siteStore giving each frontend its own jsstore.Store
// on the site's stream, node number i.
func jetStreamStore(t *testing.T, i int, nc *nats.Conn) qlib.Store {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := jsstore.Open(ctx, jsstore.Options{JS: js, Conn: nc, Node: uint8(i), Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// siteUsers is the user database the frontends share, in process, until
// the clustered directory takes its place.
func siteUsers(t *testing.T) *UserDB {
	t.Helper()
	users, err := OpenUserDB(UserDBOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { users.Close() })
	return users
}

// frontendOption changes a frontend's setup: withPresence.
type frontendOption func(*frontendSetup)

// frontendSetup is what the options of startFrontends set.
type frontendSetup struct {
	presence bool // presence across frontends (cluster.Presence)
}

// withPresence gives each frontend a cluster.Presence over its bus.
func withPresence() frontendOption { return func(s *frontendSetup) { s.presence = true } }

// startFrontends starts n frontends named fe0…, sharing users, each with
// the store stores gives it.
func startFrontends(t *testing.T, c *natstest.Cluster, n int, users *UserDB, stores siteStore, ttl time.Duration, opts ...frontendOption) []*frontend {
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
	var setup frontendSetup
	for _, o := range opts {
		o(&setup)
	}
	fes := make([]*frontend, n)
	for i := range fes {
		fe := &frontend{}
		logger, logs := newTestLogger()
		fe.logs, logger = logs, logger.With("frontend", i)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		fe.nc = c.Connect(t)
		busOpts := bus.Options{
			Conn:        fe.nc,
			Frontend:    fmt.Sprintf("fe%d", i),
			LivenessTTL: ttl,
			Logger:      logger,
			OnEvict:     func(dev string) { fe.srv.EvictDevice(dev) },
		}
		var presence *cluster.Presence
		if setup.presence {
			presence = &cluster.Presence{Log: logger}
			busOpts.OnPresence, busOpts.OnUserGone = presence.OnPresence, presence.OnUserGone
		}
		fe.bus, err = bus.New(ctx, busOpts)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		st := stores(t, i, fe.nc)
		cfg := qlib.Config{Name: "cluster", Directory: users, Store: st, Logger: logger,
			Sessions: &cluster.Sessions{Bus: fe.bus, Log: logger}}
		if presence != nil {
			presence.Bus = fe.bus
			cfg.Presence = presence
		}
		fe.srv, err = qlib.NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if presence != nil {
			presence.Attach(fe.srv)
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
			if js, ok := st.(*jsstore.Store); ok {
				js.Close()
			}
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
// meanwhile on either frontend. With a store shared in-process, and with
// each frontend's own JetStream store.
func TestClusterTakeoverAcrossFrontends(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	t.Run("shared store", func(t *testing.T) {
		st, err := store.Open(store.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		testTakeoverAcrossFrontends(t, c, sharedStore(st))
	})
	t.Run("jetstream", func(t *testing.T) { testTakeoverAcrossFrontends(t, c, jetStreamStore) })
}

func testTakeoverAcrossFrontends(t *testing.T, c *natstest.Cluster, stores siteStore) {
	users := siteUsers(t)
	fes := startFrontends(t, c, 2, users, stores, 2*time.Second)

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
// liveness has run out, and delivers from the site's stream what was
// queued meanwhile.
func TestClusterFrontendDies(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	users := siteUsers(t)
	const ttl = time.Second
	fes := startFrontends(t, c, 2, users, jetStreamStore, ttl)

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

// TestClusterDeliveryAcrossFrontends: two senders on two frontends post to
// a member with two devices, one online on frontend 1, the other away. Each
// device gets every post exactly once and each sender's posts in order: the
// online one as they come, on the frontend the posts did not arrive at, the
// away one when it logs in, on the other frontend.
func TestClusterDeliveryAcrossFrontends(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	users := siteUsers(t)
	fes := startFrontends(t, c, 2, users, jetStreamStore, 5*time.Second)

	var senders [2]*testclient.Client
	for i := range senders {
		s, _, err := testclient.Register(fes[i].addr, "laptop", "_", testclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		senders[i] = s
	}
	online, reg, err := testclient.Register(fes[1].addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer online.Close()
	awayNode, _, err := users.AddDevice(reg.UID, "phone")
	if err != nil {
		t.Fatal(err)
	}

	const perSender = 40
	var wg sync.WaitGroup
	for i, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range perSender {
				ack, err := s.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, fmt.Appendf(nil, "%d %d", i, n))
				if err != nil || ack.Error != "" {
					t.Errorf("sender %d post %d: %v %s", i, n, err, ack.Error)
					return
				}
			}
		}()
	}
	// check reads 2 × perSender deliveries on c, acking each, and checks
	// that each sender's come once and in order.
	check := func(who string, c *testclient.Client) {
		t.Helper()
		next := [2]int{}
		for got := 0; got < 2*perSender; {
			f := recv(t, c)
			c.Ack(f.Str("id"))
			if f.Op() != "delivery" {
				continue
			}
			var i, n int
			if _, err := fmt.Sscanf(string(f.Data), "%d %d", &i, &n); err != nil || i < 0 || i > 1 {
				t.Fatalf("%s: delivery %q", who, f.Data)
			}
			if n != next[i] {
				t.Fatalf("%s: sender %d's post %d came after %d (lost, repeated or out of order)", who, i, n, next[i]-1)
			}
			next[i]++
			got++
		}
	}
	check("the online device", online)
	wg.Wait()

	away, _, err := testclient.Login(fes[0].addr, reg.UID, awayNode, testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer away.Close()
	check("the device that was away", away)
}

// TestClusterStreamLeaderKilled: the node leading the site's stream is
// killed while a sender posts through frontend 0 to a member online on
// frontend 1. The cluster elects another leader and posts resume; the
// sender sends again whatever was not acked (reconnecting when its link
// ends), and the member gets every acked post, in order, a post repeated
// only where its ack was lost. The killed node, restarted from its data,
// catches up with the stream.
func TestClusterStreamLeaderKilled(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	users := siteUsers(t)
	fes := startFrontends(t, c, 2, users, jetStreamStore, 5*time.Second)

	sender, sreg, err := testclient.Register(fes[0].addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	member, reg, err := testclient.Register(fes[1].addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}

	const total, killAt = 80, 30
	// The member acks what it gets; when its link ends (an ack the store
	// could not record during the election ends it), it logs in again, as
	// a client does, and what it had not acked comes again.
	received := make(chan int, 4*total)
	stop := make(chan struct{})
	defer close(stop)
	// drain acks and reports c's posts until its link ends; false when
	// the test is over.
	drain := func(c *testclient.Client) bool {
		defer c.Close()
		for {
			select {
			case f, ok := <-c.Messages():
				if !ok {
					return true
				}
				c.Ack(f.Str("id"))
				var n int
				if _, err := fmt.Sscanf(string(f.Data), "post %d", &n); f.Op() == "delivery" && err == nil {
					received <- n
				}
			case <-c.Done():
				return true
			case <-stop:
				return false
			}
		}
	}
	go func() {
		c := member
		for i := 0; drain(c); i++ {
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if c, _, err = testclient.Login(fes[i%2].addr, reg.UID, reg.NodeID, testclient.Options{}); err == nil {
					break
				}
			}
		}
	}()

	killed, killedAt := -1, time.Time{}
	deadline := time.Now().Add(90 * time.Second)
	for n := 0; n < total; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d posts acked in 90 s", n, total)
		}
		if n == killAt && killed < 0 {
			killed = c.Leader(jsstore.DefaultStream)
			if killed < 0 {
				t.Fatal("no leader for the site's stream")
			}
			c.Kill(killed)
			killedAt = time.Now()
			t.Logf("killed node %d, the stream's leader, after %d acked posts", killed, n)
		}
		ack, err := sender.Post([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, fmt.Appendf(nil, "post %d", n))
		switch {
		case err == nil && ack.Error == "":
			if n == killAt {
				t.Logf("posts resumed %v after the kill", time.Since(killedAt).Round(time.Millisecond))
			}
			n++
		case err == nil:
			t.Logf("post %d refused: %s; sending again", n, ack.Error)
		default:
			// The link ended (the store could not take the post): log
			// in again, on either frontend, and send it again.
			sender.Close()
			for {
				sender, _, err = testclient.Login(fes[n%2].addr, sreg.UID, sreg.NodeID, testclient.Options{AutoAck: true})
				if err == nil || time.Now().After(deadline) {
					break
				}
			}
			if err != nil {
				t.Fatalf("sender cannot log in again: %v", err)
			}
		}
	}
	sender.Close()

	// Every acked post, in order; a repeat only of what came before.
	last, repeats := -1, 0
	for last < total-1 {
		select {
		case n := <-received:
			switch {
			case n <= last:
				repeats++
			case n == last+1:
				last = n
			default:
				t.Fatalf("post %d after post %d: lost or out of order", n, last)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the member has posts up to %d of %d", last, total-1)
		}
	}
	t.Logf("all %d posts delivered in order, %d repeated", total, repeats)

	restart := time.Now()
	c.Restart(killed)
	c.WaitStreamCurrent(jsstore.DefaultStream)
	t.Logf("the killed node restarted and caught up in %v", time.Since(restart).Round(time.Millisecond))
}

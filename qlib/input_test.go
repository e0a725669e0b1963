package qlib

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/testclient"
)

// holdConn is a client-side connection whose writes can be held back, so
// that a test decides when, and in what pieces, the bytes of a TLS record
// reach the server.
type holdConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	held []byte
}

func (c *holdConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// take returns the held bytes and stops holding.
func (c *holdConn) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = false
	b := c.held
	c.held = nil
	return b
}

// tlsPair returns the two ends of a TLS connection over loopback TCP, the
// server end wrapped in an input that parks after parkAfter.
func tlsPair(t *testing.T, parkAfter time.Duration) (*input, *tls.Conn, *holdConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	hc := &holdConn{Conn: raw}
	client := tls.Client(hc, &tls.Config{InsecureSkipVerify: true})
	server := tls.Server(<-accepted, testTLSConfig(t))
	t.Cleanup(func() { client.Close(); server.Close() })
	handshook := make(chan error, 1)
	go func() { handshook <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-handshook; err != nil {
		t.Fatal(err)
	}
	in := newInput(server, parkAfter)
	if in.raw == nil {
		t.Skip("links do not park on this platform")
	}
	in.allowParking()
	return in, client, hc
}

// readN reads exactly n bytes from in.
func readN(t *testing.T, in *input, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(in, b); err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

func TestInputParksWhenIdle(t *testing.T) {
	in, client, _ := tlsPair(t, 5*time.Millisecond)
	in.extend(time.Minute)
	in.mayPark()
	if n, err := in.Read(make([]byte, 16)); n != 0 || err != errIdle {
		t.Fatalf("idle read: %d, %v; want 0, errIdle", n, err)
	}
	// The link's deadline is back in force, and the connection still works.
	if _, err := client.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if err := in.awaitReadable(); err != nil {
		t.Fatalf("awaitReadable: %v", err)
	}
	if got := readN(t, in, 5); got != "after" {
		t.Fatalf("read %q after parking", got)
	}
	// Without mayPark (inside a request), a read that meets the early
	// deadline reads on, for as long as the link's deadline allows.
	in.extend(time.Minute)
	done := make(chan string)
	go func() { done <- readN(t, in, 4) }()
	select {
	case got := <-done:
		t.Fatalf("read returned %q before anything was sent", got)
	case <-time.After(50 * time.Millisecond):
	}
	client.Write([]byte("late"))
	if got := <-done; got != "late" {
		t.Fatalf("read %q", got)
	}
}

// A link that parks with half a TLS record received loses nothing: the TLS
// read that timed out keeps the half, and the rest completes it.
func TestInputParksMidRecord(t *testing.T) {
	in, client, hc := tlsPair(t, 5*time.Millisecond)
	hc.mu.Lock()
	hc.hold = true
	hc.mu.Unlock()
	msg := strings.Repeat("x", 300)
	if _, err := client.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	record := hc.take()
	if len(record) < 300 {
		t.Fatalf("held %d bytes, want a whole record", len(record))
	}
	half := len(record) / 2
	if _, err := hc.Conn.Write(record[:half]); err != nil {
		t.Fatal(err)
	}
	if err := in.awaitReadable(); err != nil {
		t.Fatal(err)
	}
	in.extend(time.Minute)
	in.mayPark()
	if n, err := in.Read(make([]byte, 512)); n != 0 || err != errIdle {
		t.Fatalf("read of half a record: %d, %v; want 0, errIdle", n, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- in.awaitReadable() }()
	if _, err := hc.Conn.Write(record[half:]); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if got := readN(t, in, len(msg)); got != msg {
		t.Fatalf("read %d bytes, not the message", len(got))
	}
}

func TestInputDeadlineAndInterrupt(t *testing.T) {
	in, _, _ := tlsPair(t, time.Hour)
	in.extend(20 * time.Millisecond)
	if err := in.awaitReadable(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("wait past the deadline: %v", err)
	}
	// A deadline nearer than parkAfter is the one that counts.
	in.extend(20 * time.Millisecond)
	in.mayPark()
	if _, err := in.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}

	in.extend(time.Minute)
	waited := make(chan error, 1)
	go func() { waited <- in.awaitReadable() }()
	in.interrupt()
	if err := <-waited; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("interrupted wait: %v", err)
	}
	in.extend(time.Minute) // ignored once interrupted
	in.mayPark()
	if _, err := in.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after interrupt: %v, want the deadline error, not errIdle", err)
	}
	if !in.isInterrupted() {
		t.Fatal("isInterrupted is false")
	}
}

// A connection with no socket under it (net.Pipe) never parks.
func TestInputWithoutSocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	in := newInput(a, time.Millisecond)
	in.mayPark()
	go b.Write([]byte("pipe"))
	if got := readN(t, in, 4); got != "pipe" {
		t.Fatalf("read %q", got)
	}
}

// parkedLinks waits until the server reports n parked links.
func parkedLinks(t *testing.T, ts *testServer, n int64) {
	t.Helper()
	waitFor(t, "the links parked", func() bool { return ts.srv.Stats().Parked == n })
}

// Parked links wake for requests and deliveries, again and again, and
// nothing is lost or reordered across the hand-overs.
func TestParkedLinksServe(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ParkAfter = 5 * time.Millisecond })
	a, _ := ts.register()
	b, rb := ts.register()
	if !canAwaitReadable {
		t.Skip("links do not park on this platform")
	}
	for round := range 5 {
		parkedLinks(t, ts, 2)
		data := []byte{'m', byte('0' + round)}
		ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, data)
		if err != nil || ack.Error != "" {
			t.Fatalf("round %d: post: %v %+v", round, err, ack)
		}
		for {
			m := nextMessage(t, b)
			b.Ack(m.Str("id"))
			if m.Op() == "delivery" {
				if !bytes.Equal(m.Data, data) || m.Str("id") != ack.MsgID {
					t.Fatalf("round %d: got %s %q", round, m.Raw, m.Data)
				}
				break
			}
		}
	}
	if err := a.Pulse(); err != nil {
		t.Fatal(err)
	}
}

func TestParkedLinkIdleTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.ParkAfter = time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	})
	c, _ := ts.register()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("parked link not closed at the idle timeout")
	}
	waitFor(t, "every link closed", func() bool { return ts.srv.Stats().Links == 0 })
	if !strings.Contains(ts.logs.String(), "link idle timeout") {
		t.Fatalf("no idle timeout logged:\n%s", ts.logs.String())
	}
}

func TestShutdownWakesParkedLinks(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ParkAfter = time.Millisecond })
	var clients []*testclient.Client
	for range 3 {
		c, _ := ts.register()
		clients = append(clients, c)
	}
	if canAwaitReadable {
		parkedLinks(t, ts, 3)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with parked links: %v", err)
	}
	for _, c := range clients {
		<-c.Done()
	}
	if s := ts.srv.Stats(); s.Links != 0 || s.Parked != 0 {
		t.Fatalf("after shutdown: %+v", s)
	}
}

//go:build unix

package main

// Attacks on the descriptors and the log of a whole server: a flood of plain
// TCP connections against the built binary run with few descriptors, and a
// flood of connections that fail before login against the daemon's logger.

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/logflood"
	"mnm/testclient"
)

// floodFiles is the descriptor limit the flooded server runs with: low
// enough that the flood reaches it at once, as a real flood reaches the
// usual 1024 or a million.
const floodFiles = 256

var linkCapRE = regexp.MustCompile(`msg="link cap" maxLinks=(\d+) `)

// TestAttackFDFlood: the server runs with 256 descriptors, and plain TCP
// connections (no TLS, no login) flood it, again and again, until it
// refuses them. Meanwhile a member posts 65 MiB, which makes the store open
// a new segment; before the link cap that open failed with EMFILE and the
// server stopped. The post is acknowledged, the server stays up, and once
// the flood stops new members register and everything posted arrives.
func TestAttackFDFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")
	// The shell sets both the soft and the hard limit, so the server cannot
	// raise it (raiseFileLimit).
	wrapper := filepath.Join(dir, "mnm-lowfd")
	script := fmt.Sprintf("#!/bin/sh\nulimit -n %d || exit 1\nexec '%s' \"$@\"\n", floodFiles, bin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, wrapper, cfg)
	m := linkCapRE.FindStringSubmatch(p.tail())
	if m == nil {
		t.Fatalf("no link cap logged at start:\n%s", p.tail())
	}
	maxLinks, _ := strconv.Atoi(m[1])
	if want, _ := linksForFiles(floodFiles); maxLinks != want {
		t.Fatalf("link cap %d with %d descriptors, want %d", maxLinks, floodFiles, want)
	}

	// The sender logs in before the flood; the reader stays offline.
	sender, _, err := testclient.Register(p.addr, "laptop", "_", testclient.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	reader, rreg, err := testclient.Register(p.addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reader.Close()

	// More connections than descriptors: without the cap they would take
	// every one.
	f := startFlood(t, p.addr, floodFiles+100, 3)

	// One post larger than a segment (64 MiB): the store must open the
	// next segment while the links hold every descriptor they may.
	big := bytes.Repeat([]byte("0123456789abcdef"), (65<<20)/16)
	ack, err := sender.Post([]testclient.Recipient{{ID: rreg.UID, Type: testclient.ToUser}}, big)
	if err != nil || ack.Error != "" {
		t.Fatalf("post during the flood: %v %+v\nserver log:\n%s", err, ack, p.tail())
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "qstore", "seg-*.log"))
	if len(segs) < 2 {
		t.Fatalf("%d segment files after a 65 MiB post, want a rotation (2 or more)", len(segs))
	}
	refused := f.stop()
	if refused == 0 || !strings.Contains(p.tail(), `msg="link refused: at the link limit"`) {
		t.Fatalf("%d flood connections refused, want some, and logged", refused)
	}
	select {
	case <-p.done:
		t.Fatalf("server exited during the flood:\n%s", p.tail())
	default:
	}

	// The flood over, a new member registers (the links it held close as
	// the server sees them go) and posts; the reader gets both posts.
	var newcomer *testclient.Client
	waitFor(t, "a registration to succeed", func() bool {
		newcomer, _, err = testclient.Register(p.addr, "phone", "_", testclient.Options{})
		return err == nil
	})
	defer newcomer.Close()
	ack2, err := newcomer.Post([]testclient.Recipient{{ID: rreg.UID, Type: testclient.ToUser}}, []byte("after the flood"))
	if err != nil || ack2.Error != "" {
		t.Fatalf("post after the flood: %v %+v", err, ack2)
	}
	r := e2eLogin(t, p.addr, rreg.UID, rreg.NodeID)
	got := recvDeliveries(t, r, 2)
	if got[0].Str("id") != ack.MsgID || !bytes.Equal(got[0].Data, big) {
		t.Fatalf("first delivery %s (%d octets), want the 65 MiB post %s", got[0].Str("id"), len(got[0].Data), ack.MsgID)
	}
	if got[1].Str("id") != ack2.MsgID {
		t.Fatalf("second delivery %s, want %s", got[1].Str("id"), ack2.MsgID)
	}
	for _, bad := range []string{"too many open files", "store failed", "level=ERROR"} {
		if strings.Contains(p.tail(), bad) {
			t.Fatalf("server log has %q:\n%s", bad, p.tail())
		}
	}
	t.Logf("link cap %d of %d descriptors; %d flood connections refused", maxLinks, floodFiles, refused)
	p.stop()
}

// e2eLogin logs a device in with a timeout long enough for a large
// delivery.
func e2eLogin(t *testing.T, addr, uid, nodeid string) *testclient.Client {
	t.Helper()
	c, _, err := testclient.Login(addr, uid, nodeid, testclient.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// flood holds plain TCP connections to a server: slots of them, each
// dialled again when the server closes it (at the link cap at once, else at
// the login timeout), up to redials times, so that the pressure lasts
// several login timeouts without a connection storm.
type flood struct {
	stopc chan struct{}
	wg    sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]bool
	refused int // connections the server closed before the login timeout
}

// startFlood returns once every slot has connected.
func startFlood(t *testing.T, addr string, slots, redials int) *flood {
	f := &flood{stopc: make(chan struct{}), conns: map[net.Conn]bool{}}
	var connected sync.WaitGroup
	for range slots {
		f.wg.Add(1)
		connected.Add(1)
		go func() {
			defer f.wg.Done()
			for i := range redials + 1 {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if i == 0 {
					connected.Done()
				}
				if err != nil {
					return
				}
				f.mu.Lock()
				f.conns[c] = true
				f.mu.Unlock()
				opened := time.Now()
				// The server sends nothing to a connection without TLS:
				// the read ends when it closes the connection, or when
				// stop does.
				io.Copy(io.Discard, c)
				stopping := false
				select {
				case <-f.stopc:
					stopping = true
				default:
				}
				f.mu.Lock()
				delete(f.conns, c)
				// Closed by the server well before the 5 s login
				// timeout: refused.
				if !stopping && time.Since(opened) < 2*time.Second {
					f.refused++
				}
				f.mu.Unlock()
				c.Close()
				if stopping {
					return
				}
			}
		}()
	}
	t.Cleanup(func() { f.stop() })
	connected.Wait()
	return f
}

// stop closes the flood's connections and returns how many the server
// refused.
func (f *flood) stop() int {
	select {
	case <-f.stopc:
	default:
		close(f.stopc)
	}
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refused
}

// TestAttackLogFlood: 300 connections that fail before login (a first
// frame whose length prefix is not hex) used to log 300 lines. Through the
// daemon's logger they log DefaultBurst lines and one summary, whose count
// makes up the rest, while the server keeps serving.
func TestAttackLogFlood(t *testing.T) {
	const conns = 300
	dir := t.TempDir()
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")
	logs := newLockedBuffer()
	logger, closeLog := newDaemonLogger(logs, slog.LevelInfo)
	d, err := startDaemon(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	addr := d.ln.Addr().String()
	for range conns {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("zzzz{}"))
		// Wait for the server to close the link: it has logged by then.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("link not closed: %v", err)
		}
		c.Close()
	}
	// The server still serves.
	member, _, err := testclient.Register(addr, "laptop", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	member.Close()
	if err := d.shutdown(); err != nil {
		t.Fatal(err)
	}
	closeLog()

	out := logs.String()
	lines := strings.Count(out, "\n")
	passed := strings.Count(out, `msg="link refused" `)
	var summarised int
	for _, m := range regexp.MustCompile(`msg="link refused \(suppressed\)".* count=(\d+)`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		summarised += n
	}
	if passed != logflood.DefaultBurst || passed+summarised != conns {
		t.Fatalf("%d refusal lines and %d counted in summaries, want %d and %d in all:\n%s",
			passed, summarised, logflood.DefaultBurst, conns, out)
	}
	// The rest of the log: start, the member, shutdown; far below a line
	// per connection.
	if lines > logflood.DefaultBurst+40 {
		t.Fatalf("%d log lines for %d failed connections:\n%s", lines, conns, out)
	}
	t.Logf("%d failed connections: %d log lines in all, %d of them refusals, the rest (%d) counted in a summary",
		conns, lines, passed, summarised)
}

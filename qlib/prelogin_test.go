package qlib

// Attacks on what a connection costs before it logs in: links holding
// long headers half sent, and a listener out of file descriptors.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
	"mnm/testclient"
)

// largeBuf is what a long header costs a link: tmtp's large buffer, the
// longest prefix and header.
const largeBuf = 4 + tmtp.MaxHeaderLen

// partialLongHeader is the start of a 60 KiB header: the prefix announces
// it and more than a link's own buffer of it follows, so the server must
// borrow a large buffer and wait for the rest. It is short enough to travel
// in one TLS record, which the server reads whole: a link it closes has
// nothing unread, so its quit is not lost to a reset.
var partialLongHeader = []byte("f000" + strings.Repeat("x", 1000))

// TestPreLoginBudget: strangers that complete TmtpRev and then send half of
// a 60 KiB header each hold a large buffer until the login timeout. The
// links not logged in get PreLoginBytes for those buffers all together: the
// one beyond the budget is closed with quit "server busy" (without a reply
// before TmtpRev), the memory held stays at the budget, the refusal is
// logged once, a logged-in member still sends long headers, new members
// still register and post, and a stranger leaving gives its share back.
func TestPreLoginBudget(t *testing.T) {
	const held = 3
	ts := startServer(t, func(c *Config) {
		lim := DefaultLimits()
		lim.PreLoginBytes = held * largeBuf
		c.Limits = &lim
		// The attackers' links must outlive the test's checks.
		c.LoginTimeout = time.Minute
	})
	member, _ := ts.register()
	friendLink, friend := ts.register()

	attackers := make([]*testclient.Conn, held)
	for i := range attackers {
		attackers[i] = ts.dialRev()
		if err := attackers[i].WriteRaw(partialLongHeader); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the buffers held", func() bool { return ts.srv.Stats().PreLoginBytes == held*largeBuf })

	// Beyond the budget, after TmtpRev: quit.
	over := ts.dialRev()
	if err := over.WriteRaw(partialLongHeader); err != nil {
		t.Fatal(err)
	}
	expectQuit(t, over, quitBusy)
	// Beyond the budget, as a first frame: closed without a reply.
	first := ts.dial()
	if err := first.WriteRaw(partialLongHeader); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, first)

	st := ts.srv.Stats()
	if st.PreLoginRefused != 2 || st.PreLoginBytes != held*largeBuf {
		t.Fatalf("after two links over the budget: refused %d, held %d octets; want 2, %d",
			st.PreLoginRefused, st.PreLoginBytes, held*largeBuf)
	}
	if n := ts.countLogs("link refused: links not logged in hold all the memory they may"); n != 1 {
		t.Fatalf("%d log lines for the refusals, want 1 (throttled)", n)
	}

	// A logged-in member is not bound by the budget: a post whose header
	// is longer than a link's own buffer goes through.
	head := map[string]any{"Op": 7, "For": []testclient.Recipient{{ID: friend.UID, Type: testclient.ToUser}},
		"Datalen": 5, "Pad": strings.Repeat("p", 20000)}
	ack, err := member.Do(head, []byte("hello"))
	if err != nil || ack.Error != "" {
		t.Fatalf("logged-in post with a long header: %v %+v", err, ack)
	}
	if f := nextMessage(t, friendLink); f.Str("id") != ack.MsgID {
		t.Fatalf("friend got %s, want the post %s", f.Raw, ack.MsgID)
	}
	// Registering and logging in need no large buffer.
	ts.victimWorks()

	// A stranger leaving gives its share back, and the next long header
	// before login may have it.
	attackers[0].Close()
	waitFor(t, "a buffer released", func() bool { return ts.srv.Stats().PreLoginBytes == (held-1)*largeBuf })
	next := ts.dialRev()
	if err := next.WriteRaw(partialLongHeader); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the buffers held", func() bool { return ts.srv.Stats().PreLoginBytes == held*largeBuf })
	if r := ts.srv.Stats().PreLoginRefused; r != 2 {
		t.Fatalf("refused %d links, want still 2", r)
	}
}

// TestPreLoginBudgetLoginReleases: a client that registers with a header
// longer than a link's own buffer takes a share of the budget while it is
// a stranger, and its share comes back once it is logged in, so members'
// sign-ups do not use the budget up.
func TestPreLoginBudgetLoginReleases(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		lim := DefaultLimits()
		lim.PreLoginBytes = largeBuf // one long header at a time
		c.Limits = &lim
	})
	for i := range 3 {
		c := ts.dialRev()
		req := registerReq()
		req["Pad"] = strings.Repeat("r", 2000)
		if err := c.WriteFrame(req, nil); err != nil {
			t.Fatal(err)
		}
		if f := mustRead(t, c); f.Op() != "registered" {
			t.Fatalf("registration %d with a long header: %s", i, f.Raw)
		}
		// The next frame gives the large buffer back (tmtp.Reader.Next).
		if err := c.WriteFrame(map[string]any{"Op": 11}, nil); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "every buffer released", func() bool { return ts.srv.Stats().PreLoginBytes == 0 })
	}
	if r := ts.srv.Stats().PreLoginRefused; r != 0 {
		t.Fatalf("%d registrations refused, want none", r)
	}
}

// emfileListener fails its first fails accepts as a listener out of file
// descriptors does.
type emfileListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptShortageLogged: a run of accept failures (out of descriptors)
// is one line when it starts and one when it ends, with the count, rather
// than a line per failure; the server then accepts links as before.
func TestAcceptShortageLogged(t *testing.T) {
	const fails = 5
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	st, err := store.Open(store.Options{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := NewServer(Config{Name: "test", Directory: newFakeDir(), Store: st, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &emfileListener{Listener: ln}
	fl.fails.Store(fails)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(fl) }()

	// Plain TCP: the listener here is not TLS, and the link only has to
	// be accepted.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "one link", func() bool { return srv.Stats().Links == 1 })
	if n := strings.Count(logs.String(), "accept failing"); n != 1 {
		t.Errorf("%d lines for the start of the shortage, want 1:\n%s", n, logs)
	}
	if n := strings.Count(logs.String(), fmt.Sprintf("accept recovered\" failures=%d for=", fails)); n != 1 {
		t.Errorf("want one line for the end of the shortage with failures=%d:\n%s", fails, logs)
	}
	if n := strings.Count(logs.String(), "\n"); n != 2+1 { // + the store's "opened"
		t.Errorf("%d log lines, want 3:\n%s", n, logs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != ErrServerClosed {
		t.Fatalf("Serve returned %v", err)
	}
}

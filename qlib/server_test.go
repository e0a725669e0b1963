package qlib

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"mnm/durable"
	"mnm/qlib/store"
	"mnm/qlib/tmtp"
	"mnm/testclient"
)

func frame(t *testing.T, head map[string]any, data string) []byte {
	t.Helper()
	h, err := json.Marshal(head)
	if err != nil {
		t.Fatal(err)
	}
	return append(fmt.Appendf(nil, "%04x%s", len(h), h), data...)
}

func TestTmtpRevReply(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.dial()
	c.WriteFrame(map[string]any{"Op": 0, "Id": "7"}, nil)
	f := mustRead(t, c)
	if got, want := string(f.Raw), `{"id":"1","name":"test","op":"tmtprev"}`; got != want {
		t.Fatalf("tmtprev reply %s, want %s", got, want)
	}
}

// TestQuitReasons drives every quit reason that the core ops can produce.
func TestQuitReasons(t *testing.T) {
	ts := startServer(t, nil)
	_, reg := ts.register() // keeps its device logged in

	cases := []struct {
		name   string
		rev    bool   // send TmtpRev first
		send   string // raw bytes after TmtpRev
		reason string // "" = closed without a reply
	}{
		{"second tmtprev", true, `{"Op":0,"Id":"1"}`, "disallowed op repetition"},
		{"login before tmtprev", false, `{"Op":2,"Uid":"x","Node":"y"}`, ""},
		{"post before tmtprev", false, `{"Op":7,"Id":"a","For":[],"Datalen":1}x`, ""},
		{"garbage before tmtprev", false, "GET / HTTP/1.1\r\n\r\n", ""},
		{"bad length", true, "00z1{\"Op\":3}", "invalid header length"},
		{"short length", true, "0007{\"op\":}", "invalid header length"},
		{"bad json", true, "000a{\"Op\":12f3", "invalid header"},
		{"missing field", true, `{"Op":2,"Uid":"noone","NoId":"none"}`, "invalid header"},
		{"post unauthenticated", true, `{"Op":7,"Id":"zyx","Datalen":1,"For":[{"Id":"x","Type":1}]}1`, "disallowed op on unauthenticated link"},
		{"pulse unauthenticated", true, `{"Op":11}`, "disallowed op on unauthenticated link"},
		{"datalen on login", true, `{"Op":2,"Uid":"x","Node":"LB27ML46","Datalen":5}extra`, "invalid header"},
		{"negative datalen", true, `{"Op":7,"Id":"a","For":[],"Datalen":-1}`, "invalid header"},
		{"corrupt base32", true, `{"Op":2,"Uid":"noone","Node":"none"}`, "corrupt base32 value"},
		{"unknown uid", true, `{"Op":2,"Uid":"noone","Node":"LB27ML46"}`, "login failed"},
		{"wrong node", true, `{"Op":2,"Uid":"` + reg.UID + `","Node":"LB27ML46"}`, "login failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c *testclient.Conn
			if tc.rev {
				c = ts.dialRev()
			} else {
				c = ts.dial()
			}
			raw := tc.send
			if strings.HasPrefix(raw, "{") {
				// A JSON header with optional data after it.
				end := strings.LastIndex(raw, "}") + 1
				raw = fmt.Sprintf("%04x%s%s", end, raw[:end], raw[end:])
			}
			if err := c.WriteRaw([]byte(raw)); err != nil {
				t.Fatal(err)
			}
			if tc.reason == "" {
				expectClosed(t, c)
				return
			}
			expectQuit(t, c, tc.reason)
		})
	}
}

func TestRegisterLoginQuit(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.dialRev()
	c.WriteFrame(map[string]any{"Op": 1, "NewNode": "blue", "NewAlias": "short"}, nil)
	reg := mustRead(t, c)
	if reg.Op() != "registered" || len(reg.Str("uid")) != 32 || len(reg.Str("nodeid")) != 40 {
		t.Fatalf("registered reply %s", reg.Raw)
	}
	if reg.Str("error") != "newalias must be 8+ characters" {
		t.Errorf("alias error %q", reg.Str("error"))
	}
	if f := mustRead(t, c); string(f.Raw) != `{"info":"login ok","op":"info"}` {
		t.Fatalf("info reply %s", f.Raw)
	}
	c.WriteFrame(map[string]any{"Op": 2, "Uid": reg.Str("uid"), "Node": reg.Str("nodeid")}, nil)
	expectQuit(t, c, "disallowed op on connected link")

	// The registered device may now log in; it receives its own login notice.
	cl := ts.login(reg.Str("uid"), reg.Str("nodeid"))
	n := nextMessage(t, cl)
	if n.Op() != "login" || n.Str("node") != "tbd" || n.Str("from") != reg.Str("uid") || !n.HeadsumOK() {
		t.Fatalf("login notice %s", n.Raw)
	}
	cl.Ack(n.Str("id"))
	if err := cl.Quit(); err != nil {
		t.Fatalf("quit: %v", err)
	}
}

func TestPostDeliveryAndAck(t *testing.T) {
	ts := startServer(t, nil)
	a, ra := ts.register()
	_, rb := ts.register()
	b2node, b2dev := ts.dir.device(rb.UID)
	a2node, _ := ts.dir.device(ra.UID)

	ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, []byte("hello"))
	if err != nil || ack.Error != "" {
		t.Fatalf("post: %v %+v", err, ack)
	}
	// b's second device logs in later and gets login notice and the post.
	b2 := ts.login(rb.UID, b2node)
	got := map[string]bool{}
	for len(got) < 2 {
		m := nextMessage(t, b2)
		got[m.Op()] = true
		if m.Op() == "delivery" {
			if string(m.Data) != "hello" || m.Str("id") != ack.MsgID || m.Str("posted") != ack.Posted || m.Str("from") != ra.UID {
				t.Fatalf("delivery %s %q (ack %+v)", m.Raw, m.Data, ack)
			}
		}
		b2.Ack(m.Str("id"))
	}
	// a's other device gets the sender's copy.
	a2 := ts.login(ra.UID, a2node)
	for {
		m := nextMessage(t, a2)
		a2.Ack(m.Str("id"))
		if m.Op() == "delivery" {
			break
		}
	}
	waitFor(t, "b2's queue to empty", func() bool { return ts.store.Len(b2dev) == 0 })
}

func TestUnknownRecipientStoresNothing(t *testing.T) {
	ts := startServer(t, nil)
	a, _ := ts.register()
	_, rb := ts.register()
	ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}, {ID: "nobody", Type: 1}}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Error != "recipient not found: nobody" || ack.MsgID != "" {
		t.Fatalf("ack %+v", ack)
	}
	if n := ts.store.Len(rb.UID + ".0"); n != 0 {
		t.Fatalf("recipient queue has %d entries", n)
	}
	// The link stays up.
	if ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, []byte("y")); err != nil || ack.Error != "" {
		t.Fatalf("second post: %v %+v", err, ack)
	}
}

func TestPostTooLarge(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxPostBytes = 100 })
	_, ra := ts.register()
	c := ts.dialRev()
	_, rb := ts.register()
	_ = rb
	nodeid, _ := ts.dir.device(ra.UID)
	c.WriteFrame(map[string]any{"Op": 2, "Uid": ra.UID, "Node": nodeid}, nil)
	if f := mustRead(t, c); f.Op() != "info" {
		t.Fatalf("login: %s", f.Raw)
	}
	c.WriteFrame(map[string]any{"Op": 7, "Id": "p", "For": []any{}, "Datalen": 101}, nil)
	for {
		f := mustRead(t, c)
		if f.Op() == "quit" {
			if f.Str("error") != "data too long for request type" {
				t.Fatalf("quit %s", f.Raw)
			}
			break
		}
	}
}

// TestSplitAndPipelinedFrames sends a whole session byte by byte, then the same
// requests in one write.
func TestSplitAndPipelinedFrames(t *testing.T) {
	ts := startServer(t, nil)
	_, rb := ts.register()
	var session bytes.Buffer
	session.Write(frame(t, map[string]any{"Op": 0, "Id": "1"}, ""))
	session.Write(frame(t, map[string]any{"Op": 1, "NewNode": "x", "NewAlias": "_"}, ""))
	for i := range 3 {
		data := fmt.Sprintf("post %d", i)
		session.Write(frame(t, map[string]any{"Op": 7, "Id": fmt.Sprint(i), "Datalen": len(data),
			"For": []any{map[string]any{"Id": rb.UID, "Type": 1}}}, data))
	}
	for _, split := range []bool{true, false} {
		t.Run(fmt.Sprintf("split=%v", split), func(t *testing.T) {
			c := ts.dial()
			if split {
				for _, b := range session.Bytes() {
					if err := c.WriteRaw([]byte{b}); err != nil {
						t.Fatal(err)
					}
				}
			} else if err := c.WriteRaw(session.Bytes()); err != nil {
				t.Fatal(err)
			}
			want := []string{"tmtprev", "registered", "info", "ack 0", "ack 1", "ack 2"}
			for _, w := range want {
				f := mustRead(t, c)
				got := f.Op()
				if got == "ack" {
					got += " " + f.Str("id")
					if f.Str("msgid") == "" {
						t.Fatalf("ack without msgid: %s", f.Raw)
					}
				}
				if got != w {
					t.Fatalf("split=%v: got %s, want %s", split, f.Raw, w)
				}
			}
		})
	}
}

func TestDisconnectMidPost(t *testing.T) {
	ts := startServer(t, nil)
	_, rb := ts.register()
	_, ra := ts.register()
	// Small data stays in the draft's buffer; large data is already being
	// written to the log when the link drops.
	for _, size := range []int{10, 300 << 10} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			c := ts.dialRev()
			nodeid, _ := ts.dir.device(ra.UID)
			c.WriteFrame(map[string]any{"Op": 2, "Uid": ra.UID, "Node": nodeid}, nil)
			if f := mustRead(t, c); f.Op() != "info" {
				t.Fatalf("login: %s", f.Raw)
			}
			head := frame(t, map[string]any{"Op": 7, "Id": "p", "Datalen": size + 1,
				"For": []any{map[string]any{"Id": rb.UID, "Type": 1}}}, "")
			c.WriteRaw(append(head, bytes.Repeat([]byte("x"), size)...))
			c.Close()
			waitFor(t, "two devices logged in", func() bool { return ts.srv.Stats().Devices == 2 })
			if n := ts.store.Len(rb.UID + ".0"); n != 0 {
				t.Fatalf("size %d: recipient queue has %d entries after an interrupted post", size, n)
			}
		})
	}
}

func TestResendWithoutAck(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ResendAfter = 50 * time.Millisecond })
	_, ra := ts.register()
	nodeid, _ := ts.dir.device(ra.UID)
	c := ts.login(ra.UID, nodeid)
	first := nextMessage(t, c)
	second := nextMessage(t, c)
	if first.Str("id") != second.Str("id") {
		t.Fatalf("resent %s, want %s again", second.Raw, first.Raw)
	}
	c.Ack("0000000000000001") // not the awaited id: ignored
	c.Ack(first.Str("id"))
	waitFor(t, "the queue to empty", func() bool { return ts.store.Len(ra.UID+".1") == 0 })
}

func TestLoginTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LoginTimeout = 100 * time.Millisecond })
	// A bare TCP connection that never even starts TLS: the server's
	// login deadline covers the handshake too.
	conn, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %d bytes, %v; want the server to close the link", n, err)
	}
}

func TestIdleTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.IdleTimeout = 100 * time.Millisecond })
	c, _ := ts.register()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("idle link not closed")
	}
}

func TestManyPostsInOrder(t *testing.T) {
	ts := startServer(t, nil)
	a, _ := ts.register()
	b, rb := ts.register()
	nodeid, _ := ts.dir.device(rb.UID)
	b2 := ts.login(rb.UID, nodeid)
	const n = 1000
	go func() {
		for i := range n {
			if _, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, fmt.Appendf(nil, "%d", i)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for _, c := range []*testclient.Client{b, b2} {
		next := 0
		for next < n {
			m := nextMessage(t, c)
			c.Ack(m.Str("id"))
			if m.Op() != "delivery" {
				continue
			}
			if string(m.Data) != fmt.Sprint(next) {
				t.Fatalf("got %q, want %d", m.Data, next)
			}
			next++
		}
	}
}

// waitFor polls cond until it holds, for state that has no event to wait
// on; after 10 s the test fails, naming what it waited for.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
}

// fakeVerifier accepts tokens of the form "good:<sub>".
type fakeVerifier struct{}

func (fakeVerifier) Verify(_ context.Context, token string) (map[string]any, error) {
	sub, ok := strings.CutPrefix(token, "good:")
	if !ok {
		return nil, errors.New("bad token")
	}
	return map[string]any{"iss": "https://issuer.example", "sub": sub}, nil
}

func TestThirdPartyRegister(t *testing.T) {
	authBy := []byte(`[{"label":"X","login":["https://example.com/l","a&b&d"],"token":["https://example.com/t","c&d"]}]`)
	for _, tc := range []struct {
		name     string
		auth     int
		optional bool
		token    string
		quit     string // "" = registered
	}{
		{"required, none", 1, false, "", "authentication required"},
		{"required, bad", 1, false, "forged", "authentication required"},
		{"required, good", 1, false, "good:42", ""},
		{"optional, none", 1, true, "", ""},
		{"optional, bad", 1, true, "forged", "authentication required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) {
				c.Auth, c.AuthBy, c.AuthOptional, c.Verifier = tc.auth, authBy, tc.optional, fakeVerifier{}
			})
			c := ts.dial()
			c.WriteFrame(map[string]any{"Op": 0, "Id": "1"}, nil)
			want := `{"auth":1,"authby":` + string(authBy) + `,"id":"1","name":"test","op":"tmtprev"}`
			if f := mustRead(t, c); string(f.Raw) != want {
				t.Fatalf("tmtprev reply %s, want %s", f.Raw, want)
			}
			head := map[string]any{"Op": 1, "NewNode": "n", "NewAlias": "_"}
			if tc.token != "" {
				head["Oidc"] = tc.token
			}
			c.WriteFrame(head, nil)
			if tc.quit != "" {
				expectQuit(t, c, tc.quit)
				return
			}
			if f := mustRead(t, c); f.Op() != "registered" {
				t.Fatalf("reply %s", f.Raw)
			}
		})
	}
}

func TestThirdPartyLogin(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.Auth, c.AuthBy, c.Verifier = 2, []byte(`[]`), fakeVerifier{}
	})
	c := ts.dialRev()
	c.WriteFrame(map[string]any{"Op": 1, "NewNode": "n", "NewAlias": "_", "Oidc": "good:42"}, nil)
	reg := mustRead(t, c)
	uid, nodeid := reg.Str("uid"), reg.Str("nodeid")
	c.Close()
	for _, tc := range []struct{ token, quit string }{
		{"", "authentication required"},
		{"good:43", "authentication required"},
		{"good:42", ""},
	} {
		t.Run("token="+tc.token, func(t *testing.T) {
			c := ts.dialRev()
			head := map[string]any{"Op": 2, "Uid": uid, "Node": nodeid}
			if tc.token != "" {
				head["Oidc"] = tc.token
			}
			c.WriteFrame(head, nil)
			if tc.quit != "" {
				expectQuit(t, c, tc.quit)
				return
			}
			if f := mustRead(t, c); f.Op() != "info" {
				t.Fatalf("login with %q: %s", tc.token, f.Raw)
			}
		})
	}
}

// TestStoreFailureStops: when the store cannot fsync, the post is not acked,
// the link closes, and the owner is told to stop the server.
func TestStoreFailureStops(t *testing.T) {
	fsys := durable.NewMemFS()
	fatal := make(chan error, 1)
	ts := startServerFS(t, fsys, func(c *Config) {
		c.OnFatal = func(err error) { fatal <- err }
	})
	a, _ := ts.register()
	_, rb := ts.register()
	fsys.FailNth(durable.OpSync, 1, errors.New("injected: disk gone"))
	ack, err := a.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, []byte("lost?"))
	if err == nil {
		t.Fatalf("post acked after the store failed: %+v", ack)
	}
	select {
	case err := <-fatal:
		if !errors.Is(err, store.ErrFailed) {
			t.Fatalf("OnFatal(%v), want a store.ErrFailed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnFatal not called")
	}
}

func TestMaxLinks(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxLinks = 2 })
	ts.dialRev()
	ts.dialRev()
	// The third is closed before its TLS handshake completes.
	if c, err := testclient.Dial(ts.addr, nil); err == nil {
		defer c.Close()
		expectClosed(t, c)
	}
	if got := ts.srv.Stats().Refused; got != 1 {
		t.Fatalf("refused %d, want 1", got)
	}
}

// TestOhiEditEchoTooLong: an ohiedit whose stored echo ("Type":0 added to each
// entry) would not fit a frame is refused, not stored unreadable.
func TestOhiEditEchoTooLong(t *testing.T) {
	ts := startServer(t, nil)
	a, _ := ts.register()
	var list []string
	for range 1500 {
		uid, _, _, _ := ts.dir.Register("x", nil)
		list = append(list, uid)
	}
	ack, err := a.OhiEdit("add", list)
	if err != nil {
		t.Fatal(err)
	}
	if ack.Error != "message header too long" {
		t.Fatalf("ack %+v, want message header too long", ack)
	}
	// A short list still works on the same link.
	if ack, err := a.OhiEdit("add", list[:1]); err != nil || ack.Error != "" {
		t.Fatalf("short ohiedit: %v %+v", err, ack)
	}
}

// A device whose link the server closed may log in again the moment its
// client sees the close: the device is released first.
func TestLoginAgainAfterClose(t *testing.T) {
	ts := startServer(t, nil)
	_, reg := ts.register()
	nodeid, _ := ts.dir.device(reg.UID)
	login := map[string]any{"Op": 2, "Uid": reg.UID, "Node": nodeid}
	for i := range 50 {
		c := ts.dialRev()
		c.WriteFrame(login, nil)
		if f := mustRead(t, c); f.Op() != "info" {
			t.Fatalf("round %d: login reply %s", i, f.Raw)
		}
		// A second Login on the link: the server quits and closes it.
		c.WriteFrame(login, nil)
		for {
			f, err := c.ReadFrame()
			if err != nil {
				break // closed
			}
			if f.Op() == "quit" && f.Str("error") != tmtp.QuitConnected {
				t.Fatalf("round %d: quit %s", i, f.Raw)
			}
		}
		c.Close()
	}
}

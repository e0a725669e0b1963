package testclient

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mnm/testclient/internal/fakeserver"
)

func TestLogin(t *testing.T) {
	s := fakeserver.New(t)
	errc := s.Serve(func(l *fakeserver.Link) error {
		if err := l.TmtpRev(); err != nil {
			return err
		}
		r, err := l.ReadOp(2)
		if err != nil {
			return err
		}
		if r.Str("uid") != "uid1" || r.Str("node") != "node1" || r.Head["datalen"] != nil {
			return fmt.Errorf("login request %s", r.Raw)
		}
		return l.Write(map[string]any{"info": "login ok", "ohi": []string{"u2", "u3"}, "op": "info"}, nil)
	})
	c, info, err := Login(s.Addr(), "uid1", "node1", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fakeserver.Done(t, errc)
	if !reflect.DeepEqual(info.Ohi, []string{"u2", "u3"}) {
		t.Errorf("Ohi = %q", info.Ohi)
	}
	if c.UID() != "uid1" || c.Site().Str("name") != "Fake" {
		t.Errorf("UID %q, site %s", c.UID(), c.Site())
	}
	if c.Err() != nil {
		t.Errorf("Err() = %v on a live link", c.Err())
	}
}

func TestLoginQuit(t *testing.T) {
	s := fakeserver.New(t)
	errc := s.Serve(func(l *fakeserver.Link) error {
		if err := l.TmtpRev(); err != nil {
			return err
		}
		if _, err := l.ReadOp(2); err != nil {
			return err
		}
		return l.Quit("login failed")
	})
	_, _, err := Login(s.Addr(), "uid1", "node1", Options{})
	var q *QuitError
	if !errors.As(err, &q) || q.Reason != "login failed" {
		t.Fatalf("got %v, want QuitError login failed", err)
	}
	fakeserver.Done(t, errc)
}

func TestLoginUnexpectedFrame(t *testing.T) {
	s := fakeserver.New(t)
	errc := s.Serve(func(l *fakeserver.Link) error {
		if err := l.TmtpRev(); err != nil {
			return err
		}
		if _, err := l.ReadOp(2); err != nil {
			return err
		}
		return l.WriteStored("login", "uid1", "0001", nil) // before info
	})
	if _, _, err := Login(s.Addr(), "uid1", "node1", Options{}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol", err)
	}
	fakeserver.Done(t, errc)
}

func TestRegister(t *testing.T) {
	s := fakeserver.New(t)
	errc := s.Serve(func(l *fakeserver.Link) error {
		if err := l.TmtpRev(); err != nil {
			return err
		}
		r, err := l.ReadOp(1)
		if err != nil {
			return err
		}
		if r.Str("newnode") != "blue" || r.Str("newalias") != "short" || r.Str("oidc") != "tok" {
			return fmt.Errorf("register request %s", r.Raw)
		}
		if err := l.Write(map[string]any{
			"error": "newalias must be 8+ characters", "nodeid": "N0DE", "op": "registered", "uid": "U1D",
		}, nil); err != nil {
			return err
		}
		return l.Write(map[string]any{"info": "login ok", "op": "info"}, nil)
	})
	c, reg, err := Register(s.Addr(), "blue", "short", Options{Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fakeserver.Done(t, errc)
	want := Registration{UID: "U1D", NodeID: "N0DE", AliasError: "newalias must be 8+ characters"}
	if reg != want || c.UID() != "U1D" {
		t.Errorf("got %+v, uid %q", reg, c.UID())
	}
}

func TestRegisterNoAlias(t *testing.T) {
	s := fakeserver.New(t)
	errc := s.Serve(func(l *fakeserver.Link) error {
		if err := l.TmtpRev(); err != nil {
			return err
		}
		r, err := l.ReadOp(1)
		if err != nil {
			return err
		}
		if r.Str("newalias") != "_" || r.Head["oidc"] != nil {
			return fmt.Errorf("register request %s", r.Raw)
		}
		return l.Write(map[string]any{"op": "registered", "uid": "U1D"}, nil) // no nodeid
	})
	if _, _, err := Register(s.Addr(), "blue", "", Options{}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v, want ErrProtocol for a registered reply without nodeid", err)
	}
	fakeserver.Done(t, errc)
}

// TestAcksMatchedByID keeps several posts in flight and answers them in
// reverse order, with a stored message and an ohi in between.
func TestAcksMatchedByID(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	const n = 8
	results := make([]<-chan AckResult, n)
	for i := range n {
		ch, err := c.PostAsync([]Recipient{{ID: "u2", Type: ToUser}}, []byte(fmt.Sprint("post ", i)))
		if err != nil {
			t.Fatal(err)
		}
		results[i] = ch
	}
	reqs := make([]*fakeserver.Req, n)
	for i := range n {
		r, err := l.ReadOp(7)
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Data) != fmt.Sprint("post ", i) || r.Num("datalen") != len(r.Data) {
			t.Fatalf("request %d: %s %q", i, r.Raw, r.Data)
		}
		reqs[i] = r
	}
	for i := n - 1; i >= 0; i-- {
		if err := l.Ack(reqs[i]); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			l.WriteStored("delivery", "u2", "0001", []byte("hi"))
			l.Write(map[string]any{"from": "u2", "op": "ohi", "status": 1}, nil)
		}
	}
	ids := map[string]bool{}
	for i, ch := range results {
		r := <-ch
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if r.Ack.ID != reqs[i].Str("id") || r.Ack.MsgID != "m"+r.Ack.ID || r.Ack.Posted == "" || r.Ack.Error != "" {
			t.Errorf("post %d got %+v for request id %s", i, r.Ack, reqs[i].Str("id"))
		}
		ids[r.Ack.ID] = true
	}
	if len(ids) != n {
		t.Errorf("request ids not unique: %v", ids)
	}
	if f := recv(t, c.Messages()); f.Op() != "delivery" || string(f.Data) != "hi" {
		t.Errorf("message %s", f)
	}
	if f := recv(t, c.Others()); f.Op() != "ohi" || f.Int("status") != 1 {
		t.Errorf("other %s", f)
	}
}

func TestAutoAck(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{AutoAck: true})
	ids := []string{"0000000000000001", "0000000000000002", "0000000000000003"}
	for i, id := range ids {
		if err := l.WriteStored("delivery", "u2", id, []byte(fmt.Sprint("m", i))); err != nil {
			t.Fatal(err)
		}
	}
	// An ohi has a from but no id: it is not a stored message and not acked.
	l.Write(map[string]any{"from": "u2", "op": "ohi", "status": 2}, nil)
	for i, id := range ids {
		f := recv(t, c.Messages())
		if f.Str("id") != id || string(f.Data) != fmt.Sprint("m", i) {
			t.Errorf("message %d: %s", i, f)
		}
		r, err := l.ReadOp(10)
		if err != nil {
			t.Fatal(err)
		}
		if r.Str("id") != id || r.Str("type") != AckType {
			t.Errorf("ack %d: %s", i, r.Raw)
		}
	}
	if f := recv(t, c.Others()); f.Op() != "ohi" {
		t.Errorf("other %s", f)
	}
	// Pulse next: had an ack of the ohi been sent, it would arrive first.
	if err := c.Pulse(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadOp(11); err != nil {
		t.Fatal(err)
	}
}

func TestManualAck(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	l.WriteStored("ping", "u2", "0000000000000009", []byte("yo"))
	f := recv(t, c.Messages())
	if err := c.Ack(f.Str("id")); err != nil {
		t.Fatal(err)
	}
	r, err := l.ReadOp(10)
	if err != nil {
		t.Fatal(err)
	}
	if r.Raw != `{"Id":"0000000000000009","Op":10,"Type":"n"}` {
		t.Errorf("ack frame %s", r.Raw)
	}
}

func TestOnMessage(t *testing.T) {
	s := fakeserver.New(t)
	got := make(chan *Frame, 2)
	c, l := loggedIn(t, s, Options{AutoAck: true, OnMessage: func(f *Frame) { got <- f }, OnOther: func(f *Frame) { got <- f }})
	l.WriteStored("delivery", "u2", "0001", []byte("x"))
	if _, err := l.ReadOp(10); err != nil {
		t.Fatal(err)
	}
	l.Write(map[string]any{"from": "u2", "op": "ohi", "status": 1}, nil)
	if f := recv(t, got); f.Op() != "delivery" {
		t.Errorf("OnMessage got %s", f)
	}
	if f := recv(t, got); f.Op() != "ohi" {
		t.Errorf("OnOther got %s", f)
	}
	c.Close()
	if _, ok := <-c.Messages(); ok {
		t.Error("Messages used with OnMessage set")
	}
}

// TestOps checks the header each request method sends.
func TestOps(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	to := []Recipient{{ID: "u2", Type: ToUser}, {ID: "grp", Type: ToGroupOthers}}
	tests := []struct {
		name string
		call func() (Ack, error)
		raw  string // header without Id
		data string
	}{
		{"Post", func() (Ack, error) { return c.Post(to, []byte("hello")) },
			`{"Datalen":5,"For":[{"Id":"u2","Type":1},{"Id":"grp","Type":3}],"Op":7}`, "hello"},
		{"Post nil for", func() (Ack, error) { return c.Post(nil, []byte("x")) },
			`{"Datalen":1,"For":[],"Op":7}`, "x"},
		{"PostNotify", func() (Ack, error) {
			return c.PostNotify(to[:1], []Recipient{{ID: "u3", Type: ToUser}}, []byte("note."), []byte("post data"), true)
		}, `{"Datalen":14,"For":[{"Id":"u2","Type":1}],"Fornotself":true,"Notefor":[{"Id":"u3","Type":1}],"Notelen":5,"Op":8}`, "note.post data"},
		{"PostNotify plain", func() (Ack, error) { return c.PostNotify(nil, nil, []byte("n"), []byte("p"), false) },
			`{"Datalen":2,"For":[],"Notelen":1,"Op":8}`, "np"},
		{"NewAlias", func() (Ack, error) { return c.NewAlias("sam walker") },
			`{"NewAlias":"sam walker","Op":3}`, ""},
		{"NewNode", func() (Ack, error) { return c.NewNode("ref") },
			`{"NewNode":"ref","Op":3}`, ""},
		{"OhiEdit", func() (Ack, error) { return c.OhiEdit("init", []string{"u2", "u3"}) },
			`{"For":[{"Id":"u2"},{"Id":"u3"}],"Op":4,"Type":"init"}`, ""},
		{"GroupInvite", func() (Ack, error) { return c.GroupInvite("talktalk", "test1", "test2", "hello") },
			`{"Datalen":5,"From":"test1","Gid":"talktalk","Op":5,"To":"test2"}`, "hello"},
		{"GroupEdit join", func() (Ack, error) { return c.GroupEdit("join", "blab", "", "") },
			`{"Act":"join","Gid":"blab","Op":6}`, ""},
		{"GroupEdit alias", func() (Ack, error) { return c.GroupEdit("alias", "blab", "test11", "") },
			`{"Act":"alias","Gid":"blab","NewAlias":"test11","Op":6}`, ""},
		{"GroupEdit drop", func() (Ack, error) { return c.GroupEdit("drop", "blab", "", "test1") },
			`{"Act":"drop","Gid":"blab","Op":6,"To":"test1"}`, ""},
		{"Ping", func() (Ack, error) { return c.Ping("test1", "test2", "") },
			`{"Datalen":0,"From":"test1","Op":9,"To":"test2"}`, ""},
		{"Do keeps head, replaces id", func() (Ack, error) {
			return c.Do(map[string]any{"op": 3, "id": "mine", "ID": "also", "newalias": "x"}, nil)
		}, `{"newalias":"x","op":3}`, ""},
	}
	// The requests share one link: after a failed one, the next would
	// read its leftovers.
	for _, tt := range tests {
		ok := t.Run(tt.name, func(t *testing.T) {
			errc := make(chan error, 1)
			go func() {
				r, err := l.Read()
				if err == nil {
					err = l.Ack(r)
				}
				if err == nil {
					id := r.Str("id")
					head := r.Raw
					// Take the Id out, to compare the rest exactly.
					for _, pat := range []string{`"Id":"` + id + `",`, `,"Id":"` + id + `"`} {
						if i := strings.Index(head, pat); i >= 0 {
							head = head[:i] + head[i+len(pat):]
							break
						}
					}
					if head != tt.raw || string(r.Data) != tt.data {
						err = fmt.Errorf("sent %s %q, want %s %q", r.Raw, r.Data, tt.raw, tt.data)
					}
				}
				errc <- err
			}()
			a, err := tt.call()
			if err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Error(err)
			}
			if _, err := strconv.Atoi(a.ID); err != nil || a.MsgID != "m"+a.ID {
				t.Errorf("ack %+v", a)
			}
		})
		if !ok {
			return
		}
	}
}

func TestAckError(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	errc := make(chan error, 1)
	go func() {
		r, err := l.ReadOp(9)
		if err == nil {
			err = l.Write(map[string]any{"error": "from must identify sender", "id": r.Str("id"), "op": "ack"}, nil)
		}
		errc <- err
	}()
	a, err := c.Ping("someone", "test2", "hi")
	if err != nil {
		t.Fatal(err)
	}
	if a.Error != "from must identify sender" || a.MsgID != "" {
		t.Errorf("ack %+v", a)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestQuit(t *testing.T) {
	for _, reason := range []string{ReasonLogoutOK, "something else"} {
		t.Run(reason, func(t *testing.T) {
			s := fakeserver.New(t)
			c, l := loggedIn(t, s, Options{})
			errc := make(chan error, 1)
			go func() {
				_, err := l.ReadOp(12)
				if err == nil {
					err = l.Quit(reason)
				}
				errc <- err
			}()
			err := c.Quit()
			if reason == ReasonLogoutOK && err != nil {
				t.Errorf("Quit = %v", err)
			}
			var q *QuitError
			if reason != ReasonLogoutOK && (!errors.As(err, &q) || q.Reason != reason) {
				t.Errorf("Quit = %v, want QuitError %q", err, reason)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if _, ok := <-c.Messages(); ok {
				t.Error("Messages not closed after Quit")
			}
		})
	}
}

func TestServerQuitFailsPending(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	ch, err := c.PostAsync(nil, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadOp(7); err != nil {
		t.Fatal(err)
	}
	l.Quit("invalid header")
	var q *QuitError
	if r := <-ch; !errors.As(r.Err, &q) || q.Reason != "invalid header" {
		t.Errorf("pending post got %+v", r)
	}
	<-c.Done()
	if f := recv(t, c.Others()); f.Op() != "quit" {
		t.Errorf("other %s", f)
	}
	if _, ok := <-c.Others(); ok {
		t.Error("Others not closed")
	}
	if !errors.As(c.Err(), &q) {
		t.Errorf("Err() = %v", c.Err())
	}
	if _, err := c.Post(nil, []byte("x")); !errors.As(err, &q) {
		t.Errorf("Post after the end = %v", err)
	}
}

func TestLinkLossFailsPending(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	ch, err := c.PostAsync(nil, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadOp(7); err != nil {
		t.Fatal(err)
	}
	l.Conn.Close()
	if r := <-ch; r.Err == nil {
		t.Error("pending post did not fail")
	}
	if _, ok := <-c.Messages(); ok {
		t.Error("Messages not closed")
	}
	if c.Err() == nil || errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err() = %v", c.Err())
	}
}

func TestCloseFailsPending(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	ch, err := c.PostAsync(nil, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadOp(7); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if r := <-ch; !errors.Is(r.Err, ErrClosed) {
		t.Errorf("pending post got %v", r.Err)
	}
	if _, err := c.PostAsync(nil, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("post after Close = %v", err)
	}
}

// TestCloseWhileBlocked closes a Client whose reader is blocked handing a
// message to a consumer that does not read.
func TestCloseWhileBlocked(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{Buffer: 1, AutoAck: true})
	l.WriteStored("delivery", "u2", "0001", nil)
	l.WriteStored("delivery", "u2", "0002", nil)
	if r, err := l.ReadOp(10); err != nil || r.Str("id") != "0001" {
		t.Fatal(r, err)
	}
	c.Close() // returns only once the reader has finished
	if f := recv(t, c.Messages()); f.Str("id") != "0001" {
		t.Errorf("buffered message %s", f)
	}
	if _, ok := <-c.Messages(); ok {
		t.Error("message 0002 handed over after Close")
	}
}

func TestStrict(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	h := fakeserver.StoredHead(map[string]any{"from": "u2", "id": "0001", "op": "delivery"}, []byte("x"))
	h["headsum"] = h["headsum"].(uint32) + 1
	l.Write(h, []byte("x"))
	if _, ok := <-c.Messages(); ok {
		t.Error("message with a wrong headsum handed over")
	}
	if !errors.Is(c.Err(), ErrProtocol) {
		t.Errorf("Err() = %v, want ErrProtocol", c.Err())
	}
}

func TestLax(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{Lax: true})
	h := fakeserver.StoredHead(map[string]any{"from": "u2", "id": "0001", "op": "delivery"}, []byte("x"))
	h["headsum"] = h["headsum"].(uint32) + 1
	l.Write(h, []byte("x"))
	if f := recv(t, c.Messages()); f.HeadsumOK() {
		t.Errorf("tampered headsum passes: %s", f)
	}
}

func TestDoTimeoutThenStrayAck(t *testing.T) {
	s := fakeserver.New(t)
	c, l := loggedIn(t, s, Options{})
	// Shortened after login, so that a slow handshake cannot fail the test.
	c.o.Timeout = 50 * time.Millisecond
	if _, err := c.Post(nil, []byte("x")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Post = %v, want ErrTimeout", err)
	}
	r, err := l.ReadOp(7)
	if err != nil {
		t.Fatal(err)
	}
	l.Ack(r) // too late: nobody waits for it
	if f := recv(t, c.Others()); f.Op() != "ack" || f.Str("id") != r.Str("id") {
		t.Errorf("stray ack not in Others: %s", f)
	}
}

func TestLoginRetry(t *testing.T) {
	s := fakeserver.New(t)
	var attempts atomic.Int32
	errc := make(chan error, 1)
	go func() {
		for {
			l, err := s.Accept()
			if err != nil {
				errc <- err
				return
			}
			switch attempts.Add(1) {
			case 1:
				l.Conn.Close() // the server restarting
			case 2:
				l.TmtpRev()
				l.ReadOp(2)
				l.Quit("node already connected")
			default:
				errc <- l.Login()
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), fakeserver.Timeout)
	defer cancel()
	c, _, err := LoginRetry(ctx, s.Addr(), "uid1", "node1", Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := attempts.Load(); n != 3 {
		t.Errorf("%d attempts, want 3", n)
	}
}

func TestLoginRetryGivesUp(t *testing.T) {
	s := fakeserver.New(t)
	errc := s.Serve(func(l *fakeserver.Link) error {
		if err := l.TmtpRev(); err != nil {
			return err
		}
		l.ReadOp(2)
		return l.Quit("login failed")
	})
	_, _, err := LoginRetry(context.Background(), s.Addr(), "uid1", "node1", Options{})
	var q *QuitError
	if !errors.As(err, &q) || q.Reason != "login failed" {
		t.Fatalf("got %v, want QuitError login failed", err)
	}
	fakeserver.Done(t, errc)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Serve(func(l *fakeserver.Link) error { return l.Conn.Close() })
	if _, _, err := LoginRetry(ctx, s.Addr(), "uid1", "node1", Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled LoginRetry = %v", err)
	}
}

// BenchmarkPostWindow measures the client's side of windowed posting: 32
// posts in flight against a fake server that acks at once, over loopback TLS.
func BenchmarkPostWindow(b *testing.B) {
	const window = 32
	s := fakeserver.New(b)
	errc := s.Serve(func(l *fakeserver.Link) error {
		if err := l.Login(); err != nil {
			return err
		}
		for {
			r, err := l.Read()
			if err != nil {
				return nil // the client closed
			}
			if err := l.Ack(r); err != nil {
				return nil
			}
		}
	})
	c, _, err := Login(s.Addr(), "uid1", "node1", Options{})
	if err != nil {
		b.Fatal(err)
	}
	data := MakePayload(0, testUID, 1024, nil)
	to := []Recipient{{ID: testUID, Type: ToUser}}
	inflight := make(chan (<-chan AckResult), window)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		if len(inflight) == window {
			if r := <-<-inflight; r.Err != nil {
				b.Fatal(r.Err)
			}
		}
		ch, err := c.PostAsync(to, data)
		if err != nil {
			b.Fatal(err)
		}
		inflight <- ch
	}
	for len(inflight) > 0 {
		if r := <-<-inflight; r.Err != nil {
			b.Fatal(r.Err)
		}
	}
	b.StopTimer()
	c.Close()
	<-errc
}

func TestPulseInterval(t *testing.T) {
	s := fakeserver.New(t)
	_, l := loggedIn(t, s, Options{PulseInterval: 5 * time.Millisecond})
	for range 3 {
		if _, err := l.ReadOp(11); err != nil {
			t.Fatal(err)
		}
	}
}

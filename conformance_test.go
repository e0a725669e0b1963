package main

// The conformance test: the deployed server's own transcript test
// (../shared/tmtp/reference-test.json, explained in reference-test.md beside
// it) run step by step against our whole server (config, OpenID Connect,
// userdb, store, qlib) over TLS on loopback.
//
// Four channels are watched:
//
//   - the step link: a raw testclient.Conn of the sender's node 0 carrying the
//     transcript's frames, so that malformed and split frames go out exactly
//     as written. The driver acks every stored message it receives there, as
//     the deployed client (and the original harness) does; otherwise the
//     server would never send the next one.
//   - receiver node 0 and receiver node 1 (u100003), and sender node 1
//     (u100002): logged-in testclient.Clients that ack everything.
//
// A step's "want" is three runs concatenated (reference-test.md): frames on
// the step link without "from", then frames on the step link with "from"
// (stored messages, recognisable by their "#sid#" id), then frames reaching
// receiver node 0. Receiver node 1 must get byte-identical frames. What sender
// node 1 must get is derived in senderNodeWant.
//
// When is a step complete? Each channel is read, against one deadline per
// step, until it has delivered as many frames as the want list gives it; a
// step that expects the link to close also waits for the close (EOF) and
// fails on any frame after the quit. That leaves "nothing unexpected
// follows" for links that stay open and for the three devices, which no
// timer can prove (waiting a while and seeing nothing is a sleep that only
// makes a slow server pass). Instead every extra frame is revealed by an
// event that comes later on the same channel: the next step's frames on the
// step link (the server handles a link's requests in order, so a reply to an
// earlier request comes first), and, for the devices, the next messages of
// their queues, which arrive in id order (SPEC §5) so a message stored during
// step N arrives before any stored during step N+1. After the last step a
// sentinel post from sender node 1 to both users must be the very next frame
// on every device; anything before it is reported. An extra frame is
// therefore reported, but possibly at a later step than the one that caused
// it; the message says so.

import (
	"bytes"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/testclient"
)

// referenceTranscript is the transcript, relative to this package's directory
// (the working directory of its tests): ../shared is a sibling checkout.
const referenceTranscript = "../shared/tmtp/reference-test.json"

const (
	// refStepTimeout bounds the wait for one step's frames on all channels
	// together. A passing step takes milliseconds; this is generous for the
	// race detector on two loaded cores, where every stored message costs an
	// fsync.
	refStepTimeout = 10 * time.Second

	// refLoginTimeout is the server's deadline for completing a login
	// (SPEC §2). The "delay" step waits for it, so it costs this much time.
	refLoginTimeout = 5 * time.Second

	// refBuffer is the capacity of the channels that hold received frames
	// until the driver reads them: far more than the transcript produces,
	// so a reader goroutine never waits on the driver.
	refBuffer = 1024

	// refTokenLife is the validity of the sign-up tokens the test mints:
	// much longer than the test, so a slow run does not see them expire.
	refTokenLife = time.Hour
)

// The fixture of reference-test.md.
const (
	refSiteName = "Verify"
	refSendUID  = "u100002"
	refRecvUID  = "u100003"
	refGroup    = "blab"

	// refIssuer, refAudience and refKeyID identify the test's OpenID Connect
	// provider (its keys are served on loopback by a jwksServer).
	refIssuer   = "https://id.example.com"
	refAudience = "mnm-reference-test"
	refKeyID    = "reference"
)

// refOps maps the transcript's op names to numbers (reference-test.md).
var refOps = map[string]int{
	"eOpTmtpRev": 0, "eOpRegister": 1, "eOpLogin": 2, "eOpUserEdit": 3,
	"eOpOhiEdit": 4, "eOpGroupInvite": 5, "eOpGroupEdit": 6, "eOpPost": 7,
	"eOpPostNotify": 8, "eOpPing": 9, "eOpAck": 10, "eOpPulse": 11, "eOpQuit": 12,
}

// refDifference is a step where our server deliberately behaves otherwise
// than the deployed one did in the original run. adjust turns the
// transcript's want list into what we expect instead.
type refDifference struct {
	why    string
	adjust func(want []map[string]any) []map[string]any
	// check confirms that the step still is the one the entry was written
	// for, so an edited transcript cannot make the entry apply elsewhere.
	check func(s *refStep) bool
	// otherUser: the step link is logged in as another user than the
	// sender, so the sender's node 1 gets no copy of its stored messages.
	otherUser bool
	// after, if set, runs once the step is checked, to put the fixture
	// back as the transcript's later steps expect it.
	after func(r *refRun)
	// senderNode1, if set, is what the sender's node 1 receives instead
	// of the same stored messages as node 0 (templates, as in want).
	senderNode1 []map[string]any
}

// refDifferences lists the deliberate differences by step number (1-based
// position in reference-test.json).
var refDifferences = map[int]refDifference{
	36: {
		why: "a new device's nodeid goes only to the requesting device (Protocol.md, UserEdit): " +
			"the user's other devices get the announcement without it, as a message of their own, " +
			"so that the password does not stay on disk until every device has acked it",
		adjust: func(want []map[string]any) []map[string]any { return want },
		check: func(s *refStep) bool {
			return s.Head["Op"] == "eOpUserEdit" && s.Head["Newnode"] != nil &&
				slices.ContainsFunc(s.Want, func(w map[string]any) bool { return w["op"] == "user" && w["nodeid"] != nil })
		},
		senderNode1: []map[string]any{
			{"datalen": json.Number("0"), "from": "*senduid", "headsum": json.Number("1"), "id": "#sid#",
				"newnode": "ref", "op": "user", "posted": "#spdt#"},
		},
	},
	49: {
		why: "SPEC §6: ohi status 2 is sent when the user's last device disconnects; " +
			"the fixture keeps the sender's node 1 logged in, so node 0's Quit sends none",
		adjust: func(want []map[string]any) []map[string]any {
			return slices.DeleteFunc(slices.Clone(want), func(w map[string]any) bool { return w["op"] == "ohi" })
		},
		check: func(s *refStep) bool {
			return s.Head["Op"] == "eOpQuit" && slices.ContainsFunc(s.Want, func(w map[string]any) bool { return w["op"] == "ohi" })
		},
	},
	28: {
		why: "a device's newest login takes over from its live link (Protocol.md, Login): " +
			"the deployed server answers \"node already connected\" and locks the device out " +
			"until a half-open old link times out. The step link becomes receiver node 0 and " +
			"gets its login notice; the fixture's link is closed and logged in again afterwards",
		adjust: func([]map[string]any) []map[string]any {
			return []map[string]any{
				{"info": "login ok", "op": "info"},
				{"datalen": json.Number("0"), "from": "*recvuid", "headsum": json.Number("1"), "id": "#sid#",
					"node": "tbd", "op": "login", "posted": "#spdt#"},
			}
		},
		check: func(s *refStep) bool {
			return s.Head["Op"] == "eOpLogin" && s.Head["Uid"] == "*recvuid" && s.Head["Node"] == "*recvnode" &&
				len(s.Want) == 1 && s.Want[0]["error"] == "node already connected"
		},
		otherUser: true,
		after: func(r *refRun) {
			// Log the step link out in order, so that its ack of the
			// login notice is handled before receiver node 0 returns.
			if err := r.link.conn.WriteFrame(map[string]any{"Op": refOps["eOpQuit"]}, nil); err != nil {
				r.errorf("quit: %v", err)
			}
			for !r.link.closed {
				if _, ok := r.link.next(time.Now().Add(refStepTimeout)); !ok {
					r.errorf("step link not closed after its Quit")
					r.link.close()
				}
			}
			r.rx0 = r.srv.login(r.t, "receiver node 0", refRecvUID, r.srv.recvNodes[0])
			r.drainLogins(r.rx0, 1) // its own; the step link acked the first
			r.drainLogins(r.rx1, 2) // the step link's and receiver node 0's
		},
	},
}

// refStep is one step of the transcript, decoded with json.Number so that
// numbers are sent and compared as written.
type refStep struct {
	Head    map[string]any
	Data    []byte
	Msg     *string
	Tmtp    bool
	Want    []map[string]any
	HasWant bool // "want" present; an empty list means "the link closes silently"
	Nfsn    bool
}

// refDelay is the msg that means "send nothing until the login timeout".
const refDelay = "delay"

func TestReferenceTranscript(t *testing.T) {
	steps := loadReferenceTranscript(t)
	for n, d := range refDifferences {
		if n < 1 || n > len(steps) || !d.check(&steps[n-1]) {
			t.Fatalf("refDifferences entry for step %d no longer fits the transcript", n)
		}
	}
	srv := startReferenceServer(t)

	// The live devices of the fixture, logged in before step 1 in this
	// order. Each login stores a login notice for all of its user's
	// devices: the receiver's devices both get the notices of both their
	// logins, sender node 1 gets its own (sender node 0 is offline and keeps
	// its copy queued, which step 30 expects).
	r := &refRun{t: t, srv: srv, steps: steps}
	r.rx0 = srv.login(t, "receiver node 0", refRecvUID, srv.recvNodes[0])
	r.rx1 = srv.login(t, "receiver node 1", refRecvUID, srv.recvNodes[1])
	r.tx1 = srv.login(t, "sender node 1", refSendUID, srv.sendNodes[1])
	r.drainLogins(r.rx0, 2)
	r.drainLogins(r.rx1, 2)
	r.drainLogins(r.tx1, 1)
	if t.Failed() {
		t.FailNow()
	}

	for i := range steps {
		r.step(i+1, &steps[i])
	}
	r.finish()

	if len(r.failed) > 0 {
		t.Logf("%d of %d steps failed: %v", len(r.failed), len(steps), r.failed)
	} else {
		t.Logf("all %d steps passed", len(steps))
	}
}

// loadReferenceTranscript reads and checks the transcript. It skips the test
// when ../shared is absent, unless MNM_REQUIRE_SHARED=1.
func loadReferenceTranscript(t *testing.T) []refStep {
	t.Helper()
	path := filepath.FromSlash(referenceTranscript)
	b := readShared(t, path)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var raw []map[string]any
	if err := dec.Decode(&raw); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	steps := make([]refStep, len(raw))
	for i, m := range raw {
		if err := steps[i].decode(m); err != nil {
			t.Fatalf("%s: step %d: %v", path, i+1, err)
		}
	}
	if len(steps) == 0 || len(steps[0].Want) == 0 || steps[0].Want[0]["op"] != "tmtprev" {
		t.Fatalf("%s: step 1 does not expect a tmtprev reply", path)
	}
	return steps
}

// decode fills s from one step object, refusing fields it does not know
// (other than "//" comments) so that a change of the transcript format is
// noticed instead of silently ignored.
func (s *refStep) decode(m map[string]any) error {
	for k, v := range m {
		var ok bool
		switch k {
		case "head":
			s.Head, ok = v.(map[string]any)
		case "data":
			var d string
			d, ok = v.(string)
			s.Data = []byte(d)
		case "datb":
			var l []any
			if l, ok = v.([]any); ok {
				for _, e := range l {
					n, isNum := e.(json.Number)
					c, err := n.Int64()
					if !isNum || err != nil || c < 0 || c > 255 {
						return fmt.Errorf("datb element %v is not a byte", e)
					}
					s.Data = append(s.Data, byte(c))
				}
			}
		case "msg":
			var msg string
			msg, ok = v.(string)
			s.Msg = &msg
		case "tmtp":
			s.Tmtp, ok = v == json.Number("1"), true
		case "want":
			var l []any
			if l, ok = v.([]any); ok {
				s.HasWant = true
				for _, e := range l {
					w, isObj := e.(map[string]any)
					if !isObj {
						return fmt.Errorf("want element %v is not an object", e)
					}
					s.Want = append(s.Want, w)
				}
			}
		case "nfsn":
			s.Nfsn, ok = v.(bool)
		default:
			ok = strings.HasPrefix(k, "//")
		}
		if !ok {
			return fmt.Errorf("field %q: unexpected %T", k, v)
		}
	}
	if s.Tmtp && (s.Head != nil || s.Msg != nil || s.HasWant) {
		return errors.New("a tmtp step carries nothing else")
	}
	if s.Head != nil {
		name, _ := s.Head["Op"].(string)
		if _, ok := refOps[name]; !ok {
			return fmt.Errorf("unknown op %v", s.Head["Op"])
		}
	}
	return nil
}

// refServer is the server under test with the fixture of reference-test.md.
type refServer struct {
	addr      string
	d         *daemon
	logs      *lockedBuffer
	key       *rsa.PrivateKey // signs sign-up tokens
	sendNodes []string        // nodeids of u100002's devices 0 and 1
	recvNodes []string        // nodeids of u100003's devices 0 and 1
}

// startReferenceServer starts the daemon from a config file, the way main
// does, with a loopback NTP responder and a loopback OpenID Connect key set,
// and creates the fixture users and group directly in the user database.
func startReferenceServer(t *testing.T) *refServer {
	t.Helper()
	dir := t.TempDir()
	if err := CreateSelfSigned(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), []string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	s := &refServer{logs: newLockedBuffer(), key: oidcKey(t, "a")}
	jwks := newJWKSServer(t, oidcJWKS(t, oidcJWK(refKeyID, &s.key.PublicKey)))
	cfg := map[string]any{
		"name":   refSiteName,
		"ntp":    map[string]any{"hosts": []string{startNTPResponder(t, 0)}, "retries": 1, "required": true},
		"listen": map[string]any{"net": "tcp", "laddr": "127.0.0.1:0", "certPath": "cert.pem", "keyPath": "key.pem"},
		"auth":   1,
		"authby": []any{map[string]any{
			"label": "X",
			// The deployed shape (SPEC §8): the reply's
			// ["…/l","a&b&d"] and ["…/t","c&d"] are the
			// endpoints' params followed by std's.
			"login": []string{"https://example.com/l", "a", "b"},
			"token": []string{"https://example.com/t", "c"},
			"std":   []string{"d"},
			"keys":  jwks.URL + "/jwks",
			"iss":   refIssuer,
			"aud":   refAudience,
		}},
	}
	cfgPath := writeConfigFile(t, dir, cfg)
	logger := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	s.d, err = startDaemon(cfgPath, logger)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	s.addr = s.d.ln.Addr().String()
	// Registered first, so it runs last: the links are closed by then.
	t.Cleanup(func() {
		if err := s.d.shutdown(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs.String())
		}
	})

	users := s.d.users
	if s.sendNodes, err = users.CreateFixture(refSendUID, []string{"node 0", "node 1"}, []string{"test1", "test11"}); err != nil {
		t.Fatal(err)
	}
	if s.recvNodes, err = users.CreateFixture(refRecvUID, []string{"node 0", "node 1"}, []string{"test2"}); err != nil {
		t.Fatal(err)
	}
	if err := users.CreateGroupFixture(refGroup, map[string]string{refSendUID: "test1"}, map[string]bool{refSendUID: false}); err != nil {
		t.Fatal(err)
	}
	return s
}

// token mints a valid sign-up token for subject sub.
func (s *refServer) token(t *testing.T, sub string) string {
	t.Helper()
	now := time.Now()
	return oidcSign(t, s.key, oidcHeader(refKeyID), map[string]any{
		"iss": refIssuer,
		"aud": refAudience,
		"sub": sub,
		"iat": now.Unix(),
		"exp": now.Add(refTokenLife).Unix(),
	})
}

// refDevice is a logged-in fixture device that acks everything and records
// every frame it receives, stored or not, in arrival order.
type refDevice struct {
	name   string
	client *testclient.Client
	frames chan *testclient.Frame
	seen   map[string]bool // ids of the stored messages received so far
}

func (s *refServer) login(t *testing.T, name, uid, nodeid string) *refDevice {
	t.Helper()
	d := &refDevice{name: name, frames: make(chan *testclient.Frame, refBuffer), seen: map[string]bool{}}
	stop := make(chan struct{})
	push := func(f *testclient.Frame) {
		select {
		case d.frames <- f:
		case <-stop:
		}
	}
	// Lax: the driver runs CheckFrame itself and reports a violation as a
	// failure of the step, instead of losing the device for the rest of the
	// transcript.
	c, _, err := testclient.Login(s.addr, uid, nodeid, testclient.Options{AutoAck: true, Lax: true, OnMessage: push, OnOther: push})
	if err != nil {
		t.Fatalf("login of %s: %v", name, err)
	}
	d.client = c
	t.Cleanup(func() {
		close(stop)
		c.Close()
	})
	return d
}

// next returns the device's next frame, or nil when the deadline passes or
// the link has ended (then with the reason).
func (d *refDevice) next(deadline time.Time) (*testclient.Frame, error) {
	select {
	case f := <-d.frames:
		return d.note(f), nil
	default:
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case f := <-d.frames:
		return d.note(f), nil
	case <-d.client.Done():
		select {
		case f := <-d.frames:
			return d.note(f), nil
		default:
			return nil, fmt.Errorf("%s: link ended: %v", d.name, d.client.Err())
		}
	case <-timer.C:
		return nil, nil
	}
}

func (d *refDevice) note(f *testclient.Frame) *testclient.Frame {
	if f.Stored() {
		d.seen[f.Str("id")] = true
	}
	return f
}

// refLink is the step link: a raw connection with a reader goroutine, so
// that the driver can wait for a frame or the link's end with a deadline.
type refLink struct {
	conn   *testclient.Conn
	opened time.Time     // before dialling: no later than the server's accept
	events chan refEvent // frames, then one event with the error that ended the link
	ended  chan struct{} // closed after the final event is queued
	stop   chan struct{} // closed by close, releases the reader
	once   sync.Once     // closes stop
	closed bool          // the driver has seen the end (or closed the link)
}

type refEvent struct {
	f   *testclient.Frame
	err error
	at  time.Time
}

func dialRefLink(addr string) (*refLink, error) {
	l := &refLink{opened: time.Now(), events: make(chan refEvent, refBuffer), ended: make(chan struct{}), stop: make(chan struct{})}
	conn, err := testclient.Dial(addr, nil)
	if err != nil {
		return nil, err
	}
	l.conn = conn
	conn.SetReadTimeout(0) // the driver's deadlines apply, not the Conn's
	go func() {
		defer close(l.ended)
		for {
			f, err := conn.ReadFrame()
			select {
			case l.events <- refEvent{f: f, err: err, at: time.Now()}:
			case <-l.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return l, nil
}

// next returns the next event, or false when the deadline passes first.
func (l *refLink) next(deadline time.Time) (refEvent, bool) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case ev := <-l.events:
		if ev.err != nil {
			l.closed = true
		}
		return ev, true
	case <-timer.C:
		return refEvent{}, false
	}
}

func (l *refLink) close() {
	l.once.Do(func() { close(l.stop) })
	l.conn.Close()
	l.closed = true
}

// refRun is the state of one run of the transcript.
type refRun struct {
	t             *testing.T
	srv           *refServer
	steps         []refStep
	rx0, rx1, tx1 *refDevice
	link          *refLink         // the step link; nil before step 1
	otherUser     bool             // the step's refDifference.otherUser
	senderNode1   []map[string]any // the step's refDifference.senderNode1
	req           map[string]any   // head of the request being answered (a msg step continues it)
	cur           int              // the step running, for messages
	failed        []int            // steps with a failure, in order
}

func (r *refRun) errorf(format string, args ...any) {
	r.t.Helper()
	where := "after the transcript"
	if r.cur > 0 {
		where = fmt.Sprintf("step %d", r.cur)
	}
	r.t.Errorf(where+": "+format, args...)
	if r.cur > 0 && !slices.Contains(r.failed, r.cur) {
		r.failed = append(r.failed, r.cur)
	}
}

// drainLogins reads the n login notices a fixture device gets before step 1.
func (r *refRun) drainLogins(d *refDevice, n int) {
	r.t.Helper()
	deadline := time.Now().Add(refStepTimeout)
	for range n {
		f, err := d.next(deadline)
		switch {
		case err != nil:
			r.t.Errorf("%v", err)
			return
		case f == nil:
			r.t.Errorf("%s: no login notice within %v", d.name, refStepTimeout)
			return
		case f.Op() != "login" || testclient.CheckFrame(f) != nil:
			r.t.Errorf("%s: got %s before step 1, want a login notice", d.name, f)
		}
	}
}

func (r *refRun) step(n int, s *refStep) {
	r.t.Helper()
	r.cur = n
	want := s.Want
	d, differs := refDifferences[n]
	if differs {
		r.t.Logf("step %d differs deliberately from the transcript: %s", n, d.why)
		want = d.adjust(want)
		r.otherUser = d.otherUser
		r.senderNode1 = d.senderNode1
		defer func() {
			r.otherUser = false
			r.senderNode1 = nil
			if d.after != nil {
				d.after(r)
			}
		}()
	}
	if s.Tmtp {
		r.reopen(true)
		return
	}
	if r.link == nil || r.link.closed || r.endedEarly() {
		// reference-test.md: a step after a link was closed goes on a
		// fresh link, without TmtpRev unless the step says "tmtp".
		r.reopen(false)
	}
	switch {
	case s.Head != nil:
		r.req = s.Head
		head := r.requestHead(s.Head)
		if err := r.link.conn.WriteFrame(head, s.Data); err != nil {
			r.errorf("send: %v", err)
			r.link.close()
			return
		}
	case s.Msg != nil && *s.Msg == refDelay:
		// Say nothing; the server's login deadline must close the link.
	case s.Msg != nil:
		if err := r.link.conn.WriteRaw([]byte(*s.Msg)); err != nil {
			r.errorf("send: %v", err)
			r.link.close()
			return
		}
	}
	if s.HasWant {
		r.check(s, want)
	}
}

// endedEarly reports whether the step link ended while no step was reading
// it; frames that came before the end are reported as unexpected.
func (r *refRun) endedEarly() bool {
	select {
	case <-r.link.ended:
	default:
		return false
	}
	r.drainLink("before the link closed")
	return true
}

// drainLink reports the frames already received on the step link that no
// step consumed.
func (r *refRun) drainLink(when string) {
	for {
		select {
		case ev := <-r.link.events:
			if ev.err != nil {
				r.link.closed = true
				continue
			}
			r.errorf("unexpected frame on the step link %s (perhaps left from an earlier step): %s", when, ev.f)
		default:
			return
		}
	}
}

// reopen replaces the step link by a fresh one. With tmtp it sends TmtpRev
// and checks the reply against step 1's.
func (r *refRun) reopen(tmtp bool) {
	r.t.Helper()
	if r.link != nil {
		r.drainLink("when it was replaced")
		r.link.close()
	}
	l, err := dialRefLink(r.srv.addr)
	if err != nil {
		r.t.Fatalf("step %d: dial: %v", r.cur, err)
	}
	r.link, r.req = l, nil
	r.t.Cleanup(l.close)
	if !tmtp {
		return
	}
	if err := l.conn.WriteFrame(map[string]any{"Op": refOps["eOpTmtpRev"], "Id": "1"}, nil); err != nil {
		r.errorf("send tmtprev: %v", err)
		return
	}
	ev, ok := l.next(time.Now().Add(refStepTimeout))
	switch {
	case !ok:
		r.errorf("no tmtprev reply within %v", refStepTimeout)
	case ev.err != nil:
		r.errorf("link ended awaiting the tmtprev reply: %v", ev.err)
	default:
		r.matchRun("tmtprev reply", r.steps[0].Want[:1], []*testclient.Frame{ev.f})
	}
}

// requestHead turns a transcript head into the header to send: the op by
// number, the fixture's uids and nodeids for their placeholders.
//
// Register gets an "Oidc" token: the site is configured with auth 1, so the
// server must refuse a registration without a valid third-party token, and
// the original run's registrations carried one too (reference-test.md). Each
// step signs up a different subject, as different people would.
func (r *refRun) requestHead(h map[string]any) map[string]any {
	out := r.substitute(h).(map[string]any)
	name := h["Op"].(string) // checked by refStep.decode
	out["Op"] = refOps[name]
	if name == "eOpRegister" {
		out["Oidc"] = r.srv.token(r.t, fmt.Sprintf("reference-step-%d", r.cur))
	}
	return out
}

func (r *refRun) substitute(v any) any {
	switch v := v.(type) {
	case string:
		switch v {
		case "*senduid":
			return refSendUID
		case "*recvuid":
			return refRecvUID
		case "*sendnode":
			return r.srv.sendNodes[0]
		case "*recvnode":
			return r.srv.recvNodes[0]
		}
		return v
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = r.substitute(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = r.substitute(e)
		}
		return out
	}
	return v
}

// splitWant cuts a want list into its three runs (reference-test.md): the
// frames without "from" on the step link; the sender's stored messages,
// whose ids are "#sid#"; the rest, for receiver node 0.
func splitWant(want []map[string]any) (link, stored, recv []map[string]any) {
	i := 0
	for i < len(want) && want[i]["from"] == nil {
		i++
	}
	j := i
	for j < len(want) && want[j]["id"] == "#sid#" {
		j++
	}
	return want[:i], want[i:j], want[j:]
}

// check reads every channel's frames for the step and compares them with
// want.
func (r *refRun) check(s *refStep, want []map[string]any) {
	r.t.Helper()
	wantLink, wantStored, wantRecv := splitWant(want)
	closes := len(want) == 0 || wantLink[len(wantLink)-1]["op"] == "quit"
	delay := s.Msg != nil && *s.Msg == refDelay
	deadline := time.Now().Add(refStepTimeout)
	if delay {
		deadline = r.link.opened.Add(refLoginTimeout + refStepTimeout)
	}

	gotLink, gotStored, closedAt := r.readLink(len(wantLink), len(wantStored), closes, deadline)
	r.matchRun("step link", wantLink, gotLink)
	r.matchRun("step link stored", wantStored, gotStored)
	if delay && !closedAt.IsZero() && closedAt.Sub(r.link.opened) < refLoginTimeout {
		r.errorf("link closed %v after dialling, before the %v login timeout", closedAt.Sub(r.link.opened), refLoginTimeout)
	}

	gotRecv := r.readDevice(r.rx0, len(wantRecv), deadline)
	r.matchRun(r.rx0.name, wantRecv, gotRecv)
	r.sameFrames(r.rx1, gotRecv, r.readDevice(r.rx1, len(wantRecv), deadline))

	tx1Want := r.senderNodeWant(s, gotStored, gotRecv)
	switch {
	case r.senderNode1 != nil:
		r.matchRun(r.tx1.name, r.senderNode1, r.readDevice(r.tx1, len(r.senderNode1), deadline))
	case r.otherUser:
		r.sameFrames(r.tx1, nil, r.readDevice(r.tx1, 0, deadline))
	default:
		r.sameFrames(r.tx1, tx1Want, r.readDevice(r.tx1, len(tx1Want), deadline))
	}

	r.checkConsistency(wantLink, wantRecv, gotLink, gotRecv)
	r.checkOrder("step link", gotStored)
	r.checkOrder(r.rx0.name, gotRecv)
}

// readLink reads the step link until it has nLink frames without a stored
// message's "from"+"id" and nStored with, and, when closes, until the link
// ends. Stored messages are acked as they come, at a point where no request
// is half written.
func (r *refRun) readLink(nLink, nStored int, closes bool, deadline time.Time) (link, stored []*testclient.Frame, closedAt time.Time) {
	r.t.Helper()
	for closes || len(link) < nLink || len(stored) < nStored {
		if r.link.closed {
			break
		}
		ev, ok := r.link.next(deadline)
		if !ok {
			if closes && len(link) >= nLink && len(stored) >= nStored {
				r.errorf("step link still open %v after the step, want it closed by the server", refStepTimeout)
			} else {
				r.errorf("timed out: step link got %d of %d replies and %d of %d stored messages", len(link), nLink, len(stored), nStored)
			}
			if closes {
				// The next step expects a fresh link.
				r.link.close()
			}
			break
		}
		if ev.err != nil {
			closedAt = ev.at
			if !errors.Is(ev.err, io.EOF) {
				r.t.Logf("step %d: step link ended with %v", r.cur, ev.err)
			}
			if !closes {
				r.errorf("step link closed by the server (%v), want it to stay open", ev.err)
			}
			break
		}
		f := ev.f
		if !f.Stored() {
			link = append(link, f)
			continue
		}
		stored = append(stored, f)
		ack := map[string]any{"Op": refOps["eOpAck"], "Id": f.Str("id"), "Type": testclient.AckType}
		if err := r.link.conn.WriteFrame(ack, nil); err != nil && !closes {
			r.errorf("ack: %v", err)
		}
	}
	return link, stored, closedAt
}

// readDevice reads n frames from d, or what came before the deadline.
func (r *refRun) readDevice(d *refDevice, n int, deadline time.Time) []*testclient.Frame {
	r.t.Helper()
	var got []*testclient.Frame
	for len(got) < n {
		f, err := d.next(deadline)
		if err != nil {
			r.errorf("%v", err)
			break
		}
		if f == nil {
			r.errorf("timed out: %s got %d of %d frames", d.name, len(got), n)
			break
		}
		got = append(got, f)
	}
	return got
}

// senderNodeWant returns the frames sender node 1 must receive in this step,
// in queue order. reference-test.md: "the other devices must receive the same
// stored messages as their user's node 0 (the sender's node 1 its user's
// copy, unless nfsn)". So node 1 gets:
//
//   - the stored messages of node 0's run (user, member, ohiedit, login
//     notices: the same message in both queues). On an nfsn step node 0's
//     run is not node 1's: it holds login notices, and node 1 has already
//     received those stored before it logged in (the fixture drain), so it
//     must get exactly the ones it has not seen yet, i.e. those stored
//     during this step (SPEC §4 op 2 stores a login notice for every
//     device of the user).
//   - the copies SPEC §4 gives the sender's other devices of what the sender
//     sent to others, which the deployed client keeps on every device: a
//     Post's delivery (op 7, §5 "the user's other devices always get a
//     copy"); a PostNotify's delivery unless fornotself, and its notify
//     always (op 8: fornotself "only keeps the post from the sender's
//     devices"); a Ping (op 9) and a GroupInvite's invitation (op 5). The
//     transcript lists what the sender's node 0 gets, and the sending
//     device gets none of these copies, so it cannot show them; nfsn does
//     not remove them (it is about node 0's run, above). They are told by
//     the frames, not by the step's request: step 51 sends a Ping in the
//     data of its Login.
func (r *refRun) senderNodeWant(s *refStep, gotStored, gotRecv []*testclient.Frame) []*testclient.Frame {
	var out []*testclient.Frame
	for _, f := range gotStored {
		if s.Nfsn && r.tx1.seen[f.Str("id")] {
			continue
		}
		out = append(out, f)
	}
	op, _ := r.req["Op"].(string)
	forNotSelf, _ := r.req["Fornotself"].(bool)
	for _, f := range gotRecv {
		if !f.Stored() || f.Str("from") != refSendUID {
			continue
		}
		switch f.Op() {
		case "delivery":
			if op == "eOpPost" || op == "eOpPostNotify" && !forNotSelf {
				out = append(out, f)
			}
		case "notify", "ping", "invite":
			out = append(out, f)
		}
	}
	// Queue order (SPEC §5): "user" messages first, then by id.
	slices.SortStableFunc(out, func(a, b *testclient.Frame) int {
		if pa, pb := a.Op() == "user", b.Op() == "user"; pa != pb {
			if pa {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Str("id"), b.Str("id"))
	})
	return out
}

// sameFrames checks that d received exactly the frames of want, byte for
// byte: one stored message referenced from several queues, or one ohi
// notice sent to several devices.
func (r *refRun) sameFrames(d *refDevice, want, got []*testclient.Frame) {
	r.t.Helper()
	for i := range max(len(want), len(got)) {
		switch {
		case i >= len(got):
			// readDevice has reported the shortfall.
		case i >= len(want):
			r.errorf("%s: unexpected frame %s (perhaps left from an earlier step)", d.name, got[i])
		case !bytes.Equal(want[i].Raw, got[i].Raw) || !bytes.Equal(want[i].Data, got[i].Data):
			r.errorf("%s: frame %d is %s, want the same as the other device's %s", d.name, i+1, got[i], want[i])
		}
	}
}

// matchRun compares the frames of one run with their templates, in order.
func (r *refRun) matchRun(where string, want []map[string]any, got []*testclient.Frame) {
	r.t.Helper()
	for i := range max(len(want), len(got)) {
		switch {
		case i >= len(got):
			r.errorf("%s: missing frame %d, want %s", where, i+1, showTemplate(want[i]))
		case i >= len(want):
			r.errorf("%s: unexpected frame %s (perhaps left from an earlier step)", where, got[i])
		default:
			if errs := matchFrame(want[i], got[i]); len(errs) > 0 {
				r.errorf("%s: frame %d is %s, want %s: %s", where, i+1, got[i], showTemplate(want[i]), strings.Join(errs, "; "))
			}
		}
	}
}

// checkConsistency checks what the transcript implies across frames: an
// ack's msgid and posted are those of the message it stored, which is the
// first stored message receiver node 0 gets (a post's delivery, a ping, an
// invite); a notify's postid is the id of the delivery it announces.
func (r *refRun) checkConsistency(wantLink, wantRecv []map[string]any, gotLink, gotRecv []*testclient.Frame) {
	r.t.Helper()
	firstStored := slices.IndexFunc(wantRecv, func(w map[string]any) bool { return w["id"] == "#id#" })
	delivery := slices.IndexFunc(wantRecv, func(w map[string]any) bool { return w["op"] == "delivery" })
	for i, w := range wantLink {
		if w["msgid"] != "#mid#" || firstStored < 0 || i >= len(gotLink) || firstStored >= len(gotRecv) {
			continue
		}
		ack, m := gotLink[i], gotRecv[firstStored]
		if ack.Str("msgid") != m.Str("id") || ack.Str("posted") != m.Str("posted") {
			r.errorf("ack msgid %q posted %q, but the message it stored has id %q posted %q",
				ack.Str("msgid"), ack.Str("posted"), m.Str("id"), m.Str("posted"))
		}
	}
	for i, w := range wantRecv {
		if w["postid"] != "#pid#" || delivery < 0 || i >= len(gotRecv) || delivery >= len(gotRecv) {
			continue
		}
		if n, d := gotRecv[i], gotRecv[delivery]; n.Str("postid") != d.Str("id") {
			r.errorf("notify postid %q, but the delivery's id is %q", n.Str("postid"), d.Str("id"))
		}
	}
}

// checkOrder checks that the stored messages one device got in a step came
// in increasing id order (SPEC §5; no step mixes priorities).
func (r *refRun) checkOrder(where string, got []*testclient.Frame) {
	r.t.Helper()
	last := ""
	for _, f := range got {
		if !f.Stored() {
			continue
		}
		if id := f.Str("id"); id <= last {
			r.errorf("%s: message id %s after %s, want increasing ids", where, id, last)
		} else {
			last = id
		}
	}
}

// finish checks that nothing unexpected follows the transcript: a sentinel
// post from sender node 1 to both users must be the next frame on each
// device, and the step link must have nothing left.
func (r *refRun) finish() {
	r.t.Helper()
	r.cur = 0
	if r.link != nil {
		r.drainLink("after the last step")
	}
	ack, err := r.tx1.client.Post([]testclient.Recipient{{ID: refRecvUID, Type: 1}, {ID: refSendUID, Type: 1}}, []byte("end of the transcript"))
	if err != nil || ack.Error != "" {
		r.errorf("sentinel post: %v %s", err, ack.Error)
		return
	}
	deadline := time.Now().Add(refStepTimeout)
	for _, d := range []*refDevice{r.rx0, r.rx1, r.tx1} {
		for {
			f, err := d.next(deadline)
			if err != nil || f == nil {
				r.errorf("%s: sentinel post %s not received: %v", d.name, ack.MsgID, err)
				break
			}
			if f.Op() == "delivery" && f.Str("id") == ack.MsgID {
				break
			}
			r.errorf("%s: unexpected frame %s (left from a step)", d.name, f)
		}
	}
}

// matchFrame compares a received frame with a transcript template and
// returns what differs.
func matchFrame(want map[string]any, f *testclient.Frame) []string {
	var errs []string
	if err := testclient.CheckFrame(f); err != nil {
		errs = append(errs, err.Error())
	}
	for k := range want {
		if _, ok := f.Head[k]; !ok && k != "~data" {
			errs = append(errs, fmt.Sprintf("key %q missing", k))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(f.Head)) {
		w, ok := want[k]
		switch {
		case !ok:
			errs = append(errs, fmt.Sprintf("unexpected key %q", k))
		case k == "headsum":
			if !f.HeadsumOK() {
				errs = append(errs, "headsum wrong")
			}
		default:
			errs = append(errs, matchValue(k, w, f.Head[k])...)
		}
	}
	var data []byte
	if pieces, ok := want["~data"].([]any); ok {
		for _, p := range pieces {
			s, _ := p.(string)
			data = append(data, s...)
		}
	}
	if !bytes.Equal(f.Data, data) {
		errs = append(errs, fmt.Sprintf("data %q, want %q", f.Data, data))
	}
	return errs
}

// refBase32 is the alphabet of uids and nodeids (SPEC §3).
const refBase32 = "%+123456789BCDFGHJKLMNPQRSTVWXYZ"

// matchValue compares one value with its template, resolving the
// transcript's placeholders. Secrets are never quoted.
func matchValue(path string, want, got any) []string {
	show := func(v any) string {
		if path == "nodeid" || path == "node" {
			return "(redacted)"
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	bad := func(format string, a ...any) []string {
		return []string{fmt.Sprintf("%s: ", path) + fmt.Sprintf(format, a...)}
	}
	switch w := want.(type) {
	case string:
		g, ok := got.(string)
		if !ok {
			return bad("%s, want a string", show(got))
		}
		var fits bool
		switch w {
		case "*senduid":
			fits = g == refSendUID
		case "*recvuid":
			fits = g == refRecvUID
		case "#uid#":
			fits = isBase32(g, 32)
		case "#nid#":
			fits = isBase32(g, 40)
		case "#mid#", "#id#", "#sid#", "#pid#":
			fits = isMessageID(g)
		case "#pst#", "#pdt#", "#spdt#":
			t, err := time.Parse(testclient.PostedLayout, g)
			fits = err == nil && t.Location() == time.UTC && t.Format(testclient.PostedLayout) == g
		default:
			fits = g == w
		}
		if !fits {
			return bad("%s, want %q", show(g), w) // templates hold placeholders, never secrets
		}
	case json.Number:
		g, ok := got.(json.Number)
		wr, wok := new(big.Rat).SetString(w.String())
		if !ok || !wok {
			return bad("%s, want %s", show(got), w)
		}
		if gr, gok := new(big.Rat).SetString(g.String()); !gok || gr.Cmp(wr) != 0 {
			return bad("%s, want %s", g, w)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return bad("%s, want %d elements like %s", show(got), len(w), show(w))
		}
		var errs []string
		for i := range w {
			errs = append(errs, matchValue(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return errs
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return bad("%s, want an object", show(got))
		}
		var errs []string
		for k := range w {
			if _, ok := g[k]; !ok {
				errs = append(errs, fmt.Sprintf("%s: key %q missing", path, k))
			}
		}
		for _, k := range slices.Sorted(maps.Keys(g)) {
			if _, ok := w[k]; !ok {
				errs = append(errs, fmt.Sprintf("%s: unexpected key %q", path, k))
				continue
			}
			errs = append(errs, matchValue(path+"."+k, w[k], g[k])...)
		}
		return errs
	default: // bool, null
		if got != want {
			return bad("%s, want %s", show(got), show(want))
		}
	}
	return nil
}

func isBase32(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if strings.IndexByte(refBase32, c) < 0 {
			return false
		}
	}
	return true
}

// isMessageID reports whether s is 16 lower-case hex digits (SPEC §3).
func isMessageID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// showTemplate renders a want template for a message; templates hold
// placeholders, never secrets.
func showTemplate(w map[string]any) string {
	b, err := json.Marshal(w)
	if err != nil {
		return fmt.Sprint(w)
	}
	return string(b)
}

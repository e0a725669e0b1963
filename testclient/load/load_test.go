package load

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/testclient"
	"mnm/testclient/internal/fakeserver"
)

// The load engine is tested against fakeRelay, a minimal relay on the fake
// server whose deliveries a test can drop, repeat, reorder or corrupt; that
// Run finds nothing wrong with the real server is tested in package main
// (load_test.go there), which can start one.

// fakeRelay registers anyone, acks every post at once and writes its data to
// each recipient's link as a delivery. It does not wait for the recipients'
// acks: Run must cope with messages arriving back to back. It may listen on
// several addresses, the frontends of one site, and notes which one each
// link came through.
type fakeRelay struct {
	s   *fakeserver.Server   // the first frontend
	fes []*fakeserver.Server // every frontend, s first

	// deliver, if set, decides what recipient to gets for the k-th (from 0)
	// post that from sent it: the payloads to write, in order (none drops it).
	deliver func(from, to string, k int, data []byte) [][]byte
	// refuse, if set, makes the relay answer post k of from with an ack error.
	refuse func(from string, k int) bool

	mu sync.Mutex
	// Guarded by mu:
	links  map[string]*relayLink // by uid
	nodes  map[string]string     // uid → nodeid
	posts  map[[2]string]int     // (from, to) → posts so far
	nextID int
	served []int // links per frontend
	// Posts delivered from a link on one frontend to a link on the same
	// one, or on another.
	sameFrontend, crossFrontend int
}

// relayLink is a link of the relay; wmu serialises its writers (its own
// request loop and the senders' deliveries): its Write hides the Link's.
type relayLink struct {
	*fakeserver.Link
	frontend int
	wmu      sync.Mutex
}

func (l *relayLink) Write(head map[string]any, data []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.Link.Write(head, data)
}

func newFakeRelay(t *testing.T) *fakeRelay { return newFakeSite(t, 1) }

// newFakeSite is a relay listening on n addresses.
func newFakeSite(t *testing.T, n int) *fakeRelay {
	r := &fakeRelay{
		links:  make(map[string]*relayLink),
		nodes:  make(map[string]string),
		posts:  make(map[[2]string]int),
		served: make([]int, n),
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	for i := range n {
		fe := fakeserver.New(t)
		r.fes = append(r.fes, fe)
		go func() {
			for {
				select {
				case l := <-fe.Links:
					go r.serve(&relayLink{Link: l, frontend: i})
				case <-stop:
					return
				}
			}
		}()
	}
	r.s = r.fes[0]
	return r
}

func (r *fakeRelay) addr() string { return r.s.Addr() }

// frontends are the relay's addresses, as Config takes them.
func (r *fakeRelay) frontends() []Frontend {
	var out []Frontend
	for _, fe := range r.fes {
		out = append(out, Frontend{Addr: fe.Addr()})
	}
	return out
}

// serve runs one link: TmtpRev, Register or Login, then posts until the
// client closes it.
func (r *fakeRelay) serve(l *relayLink) {
	defer l.Conn.Close()
	if err := l.TmtpRev(); err != nil {
		return
	}
	req, err := l.Read()
	if err != nil {
		return
	}
	r.mu.Lock()
	var uid string
	switch req.Num("op") {
	case 1:
		r.nextID++
		uid = fmt.Sprintf("uid%d", r.nextID)
		r.nodes[uid] = "node-" + uid
	case 2:
		uid = req.Str("uid")
		if r.nodes[uid] != req.Str("node") || r.links[uid] != nil {
			r.mu.Unlock()
			l.Quit("login failed")
			return
		}
	}
	r.links[uid] = l
	r.served[l.frontend]++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.links, uid)
		r.mu.Unlock()
	}()
	if req.Num("op") == 1 {
		if l.Write(map[string]any{"nodeid": "node-" + uid, "op": "registered", "uid": uid}, nil) != nil {
			return
		}
	}
	if l.Write(map[string]any{"info": "login ok", "op": "info"}, nil) != nil {
		return
	}
	if req.Num("op") == 2 {
		if l.Write(fakeserver.StoredHead(map[string]any{"op": "login", "from": uid, "id": r.msgID(), "node": "tbd"}, nil), nil) != nil {
			return
		}
	}
	for {
		req, err := l.Read()
		if err != nil {
			return
		}
		if req.Num("op") != 7 {
			continue // acks (op 10) and pulses need no answer
		}
		if err := r.post(l, uid, req); err != nil {
			return
		}
	}
}

func (r *fakeRelay) msgID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	return fmt.Sprintf("%016x", r.nextID)
}

// post acks a post and delivers it.
func (r *fakeRelay) post(l *relayLink, from string, req *fakeserver.Req) error {
	r.mu.Lock()
	k := r.posts[[2]string{from, ""}]
	r.posts[[2]string{from, ""}]++
	r.mu.Unlock()
	if r.refuse != nil && r.refuse(from, k) {
		return l.Write(map[string]any{"error": "refused by the test", "id": req.Str("id"), "op": "ack"}, nil)
	}
	id := r.msgID()
	err := l.Write(map[string]any{
		"id": req.Str("id"), "msgid": id, "op": "ack", "posted": "2026-11-30T01:45:24.979Z",
	}, nil)
	if err != nil {
		return err
	}
	list, _ := req.Head["for"].([]any)
	for _, e := range list {
		to, _ := e.(map[string]any)["Id"].(string)
		r.mu.Lock()
		dst := r.links[to]
		k := r.posts[[2]string{from, to}]
		r.posts[[2]string{from, to}]++
		switch {
		case dst == nil:
		case dst.frontend == l.frontend:
			r.sameFrontend++
		default:
			r.crossFrontend++
		}
		r.mu.Unlock()
		out := [][]byte{req.Data}
		if r.deliver != nil {
			out = r.deliver(from, to, k, req.Data)
		}
		for _, data := range out {
			if dst == nil {
				break
			}
			head := fakeserver.StoredHead(map[string]any{"op": "delivery", "from": from, "id": r.msgID()}, data)
			if err := dst.Write(head, data); err != nil {
				break // that recipient is gone; the sender's link is fine
			}
		}
	}
	return nil
}

// smallLoad is a run quick enough for unit tests.
func smallLoad(addr string) Config {
	return Config{Frontends: []Frontend{{Addr: addr}}, Users: 4, Posts: 20, Size: 200, Recipients: 2, Window: 4, Timeout: 20 * time.Second}
}

func runLoad(t *testing.T, cfg Config) Result {
	t.Helper()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	return res
}

func TestRunClean(t *testing.T) {
	r := newFakeRelay(t)
	cfg := smallLoad(r.addr())
	cfg.Strict = true // the fake writes frames as the contract says
	ready := false
	cfg.Ready = func() { ready = true }
	cfg.ServerPIDs = []int{os.Getpid()}
	res := runLoad(t, cfg)
	if !ready {
		t.Error("Ready was not called")
	}
	want := int64(cfg.Users * cfg.Posts * cfg.Recipients)
	if res.Posted != int64(cfg.Users*cfg.Posts) || res.Expected != want || res.Delivered != want {
		t.Errorf("posted %d, expected %d, delivered %d; want %d, %d, %d", res.Posted, res.Expected, res.Delivered, cfg.Users*cfg.Posts, want, want)
	}
	if res.Lost+res.Duplicates+res.Reordered+res.Corrupt+res.PostErrors != 0 || res.TimedOut || res.Err != "" {
		t.Errorf("clean run reported trouble: %+v", res)
	}
	if res.PostRate <= 0 || res.DeliveryRate <= 0 || res.MBRate <= 0 {
		t.Errorf("rates not positive: %+v", res)
	}
	if res.AckP50 <= 0 || res.AckP99 < res.AckP50 || res.DeliveryP50 <= 0 || res.DeliveryP99 < res.DeliveryP50 {
		t.Errorf("latencies out of order: %+v", res)
	}
	if res.Elapsed <= 0 || res.Elapsed > cfg.Timeout {
		t.Errorf("elapsed %v", res.Elapsed)
	}
	if res.ServerRSSPeak <= 0 || res.ServerHWM < res.ServerRSSPeak/2 {
		t.Errorf("server memory of this process: peak %d, hwm %d", res.ServerRSSPeak, res.ServerHWM)
	}
}

// TestRunWindowOne: with one post in flight, every member's posts are
// strictly sequential; the run must still complete.
func TestRunWindowOne(t *testing.T) {
	r := newFakeRelay(t)
	cfg := smallLoad(r.addr())
	cfg.Window, cfg.Recipients = 1, 3
	res := runLoad(t, cfg)
	if res.Delivered != int64(cfg.Users*cfg.Posts*cfg.Recipients) || res.Lost != 0 {
		t.Errorf("delivered %d, lost %d", res.Delivered, res.Lost)
	}
}

// TestRunOneSender: with Senders 1 only the first member posts.
func TestRunOneSender(t *testing.T) {
	r := newFakeRelay(t)
	cfg := smallLoad(r.addr())
	cfg.Users, cfg.Senders, cfg.Recipients = 2, 1, 1
	res := runLoad(t, cfg)
	if res.Senders != 1 || res.Posted != int64(cfg.Posts) || res.Delivered != int64(cfg.Posts) || res.Lost != 0 {
		t.Errorf("senders %d, posted %d, delivered %d, lost %d; want 1, %d, %d, 0",
			res.Senders, res.Posted, res.Delivered, res.Lost, cfg.Posts, cfg.Posts)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.posts[[2]string{"uid1", ""}]+r.posts[[2]string{"uid2", ""}] != cfg.Posts {
		t.Errorf("relay saw %v; want %d posts in all", r.posts, cfg.Posts)
	}
}

// TestRunDetectsLoss: a relay that drops one delivery and corrupts
// another is caught: the run times out with both counted lost, the
// corruption counted, and nothing else blamed.
func TestRunDetectsLoss(t *testing.T) {
	r := newFakeRelay(t)
	var victim string
	var once sync.Once
	r.deliver = func(from, to string, k int, data []byte) [][]byte {
		once.Do(func() { victim = from + ">" + to })
		if from+">"+to != victim {
			return [][]byte{data}
		}
		switch k {
		case 5:
			return nil
		case 7:
			bad := append([]byte(nil), data...)
			bad[len(bad)-1] ^= 1
			return [][]byte{bad}
		}
		return [][]byte{data}
	}
	cfg := smallLoad(r.addr())
	cfg.Timeout = 2 * time.Second // the run ends only by timing out
	res := runLoad(t, cfg)
	want := int64(cfg.Users * cfg.Posts * cfg.Recipients)
	if !res.TimedOut || res.Err == "" {
		t.Errorf("timed out %v, err %q; want a timeout", res.TimedOut, res.Err)
	}
	if res.Lost != 2 || res.Corrupt != 1 || res.Delivered != want-2 {
		t.Errorf("lost %d, corrupt %d, delivered %d; want 2, 1, %d", res.Lost, res.Corrupt, res.Delivered, want-2)
	}
	if res.Duplicates != 0 || res.Reordered != 0 || res.PostErrors != 0 {
		t.Errorf("duplicates %d, reordered %d, post errors %d; want none", res.Duplicates, res.Reordered, res.PostErrors)
	}
}

// TestRunDetectsDuplicateAndReorder: a repeated delivery and two swapped
// ones are counted, and the run still completes without a timeout.
func TestRunDetectsDuplicateAndReorder(t *testing.T) {
	r := newFakeRelay(t)
	var (
		mu   sync.Mutex
		held = map[string][]byte{}
	)
	r.deliver = func(from, to string, k int, data []byte) [][]byte {
		if from != "uid1" {
			return [][]byte{data}
		}
		mu.Lock()
		defer mu.Unlock()
		switch k {
		case 2: // held back, delivered after post 3
			held[to] = data
			return nil
		case 3:
			return [][]byte{data, held[to]}
		case 9:
			return [][]byte{data, data}
		}
		return [][]byte{data}
	}
	cfg := smallLoad(r.addr())
	res := runLoad(t, cfg)
	// uid1 has cfg.Recipients streams, each with one swap and one repeat.
	n := int64(cfg.Recipients)
	if res.TimedOut || res.Lost != 0 || res.Corrupt != 0 {
		t.Errorf("timed out %v, lost %d, corrupt %d; want a complete run", res.TimedOut, res.Lost, res.Corrupt)
	}
	if res.Reordered != n || res.Duplicates != n {
		t.Errorf("reordered %d, duplicates %d; want %d each", res.Reordered, res.Duplicates, n)
	}
}

// TestRunPostRefused: a refused post is a post error, not a loss, and
// the run does not wait for its deliveries.
func TestRunPostRefused(t *testing.T) {
	r := newFakeRelay(t)
	r.refuse = func(from string, k int) bool { return from == "uid2" && k == 4 }
	cfg := smallLoad(r.addr())
	res := runLoad(t, cfg)
	want := int64(cfg.Users*cfg.Posts - 1)
	if res.TimedOut || res.PostErrors != 1 || res.Posted != want || res.Lost != 0 {
		t.Errorf("timed out %v, post errors %d, posted %d, lost %d; want false, 1, %d, 0", res.TimedOut, res.PostErrors, res.Posted, res.Lost, want)
	}
	if res.Expected != want*int64(cfg.Recipients) || res.Delivered != res.Expected {
		t.Errorf("expected %d, delivered %d; want %d", res.Expected, res.Delivered, want*int64(cfg.Recipients))
	}
}

// TestRunLinkLost: a recipient's link that dies ends the run at once
// with the reason, instead of waiting for the timeout.
func TestRunLinkLost(t *testing.T) {
	r := newFakeRelay(t)
	var once sync.Once
	r.deliver = func(from, to string, k int, data []byte) [][]byte {
		if k < 3 {
			return [][]byte{data}
		}
		once.Do(func() {
			r.mu.Lock()
			l := r.links[to]
			r.mu.Unlock()
			l.Conn.Close()
		})
		return [][]byte{data}
	}
	cfg := smallLoad(r.addr())
	cfg.Timeout = time.Minute
	res := runLoad(t, cfg)
	// The first failure seen may be the link's end, a post written to it,
	// or an ack from it: any of them, but not the timeout.
	if res.TimedOut || res.Err == "" || strings.Contains(res.Err, "deadline") {
		t.Errorf("timed out %v, err %q; want the failure of a member's link", res.TimedOut, res.Err)
	}
	all := int64(cfg.Users * cfg.Posts)
	if res.Delivered >= all*int64(cfg.Recipients) || res.Posted+res.PostErrors != all || res.Elapsed >= cfg.Timeout {
		t.Errorf("delivered %d, posted %d + failed %d after %v; want a run stopped early with every post accounted for",
			res.Delivered, res.Posted, res.PostErrors, res.Elapsed)
	}
}

func TestRunConfig(t *testing.T) {
	ok := Config{Frontends: []Frontend{{Addr: "127.0.0.1:1"}}, Users: 3, Posts: 1, Size: 100, Recipients: 2, Window: 1}
	two := []Frontend{{Addr: "127.0.0.1:1"}, {Addr: "127.0.0.1:2"}}
	for name, edit := range map[string]func(*Config){
		"no address":       func(c *Config) { c.Frontends = nil },
		"empty address":    func(c *Config) { c.Frontends = []Frontend{{Addr: "127.0.0.1:1"}, {}} },
		"address twice":    func(c *Config) { c.Frontends = []Frontend{two[0], two[1], two[0]} },
		"pids > frontends": func(c *Config) { c.ServerPIDs = []int{1, 2} },
		"pid twice":        func(c *Config) { c.Frontends, c.ServerPIDs = two, []int{1, 1} },
		"pid not positive": func(c *Config) { c.ServerPIDs = []int{0} },
		// 3 users on 2 frontends: the first and third share frontend 0,
		// so each has only one member on another frontend.
		"recip elsewhere":  func(c *Config) { c.Frontends = two },
		"one user":         func(c *Config) { c.Users, c.Recipients = 1, 1 },
		"no posts":         func(c *Config) { c.Posts = 0 },
		"no recipients":    func(c *Config) { c.Recipients = 0 },
		"too many recip":   func(c *Config) { c.Recipients = 3 },
		"no window":        func(c *Config) { c.Window = 0 },
		"senders > users":  func(c *Config) { c.Senders = 4 },
		"negative senders": func(c *Config) { c.Senders = -1 },
		"tiny payload":     func(c *Config) { c.Size = testclient.PayloadMin("m2") - 1 },
	} {
		t.Run(name, func(t *testing.T) {
			c := ok
			edit(&c)
			if _, err := Run(context.Background(), c); !errors.Is(err, ErrConfig) {
				t.Errorf("err %v, want ErrConfig", err)
			}
		})
	}
	// The valid configuration gets past the check and fails on the dial.
	ok.Timeout = 5 * time.Second
	if _, err := Run(context.Background(), ok); err == nil || errors.Is(err, ErrConfig) {
		t.Errorf("valid config against a closed port: err %v, want a dial error", err)
	}
}

// TestSetupStopped: a setup that ctx stops says so, and a call's own error
// is passed on as it is.
func TestSetupStopped(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := setup(ctx, 10, func(int) error { return nil })
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "load: setup: ") {
		t.Errorf("stopped setup: err %v", err)
	}
	boom := errors.New("boom")
	if err := setup(context.Background(), 10, func(int) error { return boom }); err != boom {
		t.Errorf("failed call: err %v, want %v", err, boom)
	}
}

func TestIdle(t *testing.T) {
	r := newFakeRelay(t)
	res, err := Idle(context.Background(), IdleConfig{
		Frontends: r.frontends(), Links: 5, ServerPIDs: []int{os.Getpid()}, Settle: time.Millisecond, Hold: time.Millisecond, Timeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.RSSHeld <= 0 || res.PerLinkHeld != float64(res.RSSHeld-res.RSSBefore)/5 {
		t.Errorf("result %+v: held reading wrong", res)
	}
	t.Logf("%+v", res)
	if res.Links != 5 || res.RSSStart <= 0 || res.RSSBefore <= 0 || res.RSSAfter <= 0 {
		t.Errorf("result %+v; want positive RSS readings", res)
	}
	if res.PerLink != float64(res.RSSAfter-res.RSSBefore)/5 || res.Register <= 0 || res.Login <= 0 {
		t.Errorf("result %+v: per-link or times wrong", res)
	}
	// Every link was logged in and is still up at the reading: the relay saw them.
	r.mu.Lock()
	n := len(r.nodes)
	r.mu.Unlock()
	if n != 5 {
		t.Errorf("relay registered %d accounts, want 5", n)
	}
	if _, err := Idle(context.Background(), IdleConfig{Frontends: r.frontends(), Links: 1}); !errors.Is(err, ErrConfig) {
		t.Errorf("idle without a pid: err %v, want ErrConfig", err)
	}
}

func TestResultJSON(t *testing.T) {
	b, err := Result{Users: 2, AckP99: 1500 * time.Microsecond, DeliveryRate: 1234.5678}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"users":2`, `"ack_p99_ms":1.5`, `"deliveries_per_s":1234.57`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
}

// TestRunFrontends: against a site of two frontends, members are spread
// over both and every delivery crosses from one to the other.
func TestRunFrontends(t *testing.T) {
	r := newFakeSite(t, 2)
	cfg := smallLoad("")
	cfg.Frontends, cfg.Users, cfg.Recipients = r.frontends(), 5, 2
	cfg.ServerPIDs = []int{os.Getpid()}
	res := runLoad(t, cfg)
	want := int64(cfg.Users * cfg.Posts * cfg.Recipients)
	if res.Delivered != want || res.Lost+res.Duplicates+res.Reordered+res.Corrupt+res.PostErrors != 0 || res.Err != "" {
		t.Errorf("delivered %d of %d: %+v", res.Delivered, want, res)
	}
	if res.Frontends != 2 || res.ServerRSSPeak <= 0 {
		t.Errorf("frontends %d, server rss %d; want 2 and the figures of this process", res.Frontends, res.ServerRSSPeak)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Members 0, 2, 4 on the first frontend, 1 and 3 on the second.
	if r.served[0] != 3 || r.served[1] != 2 {
		t.Errorf("links per frontend %v, want [3 2]", r.served)
	}
	if r.sameFrontend != 0 || int64(r.crossFrontend) != want {
		t.Errorf("%d deliveries within a frontend, %d across; want 0 and %d", r.sameFrontend, r.crossFrontend, want)
	}
}

func TestOtherFrontends(t *testing.T) {
	for _, c := range []struct{ users, n, i, want int }{
		{5, 1, 0, 4},
		{5, 2, 0, 2}, // 0, 2, 4 together
		{5, 2, 1, 3}, // 1, 3 together
		{6, 3, 2, 4},
		{2, 3, 0, 1}, // fewer members than frontends
	} {
		if got := otherFrontends(c.users, c.n, c.i); got != c.want {
			t.Errorf("otherFrontends(%d, %d, %d) = %d, want %d", c.users, c.n, c.i, got, c.want)
		}
	}
}

// TestIdleFrontends spreads the idle links over two frontends.
func TestIdleFrontends(t *testing.T) {
	r := newFakeSite(t, 2)
	res, err := Idle(context.Background(), IdleConfig{
		Frontends: r.frontends(), Links: 4, ServerPIDs: []int{os.Getpid()}, Settle: time.Millisecond, Timeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Frontends != 2 || res.RSSAfter <= 0 {
		t.Errorf("result %+v", res)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Each link twice: registered, then logged in.
	if r.served[0] != 4 || r.served[1] != 4 {
		t.Errorf("links per frontend %v, want [4 4]", r.served)
	}
	b, err := res.MarshalJSON()
	if err != nil || !strings.Contains(string(b), `"frontends":2,"server_sum_of_pids":[`) {
		t.Errorf("%s %v: no frontends or summed pids", b, err)
	}
}

// TestResultJSONFrontends: the frontends and summed pids are shown against
// several frontends only; one server's result keeps its form.
func TestResultJSONFrontends(t *testing.T) {
	one, err := Result{Users: 2, Frontends: 1, ServerPIDs: []int{7}}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(one), `{"users":2,`) || strings.Contains(string(one), "frontends") || strings.Contains(string(one), "pids") {
		t.Errorf("one server: %s", one)
	}
	two, err := Result{Users: 2, Frontends: 2, ServerPIDs: []int{7, 8}}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(two), `{"frontends":2,"server_sum_of_pids":[7,8],"users":2,`) {
		t.Errorf("two frontends: %s", two)
	}
}

package testclient

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// The load engine is tested against fakeRelay, a minimal relay on the fake
// server whose deliveries a test can drop, repeat, reorder or corrupt; that
// RunLoad finds nothing wrong with the real server is tested in package main
// (load_test.go there), which can start one.

// fakeRelay registers anyone, acks every post at once and writes its data to
// each recipient's link as a delivery. It does not wait for the recipients'
// acks: RunLoad must cope with messages arriving back to back.
type fakeRelay struct {
	s *fakeServer

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
}

// relayLink is a link of the relay; wmu serialises its writers (its own
// request loop and the senders' deliveries).
type relayLink struct {
	*fakeLink
	wmu sync.Mutex
}

func (l *relayLink) write(head map[string]any, data []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.fakeLink.write(head, data)
}

func newFakeRelay(t *testing.T) *fakeRelay {
	r := &fakeRelay{
		s:     newFakeServer(t),
		links: make(map[string]*relayLink),
		nodes: make(map[string]string),
		posts: make(map[[2]string]int),
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		for {
			select {
			case l := <-r.s.links:
				go r.serve(&relayLink{fakeLink: l})
			case <-stop:
				return
			}
		}
	}()
	return r
}

func (r *fakeRelay) addr() string { return r.s.addr() }

// serve runs one link: TmtpRev, Register or Login, then posts until the
// client closes it.
func (r *fakeRelay) serve(l *relayLink) {
	defer l.c.Close()
	if err := l.tmtprev(); err != nil {
		return
	}
	req, err := l.read()
	if err != nil {
		return
	}
	r.mu.Lock()
	var uid string
	switch req.num("op") {
	case 1:
		r.nextID++
		uid = fmt.Sprintf("uid%d", r.nextID)
		r.nodes[uid] = "node-" + uid
	case 2:
		uid = req.str("uid")
		if r.nodes[uid] != req.str("node") || r.links[uid] != nil {
			r.mu.Unlock()
			l.quit("login failed")
			return
		}
	}
	r.links[uid] = l
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.links, uid)
		r.mu.Unlock()
	}()
	if req.num("op") == 1 {
		if l.write(map[string]any{"nodeid": "node-" + uid, "op": "registered", "uid": uid}, nil) != nil {
			return
		}
	}
	if l.write(map[string]any{"info": "login ok", "op": "info"}, nil) != nil {
		return
	}
	if req.num("op") == 2 {
		if l.write(storedHead(map[string]any{"op": "login", "from": uid, "id": r.msgID(), "node": "tbd"}, nil), nil) != nil {
			return
		}
	}
	for {
		req, err := l.read()
		if err != nil {
			return
		}
		if req.num("op") != 7 {
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
func (r *fakeRelay) post(l *relayLink, from string, req *req) error {
	r.mu.Lock()
	k := r.posts[[2]string{from, ""}]
	r.posts[[2]string{from, ""}]++
	r.mu.Unlock()
	if r.refuse != nil && r.refuse(from, k) {
		return l.write(map[string]any{"error": "refused by the test", "id": req.str("id"), "op": "ack"}, nil)
	}
	id := r.msgID()
	err := l.write(map[string]any{
		"id": req.str("id"), "msgid": id, "op": "ack", "posted": "2026-11-30T01:45:24.979Z",
	}, nil)
	if err != nil {
		return err
	}
	list, _ := req.head["for"].([]any)
	for _, e := range list {
		to, _ := e.(map[string]any)["Id"].(string)
		r.mu.Lock()
		dst := r.links[to]
		k := r.posts[[2]string{from, to}]
		r.posts[[2]string{from, to}]++
		r.mu.Unlock()
		out := [][]byte{req.data}
		if r.deliver != nil {
			out = r.deliver(from, to, k, req.data)
		}
		for _, data := range out {
			if dst == nil {
				break
			}
			head := storedHead(map[string]any{"op": "delivery", "from": from, "id": r.msgID()}, data)
			if err := dst.write(head, data); err != nil {
				break // that recipient is gone; the sender's link is fine
			}
		}
	}
	return nil
}

// smallLoad is a run quick enough for unit tests.
func smallLoad(addr string) LoadConfig {
	return LoadConfig{Addr: addr, Users: 4, Posts: 20, Size: 200, Recipients: 2, Window: 4, Timeout: 20 * time.Second}
}

func runLoad(t *testing.T, cfg LoadConfig) LoadResult {
	t.Helper()
	res, err := RunLoad(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	return res
}

func TestRunLoadClean(t *testing.T) {
	r := newFakeRelay(t)
	cfg := smallLoad(r.addr())
	cfg.Strict = true // the fake writes frames as the contract says
	ready := false
	cfg.Ready = func() { ready = true }
	cfg.ServerPID = os.Getpid()
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

// TestRunLoadWindowOne: with one post in flight, every member's posts are
// strictly sequential; the run must still complete.
func TestRunLoadWindowOne(t *testing.T) {
	r := newFakeRelay(t)
	cfg := smallLoad(r.addr())
	cfg.Window, cfg.Recipients = 1, 3
	res := runLoad(t, cfg)
	if res.Delivered != int64(cfg.Users*cfg.Posts*cfg.Recipients) || res.Lost != 0 {
		t.Errorf("delivered %d, lost %d", res.Delivered, res.Lost)
	}
}

// TestRunLoadOneSender: with Senders 1 only the first member posts.
func TestRunLoadOneSender(t *testing.T) {
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

// TestRunLoadDetectsLoss: a relay that drops one delivery and corrupts
// another is caught: the run times out with both counted lost, the
// corruption counted, and nothing else blamed.
func TestRunLoadDetectsLoss(t *testing.T) {
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

// TestRunLoadDetectsDuplicateAndReorder: a repeated delivery and two swapped
// ones are counted, and the run still completes without a timeout.
func TestRunLoadDetectsDuplicateAndReorder(t *testing.T) {
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

// TestRunLoadPostRefused: a refused post is a post error, not a loss, and
// the run does not wait for its deliveries.
func TestRunLoadPostRefused(t *testing.T) {
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

// TestRunLoadLinkLost: a recipient's link that dies ends the run at once
// with the reason, instead of waiting for the timeout.
func TestRunLoadLinkLost(t *testing.T) {
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
			l.c.Close()
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

func TestRunLoadConfig(t *testing.T) {
	ok := LoadConfig{Addr: "127.0.0.1:1", Users: 3, Posts: 1, Size: 100, Recipients: 2, Window: 1}
	for name, edit := range map[string]func(*LoadConfig){
		"no address":       func(c *LoadConfig) { c.Addr = "" },
		"one user":         func(c *LoadConfig) { c.Users, c.Recipients = 1, 1 },
		"no posts":         func(c *LoadConfig) { c.Posts = 0 },
		"no recipients":    func(c *LoadConfig) { c.Recipients = 0 },
		"too many recip":   func(c *LoadConfig) { c.Recipients = 3 },
		"no window":        func(c *LoadConfig) { c.Window = 0 },
		"senders > users":  func(c *LoadConfig) { c.Senders = 4 },
		"negative senders": func(c *LoadConfig) { c.Senders = -1 },
		"tiny payload":     func(c *LoadConfig) { c.Size = PayloadMin("m2") - 1 },
	} {
		c := ok
		edit(&c)
		if _, err := RunLoad(context.Background(), c); !errors.Is(err, ErrLoadConfig) {
			t.Errorf("%s: err %v, want ErrLoadConfig", name, err)
		}
	}
	// The valid configuration gets past the check and fails on the dial.
	ok.Timeout = 5 * time.Second
	if _, err := RunLoad(context.Background(), ok); err == nil || errors.Is(err, ErrLoadConfig) {
		t.Errorf("valid config against a closed port: err %v, want a dial error", err)
	}
}

func TestRunIdle(t *testing.T) {
	r := newFakeRelay(t)
	res, err := RunIdle(context.Background(), IdleConfig{
		Addr: r.addr(), Links: 5, ServerPID: os.Getpid(), Settle: time.Millisecond, Hold: time.Millisecond, Timeout: 20 * time.Second,
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
	if _, err := RunIdle(context.Background(), IdleConfig{Addr: r.addr(), Links: 1}); !errors.Is(err, ErrLoadConfig) {
		t.Errorf("idle without a pid: err %v, want ErrLoadConfig", err)
	}
}

func TestPercentile(t *testing.T) {
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing not 0")
	}
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	for p, want := range map[int]time.Duration{50: 50, 99: 99, 100: 100, 1: 1} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%d of 1…100 = %d, want %d", p, got, want)
		}
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("p99 of one = %d", got)
	}
}

func TestLoadResultJSON(t *testing.T) {
	b, err := LoadResult{Users: 2, AckP99: 1500 * time.Microsecond, DeliveryRate: 1234.5678}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"users":2`, `"ack_p99_ms":1.5`, `"deliveries_per_s":1234.57`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
}

func TestReadProcStats(t *testing.T) {
	ps, err := ReadProcStats(os.Getpid())
	if err != nil {
		t.Skip("no /proc:", err)
	}
	if ps.RSS <= 0 || ps.HWM < ps.RSS || ps.CPU < 0 {
		t.Errorf("%+v", ps)
	}
	if _, err := ReadProcStats(-1); err == nil {
		t.Error("stats of pid -1")
	}
}

func TestParseProc(t *testing.T) {
	rss, hwm, err := parseProcStatus([]byte("Name:\tmnm\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t5\n"))
	if err != nil || rss != 1<<20 || hwm != 2<<20 {
		t.Errorf("status: %d %d %v", rss, hwm, err)
	}
	cpu, err := parseProcStat([]byte("42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 9 0 1 2 3"))
	if err != nil || cpu != 2*time.Second {
		t.Errorf("stat: %v %v", cpu, err)
	}
	for _, bad := range []string{
		"VmRSS:\t1024 kB\n",                // no VmHWM
		"VmRSS:\tx kB\nVmHWM:\t1 kB\n",     // not a number
		"VmRSS:\t1 MB\nVmHWM:\t1 kB\n",     // unknown unit
		"VmRSS:\t-1 kB\nVmHWM:\t1 kB\n",    // negative
		"VmRSS:\t1 kB 2\nVmHWM:\t1 kB\n",   // extra field
		"VmRSS:\t1kB\nVmHWM:\t1 kB\n",      // no space
		"VmRSS:\t99999999999999 kB\nVmHWM", // beyond any memory
	} {
		if _, _, err := parseProcStatus([]byte(bad)); !errors.Is(err, ErrProc) {
			t.Errorf("status %q: err %v, want ErrProc", bad, err)
		}
	}
	for _, bad := range []string{
		"42 mnm S 1",                             // no parentheses
		"42 (mnm) S 1 2 3",                       // too few fields
		"42 (mnm) S 1 2 3 4 5 6 7 8 9 10 x 1 2",  // utime not a number
		"42 (mnm) S 1 2 3 4 5 6 7 8 9 10 -5 1 2", // negative
	} {
		if _, err := parseProcStat([]byte(bad)); !errors.Is(err, ErrProc) {
			t.Errorf("stat %q: err %v, want ErrProc", bad, err)
		}
	}
}

// FuzzParseProc: the /proc parsers return a value or an error, never panic,
// whatever the file holds.
func FuzzParseProc(f *testing.F) {
	f.Add([]byte("VmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n"))                    // a real status excerpt
	f.Add([]byte("42 (mnm) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 9 0")) // a real stat
	f.Add([]byte("42 (a) b) c) S"))                                                // a command name with ')'
	f.Add([]byte("VmRSS:"))                                                        // a key without a value
	f.Fuzz(func(t *testing.T, b []byte) {
		if rss, hwm, err := parseProcStatus(b); err == nil && (rss < 0 || hwm < 0) {
			t.Errorf("negative memory %d %d", rss, hwm)
		}
		if cpu, err := parseProcStat(b); err == nil && cpu < 0 {
			t.Errorf("negative cpu %v", cpu)
		}
	})
}

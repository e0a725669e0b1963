package main

// The long crash run (RELIABILITY.md): the server binary is SIGKILLed again
// and again under mixed load (posts to users and to a group, acks, large
// posts written in chunks, registrations, group invitations and alias edits,
// new devices with their queue copies, and, as data piles up and is acked,
// segment rotation and compaction), restarted on the same data each time,
// and what the members received is checked against what the server
// acknowledged. CI runs 10 kills; the documented long run is
//
//	MNM_CRASH_KILLS=200 go test -run TestCrashRun -timeout 60m -v .

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/testclient"
)

const (
	crashMembers  = 6 // members posting and receiving, all in one group
	crashGID      = "crash-run-group"
	crashMaxDevs  = 10 // devices a member may grow to
	crashMinAlive = 300 * time.Millisecond
	crashMaxAlive = 1500 * time.Millisecond
)

// crashPost is a post as its sender made it. The data begins with a token,
// "from/seq ", that names the post even when no ack (and so no msgid) came.
type crashPost struct {
	token string
	from  string
	seq   int
	to    []string // recipient uids
	sum   [32]byte
	acked bool
	// devs are the recipient devices that existed when the post was made:
	// the ones that must all get it (acked) or all or none (not acked).
	devs []string
}

// crashDevice is one device of a member, known by its nodeid.
type crashDevice struct {
	key    string // uid "." nodeid prefix, for the model only
	uid    string
	nodeid string
	// got lists the tokens received, by server lifetime, in order.
	got map[int][]string
}

type crashMember struct {
	uid     string
	aliases [2]string // the group lists it under either; alias edits swap them
	devs    []*crashDevice
	seq     int
	edits   int
}

// crashRun is the model of what the server has acknowledged.
type crashRun struct {
	t   *testing.T
	rng *rand.Rand

	mu       sync.Mutex
	members  []*crashMember
	devices  map[string]*crashDevice // by nodeid
	posts    map[string]*crashPost   // by token
	regs     []testclient.Registration
	life     int // server lifetime, counted from 0
	invites  int
	renames  int
	newDevs  int
	sent     int
	ackedN   int
	failures []string
	// logs returns the servers' logs for a failure; nil uses none.
	logs func() string
}

func (r *crashRun) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failures) < 20 {
		r.failures = append(r.failures, fmt.Sprintf(format, args...))
	}
}

func TestCrashRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	kills := envKills(t, "MNM_CRASH_KILLS", 10)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")
	r := &crashRun{t: t, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)),
		devices: map[string]*crashDevice{}, posts: map[string]*crashPost{}}

	p := startProcess(t, bin, cfg)
	r.setup(p.addr)
	p.stop()

	start := time.Now()
	for k := range kills {
		r.life = k + 1
		p = startProcess(t, bin, cfg)
		clients := r.connect(p)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, m := range r.members {
			wg.Add(1)
			rng := rand.New(rand.NewPCG(r.rng.Uint64(), r.rng.Uint64()))
			go func() {
				defer wg.Done()
				r.work(p.addr, m, clients[m.devs[0].nodeid], rng, stop)
			}()
		}
		alive := crashMinAlive + time.Duration(r.rng.Int64N(int64(crashMaxAlive-crashMinAlive)))
		time.Sleep(alive) // the load runs for this long; the kill's timing is the point
		p.kill()
		close(stop)
		wg.Wait()
		for _, c := range clients {
			c.Close()
		}
		if len(r.failures) > 0 {
			break
		}
	}
	r.life = kills + 1
	p = startProcess(t, bin, cfg)
	r.drain(p)
	p.stop()
	r.checkFiles(dir)
	lost := r.check()
	for _, f := range r.failures {
		t.Error(f)
	}
	redelivered := 0
	for _, d := range r.devices {
		seen := map[string]int{}
		for _, toks := range d.got {
			for _, tok := range toks {
				seen[tok]++
			}
		}
		for _, n := range seen {
			redelivered += n - 1
		}
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "qstore", "seg-*.log"))
	t.Logf("crash run: %d kills in %v; %d posts sent, %d acked, %d acked lost; %d redeliveries after crashes; "+
		"%d registrations, %d new devices, %d invitations, %d alias edits; log segments at the end: %d, from %s",
		kills, time.Since(start).Round(time.Second), r.sent, r.ackedN, lost, redelivered,
		len(r.regs), r.newDevs, r.invites, r.renames, len(segs), filepath.Base(segs[0]))
}

// envKills is the number of kills the environment variable name asks
// for, or def.
func envKills(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, s)
	}
	return n
}

// setup registers the members and makes the group of all of them.
func (r *crashRun) setup(addr string) {
	t := r.t
	var clients []*testclient.Client
	for i := range crashMembers {
		alias := fmt.Sprintf("crash-member-%02d", i)
		c, reg, err := testclient.Register(addr, "first", alias, testclient.Options{AutoAck: true, OnMessage: func(*testclient.Frame) {}})
		if err != nil || reg.AliasError != "" {
			t.Fatalf("register: %v %s", err, reg.AliasError)
		}
		if ack, err := c.NewAlias(alias + "-b"); err != nil || ack.Error != "" {
			t.Fatalf("second alias: %v %s", err, ack.Error)
		}
		d := &crashDevice{key: reg.UID + ".0", uid: reg.UID, nodeid: reg.NodeID, got: map[int][]string{}}
		r.members = append(r.members, &crashMember{uid: reg.UID, aliases: [2]string{alias, alias + "-b"}, devs: []*crashDevice{d}})
		r.devices[reg.NodeID] = d
		clients = append(clients, c)
	}
	first := r.members[0]
	for _, m := range r.members[1:] {
		if ack, err := clients[0].GroupInvite(crashGID, first.aliases[0], m.aliases[0], "join us"); err != nil || ack.Error != "" {
			t.Fatalf("invite: %v %s", err, ack.Error)
		}
	}
	for i, m := range r.members[1:] {
		if ack, err := clients[i+1].GroupEdit("join", crashGID, "", ""); err != nil || ack.Error != "" {
			t.Fatalf("%s join: %v %s", m.uid, err, ack.Error)
		}
	}
	for _, c := range clients {
		c.Close()
	}
}

// connect logs in every known device; each records the posts it receives,
// and the nodeids of new devices of its member, before acking them.
func (r *crashRun) connect(p *process) map[string]*testclient.Client {
	return r.connectAt(func(*crashDevice) *process { return p })
}

// connectAt is connect with each device logging in to the server at(d)
// names: one of a cluster's frontends.
func (r *crashRun) connectAt(at func(d *crashDevice) *process) map[string]*testclient.Client {
	clients := map[string]*testclient.Client{}
	r.mu.Lock()
	devs := make([]*crashDevice, 0, len(r.devices))
	for _, d := range r.devices {
		devs = append(devs, d)
	}
	r.mu.Unlock()
	for _, d := range devs {
		p := at(d)
		c, _, err := testclient.Login(p.addr, d.uid, d.nodeid, testclient.Options{AutoAck: true, OnMessage: r.receiver(d)})
		if err != nil {
			r.t.Fatalf("login of %s after restart %d: %v; the server's log and stacks end:\n%s", d.key, r.life, err, p.dump())
		}
		clients[d.nodeid] = c
	}
	return clients
}

func (r *crashRun) receiver(d *crashDevice) func(*testclient.Frame) {
	return func(f *testclient.Frame) {
		r.mu.Lock()
		defer r.mu.Unlock()
		switch f.Op() {
		case "delivery":
			tok, _, _ := strings.Cut(string(f.Data), " ")
			// A copy: a substring would keep the whole post alive, and a
			// long run receives tens of GB.
			tok = strings.Clone(tok)
			p := r.posts[tok]
			if p == nil {
				if !strings.HasPrefix(tok, "marker/") {
					r.failures = append(r.failures, fmt.Sprintf("%s received %q, which nobody posted", d.key, tok))
				}
				d.got[r.life] = append(d.got[r.life], tok)
				return
			}
			if sha256.Sum256(f.Data) != p.sum {
				r.failures = append(r.failures, fmt.Sprintf("%s received %s corrupted", d.key, tok))
			}
			d.got[r.life] = append(d.got[r.life], tok)
		case "user":
			if node := f.Str("nodeid"); node != "" && r.devices[node] == nil {
				nd := &crashDevice{key: fmt.Sprintf("%s.new%d", d.uid, r.newDevs), uid: d.uid, nodeid: node, got: map[int][]string{}}
				r.devices[node] = nd
				for _, m := range r.members {
					if m.uid == d.uid {
						m.devs = append(m.devs, nd)
					}
				}
			}
		}
	}
}

// work is one member's load until stop or until the server dies under it.
func (r *crashRun) work(addr string, m *crashMember, c *testclient.Client, rng *rand.Rand, stop chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		var err error
		switch n := rng.IntN(100); {
		case n < 70:
			err = r.post(c, m, rng, false)
		case n < 80:
			err = r.post(c, m, rng, true)
		case n < 85:
			err = r.register(addr, c, m, rng)
		case n < 92:
			// A crash may leave the model unsure which alias is listed;
			// an edit to the listed one is refused, and the next swaps.
			m.edits++
			var ack testclient.Ack
			ack, err = c.GroupEdit("alias", crashGID, m.aliases[m.edits%2], "")
			if err == nil && ack.Error == "" {
				r.mu.Lock()
				r.renames++
				r.mu.Unlock()
			}
		default:
			r.mu.Lock()
			full := len(m.devs) >= crashMaxDevs
			r.mu.Unlock()
			if !full {
				var ack testclient.Ack
				ack, err = c.NewNode("another")
				if err == nil && ack.Error == "" {
					r.mu.Lock()
					r.newDevs++
					r.mu.Unlock()
				}
			}
		}
		if err != nil {
			return // the server died under us
		}
	}
}

// post sends one post to one or two members, or to the group, and records
// it before the request goes out, so that an unacked post is known too.
func (r *crashRun) post(c *testclient.Client, m *crashMember, rng *rand.Rand, group bool) error {
	r.mu.Lock()
	m.seq++
	p := &crashPost{token: fmt.Sprintf("%s/%d", m.uid, m.seq), from: m.uid, seq: m.seq}
	var to []testclient.Recipient
	if group {
		to = []testclient.Recipient{{ID: crashGID, Type: testclient.ToGroupOthers}}
		for _, o := range r.members {
			if o != m {
				p.to = append(p.to, o.uid)
			}
		}
	} else {
		for range 1 + rng.IntN(2) {
			o := r.members[rng.IntN(len(r.members))]
			if o != m && !slices.Contains(p.to, o.uid) {
				p.to = append(p.to, o.uid)
				to = append(to, testclient.Recipient{ID: o.uid, Type: testclient.ToUser})
			}
		}
		if len(to) == 0 {
			r.mu.Unlock()
			return nil
		}
	}
	for _, uid := range p.to {
		for _, o := range r.members {
			if o.uid == uid {
				for _, d := range o.devs {
					p.devs = append(p.devs, d.nodeid)
				}
			}
		}
	}
	size := 100 + rng.IntN(8<<10)
	if rng.IntN(20) == 0 {
		size = 100<<10 + rng.IntN(200<<10) // chunked in the store
	}
	data := make([]byte, size)
	copy(data, p.token+" ")
	for i := len(p.token) + 1; i < len(data); i++ {
		data[i] = byte(rng.Uint32())
	}
	p.sum = sha256.Sum256(data)
	r.posts[p.token] = p
	r.sent++
	r.mu.Unlock()

	ack, err := c.Post(to, data)
	if err != nil {
		return err
	}
	if ack.Error != "" {
		r.fail("post %s refused: %s", p.token, ack.Error)
		return nil
	}
	r.mu.Lock()
	p.acked = true
	r.ackedN++
	r.mu.Unlock()
	return nil
}

// register makes a new user and invites it into the group.
func (r *crashRun) register(addr string, c *testclient.Client, m *crashMember, rng *rand.Rand) error {
	alias := fmt.Sprintf("crash-newbie-%08x", rng.Uint32())
	nc, reg, err := testclient.Register(addr, "new", alias, testclient.Options{AutoAck: true, OnMessage: func(*testclient.Frame) {}})
	if err != nil {
		return err
	}
	nc.Close()
	r.mu.Lock()
	r.regs = append(r.regs, reg)
	r.mu.Unlock()
	ack, err := c.GroupInvite(crashGID, m.aliases[0], alias, "welcome")
	if err == nil && ack.Error == "" {
		r.mu.Lock()
		r.invites++
		r.mu.Unlock()
	}
	return err
}

// drain logs in every device after the last restart and waits until each
// has received a marker posted after everything else; every registration
// must log in.
func (r *crashRun) drain(p *process) {
	r.drainAt(func(*crashDevice) *process { return p }, p)
}

// drainAt is drain with each device on the server at(d) names, and the
// registrations checked and the markers sent through p.
//
// A device added just before the last kill becomes known to the model only
// when its member's other devices receive the "user" notice that names it,
// which may be during the drain: such a device is logged in when it
// appears, and its marker, queued for it, then comes.
func (r *crashRun) drainAt(at func(d *crashDevice) *process, p *process) {
	t := r.t
	addr := p.addr
	clients := r.connectAt(at)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	connectNew := func() {
		r.mu.Lock()
		var fresh []*crashDevice
		for node, d := range r.devices {
			if clients[node] == nil {
				fresh = append(fresh, d)
			}
		}
		r.mu.Unlock()
		for _, d := range fresh {
			c, _, err := testclient.Login(at(d).addr, d.uid, d.nodeid, testclient.Options{AutoAck: true, OnMessage: r.receiver(d)})
			if err != nil {
				t.Fatalf("login of %s, found during the drain: %v", d.key, err)
			}
			clients[d.nodeid] = c
		}
	}
	for _, reg := range r.regs {
		c, _, err := testclient.Login(addr, reg.UID, reg.NodeID, testclient.Options{AutoAck: true, OnMessage: func(*testclient.Frame) {}})
		if err != nil {
			r.fail("acknowledged registration %s cannot log in: %v", reg.UID, err)
			continue
		}
		c.Close()
	}
	sender, _, err := testclient.Register(addr, "marker", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	for _, m := range r.members {
		if ack, err := sender.Post([]testclient.Recipient{{ID: m.uid, Type: testclient.ToUser}}, []byte("marker/"+m.uid+" end")); err != nil || ack.Error != "" {
			t.Fatalf("marker: %v %s", err, ack.Error)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		connectNew()
		r.mu.Lock()
		var waiting []string
		for _, d := range r.devices {
			if !slices.Contains(d.got[r.life], "marker/"+d.uid) {
				waiting = append(waiting, fmt.Sprintf("%s (at %s, got %d this life)", d.key, at(d).addr, len(d.got[r.life])))
			}
		}
		r.mu.Unlock()
		if len(waiting) == 0 {
			return
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("%d devices did not get their marker within 60s: %s", len(waiting), strings.Join(waiting, ", "))
			if r.logs != nil {
				msg += "\n" + r.logs()
			}
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond) // polling the model, which the receivers fill
	}
}

// check compares what the devices received with what was acknowledged, and
// returns the number of acked posts that did not reach all their devices.
func (r *crashRun) check() (lost int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.devices {
		first := map[string]int{} // token → how often received
		lastSeq := map[string]int{}
		for life := 1; life <= r.life; life++ {
			inLife := map[string]bool{}
			for _, tok := range d.got[life] {
				if inLife[tok] {
					r.failures = append(r.failures, fmt.Sprintf("%s received %s twice in one server lifetime", d.key, tok))
				}
				inLife[tok] = true
				if first[tok] > 0 {
					first[tok]++
					continue // a redelivery after a crash
				}
				first[tok] = 1
				if p := r.posts[tok]; p != nil {
					if p.seq <= lastSeq[p.from] {
						r.failures = append(r.failures, fmt.Sprintf("%s received %s after seq %d of the same sender", d.key, tok, lastSeq[p.from]))
					}
					lastSeq[p.from] = p.seq
				}
			}
		}
	}
	for _, p := range r.posts {
		got := 0
		for _, node := range p.devs {
			d := r.devices[node]
			if d != nil && receivedAny(d, p.token) {
				got++
			}
		}
		switch {
		case p.acked && got < len(p.devs):
			lost++
			r.failures = append(r.failures, fmt.Sprintf("acked post %s reached %d of its %d devices", p.token, got, len(p.devs)))
		case !p.acked && got != 0 && got != len(p.devs):
			r.failures = append(r.failures, fmt.Sprintf("unacked post %s reached %d of its %d devices: neither all nor none", p.token, got, len(p.devs)))
		}
	}
	return lost
}

func receivedAny(d *crashDevice, tok string) bool {
	for _, toks := range d.got {
		if slices.Contains(toks, tok) {
			return true
		}
	}
	return false
}

// checkFiles looks for temporary files left in the data after the final
// graceful stop: every interrupted write must have been completed or
// discarded by the restarts.
func (r *crashRun) checkFiles(dir string) {
	for _, sub := range []string{"userdb", "qstore"} {
		filepath.WalkDir(filepath.Join(dir, sub), func(path string, e fs.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(path, ".tmp") {
				r.fail("temporary file left: %s", path)
			}
			return nil
		})
	}
}

// Package natstest runs an in-process NATS JetStream cluster on loopback for
// tests and benchmarks of mnm's scale-out store (design note
// shared/design/scale-out-jetstream.md, issue #14).
//
// Every node fsyncs every write (SyncAlways), because that is the only
// durability setting mnm accepts: with the default two-minute sync interval
// Jepsen lost acknowledged messages in a coordinated power failure.
//
// A Cluster belongs to the test or benchmark that started it: its methods
// report failures through that test's Fatalf, and the cluster is shut down in
// that test's Cleanup. Sub-tests may share it but must not call its methods
// after the parent test returns.
package natstest

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Account is the account every stream lives in: the nodes run without
// authentication, so clients land in nats-server's global account.
const Account = "$G"

// DefaultNodes is the cluster size when Options.Nodes is zero: the smallest
// cluster that survives the loss of one node with R3 streams.
const DefaultNodes = 3

// ClusterName names the route cluster the nodes form.
const ClusterName = "mnm-test"

// readyTimeout bounds how long a node may take to open its listeners, and
// formTimeout how long the JetStream meta group (or a stream's Raft group)
// may take to elect a leader and bring every node current. Elections in
// nats-server wait 4 to 9 s when a leader vanishes without stepping down, so
// these leave room for two rounds on a loaded 2-core machine.
const (
	readyTimeout = 10 * time.Second
	formTimeout  = 30 * time.Second
)

// pollInterval is how often a wait re-checks its condition.
const pollInterval = 10 * time.Millisecond

// startAttempts is how often Start picks fresh ports when a node cannot bind
// the ports it was given: route ports must be known before the first node
// starts (every node routes to all others), so they are reserved by binding
// port 0 and releasing it, and another process may take one in between.
const startAttempts = 3

// maxLogLines caps the server log lines kept for a failing test: enough for
// the events around a failure, bounded so a long benchmark cannot grow it
// without limit.
const maxLogLines = 2000

// Options configures a Cluster. The zero value gives a 3-node cluster with
// nats-server's defaults.
type Options struct {
	// Nodes is the number of servers; 0 means DefaultNodes.
	Nodes int

	// MaxPayload is the largest message a client may publish, in bytes;
	// 0 keeps the server default (1 MiB).
	MaxPayload int32

	// MaxBatchSize is the most messages an atomic batch may hold
	// (jetstream { limits { batch { max_msgs } } }); 0 keeps the server
	// default (1,000).
	MaxBatchSize int

	// MaxBatchInflightPerStream is the most atomic batches open at once on
	// one stream (max_inflight_per_stream); 0 keeps the default (50).
	MaxBatchInflightPerStream int

	// MaxBatchInflightTotal is the most atomic batches open at once on one
	// server (max_inflight_total); 0 keeps the default (1,000).
	MaxBatchInflightTotal int

	// MaxBatchTimeout is how long a server waits for a batch's commit after
	// its first message before abandoning it (timeout); 0 keeps the default
	// (10 s).
	MaxBatchTimeout time.Duration

	// UnsafeSyncInterval, when positive, turns SyncAlways off and fsyncs on
	// this interval instead. It exists only so benchmarks can show what
	// SyncAlways costs; it is not acceptable for mnm and no test of mnm's
	// guarantees may set it.
	UnsafeSyncInterval time.Duration
}

// Cluster is a running in-process JetStream cluster.
type Cluster struct {
	t    testing.TB
	opts Options
	log  *testLog

	// mu guards nodes: Kill and Restart replace a node's server while other
	// goroutines of the test may ask for URLs or leaders.
	mu    sync.Mutex
	nodes []*node
}

// node is one server slot. Its options keep the store directory, name and
// ports so Restart can bring up the same server again.
type node struct {
	opts *server.Options
	srv  *server.Server // nil while killed
}

// Start starts the cluster, waits until every node is ready and JetStream
// has a meta leader that counts every node as a current peer, and registers
// its shutdown with t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = DefaultNodes
	}
	if opts.Nodes < 1 {
		t.Fatalf("natstest: %d nodes", opts.Nodes)
	}
	c := &Cluster{t: t, opts: opts, log: &testLog{}}
	root := t.TempDir()
	t.Cleanup(c.shutdown)
	t.Cleanup(c.log.flushOnFailure(t))

	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if err = c.start(root, attempt); err == nil {
			break
		}
		c.shutdown()
	}
	if err != nil {
		t.Fatalf("natstest: start cluster: %v", err)
	}
	c.waitMeta()
	return c
}

// start makes one attempt at bringing up all nodes on freshly reserved
// route ports. Each attempt uses its own store directories so a failed
// attempt leaves nothing behind that the next one would recover.
func (c *Cluster) start(root string, attempt int) error {
	ports, err := freePorts(c.opts.Nodes)
	if err != nil {
		return err
	}
	routes := make([]string, len(ports))
	for i, p := range ports {
		routes[i] = "nats-route://127.0.0.1:" + strconv.Itoa(p)
	}
	c.mu.Lock()
	c.nodes = make([]*node, c.opts.Nodes)
	for i := range c.nodes {
		o := c.serverOptions(i, filepath.Join(root, fmt.Sprintf("try%d", attempt), fmt.Sprintf("n%d", i)), ports[i], routes)
		c.nodes[i] = &node{opts: o}
	}
	nodes := c.nodes
	c.mu.Unlock()

	// Start all nodes before waiting for any: a node's JetStream waits for
	// its routes, so starting them one after another would serialise that.
	for i, n := range nodes {
		s, err := c.newServer(i, n.opts)
		if err != nil {
			return err
		}
		c.mu.Lock()
		n.srv = s
		c.mu.Unlock()
	}
	for i, n := range nodes {
		if err := c.ready(i, n); err != nil {
			return err
		}
	}
	return nil
}

// serverOptions builds node i's configuration: loopback listeners, its own
// store directory and name, fsync on every write, and, in a cluster, routes
// to every node (nats-server ignores the route to itself).
func (c *Cluster) serverOptions(i int, storeDir string, routePort int, routes []string) *server.Options {
	o := &server.Options{
		ServerName: fmt.Sprintf("n%d", i),
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   storeDir,
		SyncAlways: true,
		NoSigs:     true,
		MaxPayload: c.opts.MaxPayload,
		JetStreamLimits: server.JSLimitOpts{
			MaxBatchSize:              c.opts.MaxBatchSize,
			MaxBatchInflightPerStream: c.opts.MaxBatchInflightPerStream,
			MaxBatchInflightTotal:     c.opts.MaxBatchInflightTotal,
			MaxBatchTimeout:           c.opts.MaxBatchTimeout,
		},
	}
	if c.opts.UnsafeSyncInterval > 0 {
		o.SyncAlways = false
		o.SyncInterval = c.opts.UnsafeSyncInterval
	}
	// A single node runs JetStream standalone: a one-node Raft cluster
	// would wait for a second peer that never comes.
	if c.opts.Nodes > 1 {
		o.Cluster = server.ClusterOpts{Name: ClusterName, Host: "127.0.0.1", Port: routePort}
		o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
	}
	return o
}

// newServer creates and starts a server for node i with a copy of o, so the
// running server never shares the options Restart will reuse.
func (c *Cluster) newServer(i int, o *server.Options) (*server.Server, error) {
	oc := o.Clone()
	s, err := server.NewServer(oc)
	if err != nil {
		return nil, fmt.Errorf("node %d: new server: %w", i, err)
	}
	s.SetLoggerV2(c.log.prefixed(o.ServerName), false, false, false)
	s.Start()
	return s, nil
}

// ready waits until node n listens, then records the client port it got so
// that a restart listens on the same one and clients reconnect to it.
func (c *Cluster) ready(i int, n *node) error {
	if !n.srv.ReadyForConnections(readyTimeout) {
		return fmt.Errorf("node %d: not ready for connections after %s", i, readyTimeout)
	}
	addr, ok := n.srv.Addr().(*net.TCPAddr)
	if !ok {
		return fmt.Errorf("node %d: no client listener", i)
	}
	c.mu.Lock()
	n.opts.Port = addr.Port
	c.mu.Unlock()
	return nil
}

// freePorts reserves n loopback ports by binding port 0 and releasing them.
func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("reserve port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitMeta waits until some node is JetStream meta leader, it counts every
// running node as a peer, and every running node is current.
func (c *Cluster) waitMeta() {
	c.t.Helper()
	c.waitFor("JetStream meta group formed and current", func() bool {
		servers := c.running()
		if c.opts.Nodes == 1 {
			return len(servers) == 1 && servers[0].JetStreamEnabled()
		}
		var leader *server.Server
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leader = s
			}
		}
		if leader == nil || len(leader.JetStreamClusterPeers()) < c.opts.Nodes {
			return false
		}
		for _, s := range servers {
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or formTimeout passes.
func (c *Cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(formTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: timed out after %s waiting for %s", formTimeout, what)
		}
		time.Sleep(pollInterval)
	}
}

// running returns the servers of the nodes that are not killed.
func (c *Cluster) running() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ss []*server.Server
	for _, n := range c.nodes {
		if n.srv != nil {
			ss = append(ss, n.srv)
		}
	}
	return ss
}

// shutdown stops every running node; it runs in the test's Cleanup.
func (c *Cluster) shutdown() {
	for _, s := range c.running() {
		s.Shutdown()
		s.WaitForShutdown()
	}
	c.mu.Lock()
	for _, n := range c.nodes {
		n.srv = nil
	}
	c.mu.Unlock()
}

// URLs returns the client URLs of all nodes, killed ones included: a killed
// node comes back on the same port when restarted.
func (c *Cluster) URLs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = "nats://127.0.0.1:" + strconv.Itoa(n.opts.Port)
	}
	return urls
}

// reconnectWait is the pause between a client's reconnect attempts: short,
// because the servers are local and tests wait on failover.
const reconnectWait = 50 * time.Millisecond

// Connect returns a client connected to one of the nodes that knows all of
// them and reconnects for ever; t's Cleanup closes it.
func (c *Cluster) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(strings.Join(c.URLs(), ","),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.RetryOnFailedConnect(false),
	)
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Node returns node i's server, or nil while it is killed.
func (c *Cluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].srv
}

// Kill stops node i at once, without lame-duck mode: its clients and routes
// are closed and it stops serving. This is as close to SIGKILL as an
// in-process server gets, and it is not very close: nats-server's Shutdown
// has no exported variant that skips its orderly steps, so the node still
// hands off the Raft groups it leads (a new leader appears within
// milliseconds, where a real crash waits out a 4-9 s election timeout) and
// flushes and closes its stores. With SyncAlways every acknowledged write
// was on disk before the kill anyway, so what Kill cannot show is only a
// torn tail after a real crash; that takes an out-of-process server.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	c.mu.Lock()
	s := c.nodes[i].srv
	c.nodes[i].srv = nil
	c.mu.Unlock()
	if s == nil {
		c.t.Fatalf("natstest: kill node %d: not running", i)
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// Restart starts a killed node i again with the same name, store directory,
// ports and routes, and waits until the meta group counts it current again.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	n := c.nodes[i]
	running := n.srv != nil
	c.mu.Unlock()
	if running {
		c.t.Fatalf("natstest: restart node %d: still running", i)
	}
	s, err := c.newServer(i, n.opts)
	if err != nil {
		c.t.Fatalf("natstest: restart: %v", err)
	}
	c.mu.Lock()
	n.srv = s
	c.mu.Unlock()
	if err := c.ready(i, n); err != nil {
		c.t.Fatalf("natstest: restart: %v", err)
	}
	c.waitMeta()
}

// Leader returns the index of the node leading stream's Raft group, or -1
// if no running node does. A single node leads every stream it holds.
func (c *Cluster) Leader(stream string) int {
	if c.opts.Nodes == 1 {
		if _, ok := c.StreamState(0, stream); ok {
			return 0
		}
		return -1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.nodes {
		if n.srv != nil && n.srv.JetStreamIsStreamLeader(Account, stream) {
			return i
		}
	}
	return -1
}

// WaitStreamCurrent waits until stream has a leader and every running node
// holding a replica is current in the stream's Raft group and holds the
// same last sequence as the leader. The second check matters after a
// restart: a node can call itself current before it has caught up.
func (c *Cluster) WaitStreamCurrent(stream string) {
	c.t.Helper()
	c.waitFor("stream "+stream+" current on every replica", func() bool {
		l := c.Leader(stream)
		if l < 0 {
			return false
		}
		lead, ok := c.streamDetail(l, stream)
		if !ok || lead.Cluster == nil || lead.Config == nil {
			return false
		}
		// The leader names every replica: a node just restarted that
		// has not been given its replica yet must not be passed over.
		if len(lead.Cluster.Replicas) != lead.Config.Replicas-1 {
			return false
		}
		for _, p := range lead.Cluster.Replicas {
			if !p.Current || p.Offline || p.Pending || p.Lag > 0 {
				return false
			}
			i := c.nodeIndex(p.Name)
			if i < 0 || c.Node(i) == nil || !c.Node(i).JetStreamIsStreamCurrent(Account, stream) {
				return false
			}
			// JetStreamIsStreamCurrent can say so before the replica
			// has applied what it caught up on: compare what it holds.
			got, ok := c.StreamState(i, stream)
			if !ok || got.LastSeq != lead.State.LastSeq || got.Msgs != lead.State.Msgs {
				return false
			}
		}
		return true
	})
}

// StreamState returns node i's own view of stream: what its replica holds,
// which after a restart shows whether it caught up. ok is false if node i is
// killed or holds no replica of stream.
func (c *Cluster) StreamState(i int, stream string) (state server.StreamState, ok bool) {
	c.t.Helper()
	sd, ok := c.streamDetail(i, stream)
	return sd.State, ok
}

// streamDetail is node i's report on a stream: its state, configuration
// and, on the leader, its replicas.
func (c *Cluster) streamDetail(i int, stream string) (server.StreamDetail, bool) {
	c.t.Helper()
	s := c.Node(i)
	if s == nil {
		return server.StreamDetail{}, false
	}
	info, err := s.Jsz(&server.JSzOptions{Account: Account, Streams: true, Config: true})
	if err != nil {
		c.t.Fatalf("natstest: node %d jsz: %v", i, err)
	}
	for _, acc := range info.AccountDetails {
		for _, sd := range acc.Streams {
			if sd.Name == stream {
				return sd, true
			}
		}
	}
	return server.StreamDetail{}, false
}

// nodeIndex is the index of the node named name, or -1.
func (c *Cluster) nodeIndex(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.nodes {
		if n.opts.ServerName == name {
			return i
		}
	}
	return -1
}

// testLog keeps the servers' log lines so that a failing test can show them
// and a passing one stays quiet.
type testLog struct {
	// mu guards lines and dropped.
	mu      sync.Mutex
	lines   []string
	dropped int
}

// flushOnFailure returns a Cleanup that writes the kept lines into t's log
// if t failed.
func (l *testLog) flushOnFailure(t testing.TB) func() {
	return func() {
		if !t.Failed() {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.dropped > 0 {
			t.Logf("natstest: %d earlier server log lines dropped", l.dropped)
		}
		for _, s := range l.lines {
			t.Log(s)
		}
	}
}

func (l *testLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == maxLogLines {
		copy(l.lines, l.lines[1:])
		l.lines = l.lines[:maxLogLines-1]
		l.dropped++
	}
	l.lines = append(l.lines, s)
}

func (l *testLog) prefixed(name string) server.Logger {
	return &nodeLog{log: l, name: name}
}

// nodeLog is one server's server.Logger. Debug and trace lines are off (the
// servers are started with debug and trace false) and are dropped anyway.
type nodeLog struct {
	log  *testLog
	name string
}

func (n *nodeLog) line(level, format string, v []any) {
	n.log.add(time.Now().Format("15:04:05.000") + " " + n.name + " " + level + " " + fmt.Sprintf(format, v...))
}

func (n *nodeLog) Noticef(format string, v ...any) { n.line("INF", format, v) }
func (n *nodeLog) Warnf(format string, v ...any)   { n.line("WRN", format, v) }
func (n *nodeLog) Errorf(format string, v ...any)  { n.line("ERR", format, v) }
func (n *nodeLog) Fatalf(format string, v ...any)  { n.line("FTL", format, v) }
func (n *nodeLog) Debugf(string, ...any)           {}
func (n *nodeLog) Tracef(string, ...any)           {}

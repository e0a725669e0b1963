package qlib

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/durable"
	"mnm/qlib/store"
	"mnm/qlib/tmtp"
	"mnm/testclient"
)

// The store the daemon runs is a Store; the assertion lives here, with the
// consumer of the interface, not in the store package.
var _ Store = (*store.Log)(nil)

// fakeDir is an in-memory Directory: enough to drive qlib without userdb.
type fakeDir struct {
	mu      sync.Mutex
	next    int
	devices map[string][]string          // uid → device keys
	nodes   map[string]string            // device key → nodeid
	aliases map[string]string            // alias → uid
	once    map[string]string            // unused single-use alias → uid
	spent   map[string]bool              // used or withdrawn single-use aliases: reserved
	blocks  map[string]map[string]string // blocker uid → blocked uid → name given
	claims  map[string]map[string]any
}

func newFakeDir() *fakeDir {
	return &fakeDir{devices: map[string][]string{}, nodes: map[string]string{}, aliases: map[string]string{}, once: map[string]string{}, spent: map[string]bool{}, blocks: map[string]map[string]string{}, claims: map[string]map[string]any{}}
}

func (d *fakeDir) Register(label string, claims map[string]any) (uid, nodeid, dev string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.next++
	uid = fmt.Sprintf("U%031d", d.next)
	d.claims[uid] = claims
	return uid, d.newDevice(uid), uid + ".0", nil
}

func (d *fakeDir) AddDevice(uid, label string) (nodeid, dev string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.devices[uid]; !ok {
		return "", "", ErrNoUser
	}
	nodeid = d.newDevice(uid)
	return nodeid, d.devices[uid][len(d.devices[uid])-1], nil
}

// device gives uid another device and returns its nodeid and key.
func (d *fakeDir) device(uid string) (nodeid, dev string) {
	nodeid, dev, err := d.AddDevice(uid, "extra")
	if err != nil {
		panic(err)
	}
	return nodeid, dev
}

func (d *fakeDir) newDevice(uid string) string {
	b := make([]byte, 25)
	rand.Read(b)
	nodeid := tmtp.Base32.EncodeToString(b)
	dev := fmt.Sprintf("%s.%d", uid, len(d.devices[uid]))
	d.devices[uid] = append(d.devices[uid], dev)
	d.nodes[dev] = nodeid
	return nodeid
}

func (d *fakeDir) Login(uid string, node []byte) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := tmtp.Base32.EncodeToString(node)
	for _, dev := range d.devices[uid] {
		if d.nodes[dev] == want {
			return dev, nil
		}
	}
	return "", ErrLoginFailed
}

func (d *fakeDir) Devices(uid string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	devs, ok := d.devices[uid]
	if !ok {
		return nil, ErrNoUser
	}
	return append([]string(nil), devs...), nil
}

func (d *fakeDir) Claims(uid string) (map[string]any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.claims[uid], nil
}

func (d *fakeDir) AliasUID(alias string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	uid, ok := d.aliases[alias]
	return uid, ok
}

// The fake has no groups: group operations are tested end to end with the
// real user database.
func (d *fakeDir) GroupInvite(uid, gid, from, to string) (GroupChange, error) {
	return GroupChange{}, ErrNoGroup
}

func (d *fakeDir) GroupEdit(uid string, act GroupAct, gid, newalias, to string) (GroupChange, error) {
	return GroupChange{}, ErrNoGroup
}

func (d *fakeDir) GroupMembers(uid, gid string) ([]string, error) { return nil, ErrNoGroup }

func (d *fakeDir) AddAlias(uid, alias string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len([]rune(alias)) < 8 {
		return ErrAliasShort
	}
	if owner, ok := d.aliases[alias]; ok && owner != uid || d.once[alias] != "" || d.spent[alias] {
		return ErrAliasTaken
	}
	d.aliases[alias] = uid
	return nil
}

func (d *fakeDir) AddOnceAlias(uid, alias string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len([]rune(alias)) < 8 {
		return ErrAliasShort
	}
	if owner, ok := d.once[alias]; ok && owner == uid {
		return nil
	}
	if _, ok := d.aliases[alias]; ok || d.once[alias] != "" || d.spent[alias] {
		return ErrAliasTaken
	}
	d.once[alias] = uid
	return nil
}

func (d *fakeDir) OnceAliases(uid string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for a, owner := range d.once {
		if owner == uid {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (d *fakeDir) RecipientUID(alias string) (string, bool, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if uid, ok := d.aliases[alias]; ok {
		return uid, false, true
	}
	uid, ok := d.once[alias]
	return uid, ok, ok
}

func (d *fakeDir) UseAlias(alias string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	uid, ok := d.once[alias]
	if !ok {
		return "", ErrAliasUnknown
	}
	delete(d.once, alias)
	d.spent[alias] = true
	return uid, nil
}

// DropAlias withdraws single-use aliases only: the fake keeps no groups to
// relist, and treats each regular alias as the user's last.
func (d *fakeDir) DropAlias(uid, alias string) ([]AliasMove, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aliases[alias] == uid {
		return nil, ErrLastAlias
	}
	if d.once[alias] != uid {
		return nil, ErrAliasUnknown
	}
	delete(d.once, alias)
	d.spent[alias] = true
	return nil, nil
}

// resolve finds the user a Block or Unblock name gives: a uid or an alias.
// d.mu is held.
func (d *fakeDir) resolve(name string) (string, error) {
	if _, ok := d.devices[name]; ok {
		return name, nil
	}
	if uid, ok := d.aliases[name]; ok {
		return uid, nil
	}
	return "", ErrAliasUnknown
}

func (d *fakeDir) Block(uid, name string) (string, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	target, err := d.resolve(name)
	if err != nil {
		return "", false, err
	}
	if target == uid {
		return "", false, ErrBlockSelf
	}
	list := d.blocks[uid]
	if by, ok := list[target]; ok {
		return by, false, nil
	}
	if len(list) >= MaxBlocks {
		return "", false, ErrTooManyBlocks
	}
	if list == nil {
		list = map[string]string{}
		d.blocks[uid] = list
	}
	list[target] = name
	return name, true, nil
}

func (d *fakeDir) Unblock(uid, name string) (string, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for target, by := range d.blocks[uid] {
		if by == name {
			delete(d.blocks[uid], target)
			return by, true, nil
		}
	}
	target, err := d.resolve(name)
	if err != nil {
		return "", false, nil
	}
	by, ok := d.blocks[uid][target]
	if ok {
		delete(d.blocks[uid], target)
	}
	return by, ok, nil
}

func (d *fakeDir) Blocks(uid string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, by := range d.blocks[uid] {
		out = append(out, by)
	}
	slices.Sort(out)
	return out, nil
}

func (d *fakeDir) Blocked(recipient, sender string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.blocks[recipient][sender]
	return ok
}

// ReceiveOnly: the fake has no receive-only members; the extension is
// tested end to end with the real user database.
func (d *fakeDir) ReceiveOnly(uid string) bool { return false }

// Nodes lists uid's devices as the fake numbers them, all labelled as
// device adds them. Revoking is tested end to end with the real user
// database: the fake retires nothing.
func (d *fakeDir) Nodes(uid string) ([]Node, error) {
	devs, err := d.Devices(uid)
	if err != nil {
		return nil, err
	}
	nodes := make([]Node, 0, len(devs))
	for _, dev := range devs {
		_, num, _ := strings.Cut(dev, ".")
		nodes = append(nodes, Node{Dev: dev, Num: num, Label: "extra"})
	}
	return nodes, nil
}

func (d *fakeDir) DropDevice(uid, num string) (dev, label string, err error) {
	return "", "", ErrNoDevice
}

// testServer is a qlib.Server on a loopback TLS listener with a real store in
// a temporary directory.
type testServer struct {
	t     *testing.T
	srv   *Server
	dir   *fakeDir
	store *store.Log
	addr  string
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer starts a server; tweak may change its Config (timeouts).
func startServer(t *testing.T, tweak func(*Config)) *testServer {
	t.Helper()
	return startServerFS(t, nil, tweak)
}

// startServerFS starts a server whose store does its I/O through fsys (nil:
// the real filesystem in a temporary directory).
func startServerFS(t *testing.T, fsys durable.FS, tweak func(*Config)) *testServer {
	t.Helper()
	return startServerStore(t, fsys, nil, tweak)
}

// startServerStore is startServerFS with the store's Options changed by
// storeTweak (a watermark, say).
func startServerStore(t *testing.T, fsys durable.FS, storeTweak func(*store.Options), tweak func(*Config)) *testServer {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dir := "/qstore"
	if fsys == nil {
		dir = t.TempDir()
	}
	opts := store.Options{Dir: dir, FS: fsys, Logger: logger}
	if storeTweak != nil {
		storeTweak(&opts)
	}
	st, err := store.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, dir: newFakeDir(), store: st, logs: logs}
	cfg := Config{
		Name:      "test",
		Directory: ts.dir,
		Store:     st,
		Logger:    logger,
		// Park links at every pause, so that every test also runs the
		// park-and-resume path (link.run).
		ParkAfter: time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	ts.srv, err = NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(tls.NewListener(ln, testTLSConfig(t))) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != ErrServerClosed {
			t.Errorf("Serve returned %v", err)
		}
		if err := st.Close(); err != nil && fsys == nil {
			t.Errorf("store close: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return ts
}

// testTLSConfig makes a throwaway self-signed certificate.
func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}
}

// dial opens a raw link.
func (ts *testServer) dial() *testclient.Conn {
	ts.t.Helper()
	c, err := testclient.Dial(ts.addr, nil)
	if err != nil {
		ts.t.Fatal(err)
	}
	c.SetReadTimeout(10 * time.Second)
	ts.t.Cleanup(func() { c.Close() })
	return c
}

// dialRev opens a raw link and completes TmtpRev.
func (ts *testServer) dialRev() *testclient.Conn {
	ts.t.Helper()
	c := ts.dial()
	if err := c.WriteFrame(map[string]any{"Op": 0, "Id": "1"}, nil); err != nil {
		ts.t.Fatal(err)
	}
	f := mustRead(ts.t, c)
	if f.Op() != "tmtprev" {
		ts.t.Fatalf("tmtprev reply: %s", f.Raw)
	}
	return c
}

// register makes a user through the protocol and returns a logged-in client.
func (ts *testServer) register() (*testclient.Client, testclient.Registration) {
	ts.t.Helper()
	c, reg, err := testclient.Register(ts.addr, "dev", "_", testclient.Options{})
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { c.Close() })
	return c, reg
}

// login logs a device in.
func (ts *testServer) login(uid, nodeid string) *testclient.Client {
	ts.t.Helper()
	c, _, err := testclient.Login(ts.addr, uid, nodeid, testclient.Options{})
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { c.Close() })
	return c
}

// loginPipe serves srvSide, the server's end of a net.Pipe (or a wrapper of
// it), and logs uid's device in over cliSide, the client's end. A pipe's
// writes block until the other end reads, so the test decides when the
// server's writes complete. The connection closes when the test ends.
func (ts *testServer) loginPipe(srvSide, cliSide net.Conn, uid, nodeid string) *testclient.Conn {
	ts.t.Helper()
	if !ts.srv.ServeConn(srvSide) {
		ts.t.Fatal("ServeConn refused")
	}
	c := testclient.NewConn(cliSide)
	ts.t.Cleanup(func() { c.Close() })
	c.SetReadTimeout(10 * time.Second)
	if err := c.WriteFrame(map[string]any{"Op": 0, "Id": "1"}, nil); err != nil {
		ts.t.Fatal(err)
	}
	mustRead(ts.t, c) // tmtprev
	if err := c.WriteFrame(map[string]any{"Op": 2, "Uid": uid, "Node": nodeid}, nil); err != nil {
		ts.t.Fatal(err)
	}
	if f := mustRead(ts.t, c); f.Op() != "info" {
		ts.t.Fatalf("login: %s", f.Raw)
	}
	return c
}

func mustRead(t *testing.T, c *testclient.Conn) *testclient.Frame {
	t.Helper()
	f, err := c.ReadFrame()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	return f
}

// expectQuit reads frames until a quit and checks its reason, then checks
// that the link is closed.
func expectQuit(t *testing.T, c *testclient.Conn, reason string) {
	t.Helper()
	f := mustRead(t, c)
	if f.Op() != "quit" || f.Str("error") != reason {
		t.Fatalf("got %s, want quit %q", f.Raw, reason)
	}
	expectClosed(t, c)
}

// expectClosed checks that the server closes the link without another frame.
func expectClosed(t *testing.T, c *testclient.Conn) {
	t.Helper()
	f, err := c.ReadFrame()
	if err == nil {
		t.Fatalf("got %s, want the link closed", f.Raw)
	}
	if !isClosedErr(err) {
		t.Fatalf("got error %v, want the link closed", err)
	}
}

func isClosedErr(err error) bool {
	return err == io.EOF || strings.Contains(err.Error(), "EOF") ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "closed")
}

// nextMessage waits for the next stored message on c.
func nextMessage(t *testing.T, c *testclient.Client) *testclient.Frame {
	t.Helper()
	select {
	case f, ok := <-c.Messages():
		if !ok {
			t.Fatalf("link ended: %v", c.Err())
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
	return nil
}

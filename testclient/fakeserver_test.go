package testclient

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// This file is a scripted fake TMTP server: a TLS listener on loopback whose
// links are handed to test code that reads requests and writes replies. It
// shares no parsing code with the package, so a framing mistake in one is not
// mirrored in the other.

// fakeTimeout bounds every wait of the fake server, so that a broken test
// fails instead of hanging.
const fakeTimeout = 10 * time.Second

// testCert is a self-signed certificate for 127.0.0.1.
type testCert struct {
	tls  tls.Certificate
	x509 *x509.Certificate
}

func newTestCert(t testing.TB) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mnm test"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{tls: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, x509: cert}
}

type fakeServer struct {
	t     testing.TB
	ln    net.Listener
	cert  testCert
	links chan *fakeLink

	mu  sync.Mutex
	all []*fakeLink // guarded by mu; closed at cleanup
}

func newFakeServer(t testing.TB) *fakeServer {
	t.Helper()
	cert := newTestCert(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert.tls}})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, ln: ln, cert: cert, links: make(chan *fakeLink, 16)}
	go s.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, l := range s.all {
			l.c.Close()
		}
	})
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

func (s *fakeServer) acceptLoop() {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			tc := nc.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(fakeTimeout))
			if err := tc.Handshake(); err != nil {
				tc.Close()
				return
			}
			l := &fakeLink{c: tc, r: bufio.NewReader(tc)}
			s.mu.Lock()
			s.all = append(s.all, l)
			s.mu.Unlock()
			s.links <- l
		}()
	}
}

// accept returns the next link a client opened.
func (s *fakeServer) accept() (*fakeLink, error) {
	select {
	case l := <-s.links:
		return l, nil
	case <-time.After(fakeTimeout):
		return nil, errors.New("fake: no connection")
	}
}

// serve runs script on the next link in a goroutine; wait for its result
// with done.
func (s *fakeServer) serve(script func(l *fakeLink) error) <-chan error {
	errc := make(chan error, 1)
	go func() {
		l, err := s.accept()
		if err == nil {
			err = script(l)
		}
		errc <- err
	}()
	return errc
}

// done fails the test if the script failed.
func done(t testing.TB, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal("fake server: ", err)
		}
	case <-time.After(2 * fakeTimeout):
		t.Fatal("fake server script did not finish")
	}
}

// fakeLink is the server end of one link.
type fakeLink struct {
	c *tls.Conn
	r *bufio.Reader
}

// req is a request as the fake server reads it: keys lower-cased (the server
// matches them case-insensitively), numbers as float64.
type req struct {
	raw  string
	head map[string]any
	data []byte
}

func (r *req) num(key string) int {
	f, _ := r.head[key].(float64)
	return int(f)
}

func (r *req) str(key string) string {
	s, _ := r.head[key].(string)
	return s
}

// read reads one request frame.
func (l *fakeLink) read() (*req, error) {
	l.c.SetReadDeadline(time.Now().Add(fakeTimeout))
	var pre [4]byte
	if _, err := io.ReadFull(l.r, pre[:]); err != nil {
		return nil, fmt.Errorf("fake: read prefix: %w", err)
	}
	n, err := strconv.ParseUint(string(pre[:]), 16, 16)
	if err != nil {
		return nil, fmt.Errorf("fake: prefix %q: %w", pre, err)
	}
	raw := make([]byte, n)
	if _, err := io.ReadFull(l.r, raw); err != nil {
		return nil, fmt.Errorf("fake: read header: %w", err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("fake: header %q: %w", raw, err)
	}
	r := &req{raw: string(raw), head: make(map[string]any, len(h))}
	for k, v := range h {
		r.head[strings.ToLower(k)] = v
	}
	if dl := r.num("datalen"); dl > 0 {
		r.data = make([]byte, dl)
		if _, err := io.ReadFull(l.r, r.data); err != nil {
			return nil, fmt.Errorf("fake: read data: %w", err)
		}
	}
	return r, nil
}

// readOp reads a request and requires its op number.
func (l *fakeLink) readOp(op int) (*req, error) {
	r, err := l.read()
	if err != nil {
		return nil, err
	}
	if got, ok := r.head["op"].(float64); !ok || int(got) != op {
		return nil, fmt.Errorf("fake: got %s, want op %d", r.raw, op)
	}
	return r, nil
}

// writeRaw writes "hhhh" + header + data as given.
func (l *fakeLink) writeRaw(header string, data []byte) error {
	l.c.SetWriteDeadline(time.Now().Add(fakeTimeout))
	_, err := l.c.Write(append([]byte(fmt.Sprintf("%04x", len(header))+header), data...))
	return err
}

// write marshals head (compact, sorted, as the server must) and writes it.
func (l *fakeLink) write(head map[string]any, data []byte) error {
	js, err := json.Marshal(head)
	if err != nil {
		return err
	}
	return l.writeRaw(string(js), data)
}

// fakeCRC is the CRC-32C table of the fake's headsums.
var fakeCRC = crc32.MakeTable(crc32.Castagnoli)

// storedHead completes head as a stored message: datalen, posted, headsum.
func storedHead(head map[string]any, data []byte) map[string]any {
	head["datalen"] = len(data)
	if _, ok := head["posted"]; !ok {
		head["posted"] = "2026-11-30T01:45:24.979Z"
	}
	js, _ := json.Marshal(head)
	head["headsum"] = crc32.Checksum([]byte(fmt.Sprintf("%04x%s", len(js), js)), fakeCRC)
	return head
}

// writeStored writes a stored message from uid with message id.
func (l *fakeLink) writeStored(op, from, id string, data []byte) error {
	return l.write(storedHead(map[string]any{"op": op, "from": from, "id": id}, data), data)
}

// tmtprev answers the TmtpRev that starts every link.
func (l *fakeLink) tmtprev() error {
	r, err := l.readOp(0)
	if err != nil {
		return err
	}
	if r.str("id") != "1" {
		return fmt.Errorf("fake: tmtprev id %q", r.str("id"))
	}
	return l.write(map[string]any{"id": "1", "name": "Fake", "op": "tmtprev"}, nil)
}

// login accepts any Login.
func (l *fakeLink) login() error {
	if err := l.tmtprev(); err != nil {
		return err
	}
	if _, err := l.readOp(2); err != nil {
		return err
	}
	return l.write(map[string]any{"info": "login ok", "op": "info"}, nil)
}

// ack replies to request r, with a msgid derived from its id.
func (l *fakeLink) ack(r *req) error {
	return l.write(map[string]any{
		"id": r.str("id"), "msgid": "m" + r.str("id"), "op": "ack", "posted": "2026-11-30T01:45:24.979Z",
	}, nil)
}

// quit sends a quit with reason and closes the link.
func (l *fakeLink) quit(reason string) error {
	err := l.write(map[string]any{"error": reason, "op": "quit"}, nil)
	l.c.Close()
	return err
}

// loggedIn opens a Client against s whose link the fake has logged in, and
// returns both ends. The Client is closed at cleanup.
func loggedIn(t *testing.T, s *fakeServer, o Options) (*Client, *fakeLink) {
	t.Helper()
	lc := make(chan *fakeLink, 1)
	errc := s.serve(func(l *fakeLink) error {
		lc <- l
		return l.login()
	})
	c, _, err := Login(s.addr(), "uid1", "node1", o)
	if err != nil {
		t.Fatal(err)
	}
	done(t, errc)
	t.Cleanup(func() { c.Close() })
	return c, <-lc
}

// recv waits for a frame on ch.
func recv(t *testing.T, ch <-chan *Frame) *Frame {
	t.Helper()
	select {
	case f, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return f
	case <-time.After(fakeTimeout):
		t.Fatal("no frame")
	}
	return nil
}

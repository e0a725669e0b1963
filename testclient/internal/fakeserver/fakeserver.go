// Package fakeserver is a scripted fake TMTP server for the tests of the
// test client and its load engine: a TLS listener on loopback whose links
// are handed to test code that reads requests and writes replies. It
// shares no parsing code with the client, so a framing mistake in one is
// not mirrored in the other.
package fakeserver

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

// Timeout bounds every wait of the fake server, so that a broken test
// fails instead of hanging.
const Timeout = 10 * time.Second

// newCert returns a self-signed certificate for 127.0.0.1.
func newCert(t testing.TB) (tls.Certificate, *x509.Certificate) {
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
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, cert
}

// Server is a fake server. Its links are closed at the test's cleanup.
type Server struct {
	// Cert is the server's self-signed certificate, for clients that verify.
	Cert *x509.Certificate
	// Links receives every link a client opens, once its TLS handshake is
	// done; Accept and Serve take them from here.
	Links chan *Link

	ln net.Listener

	mu  sync.Mutex
	all []*Link // guarded by mu; closed at cleanup
}

// New starts a fake server on loopback.
func New(t testing.TB) *Server {
	t.Helper()
	pair, cert := newCert(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Cert: cert, Links: make(chan *Link, 16), ln: ln}
	go s.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, l := range s.all {
			l.Conn.Close()
		}
	})
	return s
}

// Addr is the server's "host:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

func (s *Server) acceptLoop() {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			tc := nc.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(Timeout))
			if err := tc.Handshake(); err != nil {
				tc.Close()
				return
			}
			l := &Link{Conn: tc, Reader: bufio.NewReader(tc)}
			s.mu.Lock()
			s.all = append(s.all, l)
			s.mu.Unlock()
			s.Links <- l
		}()
	}
}

// Accept returns the next link a client opened.
func (s *Server) Accept() (*Link, error) {
	select {
	case l := <-s.Links:
		return l, nil
	case <-time.After(Timeout):
		return nil, errors.New("fake: no connection")
	}
}

// Serve runs script on the next link in a goroutine; wait for its result
// with Done.
func (s *Server) Serve(script func(l *Link) error) <-chan error {
	errc := make(chan error, 1)
	go func() {
		l, err := s.Accept()
		if err == nil {
			err = script(l)
		}
		errc <- err
	}()
	return errc
}

// Done fails the test if the script failed.
func Done(t testing.TB, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal("fake server: ", err)
		}
	case <-time.After(2 * Timeout):
		t.Fatal("fake server script did not finish")
	}
}

// Link is the server end of one link.
type Link struct {
	Conn   *tls.Conn
	Reader *bufio.Reader // reads Conn; Read and ReadOp use it
}

// Req is a request as the fake server reads it: keys lower-cased (the
// server matches them case-insensitively), numbers as float64.
type Req struct {
	Raw  string // the header as sent
	Head map[string]any
	Data []byte
}

// Num returns the number at key, 0 if there is none.
func (r *Req) Num(key string) int {
	f, _ := r.Head[key].(float64)
	return int(f)
}

// Str returns the string at key, "" if there is none.
func (r *Req) Str(key string) string {
	s, _ := r.Head[key].(string)
	return s
}

// Read reads one request frame.
func (l *Link) Read() (*Req, error) {
	l.Conn.SetReadDeadline(time.Now().Add(Timeout))
	var pre [4]byte
	if _, err := io.ReadFull(l.Reader, pre[:]); err != nil {
		return nil, fmt.Errorf("fake: read prefix: %w", err)
	}
	n, err := strconv.ParseUint(string(pre[:]), 16, 16)
	if err != nil {
		return nil, fmt.Errorf("fake: prefix %q: %w", pre, err)
	}
	raw := make([]byte, n)
	if _, err := io.ReadFull(l.Reader, raw); err != nil {
		return nil, fmt.Errorf("fake: read header: %w", err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("fake: header %q: %w", raw, err)
	}
	r := &Req{Raw: string(raw), Head: make(map[string]any, len(h))}
	for k, v := range h {
		r.Head[strings.ToLower(k)] = v
	}
	if dl := r.Num("datalen"); dl > 0 {
		r.Data = make([]byte, dl)
		if _, err := io.ReadFull(l.Reader, r.Data); err != nil {
			return nil, fmt.Errorf("fake: read data: %w", err)
		}
	}
	return r, nil
}

// ReadOp reads a request and requires its op number.
func (l *Link) ReadOp(op int) (*Req, error) {
	r, err := l.Read()
	if err != nil {
		return nil, err
	}
	if got, ok := r.Head["op"].(float64); !ok || int(got) != op {
		return nil, fmt.Errorf("fake: got %s, want op %d", r.Raw, op)
	}
	return r, nil
}

// WriteRaw writes "hhhh" + header + data as given.
func (l *Link) WriteRaw(header string, data []byte) error {
	l.Conn.SetWriteDeadline(time.Now().Add(Timeout))
	_, err := l.Conn.Write(append([]byte(fmt.Sprintf("%04x", len(header))+header), data...))
	return err
}

// Write marshals head (compact, sorted, as the server must) and writes it.
func (l *Link) Write(head map[string]any, data []byte) error {
	js, err := json.Marshal(head)
	if err != nil {
		return err
	}
	return l.WriteRaw(string(js), data)
}

// crcTable is the CRC-32C table of the fake's headsums.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

// StoredHead completes head as a stored message: datalen, posted, headsum.
func StoredHead(head map[string]any, data []byte) map[string]any {
	head["datalen"] = len(data)
	if _, ok := head["posted"]; !ok {
		head["posted"] = "2026-11-30T01:45:24.979Z"
	}
	js, _ := json.Marshal(head)
	head["headsum"] = crc32.Checksum([]byte(fmt.Sprintf("%04x%s", len(js), js)), crcTable)
	return head
}

// WriteStored writes a stored message from uid with message id.
func (l *Link) WriteStored(op, from, id string, data []byte) error {
	return l.Write(StoredHead(map[string]any{"op": op, "from": from, "id": id}, data), data)
}

// TmtpRev answers the TmtpRev that starts every link.
func (l *Link) TmtpRev() error {
	r, err := l.ReadOp(0)
	if err != nil {
		return err
	}
	if r.Str("id") != "1" {
		return fmt.Errorf("fake: tmtprev id %q", r.Str("id"))
	}
	return l.Write(map[string]any{"id": "1", "name": "Fake", "op": "tmtprev"}, nil)
}

// Login accepts any Login.
func (l *Link) Login() error {
	if err := l.TmtpRev(); err != nil {
		return err
	}
	if _, err := l.ReadOp(2); err != nil {
		return err
	}
	return l.Write(map[string]any{"info": "login ok", "op": "info"}, nil)
}

// Ack replies to request r, with a msgid derived from its id.
func (l *Link) Ack(r *Req) error {
	return l.Write(map[string]any{
		"id": r.Str("id"), "msgid": "m" + r.Str("id"), "op": "ack", "posted": "2026-11-30T01:45:24.979Z",
	}, nil)
}

// Quit sends a quit with reason and closes the link.
func (l *Link) Quit(reason string) error {
	err := l.Write(map[string]any{"error": reason, "op": "quit"}, nil)
	l.Conn.Close()
	return err
}

package testclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/testclient/internal/fakeserver"
)

// dial opens a Conn to s and returns both ends.
func dial(t *testing.T, s *fakeserver.Server) (*Conn, *fakeserver.Link) {
	t.Helper()
	c, err := Dial(s.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c, l
}

func TestConnSplitFrames(t *testing.T) {
	s := fakeserver.New(t)
	c, l := dial(t, s)
	data := "data for Id:zyx"
	whole := frame(`{"datalen":15,"op":"delivery"}`, data)
	two := frame(`{"op":"a"}`, "") + frame(`{"datalen":2,"op":"b"}`, "xy")
	errc := make(chan error, 1)
	go func() {
		// Each Write is its own TLS record, so the client sees the first
		// frame arrive one octet at a time, then two frames in one record.
		for i := range len(whole) {
			if _, err := l.Conn.Write([]byte{whole[i]}); err != nil {
				errc <- err
				return
			}
		}
		_, err := l.Conn.Write([]byte(two))
		errc <- err
	}()
	want := []struct{ op, data string }{{"delivery", data}, {"a", ""}, {"b", "xy"}}
	for _, w := range want {
		f, err := c.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if f.Op() != w.op || string(f.Data) != w.data {
			t.Errorf("got %s %q, want %s %q", f.Op(), f.Data, w.op, w.data)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestConnReadTimeoutResumes(t *testing.T) {
	s := fakeserver.New(t)
	c, l := dial(t, s)
	whole := frame(`{"datalen":4,"op":"delivery"}`, "data")
	cut := len(whole) - 6 // inside the header
	if _, err := l.Conn.Write([]byte(whole[:cut])); err != nil {
		t.Fatal(err)
	}
	c.SetReadTimeout(50 * time.Millisecond)
	if f, err := c.ReadFrame(); !isTimeout(err) {
		t.Fatalf("got %v, %v; want a timeout", f, err)
	}
	if _, err := l.Conn.Write([]byte(whole[cut:])); err != nil {
		t.Fatal(err)
	}
	c.SetReadTimeout(DefaultTimeout)
	f, err := c.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if f.Op() != "delivery" || string(f.Data) != "data" {
		t.Errorf("got %s", f)
	}
}

func TestConnEOF(t *testing.T) {
	s := fakeserver.New(t)
	c, l := dial(t, s)
	l.WriteRaw(`{"op":"a"}`, nil)
	l.Conn.Close()
	if _, err := c.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("got %v, want EOF at a frame boundary", err)
	}
}

func TestConnWrite(t *testing.T) {
	s := fakeserver.New(t)
	c, l := dial(t, s)
	if err := c.WriteFrame(map[string]any{"Op": 1}, nil); err != nil {
		t.Fatal(err)
	}
	// Datalen is not added, and data follows the header as given.
	if err := c.WriteFrame(struct {
		Op      int
		Datalen int
	}{7, 3}, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	for _, piece := range []string{"00", "08{\"op", "\":1}"} {
		if err := c.WriteRaw([]byte(piece)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"0008{\"Op\":1}", "0014{\"Op\":7,\"Datalen\":3}abc", "0008{\"op\":1}"}
	for _, w := range want {
		got := make([]byte, len(w))
		l.Conn.SetReadDeadline(time.Now().Add(fakeserver.Timeout))
		if _, err := io.ReadFull(l.Reader, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != w {
			t.Errorf("server got %q, want %q", got, w)
		}
	}
	if err := c.WriteFrame(map[string]string{"x": strings.Repeat("y", MaxHeaderLen)}, nil); err == nil {
		t.Error("header over 65535 octets written")
	}
}

func TestConnConcurrentWrites(t *testing.T) {
	s := fakeserver.New(t)
	c, l := dial(t, s)
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				data := []byte(strings.Repeat(fmt.Sprint(w), 1000+i))
				if err := c.WriteFrame(map[string]any{"Op": 7, "Datalen": len(data), "W": w}, data); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range writers * each {
		r, err := l.Read()
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Repeat(fmt.Sprint(r.Num("w")), r.Num("datalen")); string(r.Data) != want {
			t.Fatalf("interleaved frame from writer %d", r.Num("w"))
		}
	}
	wg.Wait()
}

func TestDialVerified(t *testing.T) {
	s := fakeserver.New(t)
	pool := x509.NewCertPool()
	pool.AddCert(s.Cert)
	c, err := Dial(s.Addr(), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := Dial(s.Addr(), &tls.Config{}); err == nil {
		t.Error("self-signed certificate accepted with verification on")
	}
}

func TestParseSite(t *testing.T) {
	addr, cfg, err := ParseSite("=localhost:8443")
	if err != nil || addr != "localhost:8443" || !cfg.InsecureSkipVerify {
		t.Errorf("=site: %q %+v %v", addr, cfg, err)
	}
	addr, cfg, err = ParseSite("+mnm.example:443")
	if err != nil || addr != "mnm.example:443" || cfg.InsecureSkipVerify {
		t.Errorf("+site: %q %+v %v", addr, cfg, err)
	}
	for _, bad := range []string{"", "=", "+", "host:1", "-host:1"} {
		t.Run(bad, func(t *testing.T) {
			if _, _, err := ParseSite(bad); err == nil {
				t.Errorf("ParseSite(%q) accepted", bad)
			}
		})
	}
}

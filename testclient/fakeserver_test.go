package testclient

import (
	"testing"
	"time"

	"mnm/testclient/internal/fakeserver"
)

// The client is tested against fakeserver, a scripted fake TMTP server that
// shares no parsing code with this package.

// loggedIn opens a Client against s whose link the fake has logged in, and
// returns both ends. The Client is closed at cleanup.
func loggedIn(t *testing.T, s *fakeserver.Server, o Options) (*Client, *fakeserver.Link) {
	t.Helper()
	lc := make(chan *fakeserver.Link, 1)
	errc := s.Serve(func(l *fakeserver.Link) error {
		lc <- l
		return l.Login()
	})
	c, _, err := Login(s.Addr(), "uid1", "node1", o)
	if err != nil {
		t.Fatal(err)
	}
	fakeserver.Done(t, errc)
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
	case <-time.After(fakeserver.Timeout):
		t.Fatal("no frame")
	}
	return nil
}

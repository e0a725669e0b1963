package testclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTimeout is the read and write timeout of a new Conn and the default
// Options.Timeout: long enough for a loaded server to fsync, short enough that
// a test waiting for a frame that never comes fails instead of hanging.
const DefaultTimeout = 10 * time.Second

// readBufSize is the Conn's read buffer: a few typical frames, so that small
// frames cost one read system call per batch rather than per frame.
const readBufSize = 32 << 10

// maxKeptWriteBuf is the largest write buffer a Conn keeps for reuse; a rare
// large post should not pin its size for the life of the link.
const maxKeptWriteBuf = 64 << 10

// Conn is a raw TMTP link: it writes frames or arbitrary bytes and reads
// frames, with no goroutines of its own.
//
// WriteFrame and WriteRaw may be called concurrently with each other and with
// ReadFrame; each write goes out whole, never interleaved with another.
// ReadFrame must be called from one goroutine at a time.
type Conn struct {
	nc          net.Conn
	fr          frameReader  // used only by ReadFrame
	readTimeout atomic.Int64 // time.Duration; 0 = none

	wmu sync.Mutex
	// Guarded by wmu:
	writeTimeout time.Duration
	wbuf         []byte // reused frame buffer
}

// Dial opens a TLS link to addr ("host:port") within DefaultTimeout. A nil cfg
// skips certificate verification, as a client does for a "=host:port" site.
func Dial(addr string, cfg *tls.Config) (*Conn, error) {
	return DialTimeout(addr, cfg, DefaultTimeout)
}

// DialTimeout is Dial with a limit d on the TCP connect and TLS handshake.
func DialTimeout(addr string, cfg *tls.Config, d time.Duration) (*Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return DialContext(ctx, addr, cfg)
}

// DialContext is Dial bounded by ctx.
func DialContext(ctx context.Context, addr string, cfg *tls.Config) (*Conn, error) {
	if cfg == nil {
		cfg = &tls.Config{InsecureSkipVerify: true} // a self-signed "=host:port" site
	}
	d := tls.Dialer{Config: cfg}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("testclient: dial %s: %w", addr, err)
	}
	return NewConn(nc), nil
}

// NewConn wraps an established connection (TLS or, in tests, anything else).
// Reads and writes time out after DefaultTimeout until changed.
func NewConn(nc net.Conn) *Conn {
	c := &Conn{nc: nc, writeTimeout: DefaultTimeout}
	c.fr.r = bufio.NewReaderSize(nc, readBufSize)
	c.readTimeout.Store(int64(DefaultTimeout))
	return c
}

// ParseSite turns a site address as given to users (SPEC §8) into a dial
// address and TLS configuration: "=host:port" (self-signed certificate, not
// verified) or "+host:port" (CA-issued, verified with the system roots).
func ParseSite(site string) (addr string, cfg *tls.Config, err error) {
	switch {
	case strings.HasPrefix(site, "=") && len(site) > 1:
		return site[1:], &tls.Config{InsecureSkipVerify: true}, nil
	case strings.HasPrefix(site, "+") && len(site) > 1:
		return site[1:], &tls.Config{}, nil
	}
	return "", nil, fmt.Errorf("testclient: site %q is neither =host:port nor +host:port", site)
}

// SetReadTimeout sets how long each ReadFrame waits; 0 means forever.
func (c *Conn) SetReadTimeout(d time.Duration) { c.readTimeout.Store(int64(d)) }

// SetWriteTimeout sets how long each write may take; 0 means forever.
func (c *Conn) SetWriteTimeout(d time.Duration) {
	c.wmu.Lock()
	c.writeTimeout = d
	c.wmu.Unlock()
}

// WriteFrame writes one frame: "hhhh", head marshalled with json.Marshal (a
// map or a struct), then data. It adds nothing to head (no datalen), so tests
// can send headers inconsistent with their data.
func (c *Conn) WriteFrame(head any, data []byte) error {
	js, err := json.Marshal(head)
	if err != nil {
		return fmt.Errorf("testclient: marshal header: %w", err)
	}
	if len(js) > MaxHeaderLen {
		return fmt.Errorf("testclient: header of %d octets exceeds %d", len(js), MaxHeaderLen)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// One buffer, one Write: the frame travels in as few TLS records as the
	// size allows, and concurrent writers cannot interleave.
	b := append(c.wbuf[:0], "0000"...)
	putPrefix(b, len(js))
	b = append(append(b, js...), data...)
	err = c.writeLocked(b)
	if cap(b) <= maxKeptWriteBuf {
		c.wbuf = b[:0]
	}
	return err
}

// WriteRaw writes b as is: split frames, garbage, several frames at once.
func (c *Conn) WriteRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(b)
}

func (c *Conn) writeLocked(b []byte) error {
	var deadline time.Time
	if c.writeTimeout > 0 {
		deadline = time.Now().Add(c.writeTimeout)
	}
	if err := c.nc.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("testclient: write: %w", err)
	}
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("testclient: write: %w", err)
	}
	return nil
}

// ReadFrame reads the next frame, waiting at most the read timeout. After a
// timeout the link stays usable: a frame that was half read is completed by
// the next call. Any other error (io.EOF at a frame boundary, a malformed
// frame wrapping ErrHeaderLength or ErrHeader, a broken link) is final.
func (c *Conn) ReadFrame() (*Frame, error) {
	var deadline time.Time
	if d := time.Duration(c.readTimeout.Load()); d > 0 {
		deadline = time.Now().Add(d)
	}
	if err := c.nc.SetReadDeadline(deadline); err != nil {
		return nil, fmt.Errorf("testclient: read: %w", err)
	}
	return c.fr.next()
}

// Close closes the link at once, without a Quit.
func (c *Conn) Close() error { return c.nc.Close() }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// isTimeout reports whether err is a deadline expiry, after which a read may
// be retried.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

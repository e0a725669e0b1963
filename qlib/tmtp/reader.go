package tmtp

import (
	"errors"
	"io"
	"sync"
)

const (
	// prefixLen is the length of a frame's hex length prefix.
	prefixLen = 4
	// smallBufSize is the buffer every link keeps for its whole life. Most
	// request headers (login, ack, pulse, a post to a few recipients) fit
	// with room to spare, and the server holds one per connected device, so it
	// stays small; a larger header borrows a large buffer for as long as it
	// takes to consume it.
	smallBufSize = 512
	// largeBufSize holds the longest possible frame prefix and header.
	largeBufSize = prefixLen + MaxHeaderLen
	// maxEmptyReads is how many consecutive (0, nil) reads of the underlying
	// reader are tolerated before giving up with io.ErrNoProgress, as bufio
	// does: such a reader is broken and would otherwise spin forever.
	maxEmptyReads = 100
)

// largeBufs holds the large buffers that links borrow while they read a
// header too long for their own buffer. It is package-level because it is a
// cache shared by all links, with no effect on behaviour: a link would work the
// same with a freshly allocated buffer each time.
var largeBufs = sync.Pool{New: func() any {
	b := make([]byte, largeBufSize)
	return &b
}}

// smallBufs holds the small buffers of parked Readers (see Park).
var smallBufs = sync.Pool{New: func() any {
	b := make([]byte, smallBufSize)
	return &b
}}

// ErrLongHeaderRefused is returned by Next when a header does not fit the
// Reader's own buffer and its gate (SetLargeGate) refused it a large one. The
// header has not been read whole, so the stream is out of step: the link is
// to be closed.
var ErrLongHeaderRefused = errors.New("tmtp: no buffer for a long header")

// A LargeGate decides whether a Reader may borrow a large buffer of size
// octets. It returns ok false to refuse, or a release function that the
// Reader calls exactly once, when it gives the buffer back (in Next, or in
// Release). It is called by the goroutine using the Reader; release may be
// called after the gate was replaced, so it must not depend on the Reader.
type LargeGate func(size int) (release func(), ok bool)

// Reader reads frames from a link. An idle Reader holds only a small buffer,
// and a parked one none; a header that does not fit borrows a large one, given
// back once consumed.
// A Reader is not safe for concurrent use.
type Reader struct {
	rd    io.Reader
	small []byte  // this Reader's own buffer; nil while parked
	large *[]byte // a buffer borrowed from largeBufs, or nil
	buf   []byte  // small or *large
	r, w  int     // buf[r:w] is read but not yet consumed
	err   error   // error of the underlying reader, not yet returned

	gate         LargeGate // nil: large buffers are borrowed freely
	releaseLarge func()    // the gate's release for large; nil if none

	header  []byte // the last header read by Next, in buf
	pending int64  // data of the last frame not yet consumed
	data    dataReader
}

// NewReader returns a Reader of frames from r.
func NewReader(r io.Reader) *Reader {
	small := make([]byte, smallBufSize)
	rd := &Reader{rd: r, small: small, buf: small}
	rd.data.r = rd
	return rd
}

// SetLargeGate makes every later borrowing of a large buffer ask gate
// first; nil lets the Reader borrow freely again. A server bounds with it the
// memory of links that are not logged in, which anyone can open: a header
// longer than the small buffer then needs its share of a budget. A buffer
// already borrowed keeps the reservation it was given until it goes back.
func (r *Reader) SetLargeGate(gate LargeGate) { r.gate = gate }

// Release gives back the large buffer the Reader holds, if any, and its
// gate's reservation: the owner calls it when it is done with the Reader,
// since a link that ends in the middle of a long header never reaches the
// Next that would give it back. The Reader may be used afterwards; what it
// had buffered is lost.
func (r *Reader) Release() {
	if r.large == nil {
		return
	}
	r.header = nil
	r.r, r.w = 0, 0
	r.buf = r.small
	r.putLarge()
}

// Next reads the next frame's length prefix and header and parses it.
//
// Errors: *ProtocolError{Reason: QuitHeaderLength} when the 4 characters are
// not hex digits (either case) or the length is below MinHeaderLen; a
// *ProtocolError from ParseHeader; ErrLongHeaderRefused (see SetLargeGate);
// otherwise the underlying reader's error:
// io.EOF at a clean frame boundary, io.ErrUnexpectedEOF when the stream ends
// inside a frame, network errors as they are. After a *ProtocolError the
// link is to be closed: the stream is no longer in step with the frames.
//
// After Next returns a header with Datalen > 0, the caller consumes the data
// with Data or Discard; data that it has not consumed when it calls Next again
// is skipped.
func (r *Reader) Next() (*Header, error) {
	r.header = nil
	if r.pending > 0 {
		if err := r.Discard(r.pending); err != nil {
			return nil, err
		}
	}
	r.release()
	if err := r.fill(prefixLen); err != nil {
		if err == io.EOF && r.w > r.r {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n, ok := parsePrefix(r.buf[r.r : r.r+prefixLen])
	if !ok || n < MinHeaderLen {
		r.r += prefixLen
		return nil, &ProtocolError{Reason: QuitHeaderLength}
	}
	if err := r.fill(prefixLen + n); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	r.header = r.buf[r.r+prefixLen : r.r+prefixLen+n]
	r.r += prefixLen + n
	h, err := ParseHeader(r.header)
	if err != nil {
		return nil, err
	}
	r.pending = h.Datalen
	return h, nil
}

// parsePrefix decodes the 4 hex digits of a frame prefix, in either case.
func parsePrefix(p []byte) (int, bool) {
	n := 0
	for _, c := range p {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | int(c)
	}
	return n, true
}

// RawHeader returns the JSON of the last header read by Next, also when Next
// refused it, for debugging. It is valid until the next call of Next or
// Discard or read from Data, which may reuse the buffer. A Login header holds
// the device's nodeid, a password: never log a raw header without removing it.
func (r *Reader) RawHeader() []byte { return r.header }

// Buffered reports how many bytes have been read from the underlying reader
// but not yet consumed: the rest of the current frame's data and any frames
// pipelined behind it.
func (r *Reader) Buffered() int { return r.w - r.r }

// Data returns a reader of the next n data octets: buffered bytes first, then
// the underlying reader. Reading past n returns io.EOF; a stream that ends
// before n returns io.ErrUnexpectedEOF. The returned reader is valid until the
// next call of Next or Data.
func (r *Reader) Data(n int64) io.Reader {
	r.data.n = max(n, 0)
	return &r.data
}

// Discard skips the next n data octets.
func (r *Reader) Discard(n int64) error {
	for n > 0 {
		if r.w == r.r {
			if err := r.fill(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := int(min(n, int64(r.w-r.r)))
		r.consume(k)
		n -= int64(k)
	}
	return nil
}

// consume marks k buffered bytes, all of them frame data, as used.
func (r *Reader) consume(k int) {
	r.r += k
	r.pending = max(r.pending-int64(k), 0)
}

// fill reads until at least need (≤ largeBufSize) bytes are buffered, reading
// as much as the underlying reader offers so that pipelined frames cost one
// read.
func (r *Reader) fill(need int) error {
	empty := 0
	for r.w-r.r < need {
		if r.err != nil {
			err := r.err
			r.err = nil
			return err
		}
		if r.small == nil {
			r.small = *smallBufs.Get().(*[]byte)
			r.buf = r.small
		}
		if len(r.buf)-r.r < need {
			if err := r.makeRoom(need); err != nil {
				return err
			}
		}
		n, err := r.rd.Read(r.buf[r.w:])
		if n < 0 || n > len(r.buf)-r.w {
			return errors.New("tmtp: underlying reader returned an invalid count")
		}
		r.w += n
		r.err = err
		if n == 0 && err == nil {
			if empty++; empty >= maxEmptyReads {
				return io.ErrNoProgress
			}
		} else {
			empty = 0
		}
	}
	return nil
}

// Park gives the Reader's own buffer to a pool shared by all Readers, for a
// link that is about to wait a long time for its next frame; the next read
// takes one back. It does nothing unless the Reader is between frames with
// nothing buffered.
func (r *Reader) Park() {
	if r.small == nil || r.large != nil || r.w != r.r || r.pending > 0 || r.err != nil {
		return
	}
	b := r.small
	smallBufs.Put(&b)
	r.small, r.buf, r.header = nil, nil, nil
	r.r, r.w = 0, 0
}

// makeRoom moves the unconsumed bytes to the start of the buffer, switching to
// a large buffer when need does not fit the small one; ErrLongHeaderRefused
// when the gate refuses that buffer.
func (r *Reader) makeRoom(need int) error {
	buf := r.buf
	if need > len(buf) {
		if r.gate != nil {
			release, ok := r.gate(largeBufSize)
			if !ok {
				return ErrLongHeaderRefused
			}
			r.releaseLarge = release
		}
		r.large = largeBufs.Get().(*[]byte)
		buf = *r.large
	}
	r.w = copy(buf, r.buf[r.r:r.w])
	r.r = 0
	r.buf = buf
	return nil
}

// release gives the large buffer back once what remains in it fits the small
// one, so that an idle link holds only its small buffer. It runs at the start
// of Next, when the previous header (RawHeader) is no longer needed.
func (r *Reader) release() {
	if r.large == nil || r.w-r.r > len(r.small) {
		return
	}
	r.w = copy(r.small, r.buf[r.r:r.w])
	r.r = 0
	r.buf = r.small
	r.putLarge()
}

// putLarge returns the large buffer, which the Reader no longer uses, to the
// pool, and its reservation to the gate that gave it.
func (r *Reader) putLarge() {
	largeBufs.Put(r.large)
	r.large = nil
	if r.releaseLarge != nil {
		r.releaseLarge()
		r.releaseLarge = nil
	}
}

// dataReader reads a frame's data through its Reader's buffer.
type dataReader struct {
	r *Reader
	n int64 // octets left
}

func (d *dataReader) Read(p []byte) (int, error) {
	if d.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > d.n {
		p = p[:d.n]
	}
	r := d.r
	if r.w > r.r {
		n := copy(p, r.buf[r.r:r.w])
		r.consume(n)
		d.n -= int64(n)
		return n, nil
	}
	if r.err != nil {
		err := r.err
		r.err = nil
		return 0, unexpected(err)
	}
	// Nothing buffered: read straight into p, which never reads past the data
	// and spares a copy of what is usually the bulk of a frame.
	for range maxEmptyReads {
		n, err := r.rd.Read(p)
		if n < 0 || n > len(p) {
			return 0, errors.New("tmtp: underlying reader returned an invalid count")
		}
		r.pending = max(r.pending-int64(n), 0)
		d.n -= int64(n)
		if n > 0 {
			// Return the bytes now and the error at the next call.
			r.err = err
			return n, nil
		}
		if err != nil {
			return 0, unexpected(err)
		}
	}
	return 0, io.ErrNoProgress
}

// unexpected turns io.EOF, which the underlying reader returns when the
// stream ends, into io.ErrUnexpectedEOF, since data was still expected.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Package testclient is a TMTP client for the server's tests, the simulation
// (package sim below it) and the load benchmark (package load).
//
// It is written from SPEC.md alone and imports nothing of the server, so that a
// misreading of the protocol on one side is not hidden by the same misreading
// on the other. Conn is a raw link (frames or bytes out, frames in, no
// goroutines); Client is a logged-in device built on a Conn, with a reader
// goroutine that matches acks to requests and hands stored messages to the
// caller. MakePayload, CheckPayload and OrderTracker check end-to-end
// integrity and order; Backoff and LoginRetry help with reconnecting.
package testclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Frame limits (SPEC §1).
const (
	// prefixLen is the size of the "hhhh" header length that starts a frame.
	prefixLen = 4
	// MinHeaderLen is the shortest legal header, {"op":1}.
	MinHeaderLen = 8
	// MaxHeaderLen is the most that four hex digits can express.
	MaxHeaderLen = 0xffff
	// MaxDataLen bounds the datalen this client accepts from a server. The
	// protocol sets no limit; this one is far above anything a test or a
	// benchmark sends and keeps a corrupt header from being read as a promise
	// of gigabytes.
	MaxDataLen = 1 << 30
	// initialDataCap is the most the reader allocates for data before it has
	// arrived; larger data grows the buffer as octets come in, so memory
	// follows what was received, not what a header claims.
	initialDataCap = 1 << 20
)

// PostedLayout is the format of "posted" in stored messages and acks (SPEC §3).
const PostedLayout = "2006-01-02T15:04:05.000Z07:00"

// Errors of frame parsing. They wrap a detail; test them with errors.Is.
var (
	ErrHeaderLength = errors.New("testclient: invalid header length")
	ErrHeader       = errors.New("testclient: invalid header")
)

// Frame is one frame received from the server.
type Frame struct {
	Raw  []byte         // the JSON header bytes as received
	Head map[string]any // decoded with json.Decoder.UseNumber, so numbers keep their text
	Data []byte         // the data (datalen octets), nil if none

	prefix [prefixLen]byte // "hhhh" as received, for CheckFrame's lower-case rule
}

// Op returns head["op"], or "" if it is absent or not a string.
func (f *Frame) Op() string { return f.Str("op") }

// Str returns the string field key, or "" if it is absent or not a string.
func (f *Frame) Str(key string) string {
	s, _ := f.Head[key].(string)
	return s
}

// Int returns the integer field key, or 0 if it is absent or not an integer.
func (f *Frame) Int(key string) int64 {
	n, ok := f.Head[key].(json.Number)
	if !ok {
		return 0
	}
	i, err := n.Int64()
	if err != nil {
		return 0
	}
	return i
}

// Has reports whether the header has the field key (of any type, even null).
func (f *Frame) Has(key string) bool {
	_, ok := f.Head[key]
	return ok
}

// Strings returns the field key as a list of strings (e.g. "ohi" in an info
// reply); non-string elements are skipped. Nil if absent or not a list.
func (f *Frame) Strings(key string) []string {
	l, ok := f.Head[key].([]any)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(l))
	for _, v := range l {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// Stored reports whether f is a stored message, i.e. carries both "from" and
// "id" (SPEC §5): deliveries, login notices, user, member, invite, ohiedit,
// notify and ping messages. These are the frames a client must ack.
func (f *Frame) Stored() bool {
	_, from := f.Head["from"].(string)
	_, id := f.Head["id"].(string)
	return from && id
}

// secretKeys are header fields whose values String hides, so that a frame
// printed in a test failure or a log line never shows a device password or
// an authentication token.
var secretKeys = [...]string{"nodeid", "node", "oidc"}

// String renders the frame for messages: the header with secrets redacted,
// and the data length.
func (f *Frame) String() string {
	return fmt.Sprintf("%s +%d octets", f.redacted(), len(f.Data))
}

// redacted returns Raw, or a re-marshalled copy of the header with the values
// of secretKeys replaced.
func (f *Frame) redacted() []byte {
	secret := false
	for _, k := range secretKeys {
		secret = secret || f.Has(k)
	}
	if !secret {
		return f.Raw
	}
	h := make(map[string]any, len(f.Head))
	for k, v := range f.Head {
		h[k] = v
	}
	for _, k := range secretKeys {
		if _, ok := h[k]; ok {
			h[k] = "(redacted)"
		}
	}
	b, err := json.Marshal(h)
	if err != nil {
		return []byte("(header with secrets)")
	}
	return b
}

// castagnoli is the CRC-32C table of the headsum (SPEC §1). It is never
// written after initialisation.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Headsum computes the headsum of head as SPEC §1 defines it: CRC-32C of
// "hhhh" + the compact, key-sorted JSON of head without its "headsum" key,
// where hhhh is that JSON's length in lower-case hex. head is not modified;
// numbers must be json.Number (as Frame.Head has them) to keep their text.
func Headsum(head map[string]any) (uint32, error) {
	h := make(map[string]any, len(head))
	for k, v := range head {
		if k != "headsum" {
			h[k] = v
		}
	}
	js, err := json.Marshal(h) // Marshal sorts map keys and writes compact JSON
	if err != nil {
		return 0, fmt.Errorf("testclient: headsum: %w", err)
	}
	if len(js) > MaxHeaderLen {
		return 0, fmt.Errorf("testclient: headsum: header of %d octets", len(js))
	}
	var pre [prefixLen]byte
	putPrefix(pre[:], len(js))
	sum := crc32.Update(0, castagnoli, pre[:])
	return crc32.Update(sum, castagnoli, js), nil
}

// HeadsumOK reports whether f carries a "headsum" equal to Headsum(f.Head).
func (f *Frame) HeadsumOK() bool {
	n, ok := f.Head["headsum"].(json.Number)
	if !ok {
		return false
	}
	got, err := strconv.ParseUint(n.String(), 10, 32)
	if err != nil {
		return false
	}
	want, err := Headsum(f.Head)
	return err == nil && uint32(got) == want
}

// putPrefix writes n as four lower-case hex digits, the way the server must
// (SPEC §1); n must be at most MaxHeaderLen.
func putPrefix(b []byte, n int) {
	const digits = "0123456789abcdef"
	b[0] = digits[n>>12&0xf]
	b[1] = digits[n>>8&0xf]
	b[2] = digits[n>>4&0xf]
	b[3] = digits[n&0xf]
}

// ErrProtocol is wrapped by CheckFrame's errors: the server sent a frame that
// breaks the contract.
var ErrProtocol = errors.New("testclient: protocol violation")

// CheckFrame verifies what SPEC §1, §3 and §5 promise about every frame a
// server writes: lower-case hex length; a compact header with lower-case keys
// in lexicographic order and Go string escaping (so re-marshalling the decoded
// header reproduces it exactly, which also catches duplicate keys); a string
// "op"; a sane datalen/datahead; on stored messages a correct headsum, a
// datalen and a well-formed "posted"; on acks an "id", and a well-formed
// "posted" beside any "msgid". A Client runs it on every frame unless
// Options.Lax is set.
func CheckFrame(f *Frame) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s in %s", ErrProtocol, fmt.Sprintf(format, a...), f)
	}
	if string(f.prefix[:]) != strings.ToLower(string(f.prefix[:])) {
		return bad("header length %q not lower case", f.prefix[:])
	}
	canon, err := json.Marshal(f.Head)
	if err != nil {
		return bad("header does not re-marshal: %v", err)
	}
	if !bytes.Equal(canon, f.Raw) {
		return bad("header not compact, sorted and Go-escaped (want %s)", canon)
	}
	for k := range f.Head {
		if k != strings.ToLower(k) {
			return bad("key %q not lower case", k)
		}
	}
	if f.Op() == "" {
		return bad("no op")
	}
	if f.Has("datahead") && f.Int("datahead") > f.Int("datalen") {
		return bad("datahead beyond datalen")
	}
	if f.Stored() {
		if !f.HeadsumOK() {
			return bad("wrong headsum")
		}
		if !f.Has("datalen") {
			return bad("stored message without datalen")
		}
		if !postedOK(f.Str("posted")) {
			return bad("posted %q not in layout %s", f.Str("posted"), PostedLayout)
		}
	}
	if f.Op() == "ack" {
		if f.Str("id") == "" {
			return bad("ack without id")
		}
		if f.Has("msgid") && !postedOK(f.Str("posted")) {
			return bad("posted %q not in layout %s", f.Str("posted"), PostedLayout)
		}
	}
	return nil
}

// postedOK reports whether s is a UTC time in PostedLayout, exactly as the
// server must write it (millisecond precision, "Z").
func postedOK(s string) bool {
	t, err := time.Parse(PostedLayout, s)
	return err == nil && t.Location() == time.UTC && t.Format(PostedLayout) == s
}

// Stages of frameReader: which part of a frame it is reading.
const (
	stagePrefix = iota
	stageHeader
	stageData
)

// frameReader parses frames from a stream. It is resumable: a timeout while a
// frame is half read keeps what was read, and the next call continues the same
// frame, so a test may poll with a short read deadline without desynchronising
// the link. Any other error is sticky.
type frameReader struct {
	r     io.Reader
	err   error // sticky: the stream is no longer in step with frame boundaries
	stage int
	got   int // octets of the current stage's buffer filled so far
	pre   [prefixLen]byte
	hdr   []byte
	f     *Frame // the frame whose data is being read
	want  int    // its datalen
}

// next returns the next frame.
func (fr *frameReader) next() (*Frame, error) {
	if fr.err != nil {
		return nil, fr.err
	}
	f, err := fr.advance()
	if err != nil && !isTimeout(err) {
		fr.err = err
	}
	return f, err
}

func (fr *frameReader) advance() (*Frame, error) {
	if fr.stage == stagePrefix {
		if err := fr.fill(fr.pre[:]); err != nil {
			return nil, err
		}
		n, err := parsePrefix(fr.pre)
		if err != nil {
			return nil, err
		}
		fr.hdr = make([]byte, n)
		fr.stage, fr.got = stageHeader, 0
	}
	if fr.stage == stageHeader {
		if err := fr.fill(fr.hdr); err != nil {
			return nil, err
		}
		head, dl, err := decodeHeader(fr.hdr)
		if err != nil {
			return nil, err
		}
		fr.f = &Frame{Raw: fr.hdr, Head: head, prefix: fr.pre}
		fr.want, fr.hdr = dl, nil
		fr.stage, fr.got = stageData, 0
		if dl > 0 {
			fr.f.Data = make([]byte, 0, min(dl, initialDataCap))
		}
	}
	for len(fr.f.Data) < fr.want {
		d := fr.f.Data
		if len(d) == cap(d) {
			// Double, but never beyond what the header announced.
			d = slices.Grow(d, min(len(d), fr.want-len(d)))
		}
		n, err := fr.r.Read(d[len(d):min(cap(d), fr.want)]) // Grow may give more room than asked
		fr.f.Data = d[:len(d)+n]
		if err != nil && len(fr.f.Data) < fr.want {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	f := fr.f
	fr.f, fr.stage, fr.got = nil, stagePrefix, 0
	return f, nil
}

// fill reads into buf[fr.got:] until buf is full. io.EOF is returned only
// before the first octet of a frame; inside one it is io.ErrUnexpectedEOF.
func (fr *frameReader) fill(buf []byte) error {
	for fr.got < len(buf) {
		n, err := fr.r.Read(buf[fr.got:])
		fr.got += n
		if err != nil && fr.got < len(buf) {
			if err == io.EOF && (fr.stage != stagePrefix || fr.got > 0) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// parsePrefix decodes "hhhh", either case.
func parsePrefix(pre [prefixLen]byte) (int, error) {
	n := 0
	for _, c := range pre {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("%w: %q", ErrHeaderLength, pre[:])
		}
		n = n<<4 | int(d)
	}
	if n < MinHeaderLen {
		return 0, fmt.Errorf("%w: %d", ErrHeaderLength, n)
	}
	return n, nil
}

// decodeHeader parses a JSON header object and its datalen.
func decodeHeader(raw []byte) (map[string]any, int, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var head map[string]any
	if err := dec.Decode(&head); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrHeader, err)
	}
	if head == nil {
		return nil, 0, fmt.Errorf("%w: not an object", ErrHeader)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, 0, fmt.Errorf("%w: trailing octets after the object", ErrHeader)
	}
	v, ok := head["datalen"]
	if !ok {
		return head, 0, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return nil, 0, fmt.Errorf("%w: datalen %v not a number", ErrHeader, v)
	}
	dl, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil || dl < 0 || dl > MaxDataLen {
		return nil, 0, fmt.Errorf("%w: datalen %s", ErrHeader, n)
	}
	return head, int(dl), nil
}

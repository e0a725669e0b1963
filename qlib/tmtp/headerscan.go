package tmtp

import (
	"encoding/json"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The fast path of ParseHeader. encoding/json decodes by reflection and cost
// about a tenth of the server's CPU under load (BENCHMARKS.md), nearly all of
// it on acks and posts. scanHeader decodes those in one pass over the bytes
// and gives up on anything it does not handle exactly as encoding/json does,
// leaving it to decodeHeader: giving up is always correct, only slower.
//
// What it gives up on:
//   - invalid JSON of any kind, and every value of the wrong type for its
//     field (including a fraction, an exponent or an overflow in an integer),
//     so that encoding/json reports every error;
//   - a key that holds an escape or a non-ASCII byte, since encoding/json
//     unescapes keys and folds Unicode case (the Kelvin sign matches k, the
//     long s matches s); a plain ASCII key it matches case-insensitively;
//   - a second "for" or "notefor" key: encoding/json decodes it into the
//     slice already there, reusing and merging its elements;
//   - nesting deeper than maxScanDepth in a value it skips (ext's
//     included);
//   - a flag (once, listonce, listblock, listnode, post) other than 0, 1,
//     false, true or null.
//
// FuzzParseHeaderFast holds it to that: for any input, scanHeader gives up or
// returns what decodeHeader returns.

const (
	// maxScanDepth is how many arrays and objects an unknown key's value may
	// nest before scanHeader leaves the header to encoding/json. Clients
	// send none (an unknown key is at most a string or a number); the bound
	// keeps the scan from recursing as deep as a hostile 64 KiB header could
	// make it.
	maxScanDepth = 16
	// maxKeyLen is the longest key that can name a field, "fornotself".
	maxKeyLen = len("fornotself")
	// maxSharedText is the most string data that the string fields of one
	// header share as a single allocation. Sharing saves an allocation per
	// field, but a field kept long after the header (an id in a map) keeps
	// the whole allocation alive; up to this size that costs no more than
	// the Header struct itself would.
	maxSharedText = 512
	// stackRecipients is how many recipients are collected on the stack before
	// the scanner's list moves to the heap: a post rarely has more.
	stackRecipients = 16
)

// textSpan locates a string value in the scanner's text: the input b
// followed by decoded, the strings that needed unquoting. Offsets are 32-bit
// to keep the spans small (scanHeader takes at most MaxHeaderLen octets).
// The zero textSpan is the empty string, which is also what an absent or
// null value leaves.
type textSpan struct {
	off, end int32
}

// recipientSpan is a Recipient with its id not yet cut.
type recipientSpan struct {
	id  textSpan
	typ int
}

// listSpan locates a for or notefor list in the scanner's recipients.
type listSpan struct {
	seen       bool // the key occurred; a second one is left to encoding/json
	set        bool // the value was a list, not null
	start, end int
}

// The string fields of a Header, as indexes of headerScanner.strs and bits
// of headerScanner.set.
const (
	strID = iota
	strType
	strUID
	strNode
	strNewNode
	strNewAlias
	strGid
	strAct
	strFrom
	strTo
	strOidc
	strDropAlias
	strBlock
	strUnblock
	strDropNode
	numStrs
)

// jsonLit is a string literal in the input: b[start:end] is its inside,
// without the quotes.
type jsonLit struct {
	start, end int
	escaped    bool // holds a backslash
	nonASCII   bool
}

// headerScanner holds the state of one scanHeader call. It lives on the
// stack, so that a header costs only the allocations that its result needs;
// and it is kept small, since it is zeroed for every header.
type headerScanner struct {
	b []byte
	i int // next byte of b

	h    *Header // the result; its strings and lists are set at the end
	strs [numStrs]textSpan
	set  uint16 // bit f: strs[f] is not empty
	// decoded holds the strings that needed unquoting, back to back.
	decoded []byte

	// The elements of both lists: recBuf[:nRecs] while they fit, then
	// recHeap. (A slice of recBuf held here would make the struct point
	// into itself, which moves it to the heap.)
	recBuf         [stackRecipients]recipientSpan
	nRecs          int
	recHeap        []recipientSpan
	forL, noteforL listSpan
}

// scanHeader decodes b as decodeHeader would, or reports false if it cannot
// be sure to. It does not check the header.
func scanHeader(b []byte) (*Header, bool) {
	if len(b) > MaxHeaderLen {
		return nil, false // ParseHeader refuses it; and offsets are 32-bit
	}
	// Not a composite literal: that would be built apart and then copied.
	var s headerScanner
	s.b = b
	s.h = &Header{Op: opMissing}
	s.space()
	if !s.object(s.headerMember) {
		return nil, false
	}
	s.space()
	if s.i != len(b) {
		return nil, false
	}
	s.finish()
	return s.h, true
}

// finish sets the Header's strings and lists. Its only allocations are one
// string that all the strings share (while it is small), one array for both
// lists, and a string for each string that needed unquoting.
func (s *headerScanner) finish() {
	recs := s.recipients()
	total := 0
	for m := s.set; m != 0; m &= m - 1 {
		total += s.plainLen(s.strs[bits.TrailingZeros16(m)])
	}
	for _, r := range recs {
		total += s.plainLen(r.id)
	}
	shared := total <= maxSharedText
	var all string
	if shared && total > 0 {
		// Copy every plain string into one, and point the spans at it.
		var sb strings.Builder
		sb.Grow(total)
		for m := s.set; m != 0; m &= m - 1 {
			s.share(&sb, &s.strs[bits.TrailingZeros16(m)])
		}
		for i := range recs {
			s.share(&sb, &recs[i].id)
		}
		all = sb.String()
	}
	h := s.h
	fields := [numStrs]*string{
		strID: &h.ID, strType: &h.Type, strUID: &h.UID, strNode: &h.Node,
		strNewNode: &h.NewNode, strNewAlias: &h.NewAlias, strGid: &h.Gid,
		strAct: &h.Act, strFrom: &h.From, strTo: &h.To, strOidc: &h.Oidc,
		strDropAlias: &h.DropAlias, strBlock: &h.Block, strUnblock: &h.Unblock,
		strDropNode: &h.DropNode,
	}
	for m := s.set; m != 0; m &= m - 1 {
		f := bits.TrailingZeros16(m)
		*fields[f] = s.cut(s.strs[f], shared, all)
	}
	if !s.forL.set && !s.noteforL.set {
		return
	}
	nFor := s.forL.end - s.forL.start
	rs := make([]Recipient, len(recs))
	for i, r := range recs[s.forL.start:s.forL.end] {
		rs[i] = Recipient{ID: s.cut(r.id, shared, all), Type: r.typ}
	}
	for i, r := range recs[s.noteforL.start:s.noteforL.end] {
		rs[nFor+i] = Recipient{ID: s.cut(r.id, shared, all), Type: r.typ}
	}
	// A list given as [] is empty but not nil, as encoding/json makes it.
	if s.forL.set {
		h.For = rs[:nFor:nFor]
	}
	if s.noteforL.set {
		h.Notefor = rs[nFor:]
	}
}

// plainLen is the length of t if it is in the input, else 0.
func (s *headerScanner) plainLen(t textSpan) int {
	if int(t.off) >= len(s.b) {
		return 0
	}
	return int(t.end - t.off)
}

// share appends t to sb if it is in the input, and points t at it there;
// cut then finds it in sb's string. Such an offset stays below len(s.b),
// since the strings copied into sb are distinct parts of the input, so cut
// does not take it for one in decoded.
func (s *headerScanner) share(sb *strings.Builder, t *textSpan) {
	if n := s.plainLen(*t); n > 0 {
		sb.Write(s.b[t.off:t.end])
		t.off, t.end = int32(sb.Len()-n), int32(sb.Len())
	}
}

// cut returns the string t locates: in all when the input's strings are
// shared, else in the input or in decoded.
func (s *headerScanner) cut(t textSpan, shared bool, all string) string {
	switch {
	case t.end == t.off:
		return ""
	case int(t.off) >= len(s.b):
		return string(s.decoded[int(t.off)-len(s.b) : int(t.end)-len(s.b)])
	case shared:
		return all[t.off:t.end]
	}
	return string(s.b[t.off:t.end])
}

// headerMember decodes the value of the request header's key k.
func (s *headerScanner) headerMember(k jsonLit) bool {
	if k.escaped || k.nonASCII {
		return false
	}
	key := s.b[k.start:k.end]
	if len(key) > maxKeyLen {
		return s.skip(1)
	}
	var lower [maxKeyLen]byte
	for i, c := range key {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	switch string(lower[:len(key)]) {
	case "op":
		return s.intValue((*int)(&s.h.Op))
	case "id":
		return s.stringField(strID)
	case "datalen":
		return s.int64Value(&s.h.Datalen)
	case "datahead":
		return s.int64Value(&s.h.Datahead)
	case "datasum":
		return s.uint64Value(&s.h.Datasum)
	case "notelen":
		return s.int64Value(&s.h.Notelen)
	case "notehead":
		return s.int64Value(&s.h.Notehead)
	case "notesum":
		return s.uint64Value(&s.h.Notesum)
	case "for":
		return s.list(&s.forL)
	case "notefor":
		return s.list(&s.noteforL)
	case "fornotself":
		return s.boolValue(&s.h.Fornotself)
	case "type":
		return s.flexValue(&s.strs[strType]) && s.mark(strType)
	case "uid":
		return s.stringField(strUID)
	case "node":
		return s.stringField(strNode)
	case "newnode":
		return s.stringField(strNewNode)
	case "newalias":
		return s.stringField(strNewAlias)
	case "gid":
		return s.stringField(strGid)
	case "act":
		return s.stringField(strAct)
	case "from":
		return s.stringField(strFrom)
	case "to":
		return s.stringField(strTo)
	case "oidc":
		return s.stringField(strOidc)
	case "dropalias":
		return s.stringField(strDropAlias)
	case "block":
		return s.stringField(strBlock)
	case "unblock":
		return s.stringField(strUnblock)
	case "listblock":
		return s.flagValue(&s.h.ListBlock)
	case "listnode":
		return s.flagValue(&s.h.ListNode)
	case "dropnode":
		return s.stringField(strDropNode)
	case "post":
		return s.flagValue(&s.h.Post)
	case "ext":
		return s.anyValue(&s.h.Ext)
	case "once":
		return s.flagValue(&s.h.Once)
	case "listonce":
		return s.flagValue(&s.h.ListOnce)
	}
	return s.skip(1)
}

// stringField decodes the string field f.
func (s *headerScanner) stringField(f int) bool {
	return s.stringValue(&s.strs[f]) && s.mark(f)
}

// mark records whether the string field f is empty, once read.
func (s *headerScanner) mark(f int) bool {
	if t := s.strs[f]; t.end > t.off {
		s.set |= 1 << f
	} else {
		s.set &^= 1 << f
	}
	return true
}

// list decodes a for or notefor list: null, or an array of recipients.
func (s *headerScanner) list(l *listSpan) bool {
	if l.seen {
		return false
	}
	l.seen = true
	if s.null() {
		return true
	}
	if !s.consume('[') {
		return false
	}
	l.set = true
	l.start = s.nRecs
	s.space()
	if !s.consume(']') {
		for {
			s.space()
			var r recipientSpan
			// A null element is a zero Recipient, as in encoding/json.
			if !s.null() && !s.recipient(&r) {
				return false
			}
			s.addRecipient(r)
			s.space()
			if s.consume(']') {
				break
			}
			if !s.consume(',') {
				return false
			}
		}
	}
	l.end = s.nRecs
	return true
}

// addRecipient appends r to the recipients of both lists.
func (s *headerScanner) addRecipient(r recipientSpan) {
	if s.recHeap == nil && s.nRecs < len(s.recBuf) {
		s.recBuf[s.nRecs] = r
	} else {
		if s.recHeap == nil {
			s.recHeap = make([]recipientSpan, 0, 4*len(s.recBuf))
			s.recHeap = append(s.recHeap, s.recBuf[:s.nRecs]...)
		}
		s.recHeap = append(s.recHeap, r)
	}
	s.nRecs++
}

// recipients returns the recipients of both lists, once the scan is over.
func (s *headerScanner) recipients() []recipientSpan {
	if s.recHeap != nil {
		return s.recHeap
	}
	return s.recBuf[:s.nRecs]
}

// recipient decodes one element of a list, an object.
func (s *headerScanner) recipient(r *recipientSpan) bool {
	return s.object(func(k jsonLit) bool {
		if k.escaped || k.nonASCII {
			return false
		}
		switch key := s.b[k.start:k.end]; {
		case asciiEqualFold(key, "id"):
			return s.stringValue(&r.id)
		case asciiEqualFold(key, "type"):
			return s.intValue(&r.typ)
		}
		return s.skip(1)
	})
}

// asciiEqualFold reports whether b is the lower-case ASCII name in any case.
func asciiEqualFold(b []byte, name string) bool {
	if len(b) != len(name) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// object reads an object, calling member with each key once the input is at
// its value; member reads the value.
func (s *headerScanner) object(member func(key jsonLit) bool) bool {
	if !s.consume('{') {
		return false
	}
	s.space()
	if s.consume('}') {
		return true
	}
	for {
		s.space()
		k, ok := s.str()
		if !ok {
			return false
		}
		s.space()
		if !s.consume(':') {
			return false
		}
		s.space()
		if !member(k) {
			return false
		}
		s.space()
		if s.consume('}') {
			return true
		}
		if !s.consume(',') {
			return false
		}
	}
}

// skip reads a value of any type that an unknown key holds. An array or an
// object in it counts as depth; one beyond maxScanDepth is declined.
func (s *headerScanner) skip(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case (c == '{' || c == '[') && depth > maxScanDepth:
		return false
	case c == '{':
		return s.object(func(jsonLit) bool { return s.skip(depth + 1) })
	case c == '[':
		s.i++
		s.space()
		if s.consume(']') {
			return true
		}
		for {
			s.space()
			if !s.skip(depth + 1) {
				return false
			}
			s.space()
			if s.consume(']') {
				return true
			}
			if !s.consume(',') {
				return false
			}
		}
	case c == '"':
		_, ok := s.str()
		return ok
	case c == 't':
		return s.word("true")
	case c == 'f':
		return s.word("false")
	case c == 'n':
		return s.null()
	}
	return s.number()
}

// stringValue decodes a string into t; null leaves t as it is.
func (s *headerScanner) stringValue(t *textSpan) bool {
	if s.null() {
		return true
	}
	k, ok := s.str()
	if !ok {
		return false
	}
	return s.keep(k, t)
}

// keep points t at the string k.
func (s *headerScanner) keep(k jsonLit, t *textSpan) bool {
	if !k.escaped && (!k.nonASCII || utf8.Valid(s.b[k.start:k.end])) {
		*t = textSpan{off: int32(k.start), end: int32(k.end)}
		return true
	}
	// Escapes, and invalid UTF-8 which encoding/json replaces with U+FFFD:
	// rare enough to let encoding/json unquote the literal.
	var v string
	if json.Unmarshal(s.b[k.start-1:k.end+1], &v) != nil {
		return false
	}
	off := len(s.b) + len(s.decoded)
	s.decoded = append(s.decoded, v...)
	*t = textSpan{off: int32(off), end: int32(off + len(v))}
	return true
}

// flexValue decodes Type like flexText: a string, or a number kept as its
// JSON text; null leaves t as it is.
func (s *headerScanner) flexValue(t *textSpan) bool {
	if s.null() {
		return true
	}
	if s.i < len(s.b) && s.b[s.i] == '"' {
		return s.stringValue(t)
	}
	start := s.i
	if !s.number() {
		return false
	}
	*t = textSpan{off: int32(start), end: int32(s.i)}
	return true
}

// boolValue decodes true or false into v; null leaves v as it is.
func (s *headerScanner) boolValue(v *bool) bool {
	switch {
	case s.null():
	case s.word("true"):
		*v = true
	case s.word("false"):
		*v = false
	default:
		return false
	}
	return true
}

// anyValue reads any value into v as anyValue does: set by all but null.
func (s *headerScanner) anyValue(v *bool) bool {
	if s.null() {
		return true
	}
	*v = true
	return s.skip(1)
}

// flagValue decodes a flag into v: 1 or true set it, 0 or false clear it,
// null leaves it. Anything else, valid or not, is left to encoding/json,
// which refuses it (or, for 1.0 or 1e0, the caller does not see the comma
// or brace it expects after the 1 and gives up).
func (s *headerScanner) flagValue(v *bool) bool {
	switch {
	case s.null():
	case s.word("true"), s.word("1"):
		*v = true
	case s.word("false"), s.word("0"):
		*v = false
	default:
		return false
	}
	return true
}

// intValue decodes an int into v; null leaves v as it is.
func (s *headerScanner) intValue(v *int) bool {
	if s.null() {
		return true
	}
	n, ok := s.integer(strconv.IntSize)
	if ok {
		*v = int(n)
	}
	return ok
}

// int64Value decodes an int64 into v; null leaves v as it is.
func (s *headerScanner) int64Value(v *int64) bool {
	if s.null() {
		return true
	}
	n, ok := s.integer(64)
	if ok {
		*v = n
	}
	return ok
}

// uint64Value decodes a uint64 into v; null leaves v as it is.
func (s *headerScanner) uint64Value(v *uint64) bool {
	if s.null() {
		return true
	}
	// encoding/json refuses a minus sign on an unsigned field, even on 0.
	neg, mag, ok := s.digits()
	if !ok || neg {
		return false
	}
	*v = mag
	return true
}

// integer reads a signed integer that fits in size bits.
func (s *headerScanner) integer(size int) (int64, bool) {
	neg, mag, ok := s.digits()
	limit := uint64(1) << (size - 1) // the magnitude of the most negative
	switch {
	case !ok:
		return 0, false
	case neg:
		// -mag wraps to the right two's complement value, also for -limit.
		return int64(-mag), mag <= limit
	}
	return int64(mag), mag < limit
}

// digits reads an integer as JSON writes it: an optional minus sign and
// digits without a leading zero, of a magnitude that fits in 64 bits. A
// fraction or an exponent is left unread, so that the caller, expecting a
// comma or a closing brace, fails on it: encoding/json refuses them for an
// integer field.
func (s *headerScanner) digits() (neg bool, mag uint64, ok bool) {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		neg = true
		i++
	}
	start := i
	for ; i < len(b) && '0' <= b[i] && b[i] <= '9'; i++ {
		d := uint64(b[i] - '0')
		if mag > (math.MaxUint64-d)/10 {
			return false, 0, false
		}
		mag = mag*10 + d
	}
	if i == start || b[start] == '0' && i-start > 1 {
		return false, 0, false
	}
	s.i = i
	return neg, mag, true
}

// number reads any JSON number.
func (s *headerScanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return false
		}
		i = j
	}
	s.i = i
	return true
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// plainStringByte tells the octets that stand for themselves in a JSON
// string and need no further look: printable ASCII but the quote and the
// backslash. It is a table because str's loop over the octets is the
// scanner's hottest; it is never written after initialization.
var plainStringByte = func() (t [256]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str reads a string literal, checking its escapes.
func (s *headerScanner) str() (jsonLit, bool) {
	b := s.b
	if !s.consume('"') {
		return jsonLit{}, false
	}
	k := jsonLit{start: s.i}
	for i := s.i; i < len(b); i++ {
		c := b[i]
		if plainStringByte[c] {
			continue // the usual case, first
		}
		switch {
		case c == '"':
			k.end = i
			s.i = i + 1
			return k, true
		case c < ' ':
			return jsonLit{}, false
		case c >= utf8.RuneSelf:
			k.nonASCII = true
		case c == '\\':
			k.escaped = true
			i++
			if i >= len(b) {
				return jsonLit{}, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) ||
					!isHex(b[i+3]) || !isHex(b[i+4]) {
					return jsonLit{}, false
				}
				i += 4
			default:
				return jsonLit{}, false
			}
		}
	}
	return jsonLit{}, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// null reads null if it is next.
func (s *headerScanner) null() bool {
	return s.i < len(s.b) && s.b[s.i] == 'n' && s.word("null")
}

// word reads w if it is next.
func (s *headerScanner) word(w string) bool {
	if len(s.b)-s.i < len(w) || string(s.b[s.i:s.i+len(w)]) != w {
		return false
	}
	s.i += len(w)
	return true
}

// consume reads c if it is next.
func (s *headerScanner) consume(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// space skips JSON white space.
func (s *headerScanner) space() {
	if s.i < len(s.b) && s.b[s.i] > ' ' {
		return // none, the usual case
	}
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

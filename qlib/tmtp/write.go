package tmtp

import (
	"encoding/json"
	"hash/crc32"
	"strconv"
	"unicode/utf8"
)

// A Field is one key and value of a server header. Build them with String,
// Int, Uint, Bool, Strings, Raw and OhiEditFor.
type Field struct {
	key  string
	kind fieldKind
	str  string
	num  uint64 // Int's value as two's complement, Uint's, or Bool's 0/1
	strs []string
	raw  []byte
	recs []Recipient
}

type fieldKind uint8

const (
	kindString fieldKind = iota
	kindInt
	kindUint
	kindBool
	kindStrings
	kindRaw
	kindOhiFor
)

// String is a string field.
func String(key, v string) Field { return Field{key: key, kind: kindString, str: v} }

// Int is an integer field.
func Int(key string, v int64) Field { return Field{key: key, kind: kindInt, num: uint64(v)} }

// Uint is an unsigned integer field.
func Uint(key string, v uint64) Field { return Field{key: key, kind: kindUint, num: v} }

// Bool is a boolean field.
func Bool(key string, v bool) Field {
	f := Field{key: key, kind: kindBool}
	if v {
		f.num = 1
	}
	return f
}

// Strings is a list of strings; nil is written as null, as json.Marshal does.
func Strings(key string, v []string) Field { return Field{key: key, kind: kindStrings, strs: v} }

// Raw is an already-encoded JSON value, written as is. It must be compact
// valid JSON for the frame to be.
func Raw(key string, v []byte) Field { return Field{key: key, kind: kindRaw, raw: v} }

// OhiEditFor is the for list of a stored ohiedit message, written as the
// deployed server writes it (SPEC §1): [{"Id":"<uid>","Type":0}], the one
// exception to lower-case keys.
func OhiEditFor(v []Recipient) Field { return Field{key: "for", kind: kindOhiFor, recs: v} }

// sortOnStack is how many fields AppendFrame sorts without allocating; a
// stored message has about ten.
const sortOnStack = 32

// headsumKey is the key AppendStored adds.
const headsumKey = "headsum"

// AppendFrame appends a frame made of fields to dst: the prefix (4 lowercase
// hex digits of the header length) and the header, compact JSON with the
// fields in key order and strings escaped as encoding/json escapes them, so
// that the header is byte for byte what json.Marshal of a map[string]any of
// the same values produces. Fields may be given in any order.
//
// Keys must be unique; a duplicate key is a programming error and panics.
//
// A header longer than MaxHeaderLen cannot be framed: AppendFrame then
// appends nothing and returns dst unchanged. Callers whose fields are not
// bounded by construction (a list or a value echoed from a request) detect it
// by len(result) == len(dst), since a frame is never empty.
func AppendFrame(dst []byte, fields ...Field) []byte {
	start := len(dst)
	dst = append(dst, "0000"...)
	dst, _, _ = appendObject(dst, fields)
	return putPrefix(dst, start)
}

// AppendStored is AppendFrame for a stored message: it adds headsum, the
// CRC-32C (Castagnoli) of the frame as it would be without headsum (the
// prefix and the compact sorted JSON without the headsum key), SPEC §1.
// Fields must not include headsum: like a duplicate key, that panics.
func AppendStored(dst []byte, fields ...Field) []byte {
	for i := range fields {
		if fields[i].key == headsumKey {
			panic("tmtp: AppendStored given a headsum field")
		}
	}
	start := len(dst)
	dst = append(dst, "0000"...)
	dst, at, between := appendObject(dst, fields)
	dst = putPrefix(dst, start)
	if len(dst) == start {
		return dst
	}
	sum := crc32.Checksum(dst[start:], castagnoli)

	// Insert the headsum member where the sort puts it: before the first key
	// after "headsum", or last.
	var ins [32]byte
	m := ins[:0]
	if !between && len(fields) > 0 {
		m = append(m, ',')
	}
	m = append(m, `"headsum":`...)
	m = strconv.AppendUint(m, uint64(sum), 10)
	if between {
		m = append(m, ',')
	}
	end := len(dst)
	dst = append(dst, m...)
	copy(dst[at+len(m):], dst[at:end])
	copy(dst[at:], m)
	return putPrefix(dst, start)
}

// castagnoli is the CRC-32C table of headsum; read-only after init.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// putPrefix writes the header length into the 4 bytes at dst[start:], or
// drops the frame when the header is too long to frame.
func putPrefix(dst []byte, start int) []byte {
	n := len(dst) - start - prefixLen
	if n > MaxHeaderLen {
		return dst[:start]
	}
	const hex = "0123456789abcdef"
	p := dst[start : start+prefixLen]
	p[0], p[1], p[2], p[3] = hex[n>>12], hex[n>>8&0xf], hex[n>>4&0xf], hex[n&0xf]
	return dst
}

// appendObject appends fields as a JSON object in key order. It also returns
// where a headsum member belongs: at, and whether that is between two members
// (before the first key after "headsum") rather than at the end (the closing
// brace).
func appendObject(dst []byte, fields []Field) (_ []byte, at int, between bool) {
	var onStack [sortOnStack]int
	order := onStack[:0]
	if len(fields) > sortOnStack {
		order = make([]int, 0, len(fields))
	}
	for i := range fields {
		order = append(order, i)
	}
	// Insertion sort: there are few fields, often nearly in order already.
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && fields[order[j]].key < fields[order[j-1]].key; j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	dst = append(dst, '{')
	at = -1
	for i, k := range order {
		f := &fields[k]
		if i > 0 {
			if f.key == fields[order[i-1]].key {
				panic("tmtp: duplicate header key " + strconv.Quote(f.key))
			}
			dst = append(dst, ',')
		}
		if at < 0 && f.key > headsumKey {
			at, between = len(dst), true
		}
		dst = appendString(dst, f.key)
		dst = append(dst, ':')
		dst = f.appendValue(dst)
	}
	if at < 0 {
		at = len(dst)
	}
	return append(dst, '}'), at, between
}

func (f *Field) appendValue(dst []byte) []byte {
	switch f.kind {
	case kindString:
		return appendString(dst, f.str)
	case kindInt:
		return strconv.AppendInt(dst, int64(f.num), 10)
	case kindUint:
		return strconv.AppendUint(dst, f.num, 10)
	case kindBool:
		return strconv.AppendBool(dst, f.num != 0)
	case kindStrings:
		if f.strs == nil {
			return append(dst, "null"...)
		}
		dst = append(dst, '[')
		for i, s := range f.strs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, s)
		}
		return append(dst, ']')
	case kindRaw:
		return append(dst, f.raw...)
	case kindOhiFor:
		dst = append(dst, '[')
		for i, r := range f.recs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"Id":`...)
			dst = appendString(dst, r.ID)
			dst = append(dst, `,"Type":`...)
			dst = strconv.AppendInt(dst, int64(r.Type), 10)
			dst = append(dst, '}')
		}
		return append(dst, ']')
	}
	return dst
}

// htmlSafe marks the ASCII bytes that encoding/json writes unescaped (with
// HTML escaping on, as json.Marshal has it); read-only after init.
var htmlSafe = func() (t [utf8.RuneSelf]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendString appends s as a JSON string, escaped exactly as encoding/json
// does: \" \\ \b \f \n \r \t, other control characters and <, >, & as
// \u00XX, U+2028 and U+2029 as \u2028 and \u2029, and each byte of invalid
// UTF-8 as \ufffd.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if htmlSafe[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Quit returns the frame {"error":reason,"op":"quit"}.
func Quit(reason string) []byte {
	return AppendFrame(nil, String("error", reason), String("op", "quit"))
}

// VerifyHeadsum checks the headsum of a stored message's header (the JSON
// after the prefix), as a client does (SPEC §1): delete headsum, re-serialise
// sorted and compact, prefix the length, compute CRC-32C and compare. It is
// for tests and clients; it allocates freely. Keys must be valid UTF-8, as
// the server's are: decoding turns invalid UTF-8 into U+FFFD, which
// re-encodes differently.
func VerifyHeadsum(header []byte) bool {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(header, &m); err != nil {
		return false
	}
	hs, ok := m[headsumKey]
	if !ok {
		return false
	}
	want, err := strconv.ParseUint(string(hs), 10, 32)
	if err != nil {
		return false
	}
	delete(m, headsumKey)
	// Marshalling the map sorts its keys, compacts the raw values and
	// re-escapes the strings the way the server wrote them.
	body, err := json.Marshal(m)
	if err != nil || len(body) > MaxHeaderLen {
		return false
	}
	frame := make([]byte, prefixLen, prefixLen+len(body))
	frame = append(frame, body...)
	putPrefix(frame, 0)
	return crc32.Checksum(frame, castagnoli) == uint32(want)
}

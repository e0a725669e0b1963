package tmtp

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// parseHeaderJSON is ParseHeader without the fast path: what ParseHeader
// must return for every input.
func parseHeaderJSON(b []byte) (*Header, error) {
	if len(b) > MaxHeaderLen {
		return nil, badHeader("header over 65535 octets")
	}
	h, err := decodeHeader(b)
	if err != nil {
		return nil, err
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	return h, nil
}

// checkScan fails unless scanHeader either declines the input or decodes it
// exactly as encoding/json does, and ParseHeader returns what
// parseHeaderJSON does (the same Header, or an equal *ProtocolError). It
// reports whether the fast path took the input.
func checkScan(t *testing.T, in []byte) bool {
	t.Helper()
	fast, ok := scanHeader(in)
	if ok {
		ref, err := decodeHeader(in)
		if err != nil {
			t.Fatalf("%.200q: scanned %+v, encoding/json refuses it: %v", in, fast, err)
		}
		if !reflect.DeepEqual(fast, ref) {
			t.Fatalf("%.200q:\nscanned       %#v\nencoding/json %#v", in, fast, ref)
		}
	}
	got, err := ParseHeader(in)
	want, wantErr := parseHeaderJSON(in)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("%.200q: ParseHeader: %v, encoding/json path: %v", in, err, wantErr)
	}
	if err != nil {
		var pe, wantPE *ProtocolError
		if !errors.As(err, &pe) || !errors.As(wantErr, &wantPE) || *pe != *wantPE {
			t.Fatalf("%.200q: ParseHeader: %v, encoding/json path: %v", in, err, wantErr)
		}
		return ok
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%.200q:\nParseHeader   %#v\nencoding/json %#v", in, got, want)
	}
	return ok
}

// scanSeeds are headers that exercise the fast path and its edges: every
// shape it handles, and every reason it has to decline. They seed
// FuzzParseHeaderFast along with the headers of the other tests.
var scanSeeds = []string{
	// The extensions' fields: ext takes any value, once and listonce are
	// flags (a 1 followed by more of a number is left to encoding/json).
	`{"Op":0,"Id":"1","Ext":1}`,
	`{"Op":0,"Id":"1","Ext":{"a":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}}`,
	`{"Op":0,"Id":"1","Ext":null,"ext":tru}`,
	`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":1}`,
	`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":1e0}`,
	`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":10}`,
	`{"Op":3,"Id":"0","NewAlias":"sam walker","Once":true,"Once":0}`,
	`{"Op":3,"Id":"0","ListOnce":false,"listonce":1}`,
	`{"Op":3,"Id":"0","DropAlias":"sam walker"}`,
	`{"Op":3,"Id":"0","DropAlias":"s\u00e9m"}`,
	// The "block" extension's: two strings and a flag.
	`{"Op":3,"Id":"0","Block":"sam walker"}`,
	`{"Op":3,"Id":"0","Unblock":"s\u00e9m","unblock":"x"}`,
	`{"Op":3,"Id":"0","ListBlock":1}`,
	`{"Op":3,"Id":"0","ListBlock":true,"ListBlock":0}`,
	`{"Op":3,"Id":"0","ListBlock":10}`,
	`{"Op":3,"Id":"0","Block":7}`,
	// The "revoke" extension's: a flag and a string.
	`{"Op":3,"Id":"0","ListNode":1}`,
	`{"Op":3,"Id":"0","ListNode":true,"listnode":null}`,
	`{"Op":3,"Id":"0","DropNode":"3"}`,
	`{"Op":3,"Id":"0","DropNode":"\u0033","dropnode":"4"}`,
	`{"Op":3,"Id":"0","DropNode":3}`,
	// The "opengroup" extension's: the post flag.
	`{"Op":6,"Id":"0","Act":"open","Gid":"g","Post":1}`,
	`{"Op":6,"Id":"0","Act":"open","Gid":"g","Post":true,"post":null}`,
	`{"Op":6,"Id":"0","Act":"close","Gid":"g","Post":0}`,
	`{"Op":6,"Id":"0","Act":"open","Gid":"g","Post":"1"}`,
	// What clients send most: an ack, a post, in the deployed spelling.
	`{"Op":10,"Id":"18a2b3c4d5e6f708","Type":"n"}`,
	`{"Op":7,"Id":"zyx","Datalen":15,"Datahead":5,"Datasum":1,"For":[{"Id":"LB27ML46LB27ML46LB27ML46LB27ML46","Type":1}]}`,
	`{"Op":8,"Id":"id","Datalen":14,"Datahead":5,"Datasum":5,"For":[{"Id":"u1","Type":1}],"Fornotself":true,"Notelen":5,"Notehead":1,"Notesum":18446744073709551615,"Notefor":[{"Id":"g1","Type":2},{"Id":"g2","Type":3}]}`,
	`{"Op":1,"NewNode":"blue","NewAlias":"LongJohn Silver","Oidc":"tok"}`,
	`{"OP":7,"ID":"x","DATALEN":3,"dataHEAD":1,"FoR":[{"ID":"u","TYPE":1}]}`,
	// White space wherever JSON allows it.
	" \t\r\n{ \"op\" :\t10 ,\n\"id\"\r: \"x\" , \"type\" : \"n\" , \"for\" : [ { \"id\" : \"u\" , \"type\" : 1 } , null ] } \n",
	// Ack types as string, number and escapes (TestParseHeaderAckType).
	`{"op":10,"id":"m","type":1}`,
	`{"op":10,"id":"m","type":-2.5e3}`,
	`{"op":10,"id":"m","type":-0.5E+03}`,
	`{"op":10,"id":"m","type":0e-0}`,
	`{"op":10,"id":"m","type":"\u0041"}`,
	`{"op":10,"id":"m","type":"é"}`,
	`{"op":10,"id":"m","type":"a\"b"}`,
	`{"op":10,"id":"m","type":"é\u0041\n"}`,
	"{\"op\":10,\"id\":\"m\",\"type\":\"\xff\"}",
	`{"op":10,"id":"m","type":true}`,
	`{"op":10,"id":"m","type":{}}`,
	`{"op":10,"id":"m","type":[]}`,
	`{"op":10,"id":"m","type":null}`,
	`{"op":10,"id":"m","type":""}`,
	// Escapes, surrogates, invalid UTF-8 and U+FFFD in string values.
	`{"op":10,"id":"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00\ud800\u0041","type":"n"}`,
	"{\"op\":10,\"id\":\"\xed\xa0\x80\xc3\",\"type\":\"n\"}",
	"{\"op\":10,\"id\":\"\xef\xbf\xbd\u00e9\",\"type\":\"n\"}",
	`{"op":7,"id":"x","datalen":1,"for":[{"id":"\u00e9\u0000","type":1}]}`,
	// Keys that encoding/json unescapes or folds: declined. The long s
	// (U+017F) matches s and the Kelvin sign (U+212A) matches k.
	`{"\u006fp":11}`,
	`{"op":8,"id":"x","datalen":5,"notelen":2,"for":[],"fornotſelf":true}`,
	`{"op":11,"dataſum":3}`,
	`{"op":11,"\u212a":1}`,
	"{\"op\":11,\"x\xff\":1}",
	`{"op":7,"id":"x","datalen":1,"for":[{"\u0069d":"u","type":1}]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"ıd":"u","type":1}]}`,
	// Keys the same but for case and duplicates: the last one wins, null
	// leaves the field as it is.
	`{"op":10,"ID":"a","Id":"b","id":null,"type":"n","TYPE":null}`,
	`{"op":10,"id":"a","id":"","type":"n"}`,
	`{"op":7,"op":9,"op":null,"id":"x","from":"a","to":"b"}`,
	`{"op":8,"id":"x","datalen":5,"notelen":2,"for":[{"id":"u","type":1}],"fornotself":true,"fornotself":null,"fornotself":false}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"id":"a","id":"b","id":null,"type":1,"type":2,"type":null}]}`,
	// A second list key: encoding/json reuses the first list; declined.
	`{"op":7,"id":"x","datalen":1,"for":[{"id":"a","type":1},{"id":"b","type":2}],"for":[{"type":3}]}`,
	`{"op":7,"id":"x","datalen":1,"for":null,"for":[{"id":"a","type":1}]}`,
	`{"op":8,"id":"x","datalen":2,"notelen":1,"for":[],"notefor":[],"Notefor":null}`,
	// Lists: null, empty, null elements, unknown and nested keys in elements.
	`{"op":7,"id":"x","datalen":1,"for":null}`,
	`{"op":7,"id":"x","datalen":1,"for":[]}`,
	`{"op":7,"id":"x","datalen":1,"for":[null]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{}]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"id":"u","type":1,"x":[{"y":null}],"z":"\u0041"}]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"ID":"u","Type":1,"ix":2,"tipe":3,"types":4}]}`,
	`{"op":8,"id":"x","datalen":2,"notelen":1,"notefor":[{"id":"n","type":2}],"for":[{"id":"f","type":1}]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"id":"u","type":1},]}`,
	`{"op":7,"id":"x","datalen":1,"for":[,]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"id":"u","type":1}`,
	`{"op":7,"id":"x","datalen":1,"for":{"id":"u"}}`,
	`{"op":7,"id":"x","datalen":1,"for":[1]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"id":1}]}`,
	`{"op":7,"id":"x","datalen":1,"for":[{"type":"1"}]}`,
	`{"op":7,"id":"x","datalen":1,"for":"u"}`,
	// Integers: the forms encoding/json refuses for an integer field.
	`{"op":11.0}`,
	`{"op":1e1}`,
	`{"op":11,"datalen":-0}`,
	`{"op":11,"datasum":-0}`,
	`{"op":11,"datasum":-1}`,
	`{"op":7,"id":"x","for":[],"datalen":9223372036854775807,"datahead":-9223372036854775808}`,
	`{"op":11,"datalen":9223372036854775808}`,
	`{"op":11,"datalen":-9223372036854775809}`,
	`{"op":11,"datasum":18446744073709551616}`,
	`{"op":11,"datasum":99999999999999999999}`,
	`{"op":9223372036854775807}`,
	`{"op":-9223372036854775808}`,
	`{"op":01}`,
	`{"op":-}`,
	`{"op":-a}`,
	`{"op":+1}`,
	`{"op":"11"}`,
	`{"op":true}`,
	`{"op":[11]}`,
	`{"op":11,"fornotself":1}`,
	`{"op":11,"fornotself":"true"}`,
	`{"op":11,"fornotself":tru}`,
	`{"op":11,"id":nul}`,
	`{"op":11,"id":5}`,
	`{"op":11,"id":["x"]}`,
	// Unknown keys: skipped whatever their value, nested up to the depth
	// limit, declined deeper.
	`{"op":11,"x":[1,-1.5e+3,"s",true,false,null,{},[],{"a":{"b":[{"c":null}]}}]}`,
	`{"op":11,"fornotselfs":true,"":1,"a b":"c"}`,
	`{"op":11,"x":` + strings.Repeat("[", maxScanDepth) + strings.Repeat("]", maxScanDepth) + `}`,
	`{"op":11,"x":` + strings.Repeat("[", maxScanDepth+1) + strings.Repeat("]", maxScanDepth+1) + `}`,
	`{"op":11,"x":` + strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40) + `}`,
	`{"op":11,"x":1.}`,
	`{"op":11,"x":1.e1}`,
	`{"op":11,"x":1e}`,
	`{"op":11,"x":1e+}`,
	`{"op":11,"x":.5}`,
	`{"op":11,"x":-01}`,
	`{"op":11,"x":[1 2]}`,
	`{"op":11,"x":[1,]}`,
	`{"op":11,"x":{"a" 1}}`,
	`{"op":11,"x":{"a":1,}}`,
	`{"op":11,"x":{1:1}}`,
	`{"op":11,"x":"\x"}`,
	`{"op":11,"x":"\u12"}`,
	`{"op":11,"x":"\u12g4"}`,
	`{"op":11,"x":"\`,
	"{\"op\":11,\"x\":\"a\tb\"}",
	`{"op":11,"x":undefined}`,
	`{"op":11,"x":}`,
	`{"op":11,"x":`,
	`{"op":11,"x":"abc`,
	`{"op":11,"datalen":null,"datasum":null,"notelen":null,"notesum":null}`,
	// Not an object, or more than one; truncated; byte order mark.
	`null`, `[]`, `1`, `"op"`, ``, ` `, `{`, `{"op"`, `{"op":`, `{"op":11`, `{"op":11,`,
	`{"op":11}{}`, `{"op":11} x`, "\xef\xbb\xbf{\"op\":11}", "{\"op\":11}\x00",
	`{,"op":11}`, `{"op":11,,"id":"x"}`, `{"op" 11}`, `{op:11}`, `{'op':11}`,
	// Strings longer than maxSharedText, and more recipients than fit on
	// the stack: the fields get their own strings.
	`{"op":0,"id":"` + strings.Repeat("i", maxSharedText+1) + `"}`,
	`{"op":7,"id":"x","datalen":1,"for":[` + repeatList(`{"id":"LB27ML46LB27ML46LB27ML46LB27ML46","type":1}`, 20) + `]}`,
	`{"op":8,"id":"x","datalen":2,"notelen":1,"for":[` + repeatList(`{"id":"u","type":1}`, stackRecipients) +
		`],"notefor":[` + repeatList(`null`, 3) + `]}`,
}

// corpus returns every header the tests know: scanSeeds, those of the other
// tests, and the reference transcript's.
func corpus(tb testing.TB) []string {
	c := append([]string(nil), scanSeeds...)
	for op := range opCount {
		c = append(c, requiredCases[op].base)
	}
	for _, h := range invalidHeaders {
		c = append(c, h.in)
	}
	c = append(c, limitHeaders...)
	for _, f := range testStream {
		c = append(c, f.header)
	}
	return append(c, referenceHeaders(tb)...)
}

// referenceOp matches an op name in the reference transcript.
var referenceOp = regexp.MustCompile(`"eOp[A-Za-z]+"`)

// referenceHeaders returns the request headers of the reference transcript
// as it writes them (key order, spacing and case), op names replaced by their
// numbers, and the header part of its raw frames.
func referenceHeaders(tb testing.TB) []string {
	b, err := os.ReadFile(referenceTest)
	if errors.Is(err, os.ErrNotExist) && os.Getenv("MNM_REQUIRE_SHARED") != "1" {
		tb.Logf("%s absent: fuzzing without its headers; set MNM_REQUIRE_SHARED=1 to require it", referenceTest)
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	var steps []struct {
		Head json.RawMessage `json:"head"`
		Msg  *string         `json:"msg"`
	}
	if err := json.Unmarshal(b, &steps); err != nil {
		tb.Fatal(err)
	}
	var heads []string
	for _, s := range steps {
		if s.Head != nil {
			head := referenceOp.ReplaceAllFunc(s.Head, func(name []byte) []byte {
				return strconv.AppendInt(nil, int64(refOps[string(bytes.Trim(name, `"`))]), 10)
			})
			heads = append(heads, string(head))
		}
		if s.Msg != nil && len(*s.Msg) > prefixLen {
			heads = append(heads, (*s.Msg)[prefixLen:])
		}
	}
	if len(heads) < 38 {
		tb.Fatalf("read %d headers from %s, want at least 38", len(heads), referenceTest)
	}
	return heads
}

// TestScanHeaderCorpus runs the differential check over the whole corpus,
// so that plain go test covers it without -fuzz.
func TestScanHeaderCorpus(t *testing.T) {
	scanned := 0
	c := corpus(t)
	for _, in := range c {
		if checkScan(t, []byte(in)) {
			scanned++
		}
	}
	t.Logf("fast path took %d of %d headers", scanned, len(c))
}

// TestScanHeaderTakes checks that the shapes clients send take the fast path:
// a fast path that declined them all would pass the differential tests.
func TestScanHeaderTakes(t *testing.T) {
	takes := []string{
		`{"Op":10,"Id":"18a2b3c4d5e6f708","Type":"n"}`,
		`{"op":10,"id":"m","type":1}`,
		`{"op":10,"id":"é\u0041\n","type":"\ud83d\ude00"}`,
		"{\"op\":10,\"id\":\"\xff\",\"type\":\"n\"}",
		`{"Op":7,"Id":"zyx","Datalen":15,"Datahead":5,"Datasum":1,"For":[{"Id":"LB27ML46LB27ML46LB27ML46LB27ML46","Type":1}]}`,
		`{"op":7,"id":"x","datalen":1,"for":[null,{},{"id":"u","type":1,"x":[{"y":null}]}]}`,
		`{"op":11,"x":[1,-1.5e+3,"s",true,false,null,{},[],{"a":{"b":[{"c":null}]}}]}`,
		`{"op":10,"ID":"a","Id":"b","id":null,"type":"n","TYPE":null}`,
		`{"op":11,"datalen":-0,"datasum":0}`,
		// The limits of each integer type.
		`{"op":` + strconv.Itoa(math.MinInt) + `,"datalen":9223372036854775807,"datahead":-9223372036854775808,"datasum":18446744073709551615}`,
		`{"op":` + strconv.Itoa(math.MaxInt) + `,"notelen":-1,"fornotself":false,"notefor":[{"type":` + strconv.Itoa(math.MinInt) + `}]}`,
		`{"op":11,"x":` + strings.Repeat("[", maxScanDepth) + strings.Repeat("]", maxScanDepth) + `}`,
	}
	for op := range opCount {
		takes = append(takes, requiredCases[op].base)
	}
	for _, f := range testStream {
		takes = append(takes, f.header)
	}
	takes = append(takes, limitHeaders...)
	for _, in := range takes {
		if !checkScan(t, []byte(in)) {
			t.Errorf("%.80s: left to encoding/json", in)
		}
	}
}

// TestScanHeaderDeclines checks the shapes that scanHeader must leave to
// encoding/json, and what ParseHeader then makes of them.
func TestScanHeaderDeclines(t *testing.T) {
	cases := []struct {
		name, in string
		want     *Header // nil: refused with QuitHeader
	}{
		{"escaped key", `{"\u006fp":11}`, &Header{Op: OpPulse}},
		{"long s in key", `{"op":8,"id":"x","datalen":5,"notelen":2,"for":[{"id":"u","type":1}],"fornotſelf":true}`,
			&Header{Op: OpPostNotify, ID: "x", Datalen: 5, Notelen: 2, For: []Recipient{{"u", 1}}, Fornotself: true}},
		{"Kelvin sign in key", `{"op":11,"\u212a":1}`, &Header{Op: OpPulse}},
		{"escaped key in element", `{"op":7,"id":"x","datalen":1,"for":[{"\u0069d":"u","type":1}]}`,
			&Header{Op: OpPost, ID: "x", Datalen: 1, For: []Recipient{{"u", 1}}}},
		// encoding/json decodes a second list into the first one's array,
		// element by element.
		{"second for", `{"op":7,"id":"x","datalen":1,"for":[{"id":"a","type":1},{"id":"b","type":2}],"for":[{"type":3}]}`,
			&Header{Op: OpPost, ID: "x", Datalen: 1, For: []Recipient{{"a", 3}}}},
		{"fraction", `{"op":11.0}`, nil},
		{"exponent", `{"op":1e1}`, nil},
		{"unsigned -0", `{"op":11,"datasum":-0}`, nil},
		{"overflow", `{"op":11,"datalen":9223372036854775808}`, nil},
		{"wrong type", `{"op":11,"id":5}`, nil},
		{"wrong element", `{"op":7,"id":"x","datalen":1,"for":[1]}`, nil},
		{"trailing data", `{"op":11}{}`, nil},
		{"not an object", `null`, nil},
		{"too deep", `{"op":11,"x":` + strings.Repeat("[", maxScanDepth+1) + strings.Repeat("]", maxScanDepth+1) + `}`,
			&Header{Op: OpPulse}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if checkScan(t, []byte(c.in)) {
				t.Errorf("%s: scanned", c.name)
			}
			h, err := ParseHeader([]byte(c.in))
			if c.want == nil {
				wantReason(t, c.name, err, QuitHeader)
				return
			}
			if err != nil || !reflect.DeepEqual(h, c.want) {
				t.Errorf("%s: got %+v, %v; want %+v", c.name, h, err, c.want)
			}
		})
	}
}

// TestScanHeaderStrings checks who owns the strings of a scanned header: a
// small header's strings share one allocation; a large one's do not, so that
// a field kept for long does not keep the rest alive.
func TestScanHeaderStrings(t *testing.T) {
	in := []byte(`{"op":7,"id":"x","datalen":1,"for":[{"id":"u","type":1}]}`)
	h, ok := scanHeader(in)
	if !ok {
		t.Fatal("declined")
	}
	in[14] = 'y' // the id: the header must not alias the input
	if h.ID != "x" || h.For[0].ID != "u" {
		t.Errorf("strings alias the input: %+v", h)
	}
	if !adjacent(h.ID, h.For[0].ID) {
		t.Error("small header: strings not shared")
	}

	big := strings.Repeat("b", maxSharedText)
	h, ok = scanHeader([]byte(`{"op":7,"id":"xyz","datalen":1,"for":[{"id":"` + big + `","type":1}]}`))
	if !ok {
		t.Fatal("declined")
	}
	if h.ID != "xyz" || h.For[0].ID != big {
		t.Fatalf("got %+v", h)
	}
	if adjacent(h.ID, h.For[0].ID) {
		t.Error("large header: strings shared")
	}
}

// adjacent reports whether b's bytes follow a's in memory, as in the string
// that a small header's fields share.
func adjacent(a, b string) bool {
	return uintptr(unsafe.Pointer(unsafe.StringData(a)))+uintptr(len(a)) ==
		uintptr(unsafe.Pointer(unsafe.StringData(b)))
}

// maxFuzzSeed is the longest corpus header that seeds FuzzParseHeaderFast:
// long enough for the seeds of more than maxSharedText octets of strings and
// more than stackRecipients recipients.
const maxFuzzSeed = 2048

// FuzzParseHeaderFast is the differential test of the fast path: for any
// bytes, scanHeader declines or decodes exactly what encoding/json decodes,
// and ParseHeader returns what the encoding/json path alone returns.
func FuzzParseHeaderFast(f *testing.F) {
	for _, in := range corpus(f) {
		// The corpus's headers of tens of KiB would slow the fuzzer down
		// (it mutates and minimizes them); TestScanHeaderCorpus runs them.
		if len(in) <= maxFuzzSeed {
			f.Add([]byte(in))
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkScan(t, in)
	})
}

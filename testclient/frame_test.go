package testclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// parseAll reads every frame of b with a frameReader fed by r(b).
func parseAll(b []byte, wrap func(io.Reader) io.Reader) ([]*Frame, error) {
	fr := frameReader{r: wrap(bytes.NewReader(b))}
	var out []*Frame
	for {
		f, err := fr.next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, f)
	}
}

func frame(header, data string) string { return fmt.Sprintf("%04x%s%s", len(header), header, data) }

func TestReadFrames(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 3*initialDataCap/16+5) // grows the buffer twice
	in := frame(`{"op":"info"}`, "") +
		frame(`{"datalen":5,"op":"delivery"}`, "hello") +
		"000D" + `{"op":"ping"}` + // upper-case hex is accepted from a server
		frame(fmt.Sprintf(`{"datalen":%d,"op":"delivery"}`, len(big)), big) +
		frame(`{"datalen":0,"op":"x"}`, "")
	wraps := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
	}
	for name, wrap := range wraps {
		t.Run(name, func(t *testing.T) {
			fs, err := parseAll([]byte(in), wrap)
			if err != nil {
				t.Fatal(err)
			}
			if len(fs) != 5 {
				t.Fatalf("got %d frames, want 5", len(fs))
			}
			wantOps := []string{"info", "delivery", "ping", "delivery", "x"}
			wantData := []string{"", "hello", "", big, ""}
			for i, f := range fs {
				if f.Op() != wantOps[i] || string(f.Data) != wantData[i] {
					t.Errorf("frame %d: op %q, %d octets; want %q, %d", i, f.Op(), len(f.Data), wantOps[i], len(wantData[i]))
				}
			}
			if fs[0].Data != nil || fs[4].Data != nil {
				t.Error("Data not nil without data")
			}
		})
	}
}

func TestReadFrameErrors(t *testing.T) {
	tests := []struct {
		name, in string
		want     error
	}{
		{"not hex", "00z1" + `{"Op":3, "Uid":"noone"}`, ErrHeaderLength},
		{"below 8", "0007" + `{"op":1`, ErrHeaderLength},
		{"bad json", "000a" + `{"Op":12f3`, ErrHeader}, // reference-test.json's case
		{"null", frame(`null      `, ""), ErrHeader},
		{"array", frame(`[1,2,3,4]`, ""), ErrHeader},
		{"string", frame(`"abcdefgh"`, ""), ErrHeader},
		{"trailing", frame(`{"op":1}x`, ""), ErrHeader},
		{"two objects", frame(`{"op":1}{"op":2}`, ""), ErrHeader},
		{"negative datalen", frame(`{"datalen":-1}`, ""), ErrHeader},
		{"fractional datalen", frame(`{"datalen":1.5}`, "xx"), ErrHeader},
		{"string datalen", frame(`{"datalen":"1"}`, "x"), ErrHeader},
		{"huge datalen", frame(`{"datalen":99999999999999999999}`, ""), ErrHeader},
		{"datalen over limit", frame(fmt.Sprintf(`{"datalen":%d}`, MaxDataLen+1), ""), ErrHeader},
		{"eof in prefix", "00", io.ErrUnexpectedEOF},
		{"eof in header", "0010{\"op\":", io.ErrUnexpectedEOF},
		{"eof in data", frame(`{"datalen":10}`, "12345"), io.ErrUnexpectedEOF},
		{"huge datalen, little data", frame(fmt.Sprintf(`{"datalen":%d}`, MaxDataLen), "12345"), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := frameReader{r: strings.NewReader(tt.in)}
			f, err := fr.next()
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, %v; want %v", f, err, tt.want)
			}
			if _, again := fr.next(); again != err {
				t.Errorf("error not sticky: then %v", again)
			}
		})
	}
}

// handHeadsum is a stored message header whose headsum was computed by hand:
// CRC-32C (bitwise, polynomial 0x82F63B78 reflected) of
// "0074" + handHeader, the header without its headsum key (116 octets).
const (
	handHeader  = `{"datalen":0,"from":"u100002","id":"0000000000000001","node":"tbd","op":"login","posted":"2026-11-30T01:45:24.979Z"}`
	handHeadsum = 1621127423
	handFrame   = `{"datalen":0,"from":"u100002","headsum":1621127423,"id":"0000000000000001","node":"tbd","op":"login","posted":"2026-11-30T01:45:24.979Z"}`
)

// bitwiseCRC32C is the textbook CRC-32C, to check the constant above without
// the package's table-driven code.
func bitwiseCRC32C(b []byte) uint32 {
	c := ^uint32(0)
	for _, x := range b {
		c ^= uint32(x)
		for range 8 {
			if c&1 != 0 {
				c = c>>1 ^ 0x82F63B78
			} else {
				c >>= 1
			}
		}
	}
	return ^c
}

func parseOne(t *testing.T, header, data string) *Frame {
	t.Helper()
	fs, err := parseAll([]byte(frame(header, data)), func(r io.Reader) io.Reader { return r })
	if err != nil || len(fs) != 1 {
		t.Fatalf("parse %s: %v, %d frames", header, err, len(fs))
	}
	return fs[0]
}

func TestHeadsum(t *testing.T) {
	if len(handHeader) != 0x74 {
		t.Fatalf("hand header is %d octets", len(handHeader))
	}
	if got := bitwiseCRC32C([]byte("0074" + handHeader)); got != handHeadsum {
		t.Fatalf("hand headsum %d, bitwise CRC says %d", handHeadsum, got)
	}
	f := parseOne(t, handFrame, "")
	if !f.HeadsumOK() {
		t.Error("HeadsumOK false for a correct frame")
	}
	if sum, err := Headsum(f.Head); err != nil || sum != handHeadsum {
		t.Errorf("Headsum = %d, %v", sum, err)
	}
	if err := CheckFrame(f); err != nil {
		t.Error(err)
	}
	tampered := map[string]string{
		"value changed":   strings.Replace(handFrame, "u100002", "u100003", 1),
		"key added":       strings.Replace(handFrame, `"op":"login"`, `"op":"login","x":1`, 1),
		"headsum float":   strings.Replace(handFrame, "1621127423", "1621127423.0", 1),
		"headsum changed": strings.Replace(handFrame, "1621127423", "1621127424", 1),
		"headsum string":  strings.Replace(handFrame, "1621127423", `"1621127423"`, 1),
		"headsum huge":    strings.Replace(handFrame, "1621127423", "5916094719", 1), // + 2^32
		"headsum missing": handHeader,
	}
	for name, h := range tampered {
		if parseOne(t, h, "").HeadsumOK() {
			t.Errorf("%s: HeadsumOK true", name)
		}
	}
}

// sign adds a correct headsum to a header, so that a test of another fault
// is not passed by the headsum check.
func sign(t *testing.T, header string) string {
	t.Helper()
	f := parseOne(t, header, "")
	sum, err := Headsum(f.Head)
	if err != nil {
		t.Fatal(err)
	}
	f.Head["headsum"] = json.Number(fmt.Sprint(sum))
	b, err := json.Marshal(f.Head)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCheckFrame(t *testing.T) {
	ok := map[string]string{
		"stored":     handFrame,
		"ack":        `{"id":"7","msgid":"0000000000000002","op":"ack","posted":"2026-11-30T01:45:24.000Z"}`,
		"ack error":  `{"error":"no such user","id":"7","op":"ack"}`,
		"quit":       `{"error":"logout ok","op":"quit"}`,
		"ohi":        `{"from":"u1","op":"ohi","status":1}`,
		"escaped":    `{"op":"info","x":"\u003c\u0026\u003e"}`,
		"nested for": `{"for":[{"Id":"u1","Type":0}],"op":"x"}`,
	}
	for name, h := range ok {
		if err := CheckFrame(parseOne(t, h, "")); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := []struct{ name, header, why string }{
		{"spaces", `{"op": "info"}`, "not compact"},
		{"unsorted", `{"op":"info","id":"1"}`, "not compact"},
		{"upper-case key", `{"Op":"info"}`, "not lower case"},
		{"duplicate key", `{"op":"info","op":"info"}`, "not compact"},
		{"html unescaped", `{"op":"info","x":"<&>"}`, "not compact"},
		{"no op", `{"info":"login ok"}`, "no op"},
		{"op not string", `{"op":1}`, "no op"},
		{"datahead > len", `{"datahead":5,"datalen":0,"op":"x"}`, "datahead beyond"},
		{"no headsum", handHeader, "wrong headsum"},
		{"no datalen", sign(t, `{"from":"u","id":"1","op":"x","posted":"2026-11-30T01:45:24.979Z"}`), "without datalen"},
		{"posted no ms", sign(t, strings.Replace(handHeader, "24.979Z", "24Z", 1)), "posted"},
		{"posted offset", sign(t, strings.Replace(handHeader, "24.979Z", "24.979+01:00", 1)), "posted"},
		{"ack without id", `{"op":"ack"}`, "ack without id"},
		{"msgid no posted", `{"id":"7","msgid":"1","op":"ack"}`, "posted"},
	}
	for _, b := range bad {
		err := CheckFrame(parseOne(t, b.header, ""))
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), b.why) {
			t.Errorf("%s: CheckFrame = %v, want %q", b.name, err, b.why)
		}
	}
	upper := parseOne(t, handFrame, "")
	copy(upper.prefix[:], "007A")
	if err := CheckFrame(upper); !errors.Is(err, ErrProtocol) {
		t.Errorf("upper-case hex: CheckFrame = %v", err)
	}
}

func TestFrameAccessors(t *testing.T) {
	f := parseOne(t, `{"big":12345678901,"id":"x","list":["a",1,"b"],"n":"7","node":"SECRET1","nodeid":"SECRET2","op":"registered","uid":"u"}`, "")
	if f.Op() != "registered" || f.Str("uid") != "u" || f.Str("big") != "" || f.Str("none") != "" {
		t.Error("Str")
	}
	if f.Int("big") != 12345678901 || f.Int("n") != 0 || f.Int("none") != 0 {
		t.Error("Int")
	}
	if got := f.Strings("list"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("Strings = %q", got)
	}
	if !f.Has("id") || f.Has("none") || f.Stored() {
		t.Error("Has/Stored")
	}
	if s := f.String(); strings.Contains(s, "SECRET") || !strings.Contains(s, `"uid":"u"`) {
		t.Errorf("String() = %s", s)
	}
	if !parseOne(t, handFrame, "").Stored() {
		t.Error("login notice not Stored")
	}
}

// FuzzReadFrame feeds arbitrary octets to the frame parser: it must return
// frames or errors, never panic, and every frame must carry exactly its
// datalen octets.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte(frame(handFrame, "")))                             // a login notice
	f.Add([]byte(frame(`{"datalen":5,"op":"delivery"}`, "hello")))  // with data
	f.Add([]byte(frame(`{"op":1}`, "") + frame(`{"op":2}`, "")))    // two frames
	f.Add([]byte("000a{\"Op\":12f3"))                               // bad JSON
	f.Add([]byte("00z1{}"))                                         // bad hex
	f.Add([]byte(frame(`{"datalen":-1}`, "")))                      // negative datalen
	f.Add([]byte(frame(`{"datalen":1073741824}`, "x")))             // promise of 1 GiB
	f.Add([]byte(frame(`{"datalen":1e3,"op":"x"}`, "")))            // exponent
	f.Add([]byte(frame(`{"a":{"b":[1,{"c":null}]},"op":"x"}`, ""))) // nesting
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, _ := parseAll(b, func(r io.Reader) io.Reader { return r })
		for _, fr := range fs {
			if int64(len(fr.Data)) != fr.Int("datalen") {
				t.Fatalf("%d data octets for datalen %d", len(fr.Data), fr.Int("datalen"))
			}
			CheckFrame(fr) // must not panic
			fr.HeadsumOK()
			_ = fr.String()
		}
	})
}

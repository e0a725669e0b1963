package tmtp

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// marshalFrame is the reference AppendFrame must match: json.Marshal of a map
// of the same values, prefixed with its length.
func marshalFrame(t testing.TB, m map[string]any) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%04x", len(b)) + string(b)
}

// fieldsOf converts a map to fields, choosing the constructor by type.
func fieldsOf(m map[string]any) []Field {
	var fs []Field
	for k, v := range m {
		switch v := v.(type) {
		case string:
			fs = append(fs, String(k, v))
		case int64:
			fs = append(fs, Int(k, v))
		case uint64:
			fs = append(fs, Uint(k, v))
		case bool:
			fs = append(fs, Bool(k, v))
		case []string:
			fs = append(fs, Strings(k, v))
		case json.RawMessage:
			fs = append(fs, Raw(k, v))
		default:
			panic(fmt.Sprintf("fieldsOf: %T", v))
		}
	}
	return fs
}

// nastyPieces are the pieces random strings are made of: everything
// encoding/json escapes, and neighbours that it does not.
var nastyPieces = []string{
	"a", "Z", " ", "~", "\x7f", `"`, `\`, "/", "<", ">", "&", "'",
	"\x00", "\x01", "\b", "\f", "\n", "\r", "\t", "\x1f",
	"é", "€", "\U0001F600", "\u2027", "\u2028", "\u2029", "\u202a", "\ufffd", "\ufeff",
	"\xff", "\xc0", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80",
}

func randString(rng *rand.Rand) string {
	var b strings.Builder
	for range rng.IntN(12) {
		b.WriteString(nastyPieces[rng.IntN(len(nastyPieces))])
	}
	return b.String()
}

func TestAppendFrameMatchesMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		m := map[string]any{}
		for range rng.IntN(15) {
			k := randString(rng)
			switch rng.IntN(7) {
			case 0, 1:
				m[k] = randString(rng)
			case 2:
				m[k] = int64(rng.Uint64())
			case 3:
				m[k] = rng.Uint64() >> rng.IntN(64)
			case 4:
				m[k] = rng.IntN(2) == 0
			case 5:
				var ss []string
				if rng.IntN(4) > 0 {
					ss = []string{}
					for range rng.IntN(4) {
						ss = append(ss, randString(rng))
					}
				}
				m[k] = ss
			case 6:
				b, _ := json.Marshal(randString(rng))
				m[k] = json.RawMessage(b)
			}
		}
		fs := fieldsOf(m)
		rng.Shuffle(len(fs), func(i, j int) { fs[i], fs[j] = fs[j], fs[i] })
		want := marshalFrame(t, m)
		if got := string(AppendFrame(nil, fs...)); got != want {
			t.Fatalf("case %d:\n got %q\nwant %q", i, got, want)
		}
	}
}

func TestAppendFrameAppends(t *testing.T) {
	dst := []byte("previous")
	got := AppendFrame(dst, Int("b", -1), Bool("a", false), Uint("c", 1<<64-1), Strings("d", nil), Strings("e", []string{}))
	const header = `{"a":false,"b":-1,"c":18446744073709551615,"d":null,"e":[]}`
	if want := "previous" + frame(header, ""); string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAppendFrameManyFields(t *testing.T) {
	// More fields than are sorted on the stack.
	m := map[string]any{}
	var fs []Field
	for i := range 3 * sortOnStack {
		k := fmt.Sprintf("k%03d", (i*37)%(3*sortOnStack))
		m[k] = int64(i)
		fs = append(fs, Int(k, int64(i)))
	}
	if got, want := string(AppendFrame(nil, fs...)), marshalFrame(t, m); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAppendFrameEmpty(t *testing.T) {
	if got := string(AppendFrame(nil)); got != "0002{}" {
		t.Errorf("got %q", got)
	}
}

func TestQuit(t *testing.T) {
	if got := string(Quit(QuitHeader)); got != `0026{"error":"invalid header","op":"quit"}` {
		t.Errorf("got %s", got)
	}
}

func TestOhiEditFor(t *testing.T) {
	got := string(AppendFrame(nil, String("op", "ohiedit"), OhiEditFor([]Recipient{{ID: "u1"}, {ID: "u<2>"}}), String("type", "add")))
	want := marshalFrame(t, map[string]any{
		"op": "ohiedit", "type": "add",
		"for": []map[string]any{{"Id": "u1", "Type": 0}, {"Id": "u<2>", "Type": 0}},
	})
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if !strings.Contains(got, `"for":[{"Id":"u1","Type":0},`) {
		t.Errorf("not the deployed form: %s", got)
	}
}

func TestAppendFrameDuplicateKey(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic on a duplicate key")
		}
	}()
	AppendFrame(nil, String("op", "a"), Int("x", 1), String("op", "b"))
}

func TestAppendStoredHeadsumField(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic on a headsum field")
		}
	}()
	AppendStored(nil, String("op", "a"), Uint("headsum", 1))
}

func TestAppendFrameTooLong(t *testing.T) {
	dst := []byte("keep")
	// {"x":"…"} is 8 octets plus the value.
	fits := strings.Repeat("v", MaxHeaderLen-8)
	got := AppendFrame(dst, String("x", fits))
	if len(got) != len(dst)+prefixLen+MaxHeaderLen || string(got[4:8]) != "ffff" {
		t.Errorf("longest header: %d octets, prefix %q", len(got)-len(dst), got[4:8])
	}
	got = AppendFrame(dst, String("x", fits+"v"))
	if string(got) != "keep" {
		t.Errorf("header over the limit: appended %d octets", len(got)-len(dst))
	}
	// Escaping makes a short value long.
	got = AppendFrame(dst, String("x", strings.Repeat("<", MaxHeaderLen/6+1)))
	if string(got) != "keep" {
		t.Errorf("escaped header over the limit: appended %d octets", len(got)-len(dst))
	}
	// AppendStored: within the limit without headsum, over it with it.
	got = AppendStored(dst, String("x", fits[:len(fits)-5]))
	if string(got) != "keep" {
		t.Errorf("stored header pushed over the limit by headsum: appended %d octets", len(got)-len(dst))
	}
	got = AppendStored(dst, String("x", fits+"v"))
	if string(got) != "keep" {
		t.Errorf("stored header over the limit: appended %d octets", len(got)-len(dst))
	}
}

// crc32c is a bitwise CRC-32C, independent of hash/crc32, to check headsum.
func crc32c(b []byte) uint32 {
	crc := ^uint32(0)
	for _, c := range b {
		crc ^= uint32(c)
		for range 8 {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0x82f63b78
			} else {
				crc >>= 1
			}
		}
	}
	return ^crc
}

func TestCRC32C(t *testing.T) {
	// The standard check value of CRC-32C.
	if got := crc32c([]byte("123456789")); got != 0xe3069283 {
		t.Fatalf("crc32c check value = %#x", got)
	}
}

func TestAppendStoredGolden(t *testing.T) {
	// Shapes of SPEC §4's login notice and delivery (the reference test's
	// steps); the sums were computed outside Go with a bitwise CRC-32C of the
	// frame without headsum.
	cases := []struct {
		fields []Field
		sum    uint32
		want   string
	}{{
		[]Field{
			String("op", "login"), String("node", "tbd"), Int("datalen", 0), String("from", "u100002"),
			String("id", "18a2b3c4d5e6f708"), String("posted", "2026-11-30T01:45:24.979Z"),
		},
		4048317244,
		`{"datalen":0,"from":"u100002","headsum":4048317244,"id":"18a2b3c4d5e6f708","node":"tbd","op":"login","posted":"2026-11-30T01:45:24.979Z"}`,
	}, {
		[]Field{
			String("op", "delivery"), Int("datalen", 15), Int("datahead", 5), Uint("datasum", 1), String("from", "u100002"),
			String("id", "18a2b3c4d5e6f709"), String("posted", "2026-11-30T01:45:24.980Z"),
		},
		2083947022,
		`{"datahead":5,"datalen":15,"datasum":1,"from":"u100002","headsum":2083947022,"id":"18a2b3c4d5e6f709","op":"delivery","posted":"2026-11-30T01:45:24.980Z"}`,
	}}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.sum), func(t *testing.T) {
			got := string(AppendStored(nil, c.fields...))
			if want := fmt.Sprintf("%04x", len(c.want)) + c.want; got != want {
				t.Errorf("got  %s\nwant %s", got, want)
			}
			if !VerifyHeadsum([]byte(got[4:])) {
				t.Errorf("VerifyHeadsum(%s) = false", got)
			}
		})
	}
}

func TestAppendStoredPositions(t *testing.T) {
	// headsum first, between, last and alone; keys that sort just around it.
	for _, keys := range [][]string{
		nil,
		{"a"},
		{"z"},
		{"headsuL", "headsum0"},
		{"from", "id"},
		{"a", "b", "c"},
		{"x", "y", "z"},
		{"Headsum", "HEADSUM"},
	} {
		m := map[string]any{}
		var fs []Field
		for i, k := range keys {
			m[k] = strconv.Itoa(i) + "<&>"
			fs = append(fs, String(k, m[k].(string)))
		}
		without := marshalFrame(t, m)
		m["headsum"] = uint64(crc32c([]byte(without)))
		want := marshalFrame(t, m)
		dst := []byte("x")
		got := AppendStored(dst, fs...)
		if string(got[1:]) != want {
			t.Errorf("keys %q:\n got %s\nwant %s", keys, got[1:], want)
		}
		if !VerifyHeadsum(got[5:]) {
			t.Errorf("keys %q: VerifyHeadsum false", keys)
		}
	}
}

func TestVerifyHeadsum(t *testing.T) {
	f := AppendStored(nil, String("from", "u1"), String("op", "ping"), Strings("l", []string{"a", "b"}),
		Raw("r", []byte(`{"k":[1,2]}`)), Uint("datasum", 1<<64-1))
	h := f[4:]
	if !VerifyHeadsum(h) {
		t.Fatalf("VerifyHeadsum(%s) = false", h)
	}
	// Any change of a value, or of the sum, is caught.
	for _, bad := range []string{
		strings.Replace(string(h), `"u1"`, `"u2"`, 1),
		strings.Replace(string(h), `"ping"`, `"pong"`, 1),
		strings.Replace(string(h), `18446744073709551615`, `18446744073709551614`, 1),
		strings.Replace(string(h), `"headsum":`, `"headsum":1`, 1),
		strings.Replace(string(h), `"headsum":`, `"headsum":-`, 1),
		strings.Replace(string(h), `"headsum":`, `"headsum":"`, 1),
		strings.Replace(string(h), `"headsum":`, `"xheadsum":`, 1),
		`{"headsum":99999999999}`,
		`not json`,
	} {
		if bad == string(h) {
			t.Fatalf("replacement did nothing in %s", h)
		}
		if VerifyHeadsum([]byte(bad)) {
			t.Errorf("VerifyHeadsum(%s) = true", bad)
		}
	}
}

func TestAppendAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	fs := deliveryFields()
	dst := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { AppendFrame(dst, fs...) }); n != 0 {
		t.Errorf("AppendFrame: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() { AppendStored(dst, fs...) }); n != 0 {
		t.Errorf("AppendStored: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		AppendStored(dst, String("op", "x"), String("from", "u"), String("id", "1"), Int("datalen", 0))
	}); n != 0 {
		t.Errorf("AppendStored with literal fields: %v allocations", n)
	}
}

// deliveryFields are a Post's stored delivery header.
func deliveryFields() []Field {
	return []Field{
		String("op", "delivery"), Int("datalen", 15), Int("datahead", 5), Uint("datasum", 1),
		String("from", "LB27ML46LB27ML46LB27ML46LB27ML46"), String("id", "18a2b3c4d5e6f709"),
		String("posted", "2026-11-30T01:45:24.980Z"),
	}
}

func BenchmarkAppendStored(b *testing.B) {
	fs := deliveryFields()
	dst := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendStored(dst[:0], fs...)
	}
}

func BenchmarkAppendFrame(b *testing.B) {
	fs := deliveryFields()
	dst := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendFrame(dst[:0], fs...)
	}
}

// FuzzAppendFrame checks AppendFrame against json.Marshal of a map for
// arbitrary keys and values, and AppendStored against VerifyHeadsum.
func FuzzAppendFrame(f *testing.F) {
	f.Add("op", "delivery", "from", "u100002", int64(15), uint64(1), true)                         // a delivery
	f.Add("error", "invalid header", "x", "", int64(0), uint64(0), false)                          // a quit
	f.Add("a<b>", "<script>&amp;", "c", "\u2028\u2029", int64(-1), uint64(1<<63), false)           // HTML and separators
	f.Add("ctl", "\x00\x01\b\f\n\r\t\x1f\x7f", "q", `"\`, int64(1<<62), uint64(0), true)           // control characters
	f.Add("bad", "\xff\xc0\xe2\x82", "\xed\xa0\x80", "é€😀", int64(-1<<63), uint64(1<<64-1), false) // invalid UTF-8
	f.Add("same", "v", "same", "w", int64(0), uint64(0), false)                                    // a duplicate key: skipped
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string, n int64, u uint64, b bool) {
		m := map[string]any{k1: v1, k2: v2, "n": n, "u": u, "b": b, "l": []string{v1, v2}}
		if len(m) != 6 {
			return // keys collide: not a valid set of fields
		}
		fs := []Field{String(k1, v1), String(k2, v2), Int("n", n), Uint("u", u), Bool("b", b), Strings("l", []string{v1, v2})}
		want := marshalFrame(t, m)
		got := AppendFrame(nil, fs...)
		if len(want)-prefixLen > MaxHeaderLen {
			if len(got) != 0 {
				t.Fatalf("header over the limit framed: %d octets", len(got))
			}
			return
		}
		if string(got) != want {
			t.Fatalf("\n got %q\nwant %q", got, want)
		}
		// A key holding invalid UTF-8 decodes to U+FFFD, which re-encodes
		// differently, so such a header cannot be verified; the server's
		// keys are ASCII.
		if _, hs := m["headsum"]; hs || !utf8.ValidString(k1) || !utf8.ValidString(k2) {
			return
		}
		stored := AppendStored(nil, fs...)
		if len(stored) == 0 {
			if len(got)+len(`,"headsum":4294967295`) <= prefixLen+MaxHeaderLen {
				t.Fatalf("stored frame dropped, %d octets without headsum", len(got))
			}
			return
		}
		if !VerifyHeadsum(stored[prefixLen:]) {
			t.Fatalf("VerifyHeadsum(%q) = false", stored)
		}
	})
}

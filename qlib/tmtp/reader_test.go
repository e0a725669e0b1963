package tmtp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// frame returns header prefixed with its length and followed by data.
func frame(header, data string) string {
	return fmt.Sprintf("%04x", len(header)) + header + data
}

// testFrame is a frame of the test stream and what reading it must give.
type testFrame struct {
	header, data string
}

// bigFor is a for list that makes a header longer than the small buffer.
var bigFor = "[" + repeatList(`{"Id":"LB27ML46LB27ML46LB27ML46LB27ML46","Type":1}`, 40) + "]"

// testStream covers every shape the reader meets: small and large headers,
// data that ends a read, zero-length data, pipelining.
var testStream = []testFrame{
	{`{"Op":0,"Id":"1"}`, ""},
	{`{"Op":2,"Uid":"u100002","Node":"LB27ML46"}`, ""},
	{`{"Op":7,"Id":"zyx","Datalen":15,"Datahead":5,"Datasum":1,"For":[{"Id":"u100003","Type":1}]}`, "data for Id:zyx"},
	{`{"Op":9,"Id":"123","Datalen":0,"From":"test1","To":"test2"}`, ""},
	{`{"Op":8,"Id":"id","Datalen":14,"Notelen":5,"For":[{"Id":"u100003","Type":1}],"Fornotself":true}`, "note.post data"},
	{`{"Op":10,"Id":"18a2b3c4d5e6f708","Type":"n"}`, ""},
	{`{"Op":7,"Id":"big","Datalen":600,"For":` + bigFor + `}`, strings.Repeat("0123456789", 60)},
	{`{"Op":11}`, ""},
	{`{"Op":9,"Id":"1","Datalen":1,"From":"test1","To":"test2"}`, "1"},
	{`{"Op":12}`, ""},
}

func streamBytes(fs []testFrame) []byte {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(frame(f.header, f.data))
	}
	return []byte(b.String())
}

// readStream reads frames until an error, returning what it read and the error.
func readStream(rd io.Reader) ([]testFrame, error) {
	r := NewReader(rd)
	var got []testFrame
	for {
		h, err := r.Next()
		if err != nil {
			return got, err
		}
		raw := string(r.RawHeader())
		data, err := io.ReadAll(r.Data(h.Datalen))
		if err != nil {
			return got, fmt.Errorf("data of %s: %w", raw, err)
		}
		got = append(got, testFrame{raw, string(data)})
	}
}

func checkStream(t *testing.T, name string, rd io.Reader) {
	t.Helper()
	got, err := readStream(rd)
	if err != io.EOF {
		t.Errorf("%s: final error %v, want io.EOF", name, err)
	}
	if len(got) != len(testStream) {
		t.Fatalf("%s: read %d frames, want %d", name, len(got), len(testStream))
	}
	for i := range got {
		if got[i] != testStream[i] {
			t.Errorf("%s: frame %d = %q, want %q", name, i, got[i], testStream[i])
		}
	}
}

func TestReaderStream(t *testing.T) {
	s := streamBytes(testStream)
	checkStream(t, "whole", bytes.NewReader(s))
	checkStream(t, "OneByteReader", iotest.OneByteReader(bytes.NewReader(s)))
	checkStream(t, "HalfReader", iotest.HalfReader(bytes.NewReader(s)))
	checkStream(t, "DataErrReader", iotest.DataErrReader(bytes.NewReader(s)))
	checkStream(t, "DataErrReader(OneByteReader)", iotest.DataErrReader(iotest.OneByteReader(bytes.NewReader(s))))
	checkStream(t, "DataErrReader(HalfReader)", iotest.DataErrReader(iotest.HalfReader(bytes.NewReader(s))))
}

func TestReaderSplitEverywhere(t *testing.T) {
	// Every boundary of the stream without its one large frame, whose 2 KiB
	// would make this quadratic test slow; that frame is split near its
	// edges and at a stride below.
	var small []testFrame
	for _, f := range testStream {
		if len(f.header) < smallBufSize {
			small = append(small, f)
		}
	}
	s := streamBytes(small)
	for i := range len(s) + 1 {
		// MultiReader returns the two parts from separate reads.
		got, err := readStream(io.MultiReader(bytes.NewReader(s[:i]), bytes.NewReader(s[i:])))
		if err != io.EOF || len(got) != len(small) {
			t.Fatalf("split at %d: %d frames, %v", i, len(got), err)
		}
		for j := range got {
			if got[j] != small[j] {
				t.Fatalf("split at %d: frame %d = %q, want %q", i, j, got[j], small[j])
			}
		}
	}
	s = streamBytes(testStream)
	var edges []int
	off := 0
	for _, f := range testStream {
		edges = append(edges, off, off+prefixLen, off+prefixLen+len(f.header))
		off += len(frame(f.header, f.data))
	}
	for i := range len(s) + 1 {
		near := false
		for _, e := range edges {
			near = near || i >= e-3 && i <= e+3
		}
		if near || i%7 == 0 {
			checkStream(t, fmt.Sprintf("split at %d", i),
				io.MultiReader(bytes.NewReader(s[:i]), bytes.NewReader(s[i:])))
		}
	}
}

// countingReader counts the reads of its underlying reader.
type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

func TestReaderPipelined(t *testing.T) {
	fs := []testFrame{
		{`{"op":0,"id":"1"}`, ""},
		{`{"op":9,"id":"1","from":"a","to":"b","datalen":2}`, "hi"},
		{`{"op":11}`, ""},
	}
	s := streamBytes(fs)
	cr := &countingReader{r: bytes.NewReader(s)}
	r := NewReader(cr)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if want := len(s) - len(frame(fs[0].header, "")); r.Buffered() != want {
		t.Errorf("Buffered = %d, want %d", r.Buffered(), want)
	}
	h, err := r.Next()
	if err != nil || h.Op != OpPing {
		t.Fatalf("second frame: %v %v", h, err)
	}
	if r.Buffered() != 2+len(frame(fs[2].header, "")) {
		t.Errorf("Buffered = %d with data pending", r.Buffered())
	}
	// Data left unconsumed is skipped by Next.
	if h, err = r.Next(); err != nil || h.Op != OpPulse {
		t.Fatalf("third frame: %v %v", h, err)
	}
	if r.Buffered() != 0 {
		t.Errorf("Buffered = %d at the end", r.Buffered())
	}
	if cr.reads != 1 {
		t.Errorf("%d reads for frames that came in one", cr.reads)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("end: %v, want io.EOF", err)
	}
}

func TestReaderBadFrames(t *testing.T) {
	cases := []struct {
		name, in string
		reason   string // a ProtocolError reason, or "" for err
		err      error
	}{
		{"not hex", "00z1{\"Op\":3, \"Uid\":\"noone\"}", QuitHeaderLength, nil},
		{"sign", "+007{\"op\":11}", QuitHeaderLength, nil},
		{"space", " 009{\"op\":11}", QuitHeaderLength, nil},
		{"below 8", "0007{\"op\":1", QuitHeaderLength, nil},
		{"zero", "0000", QuitHeaderLength, nil},
		{"bad JSON", "000a{\"Op\":12f3", QuitHeader, nil},
		{"bad header", frame(`{"Op":2,"Uid":"noone","NoId":"none"}`, ""), QuitHeader, nil},
		{"empty", "", "", io.EOF},
		{"mid prefix", "00", "", io.ErrUnexpectedEOF},
		{"mid header", "0010{\"op\"", "", io.ErrUnexpectedEOF},
		{"mid data", frame(`{"op":9,"id":"1","from":"a","to":"b","datalen":5}`, "ab"), "", io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, wrap := range []struct {
				name string
				f    func(io.Reader) io.Reader
			}{
				{"", func(r io.Reader) io.Reader { return r }},
				{" one byte", iotest.OneByteReader},
				{" data err", iotest.DataErrReader},
			} {
				r := NewReader(wrap.f(strings.NewReader(c.in)))
				var err error
				for err == nil {
					// Skip unconsumed data: a short stream fails in Next.
					_, err = r.Next()
				}
				name := c.name + wrap.name
				if c.reason != "" {
					wantReason(t, name, err, c.reason)
				} else if err != c.err {
					t.Errorf("%s: err = %v, want %v", name, err, c.err)
				}
			}
		})
	}
}

func TestReaderUpperCasePrefix(t *testing.T) {
	h := `{"Op":9, "Id":"123", "Datalen":1, "From":"test1", "To":"test2"}`
	r := NewReader(strings.NewReader("003F" + h + "1"))
	got, err := r.Next()
	if err != nil || got.Op != OpPing {
		t.Fatalf("003F: %v %v", got, err)
	}
	if string(r.RawHeader()) != h {
		t.Errorf("RawHeader = %q", r.RawHeader())
	}
}

func TestReaderData(t *testing.T) {
	s := frame(`{"op":8,"id":"x","for":[],"datalen":14,"notelen":5}`, "note.post data") + frame(`{"op":11}`, "")
	r := NewReader(iotest.HalfReader(strings.NewReader(s)))
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	note, err := io.ReadAll(r.Data(5))
	if err != nil || string(note) != "note." {
		t.Fatalf("note: %q %v", note, err)
	}
	d := r.Data(9)
	buf := make([]byte, 20)
	n, err := io.ReadFull(d, buf[:9])
	if err != nil || string(buf[:n]) != "post data" {
		t.Fatalf("post: %q %v", buf[:n], err)
	}
	if n, err := d.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read past data: %d %v, want 0 EOF", n, err)
	}
	if n, err := r.Data(0).Read(buf); n != 0 || err != io.EOF {
		t.Errorf("Data(0): %d %v, want 0 EOF", n, err)
	}
	h, err := r.Next()
	if err != nil || h.Op != OpPulse {
		t.Fatalf("next: %v %v", h, err)
	}
}

func TestReaderDiscard(t *testing.T) {
	data := strings.Repeat("d", 3000)
	s := frame(`{"op":7,"id":"x","for":[],"datalen":3000}`, data) + frame(`{"op":11}`, "")
	for _, rd := range []io.Reader{strings.NewReader(s), iotest.OneByteReader(strings.NewReader(s))} {
		r := NewReader(rd)
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if err := r.Discard(3000); err != nil {
			t.Fatal(err)
		}
		if h, err := r.Next(); err != nil || h.Op != OpPulse {
			t.Fatalf("after discard: %v %v", h, err)
		}
	}
	r := NewReader(strings.NewReader(frame(`{"op":7,"id":"x","for":[],"datalen":3000}`, "short")))
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if err := r.Discard(3000); err != io.ErrUnexpectedEOF {
		t.Errorf("discard past end: %v", err)
	}
}

func TestReaderShortData(t *testing.T) {
	s := frame(`{"op":7,"id":"x","for":[],"datalen":10}`, "abc")
	for _, rd := range []io.Reader{
		strings.NewReader(s),
		iotest.DataErrReader(strings.NewReader(s)),
		iotest.OneByteReader(strings.NewReader(s)),
	} {
		r := NewReader(rd)
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r.Data(10))
		if string(got) != "abc" || err != io.ErrUnexpectedEOF {
			t.Errorf("short data: %q %v", got, err)
		}
	}
}

// errAfter returns its data, then err.
type errAfter struct {
	data []byte
	err  error
}

func (e *errAfter) Read(p []byte) (int, error) {
	if len(e.data) == 0 {
		return 0, e.err
	}
	n := copy(p, e.data)
	e.data = e.data[n:]
	return n, nil
}

func TestReaderPassesErrors(t *testing.T) {
	errNet := errors.New("connection reset")
	// At a frame boundary, mid-header and mid-data.
	for _, s := range []string{
		frame(`{"op":11}`, ""),
		frame(`{"op":11}`, "")[:6],
		frame(`{"op":7,"id":"x","for":[],"datalen":10}`, "abc"),
	} {
		r := NewReader(&errAfter{[]byte(s), errNet})
		var err error
		for err == nil {
			var h *Header
			if h, err = r.Next(); err == nil {
				_, err = io.ReadAll(r.Data(h.Datalen))
			}
		}
		if err != errNet {
			t.Errorf("%q: err = %v, want %v", s, err, errNet)
		}
	}
}

// zeroReader never returns data nor an error.
type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestReaderNoProgress(t *testing.T) {
	if _, err := NewReader(zeroReader{}).Next(); err != io.ErrNoProgress {
		t.Errorf("Next: %v, want io.ErrNoProgress", err)
	}
	r := NewReader(io.MultiReader(strings.NewReader(frame(`{"op":7,"id":"x","for":[],"datalen":1}`, "")), zeroReader{}))
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Data(1).Read(make([]byte, 1)); err != io.ErrNoProgress {
		t.Errorf("Data: %v, want io.ErrNoProgress", err)
	}
}

// loopReader returns the same bytes forever.
type loopReader struct {
	b   []byte
	off int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.b[l.off:])
	l.off = (l.off + n) % len(l.b)
	return n, nil
}

func TestReaderAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	for _, f := range []testFrame{testStream[2], testStream[5], testStream[6]} {
		h := []byte(f.header)
		parse := testing.AllocsPerRun(100, func() { ParseHeader(h) })
		r := NewReader(&loopReader{b: []byte(frame(f.header, f.data))})
		next := testing.AllocsPerRun(100, func() {
			h, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			r.Discard(h.Datalen)
		})
		if next > parse {
			t.Errorf("%.30s: Next makes %v allocations, ParseHeader %v", f.header, next, parse)
		}
	}
}

func BenchmarkReaderNext(b *testing.B) {
	f := testStream[5] // an ack, the most common request
	r := NewReader(&loopReader{b: []byte(frame(f.header, f.data))})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzReader feeds arbitrary bytes to a Reader: it must never panic, every
// header it returns must parse again from RawHeader, and reading the same
// bytes one at a time must give the same frames and error.
func FuzzReader(f *testing.F) {
	// A valid frame of each op.
	for op := range opCount {
		f.Add([]byte(frame(requiredCases[op].base, strings.Repeat("d", dataLen(op)))))
	}
	// The whole test stream, and it cut short mid-frame.
	s := streamBytes(testStream)
	f.Add(s)
	f.Add(s[:len(s)/2])
	f.Add(s[:7])
	// Bad prefixes and headers.
	f.Add([]byte("00z1{\"Op\":3, \"Uid\":\"noone\"}"))
	f.Add([]byte("0007{\"op\":1"))
	f.Add([]byte("000a{\"Op\":12f3"))
	f.Add([]byte("FFFF{"))
	f.Add([]byte(frame(`{"op":7,"id":"x","for":[],"datalen":-1}`, "")))
	// A header announcing more data than follows.
	f.Add([]byte(frame(`{"op":7,"id":"x","for":[],"datalen":99}`, "abc")))
	f.Fuzz(func(t *testing.T, b []byte) {
		whole, errWhole := fuzzRead(t, bytes.NewReader(b))
		bytewise, errBytewise := fuzzRead(t, iotest.OneByteReader(bytes.NewReader(b)))
		if len(whole) != len(bytewise) {
			t.Fatalf("%d frames whole, %d byte by byte", len(whole), len(bytewise))
		}
		for i := range whole {
			if whole[i] != bytewise[i] {
				t.Fatalf("frame %d: %q whole, %q byte by byte", i, whole[i], bytewise[i])
			}
		}
		if fmt.Sprint(errWhole) != fmt.Sprint(errBytewise) {
			t.Fatalf("error %v whole, %v byte by byte", errWhole, errBytewise)
		}
	})
}

// dataLen is the data length of requiredCases[op].
func dataLen(op Op) int {
	h, _ := ParseHeader([]byte(requiredCases[op].base))
	return int(h.Datalen)
}

func fuzzRead(t *testing.T, rd io.Reader) ([]testFrame, error) {
	r := NewReader(rd)
	var got []testFrame
	for {
		h, err := r.Next()
		if err != nil {
			return got, err
		}
		raw := r.RawHeader()
		if len(raw) < MinHeaderLen {
			t.Fatalf("RawHeader %q shorter than %d", raw, MinHeaderLen)
		}
		if _, err := ParseHeader(raw); err != nil {
			t.Fatalf("RawHeader %q does not parse again: %v", raw, err)
		}
		data, err := io.ReadAll(r.Data(h.Datalen))
		got = append(got, testFrame{string(raw), string(data)})
		if err != nil {
			return got, err
		}
	}
}

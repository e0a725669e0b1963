package tmtp

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// spyReader records, at each read, whether its Reader holds a large buffer:
// a read is where an idle link blocks.
type spyReader struct {
	r         io.Reader
	owner     *Reader
	withLarge []bool
}

func (s *spyReader) Read(p []byte) (int, error) {
	s.withLarge = append(s.withLarge, s.owner.large != nil)
	return s.r.Read(p)
}

func TestReaderReleasesLargeBuffer(t *testing.T) {
	big := testStream[6] // a header longer than the small buffer
	if len(big.header) <= smallBufSize {
		t.Fatalf("test header is only %d octets", len(big.header))
	}
	small := frame(`{"op":11}`, "")
	cases := []struct {
		name   string
		stream string
	}{
		{"big then idle", frame(big.header, big.data)},
		{"big then small", frame(big.header, big.data) + small},
		// The second big frame is pipelined behind the first: the large
		// buffer is kept while more than a small buffer's worth remains.
		{"big then big", frame(big.header, big.data) + frame(big.header, big.data) + small},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spy := &spyReader{r: strings.NewReader(c.stream)}
			r := NewReader(spy)
			spy.owner = r
			for {
				spy.withLarge = spy.withLarge[:0]
				h, err := r.Next()
				if err == io.EOF {
					// Waiting for the next frame, the link held only its
					// small buffer.
					for i, large := range spy.withLarge {
						if large {
							t.Errorf("%s: read %d at the end with a large buffer", c.name, i)
						}
					}
					break
				}
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				if len(r.RawHeader()) > smallBufSize && r.large == nil {
					t.Errorf("%s: a %d-octet header without a large buffer", c.name, len(r.RawHeader()))
				}
				if len(r.RawHeader()) <= smallBufSize && r.Buffered() <= smallBufSize && r.large != nil {
					t.Errorf("%s: small header %s read with a large buffer held", c.name, r.RawHeader())
				}
				if _, err := io.Copy(io.Discard, r.Data(h.Datalen)); err != nil {
					t.Fatal(err)
				}
			}
			if r.large != nil || len(r.buf) != smallBufSize {
				t.Errorf("%s: idle reader holds a %d-octet buffer", c.name, len(r.buf))
			}
		})
	}
}

// Park gives the buffer away only between frames with nothing buffered, and
// the frames that follow read as if it had never been parked.
func TestReaderPark(t *testing.T) {
	big := testStream[6]
	stream := frame(`{"op":11}`, "") + frame(`{"op":11}`, "") +
		frame(`{"op":7,"id":"x","for":[],"datalen":5}`, "hello") + frame(big.header, big.data)
	// Hand the stream over one octet at a time, so that Park meets every
	// state: mid-frame, with data pending, and between frames.
	r := NewReader(iotest.OneByteReader(strings.NewReader(stream)))
	var parked int
	park := func() {
		before := r.small != nil
		r.Park()
		if r.small == nil && before {
			parked++
			if r.w != r.r || r.pending != 0 {
				t.Fatalf("parked with %d octets buffered, %d pending", r.w-r.r, r.pending)
			}
		}
	}
	var ops []string
	for {
		park()
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		park() // data pending: must not park
		data, err := io.ReadAll(r.Data(h.Datalen))
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, fmt.Sprintf("%d:%s", h.Op, data))
	}
	want := []string{"11:", "11:", "7:hello", fmt.Sprintf("%d:%s", OpPost, big.data)}
	if fmt.Sprint(ops) != fmt.Sprint(want) {
		t.Fatalf("frames after parking: %q, want %q", ops, want)
	}
	if parked < 4 {
		t.Fatalf("parked %d times, want one per frame boundary (4)", parked)
	}
}

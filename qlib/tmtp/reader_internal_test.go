package tmtp

import (
	"io"
	"strings"
	"testing"
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
	}
}

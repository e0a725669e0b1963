package tmtp

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// countingGate is a LargeGate with a budget of size octets; it counts what
// it lends and what comes back.
type countingGate struct {
	budget, used    int
	asked, refused  int
	released, twice int
}

func (g *countingGate) gate(size int) (func(), bool) {
	g.asked++
	if g.used+size > g.budget {
		g.refused++
		return nil, false
	}
	g.used += size
	done := false
	return func() {
		if done {
			g.twice++
			return
		}
		done = true
		g.used -= size
		g.released++
	}, true
}

// A header that fits the small buffer never asks the gate; a long one asks
// once and gives the reservation back when the next frame is read.
func TestReaderGateLends(t *testing.T) {
	big := testStream[6]
	stream := frame(`{"op":11}`, "") + frame(big.header, big.data) + frame(`{"op":11}`, "")
	g := &countingGate{budget: largeBufSize}
	r := NewReader(strings.NewReader(stream))
	r.SetLargeGate(g.gate)
	var ops []Op
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, h.Op)
		if h.Op == OpPost && g.used != largeBufSize {
			t.Fatalf("reading the long header holds %d octets of the budget, want %d", g.used, largeBufSize)
		}
		if _, err := io.Copy(io.Discard, r.Data(h.Datalen)); err != nil {
			t.Fatal(err)
		}
	}
	if len(ops) != 3 || ops[1] != OpPost {
		t.Fatalf("read ops %v, want pulse, post, pulse", ops)
	}
	if g.asked != 1 || g.released != 1 || g.used != 0 || g.twice != 0 {
		t.Fatalf("gate asked %d, released %d (%d twice), %d octets still held; want 1, 1, 0, 0",
			g.asked, g.released, g.twice, g.used)
	}
}

// A gate that refuses makes Next fail with ErrLongHeaderRefused, having held
// no large buffer; small headers before it read as usual.
func TestReaderGateRefuses(t *testing.T) {
	big := testStream[6]
	stream := frame(`{"op":0,"id":"1"}`, "") + frame(big.header, big.data)
	g := &countingGate{budget: largeBufSize - 1}
	r := NewReader(strings.NewReader(stream))
	r.SetLargeGate(g.gate)
	if h, err := r.Next(); err != nil || h.Op != OpTmtpRev {
		t.Fatalf("first frame: %v %v", h, err)
	}
	_, err := r.Next()
	if !errors.Is(err, ErrLongHeaderRefused) {
		t.Fatalf("long header with the gate shut: %v, want ErrLongHeaderRefused", err)
	}
	if r.large != nil || g.refused != 1 || g.used != 0 {
		t.Fatalf("after the refusal: large buffer held %v, refused %d, used %d", r.large != nil, g.refused, g.used)
	}
	// Without a gate the same Reader borrows freely again.
	r.SetLargeGate(nil)
	if h, err := r.Next(); err != nil || h.Op != OpPost {
		t.Fatalf("long header without a gate: %v %v", h, err)
	}
}

// A link that ends in the middle of a long header gives its reservation
// back through Release; a gate replaced (at login) is still paid back for
// the buffer it lent.
func TestReaderGateRelease(t *testing.T) {
	big := testStream[6]
	partial := frame(big.header, "")[:len(big.header)/2]
	g := &countingGate{budget: 2 * largeBufSize}
	r := NewReader(strings.NewReader(partial))
	r.SetLargeGate(g.gate)
	if _, err := r.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("half a header: %v, want io.ErrUnexpectedEOF", err)
	}
	if g.used != largeBufSize || r.large == nil {
		t.Fatalf("half a long header read: %d octets of the budget used, want %d", g.used, largeBufSize)
	}
	r.SetLargeGate(nil)
	r.Release()
	r.Release() // a second call is harmless
	if g.used != 0 || g.released != 1 || g.twice != 0 || r.large != nil {
		t.Fatalf("after Release: used %d, released %d (%d twice), large held %v", g.used, g.released, g.twice, r.large != nil)
	}
}

package testclient

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

const testUID = "BCDFGHJKLMNPQRSTVWXYZ123456789%+" // 32 characters, like a uid

func TestPayloadRoundtrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, sender := range []string{"", "a", testUID} {
		least := PayloadMin(sender)
		for _, size := range []int{-1, 0, 1, least - 1, least, least + 1, least + 7, least + 8, least + 9, 40, 1000, 1<<16 + 3} {
			for _, r := range []*rand.Rand{rng, nil} {
				seq := rng.Uint64()
				b := MakePayload(seq, sender, size, r)
				if want := max(size, least); len(b) != want {
					t.Fatalf("size %d for %q: got %d octets, want %d", size, sender, len(b), want)
				}
				info, err := CheckPayload(b)
				if err != nil {
					t.Fatalf("size %d for %q: %v", size, sender, err)
				}
				if info != (PayloadInfo{Sender: sender, Seq: seq, Size: len(b)}) {
					t.Errorf("got %+v", info)
				}
			}
		}
	}
}

func TestPayloadFiller(t *testing.T) {
	a := MakePayload(1, "s", 500, rand.New(rand.NewPCG(1, 1)))
	b := MakePayload(1, "s", 500, rand.New(rand.NewPCG(2, 2)))
	if bytes.Equal(a[payloadFixed+1:], b[payloadFixed+1:]) {
		t.Error("different seeds, same filler")
	}
	if !bytes.Equal(MakePayload(5, "s", 500, nil), MakePayload(5, "s", 500, nil)) {
		t.Error("nil rng not deterministic")
	}
	if bytes.Equal(MakePayload(5, "s", 500, nil)[payloadFixed+1:], MakePayload(6, "s", 500, nil)[payloadFixed+1:]) {
		t.Error("nil rng: same filler for different seqs")
	}
}

// TestPayloadDetectsCorruption changes every octet of payloads in several
// ways, and truncates and extends them.
func TestPayloadDetectsCorruption(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, p := range [][]byte{
		MakePayload(7, testUID, 203, rng),
		MakePayload(1<<40, "x", 40, rng),
		MakePayload(0, "", 0, rng),
	} {
		for i := range p {
			for _, mask := range []byte{0x01, 0x80, 0xff, 0x5a} {
				b := bytes.Clone(p)
				b[i] ^= mask
				if _, err := CheckPayload(b); !errors.Is(err, ErrPayload) {
					t.Fatalf("octet %d ^ %#x of %d: got %v", i, mask, len(p), err)
				}
			}
		}
		for n := range len(p) {
			if _, err := CheckPayload(p[:n]); !errors.Is(err, ErrPayload) {
				t.Fatalf("truncated to %d of %d: got %v", n, len(p), err)
			}
		}
		if _, err := CheckPayload(append(bytes.Clone(p), 0)); !errors.Is(err, ErrPayload) {
			t.Fatalf("extended: got %v", err)
		}
	}
	// Two payloads of the same size and sender must not pass as each other.
	a, b := MakePayload(1, "s", 100, rng), MakePayload(2, "s", 100, rng)
	mixed := append(bytes.Clone(a[:50]), b[50:]...)
	if _, err := CheckPayload(mixed); !errors.Is(err, ErrPayload) {
		t.Errorf("spliced payload: got %v", err)
	}
}

func TestMakePayloadLongSender(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for a sender over MaxPayloadSender")
		}
	}()
	MakePayload(1, strings.Repeat("s", MaxPayloadSender+1), 0, nil)
}

// FuzzCheckPayload feeds arbitrary octets to CheckPayload: no panic, and what
// it accepts must describe itself consistently.
func FuzzCheckPayload(f *testing.F) {
	f.Add(MakePayload(1, testUID, 100, nil)) // valid
	f.Add(MakePayload(2, "", 0, nil))        // smallest valid
	f.Add([]byte("m\x01"))                   // magic, then nothing
	bad := MakePayload(3, "abc", 60, nil)
	bad[27] = 200 // sender length past the end
	f.Add(bad)
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := CheckPayload(b)
		if err != nil {
			return
		}
		if info.Size != len(b) || len(b) < PayloadMin(info.Sender) {
			t.Fatalf("accepted %d octets as %+v", len(b), info)
		}
	})
}

func BenchmarkMakePayload(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	b.SetBytes(4096)
	for i := range b.N {
		MakePayload(uint64(i), testUID, 4096, rng)
	}
}

func BenchmarkCheckPayload(b *testing.B) {
	p := MakePayload(1, testUID, 4096, nil)
	b.SetBytes(int64(len(p)))
	for range b.N {
		if _, err := CheckPayload(p); err != nil {
			b.Fatal(err)
		}
	}
}

package testclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"math/rand/v2"
)

// A payload made by MakePayload is self-describing, so a receiver can verify
// it without knowing what was sent:
//
//	0      'm'  magic
//	1      1    layout version
//	2:6    CRC-32C of the whole payload with these four octets zero
//	6:10   total size in octets, big-endian
//	10:18  sender's sequence number, big-endian
//	18:26  filler seed
//	26:28  length of the sender name, big-endian
//	28:    sender name, then filler
//
// The filler is a splitmix64 stream from the seed, so CheckPayload can
// regenerate it and compare octet for octet: any change in the filler is
// found for certain, and any change in the fixed part or the name fails the
// CRC (CRC-32C finds every error burst up to 32 bits) or a field check.
const (
	payloadMagic   = 'm'
	payloadVersion = 1
	payloadFixed   = 28 // octets before the sender name
	// MaxPayloadSender is the longest sender name, whose length is two octets.
	MaxPayloadSender = 0xffff
	// maxPayloadSize bounds the size field: a payload must fit a frame.
	maxPayloadSize = MaxDataLen
)

// ErrPayload is wrapped by CheckPayload's errors.
var ErrPayload = errors.New("testclient: corrupt payload")

// PayloadInfo is what a payload says about itself.
type PayloadInfo struct {
	Sender string
	Seq    uint64
	Size   int
}

// PayloadMin returns the smallest payload MakePayload makes for sender.
func PayloadMin(sender string) int { return payloadFixed + len(sender) }

// MakePayload returns a payload of size octets (at least PayloadMin(sender),
// at most MaxDataLen) carrying sender and seq, with filler drawn from a seed
// taken from rng (nil: the seed is derived from seq). It panics if sender is
// longer than MaxPayloadSender, a programming error.
func MakePayload(seq uint64, sender string, size int, rng *rand.Rand) []byte {
	if len(sender) > MaxPayloadSender {
		panic(fmt.Sprintf("testclient: payload sender of %d octets", len(sender)))
	}
	size = min(max(size, PayloadMin(sender)), maxPayloadSize)
	seed := seq * 0x9e3779b97f4a7c15
	if rng != nil {
		seed = rng.Uint64()
	}
	b := make([]byte, size)
	b[0], b[1] = payloadMagic, payloadVersion
	binary.BigEndian.PutUint32(b[6:], uint32(size))
	binary.BigEndian.PutUint64(b[10:], seq)
	binary.BigEndian.PutUint64(b[18:], seed)
	binary.BigEndian.PutUint16(b[26:], uint16(len(sender)))
	n := payloadFixed + copy(b[payloadFixed:], sender)
	fill(b[n:], seed)
	binary.BigEndian.PutUint32(b[2:], payloadSum(b))
	return b
}

// CheckPayload verifies a payload made by MakePayload and returns what it
// says. Any truncation, extension or changed octet gives an error wrapping
// ErrPayload.
func CheckPayload(b []byte) (PayloadInfo, error) {
	bad := func(format string, a ...any) (PayloadInfo, error) {
		return PayloadInfo{}, fmt.Errorf("%w: %s", ErrPayload, fmt.Sprintf(format, a...))
	}
	if len(b) < payloadFixed {
		return bad("%d octets, shorter than any payload", len(b))
	}
	if b[0] != payloadMagic || b[1] != payloadVersion {
		return bad("unknown magic %#x or version %d", b[0], b[1])
	}
	if size := binary.BigEndian.Uint32(b[6:]); int64(size) != int64(len(b)) {
		return bad("size field %d but %d octets", size, len(b))
	}
	n := payloadFixed + int(binary.BigEndian.Uint16(b[26:]))
	if n > len(b) {
		return bad("sender name runs past the end")
	}
	if sum := binary.BigEndian.Uint32(b[2:]); sum != payloadSum(b) {
		return bad("checksum %#x, computed %#x", sum, payloadSum(b))
	}
	if i := checkFill(b[n:], binary.BigEndian.Uint64(b[18:])); i >= 0 {
		return bad("filler differs at octet %d", n+i)
	}
	return PayloadInfo{
		Sender: string(b[payloadFixed:n]),
		Seq:    binary.BigEndian.Uint64(b[10:]),
		Size:   len(b),
	}, nil
}

// payloadSum is the CRC-32C of b with its checksum field taken as zero.
func payloadSum(b []byte) uint32 {
	var zero [4]byte
	sum := crc32.Update(0, castagnoli, b[:2])
	sum = crc32.Update(sum, castagnoli, zero[:])
	return crc32.Update(sum, castagnoli, b[6:])
}

// splitmix64 advances *x and returns the next value of the stream; it is
// fast, and a different seed gives an unrelated stream.
func splitmix64(x *uint64) uint64 {
	*x += 0x9e3779b97f4a7c15
	z := *x
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// fill writes the filler stream of seed into b.
func fill(b []byte, seed uint64) {
	x := seed
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, splitmix64(&x))
		b = b[8:]
	}
	if len(b) > 0 {
		var tail [8]byte
		binary.LittleEndian.PutUint64(tail[:], splitmix64(&x))
		copy(b, tail[:])
	}
}

// checkFill returns the index of the first octet of b that differs from the
// filler stream of seed, or -1.
func checkFill(b []byte, seed uint64) int {
	x := seed
	for i := 0; i < len(b); i += 8 {
		w := splitmix64(&x)
		if len(b)-i >= 8 {
			if g := binary.LittleEndian.Uint64(b[i:]); g != w {
				// Little-endian: octet k of the word is bits 8k..8k+7.
				return i + bits.TrailingZeros64(g^w)/8
			}
			continue
		}
		for j := i; j < len(b); j, w = j+1, w>>8 {
			if b[j] != byte(w) {
				return j
			}
		}
	}
	return -1
}

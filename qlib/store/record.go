package store

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// The log is a sequence of segment files, each a sequence of frames. A frame is
// a 20-octet header and a payload; integers are little-endian.
//
//	[0:4]   CRC-32C of header octets [4:20)
//	[4:8]   payload length
//	[8]     record type
//	[9:12]  zero
//	[12:16] epoch: fsyncs of this segment completed before the frame was written
//	[16:20] CRC-32C of the payload
//
// The header has its own checksum so that recovery can look for intact frames
// after a damaged one without trusting any length. The epoch lets it tell a
// torn tail (frames written after the last completed fsync, which a crash may
// leave partly on disk in any order) from damage to data that was durable: a
// frame that was written after an fsync proves that everything before that
// fsync reached the disk.
//
// Payloads use uvarints (u) and fixed 8-octet ids:
//
//	chunk:   raw data
//	commit:  u nchunks {u seq, u off, u len}… u taillen tail
//	         u nsets {u setlen set}…
//	         u nmsgs {id, flags, u off, u len, u envlen env, devs}…
//	copy:    as commit, for one message moved forward by compaction
//	ack:     u len dev, id
//	queue:   u len dev, u nids {id}…
//
// A commit's data is its chunk records (named by segment seq and the payload's
// file offset) followed by the inline tail; each message is a range of it.
//
// A message's devices are either listed (devs = 0x00 u ndevs {u len dev}…) or,
// for a big list, a reference to a device set (devs = 0x01 and the SHA-256 of
// the set). A set is the canonical form of a device list: its distinct keys in
// ascending order, each as u len dev; it is defined (listed in a record's sets)
// by the first record of a segment that uses it and referenced by hash from
// then on in that segment. So a post to a big group costs its devices once per
// segment, not once per post, and since definitions never cross segments,
// dropping a segment never breaks a reference; a definition travels in the
// frame of the first message using it, so a torn write cannot keep the
// reference without the definition. flags is the priority in the low bits and
// flagSecret.
//
// Records of types commitV1 and copyV1 (written before device sets) have a
// priority octet for flags, no sets, and every message's devices listed as
// u ndevs {u len dev}…; they are still read.
const frameHeaderSize = 20

// maxPayload bounds a frame's payload so that no length read from disk can make
// recovery allocate without bound. Real records are far smaller: a commit
// carries at most one chunk of inline data besides envelopes and device lists;
// the largest is a queue copy, 8 octets per entry.
const maxPayload = 256 << 20

type recType uint8

const (
	recChunk    recType = 1 // a piece of a draft's data
	recCommitV1 recType = 2 // new messages, devices listed (no longer written)
	recCopyV1   recType = 3 // a copy, devices listed (no longer written)
	recAck      recType = 4 // a device acknowledged a message
	recQueue    recType = 5 // a device's queue replaced by a copy of another's
	recCommit   recType = 6 // new messages: recipients, envelopes, data
	recCopy     recType = 7 // a live message moved forward by compaction
)

func (t recType) valid() bool { return t >= recChunk && t <= recCopy }

// blob reports whether t is a commit or copy record, and of which format.
func (t recType) blob() (ok, v1 bool) {
	switch t {
	case recCommitV1, recCopyV1:
		return true, true
	case recCommit, recCopy:
		return true, false
	}
	return false, false
}

// copyType reports whether t is a copy record.
func (t recType) copyType() bool { return t == recCopy || t == recCopyV1 }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// beginFrame appends the header of a frame of type t; its payload follows and
// endFrame completes it.
func beginFrame(buf []byte, t recType) []byte {
	var h [frameHeaderSize]byte
	h[8] = byte(t)
	return append(buf, h[:]...)
}

// endFrame fills in the length and checksums of frame f (header and payload).
func endFrame(f []byte) {
	p := f[frameHeaderSize:]
	binary.LittleEndian.PutUint32(f[4:], uint32(len(p)))
	binary.LittleEndian.PutUint32(f[16:], checksum(p))
	stampFrame(f, 0)
}

// stampFrame sets the epoch of the frame whose header starts h.
func stampFrame(h []byte, epoch uint32) {
	binary.LittleEndian.PutUint32(h[12:], epoch)
	binary.LittleEndian.PutUint32(h[0:], checksum(h[4:frameHeaderSize]))
}

// stampFrames sets the epoch of every frame in buf, which holds whole frames.
func stampFrames(buf []byte, epoch uint32) {
	for len(buf) >= frameHeaderSize {
		stampFrame(buf, epoch)
		buf = buf[frameHeaderSize+int(binary.LittleEndian.Uint32(buf[4:])):]
	}
}

type frameHeader struct {
	typ   recType
	n     int64 // payload length
	epoch uint32
	sum   uint32 // payload checksum
}

// parseFrameHeader decodes h; ok is false unless the header is intact.
func parseFrameHeader(h []byte) (fh frameHeader, ok bool) {
	if len(h) < frameHeaderSize || checksum(h[4:frameHeaderSize]) != binary.LittleEndian.Uint32(h) {
		return frameHeader{}, false
	}
	return frameHeader{
		typ:   recType(h[8]),
		n:     int64(binary.LittleEndian.Uint32(h[4:])),
		epoch: binary.LittleEndian.Uint32(h[12:]),
		sum:   binary.LittleEndian.Uint32(h[16:]),
	}, true
}

// check reports what is wrong with an intact header: an intact header with
// nonsense in it is damage, not a torn write.
func (fh frameHeader) check(h []byte) error {
	switch {
	case h[9]|h[10]|h[11] != 0:
		return errors.New("reserved header octets not zero")
	case !fh.typ.valid():
		return fmt.Errorf("unknown record type %d", fh.typ)
	case fh.n > maxPayload:
		return fmt.Errorf("payload length %d over limit", fh.n)
	}
	return nil
}

// chunk locates a chunk record's payload in the log.
type chunk struct {
	seg    *segment // nil during recovery when the segment was deleted
	off, n int64    // file offset and length of the payload
}

// chunkRef is a chunk as a record names it.
type chunkRef struct {
	seq    uint64
	off, n int64
}

// recMsg is one message of a commit or copy record.
type recMsg struct {
	id     ID
	prio   Priority
	secret bool
	off, n int64 // data range within the record's data
	env    []byte
	envPos int // offset of env within the payload
	envLen int
	// devs are the message's devices; when writing, distinct and sorted
	// (dedup). When decoding a reference (ref), devs is nil and set names
	// the device set to look up.
	devs  []string
	ref   bool
	set   setHash
	cache []byte // envelope and data for the cache (see cache.go), or nil
	// at is when the commit was made, in Unix nanoseconds, for Backlog;
	// never written (0 when decoded).
	at int64
}

// setHash names a device set: the SHA-256 of its canonical form. The whole
// hash is kept, so that no choice of device lists can make two sets collide.
type setHash [sha256.Size]byte

const (
	// minSetDevs is the least number of devices for which a message
	// refers to a device set instead of listing its devices: a shorter
	// list costs about what a reference does (33 octets) and is not worth
	// a place among the segment's sets.
	minSetDevs = 16

	// maxSegSets and maxSegSetBytes bound the sets defined in one segment
	// (count, and octets of their canonical forms): recovery holds a
	// segment's sets in memory while it replays the segment, about 1.5
	// times their octets. 8 MiB is some 45 groups of 5,000 devices per
	// segment of 64 MiB; past the bounds, devices are listed again.
	maxSegSets     = 4096
	maxSegSetBytes = 8 << 20

	// flagSecret marks a secret message (Message.Secret) in a record's
	// flags octet; the low bits are the priority.
	flagSecret = 0x80
	prioMask   = 0x7f

	// Device field kinds in a message of a commit or copy record.
	devsListed = 0
	devsRef    = 1
)

// hashSet returns the hash of the canonical form of devs, which must be
// distinct and sorted.
func hashSet(devs []string) setHash {
	h := sha256.New()
	// Encoded a few KiB at a time: one Write per device would cost more
	// than the hashing.
	var buf [4 << 10]byte
	b := buf[:0]
	for _, d := range devs {
		if len(b)+binary.MaxVarintLen64+len(d) > len(buf) {
			h.Write(b)
			b = buf[:0]
		}
		b = binary.AppendUvarint(b, uint64(len(d)))
		if len(b)+len(d) > len(buf) {
			h.Write(b) // a key too long for the buffer
			h.Write([]byte(d))
			b = buf[:0]
			continue
		}
		b = append(b, d...)
	}
	h.Write(b)
	var s setHash
	h.Sum(s[:0])
	return s
}

// setLen returns the length of the canonical form of devs.
func setLen(devs []string) int {
	n := 0
	for _, d := range devs {
		n += uvarintLen(uint64(len(d))) + len(d)
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func appendDevs(buf []byte, devs []string) []byte {
	for _, d := range devs {
		buf = binary.AppendUvarint(buf, uint64(len(d)))
		buf = append(buf, d...)
	}
	return buf
}

// appendBlobPayload appends the payload of a commit or copy record: data made
// of chunks then tail, the definitions of the sets of msgs[i] for each i in
// defs, and msgs, which refer to a set where ref is set and list their
// devices otherwise. It sets each message's envPos and returns the offset of
// the tail, both relative to the start of the payload.
func appendBlobPayload(buf []byte, chunks []chunk, tail []byte, defs []int, msgs []recMsg) ([]byte, int) {
	start := len(buf)
	buf = binary.AppendUvarint(buf, uint64(len(chunks)))
	for _, c := range chunks {
		buf = binary.AppendUvarint(buf, c.seg.seq)
		buf = binary.AppendUvarint(buf, uint64(c.off))
		buf = binary.AppendUvarint(buf, uint64(c.n))
	}
	buf = binary.AppendUvarint(buf, uint64(len(tail)))
	tailPos := len(buf) - start
	buf = append(buf, tail...)
	buf = binary.AppendUvarint(buf, uint64(len(defs)))
	for _, i := range defs {
		buf = binary.AppendUvarint(buf, uint64(setLen(msgs[i].devs)))
		buf = appendDevs(buf, msgs[i].devs)
	}
	buf = binary.AppendUvarint(buf, uint64(len(msgs)))
	for i := range msgs {
		m := &msgs[i]
		buf = binary.LittleEndian.AppendUint64(buf, uint64(m.id))
		flags := byte(m.prio)
		if m.secret {
			flags |= flagSecret
		}
		buf = append(buf, flags)
		buf = binary.AppendUvarint(buf, uint64(m.off))
		buf = binary.AppendUvarint(buf, uint64(m.n))
		buf = binary.AppendUvarint(buf, uint64(len(m.env)))
		m.envPos = len(buf) - start
		m.envLen = len(m.env)
		buf = append(buf, m.env...)
		if m.ref {
			buf = append(buf, devsRef)
			buf = append(buf, m.set[:]...)
			continue
		}
		buf = append(buf, devsListed)
		buf = binary.AppendUvarint(buf, uint64(len(m.devs)))
		buf = appendDevs(buf, m.devs)
	}
	return buf, tailPos
}

// blobRec is the decoded data part of a commit or copy record.
type blobRec struct {
	chunks  []chunkRef
	tailPos int // offset of the tail within the payload
	tailLen int64
	size    int64 // total data length
	sets    []setDef
}

// setDef is a device set defined by a record.
type setDef struct {
	hash setHash
	devs []string
	size int // octets of the canonical form
}

// minMsgLen is the smallest encoding of a message in a commit record (id,
// flags, and one octet for each of off, len, envlen, ndevs), used to bound
// the message count before allocating.
const minMsgLen = 8 + 1 + 4

// decodeBlobPayload decodes a commit or copy record; v1 for the format
// without sets. References are returned unresolved (ref and set).
func decodeBlobPayload(p []byte, v1 bool) (blobRec, []recMsg, error) {
	d := decoder{p: p}
	var b blobRec
	nc := d.count(3)
	b.chunks = make([]chunkRef, 0, nc)
	for range nc {
		c := chunkRef{seq: d.uvarint(), off: d.int63(), n: d.int63()}
		if c.n > maxPayload {
			d.fail(fmt.Errorf("chunk length %d over limit", c.n))
		}
		b.chunks = append(b.chunks, c)
		b.size += c.n
	}
	b.tailLen = int64(d.count(1))
	b.tailPos = d.i
	d.bytes(int(b.tailLen))
	b.size += b.tailLen
	if !v1 {
		ns := d.count(2)
		b.sets = make([]setDef, 0, ns)
		for range ns {
			raw := d.bytes(d.count(1))
			if d.err != nil {
				break
			}
			devs, err := decodeSet(raw)
			if err != nil {
				d.fail(err)
				break
			}
			b.sets = append(b.sets, setDef{hash: sha256.Sum256(raw), devs: devs, size: len(raw)})
		}
	}
	nm := d.count(minMsgLen)
	msgs := make([]recMsg, 0, nm)
	for range nm {
		m := recMsg{id: ID(d.u64())}
		flags := d.byte()
		if v1 {
			m.prio = Priority(flags)
		} else {
			m.prio, m.secret = Priority(flags&prioMask), flags&flagSecret != 0
		}
		if m.prio >= numPrio {
			d.fail(fmt.Errorf("message %v: priority %d", m.id, m.prio))
		}
		m.off, m.n = d.int63(), d.int63()
		if d.err == nil && (m.off > b.size || m.n > b.size-m.off) {
			d.fail(fmt.Errorf("message %v: range [%d,+%d) outside data of %d", m.id, m.off, m.n, b.size))
		}
		m.envLen = d.count(1)
		m.envPos = d.i
		m.env = d.bytes(m.envLen)
		kind := byte(devsListed)
		if !v1 {
			kind = d.byte()
		}
		switch kind {
		case devsListed:
			nd := d.count(1)
			m.devs = make([]string, 0, nd)
			for range nd {
				m.devs = append(m.devs, string(d.bytes(d.count(1))))
			}
		case devsRef:
			m.ref = true
			copy(m.set[:], d.bytes(len(m.set)))
		default:
			d.fail(fmt.Errorf("message %v: device field kind %d", m.id, kind))
		}
		msgs = append(msgs, m)
	}
	if err := d.done(); err != nil {
		return blobRec{}, nil, err
	}
	return b, msgs, nil
}

// decodeSet decodes the canonical form of a device set: at least one device,
// in strictly ascending order (so that the hash of what was read is the hash
// the writer computed for the same devices).
func decodeSet(raw []byte) ([]string, error) {
	d := decoder{p: raw}
	var devs []string
	for d.err == nil && d.i < len(raw) {
		dev := string(d.bytes(d.count(1)))
		if d.err == nil && len(devs) > 0 && dev <= devs[len(devs)-1] {
			d.fail(errors.New("device set not in canonical order"))
		}
		devs = append(devs, dev)
	}
	if d.err == nil && len(devs) == 0 {
		d.fail(errors.New("empty device set"))
	}
	if err := d.done(); err != nil {
		return nil, fmt.Errorf("device set: %w", err)
	}
	return devs, nil
}

func appendAckPayload(buf []byte, dev string, id ID) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(dev)))
	buf = append(buf, dev...)
	return binary.LittleEndian.AppendUint64(buf, uint64(id))
}

func decodeAck(p []byte) (string, ID, error) {
	d := decoder{p: p}
	dev := string(d.bytes(d.count(1)))
	id := ID(d.u64())
	return dev, id, d.done()
}

func appendQueuePayload(buf []byte, dev string, ids []ID) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(dev)))
	buf = append(buf, dev...)
	buf = binary.AppendUvarint(buf, uint64(len(ids)))
	for _, id := range ids {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(id))
	}
	return buf
}

func decodeQueue(p []byte) (string, []ID, error) {
	d := decoder{p: p}
	dev := string(d.bytes(d.count(1)))
	n := d.count(8)
	ids := make([]ID, 0, n)
	for range n {
		ids = append(ids, ID(d.u64()))
	}
	return dev, ids, d.done()
}

// decoder reads a payload; the first error sticks and later reads return
// zero values, so decoding code checks once at the end.
type decoder struct {
	p   []byte
	i   int
	err error
}

var errTruncated = errors.New("payload truncated")

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.p[d.i:])
	if n <= 0 {
		d.fail(errors.New("bad varint"))
		return 0
	}
	d.i += n
	return v
}

func (d *decoder) int63() int64 {
	v := d.uvarint()
	if v > math.MaxInt64 {
		d.fail(errors.New("integer overflow"))
		return 0
	}
	return int64(v)
}

// count reads an element count and checks that the rest of the payload can
// hold that many elements of at least min octets, so that a damaged count
// cannot make the decoder allocate without bound.
func (d *decoder) count(min int) int {
	v := d.uvarint()
	if d.err == nil && v > uint64((len(d.p)-d.i)/min) {
		d.fail(errTruncated)
	}
	if d.err != nil {
		return 0
	}
	return int(v)
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.p)-d.i {
		d.fail(errTruncated)
		return nil
	}
	b := d.p[d.i : d.i+n : d.i+n]
	d.i += n
	return b
}

func (d *decoder) u64() uint64 {
	b := d.bytes(8)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(b)
}

func (d *decoder) byte() byte {
	b := d.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

// done returns the decoding error, if any, or an error if octets are left.
func (d *decoder) done() error {
	if d.err == nil && d.i != len(d.p) {
		d.fail(fmt.Errorf("%d octets after record", len(d.p)-d.i))
	}
	return d.err
}

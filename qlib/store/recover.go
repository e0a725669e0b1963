package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"mnm/durable"
)

// readWindow is how much of a segment recovery reads at a time.
const readWindow = 1 << 20

// replayer rebuilds the index from the log. Queues are kept as sets while
// replaying, because records may add entries out of id order (a message
// copied forward reappears later in the log) and remove entries anywhere;
// they are sorted into queues at the end.
type replayer struct {
	l     *Log
	segs  map[uint64]*segment
	sets  map[string]map[ID]struct{}
	maxID ID

	// The device sets defined so far in the segment being replayed (see
	// record.go); references never leave a segment, so these are
	// forgotten at its end.
	devSets     map[setHash][]string
	devSetBytes int
}

// recover replays the segments seqs, oldest first, into the index. A torn
// tail of the last segment is truncated away; any other damage is an error
// naming the file and offset. It returns the highest message id seen.
func (l *Log) recover(seqs []uint64) (ID, error) {
	r := &replayer{l: l, segs: map[uint64]*segment{}, sets: map[string]map[ID]struct{}{}}
	for i, seq := range seqs {
		last := i == len(seqs)-1
		seg := newSegment(l.dir, seq)
		flag := os.O_RDONLY
		if last {
			flag = os.O_RDWR // to truncate a torn tail
		}
		// Startup: an open that fails, for want of file descriptors
		// too, fails Open; nothing is served yet. The file stays open
		// while the segment lives, so delivery never opens one.
		f, err := l.fs.OpenFile(seg.path, flag, 0)
		if err != nil {
			return 0, fmt.Errorf("store: %w", err)
		}
		seg.f = f
		l.segs = append(l.segs, seg)
		if seg.size, err = f.Size(); err != nil {
			return 0, fmt.Errorf("store: %s: %w", seg.path, err)
		}
		l.total += seg.size
		r.segs[seq] = seg
		r.devSets, r.devSetBytes = map[setHash][]string{}, 0
		if err := r.segment(seg, last); err != nil {
			return 0, err
		}
		if last {
			// What the last run wrote after its last fsync may still be
			// only in the page cache (it stopped, but the machine did
			// not). The next segment, created below, must not reach the
			// disk before it does: damage in a segment other than the
			// last is damage to durable data, and would stop the next
			// recovery.
			if err := f.Sync(); err != nil {
				return 0, fmt.Errorf("store: %s: %w", seg.path, err)
			}
		}
	}
	r.devSets = nil
	return r.maxID, r.finish()
}

// scanner reads a segment file through a window.
type scanner struct {
	f    durable.File
	size int64
	buf  []byte
	base int64 // file offset of buf[0]
}

// get returns the n bytes at off (which the caller has checked lie in the
// file). The slice is valid until the next call.
func (s *scanner) get(off, n int64) ([]byte, error) {
	if off >= s.base && off+n <= s.base+int64(len(s.buf)) {
		return s.buf[off-s.base : off-s.base+n], nil
	}
	want := min(max(n, readWindow), s.size-off)
	if int64(cap(s.buf)) < want {
		s.buf = make([]byte, want)
	}
	s.buf = s.buf[:want]
	s.base = off
	if got, err := s.f.ReadAt(s.buf, off); int64(got) < want {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		s.buf = s.buf[:0]
		return nil, err
	}
	return s.buf[:n], nil
}

// frameState is what scanning found at an offset.
type frameState int

const (
	frameOK      frameState = iota
	frameTorn               // not an intact frame: header or payload damaged or cut short
	frameCorrupt            // intact checksums but impossible content: never a torn write
)

// frame reads the frame at off. For frameTorn, hdrOK tells whether the
// header itself was intact (then fh is valid).
func (s *scanner) frame(off int64) (fh frameHeader, p []byte, st frameState, hdrOK bool, err error) {
	if s.size-off < frameHeaderSize {
		return fh, nil, frameTorn, false, nil
	}
	h, err := s.get(off, frameHeaderSize)
	if err != nil {
		return fh, nil, 0, false, err
	}
	fh, ok := parseFrameHeader(h)
	if !ok {
		return fh, nil, frameTorn, false, nil
	}
	if cerr := fh.check(h); cerr != nil {
		return fh, nil, frameCorrupt, true, cerr
	}
	if fh.n > s.size-off-frameHeaderSize {
		return fh, nil, frameTorn, true, nil
	}
	p, err = s.get(off+frameHeaderSize, fh.n)
	if err != nil {
		return fh, nil, 0, true, err
	}
	if checksum(p) != fh.sum {
		return fh, nil, frameTorn, true, nil
	}
	return fh, p, frameOK, true, nil
}

// segment replays one segment.
func (r *replayer) segment(seg *segment, last bool) error {
	s := &scanner{f: seg.f, size: seg.size}
	var off int64
	var epoch uint32 // of the last intact frame
	seen := false    // an intact frame has been read
	for off < seg.size {
		fh, p, st, hdrOK, err := s.frame(off)
		switch {
		case st == frameCorrupt:
			return fmt.Errorf("store: %s: corrupt record at offset %d: %v", seg.path, off, err)
		case err != nil:
			return fmt.Errorf("store: %s: read at offset %d: %w", seg.path, off, err)
		case st == frameTorn && !last:
			// Segments before the last were fsynced whole before the next
			// was created: damage here is damage to durable data.
			return fmt.Errorf("store: %s: corrupt record at offset %d", seg.path, off)
		case st == frameTorn:
			// The damaged frame was written in the epoch of the frame
			// before it or, if an fsync came between, in the next one;
			// the first frame of a segment in epoch 0.
			above := epoch + 1
			switch {
			case hdrOK:
				above = fh.epoch
			case !seen:
				above = 0
			}
			return r.tornTail(seg, s, off, above)
		case fh.epoch < epoch:
			return fmt.Errorf("store: %s: corrupt record at offset %d: epoch %d after %d", seg.path, off, fh.epoch, epoch)
		}
		if err := r.record(seg, off, fh, p); err != nil {
			return fmt.Errorf("store: %s: corrupt record at offset %d: %w", seg.path, off, err)
		}
		epoch, seen = fh.epoch, true
		off += frameHeaderSize + fh.n
	}
	return nil
}

// tornTail handles a damaged frame at off in the last segment. If it is part
// of what the last crash left half-written, everything from off on was never
// durable (so never acknowledged) and is truncated away. But if an intact
// frame later in the file was written after an fsync that must have covered
// the damaged frame (its epoch is above above), the damage is to durable data
// and recovery refuses to go on.
func (r *replayer) tornTail(seg *segment, s *scanner, off int64, above uint32) error {
	at, found, err := s.findFrame(off+1, above)
	if err != nil {
		return fmt.Errorf("store: %s: read: %w", seg.path, err)
	}
	if found {
		return fmt.Errorf("store: %s: corrupt record at offset %d (the record at offset %d was written after it was durable)",
			seg.path, off, at)
	}
	r.l.log.Warn("store: truncating torn tail", "file", seg.path, "offset", off, "dropped", seg.size-off)
	if err := seg.f.Truncate(off); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := seg.f.Sync(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	r.l.total -= seg.size - off
	seg.size = off
	return nil
}

// findFrame looks at every offset from from on for an intact frame with an
// epoch above above.
func (s *scanner) findFrame(from int64, above uint32) (int64, bool, error) {
	for base := from; base+frameHeaderSize <= s.size; {
		n := min(int64(readWindow), s.size-base)
		win, err := s.get(base, n)
		if err != nil {
			return 0, false, err
		}
		win = slices.Clone(win) // s.get below reuses the buffer
		for i := 0; i+frameHeaderSize <= len(win); i++ {
			h := win[i : i+frameHeaderSize]
			fh, ok := parseFrameHeader(h)
			if !ok || fh.check(h) != nil || fh.epoch <= above {
				continue
			}
			at := base + int64(i)
			if fh.n > s.size-at-frameHeaderSize {
				continue
			}
			p, err := s.get(at+frameHeaderSize, fh.n)
			if err != nil {
				return 0, false, err
			}
			if checksum(p) == fh.sum {
				return at, true, nil
			}
		}
		// Step so that every header position is examined once.
		base += max(n-frameHeaderSize+1, 1)
	}
	return 0, false, nil
}

// record applies one intact record.
func (r *replayer) record(seg *segment, off int64, fh frameHeader, p []byte) error {
	switch fh.typ {
	case recChunk:
		return nil // named by a later commit or copy record
	case recCommit, recCopy, recCommitV1, recCopyV1:
		return r.blobRecord(seg, off, fh, p)
	case recAck:
		dev, id, err := decodeAck(p)
		if err != nil {
			return err
		}
		r.ack(dev, id)
		return nil
	case recQueue:
		dst, ids, err := decodeQueue(p)
		if err != nil {
			return err
		}
		r.queue(dst, ids)
		return nil
	}
	return fmt.Errorf("unknown record type %d", fh.typ)
}

func (r *replayer) blobRecord(seg *segment, off int64, fh frameHeader, p []byte) error {
	l := r.l
	_, v1 := fh.typ.blob()
	br, msgs, err := decodeBlobPayload(p, v1)
	if err != nil {
		return err
	}
	if len(msgs) == 0 {
		return errors.New("record without messages")
	}
	for _, s := range br.sets {
		if _, dup := r.devSets[s.hash]; dup {
			continue
		}
		r.devSets[s.hash] = s.devs
		r.devSetBytes += s.size
		if len(r.devSets) > maxSegSets || r.devSetBytes > maxSegSetBytes {
			return fmt.Errorf("device sets over the segment's limit (%d sets, %d octets)", len(r.devSets), r.devSetBytes)
		}
	}
	if fh.typ.copyType() && len(msgs) != 1 {
		return fmt.Errorf("copy record of %d messages", len(msgs))
	}
	b := &blob{
		seg:     seg,
		recOff:  off,
		first:   msgs[0].id,
		recLen:  uint32(frameHeaderSize + fh.n),
		tailRel: uint32(frameHeaderSize + br.tailPos),
		tailLen: uint32(br.tailLen),
		count:   uint32(len(msgs)),
	}
	for _, c := range br.chunks {
		cs := r.segs[c.seq]
		switch {
		case cs == nil && c.seq < l.segs[0].seq:
			// Deleted by compaction: fine if every message using it has
			// died or moved by the end of replay.
			b.missing = true
		case cs == nil || c.seq > seg.seq:
			return fmt.Errorf("chunk in segment %d, which is not before this one", c.seq)
		case c.off < frameHeaderSize || c.off+c.n > cs.size || (cs == seg && c.off+c.n > off):
			return fmt.Errorf("chunk [%d,+%d) outside segment %d", c.off, c.n, c.seq)
		}
		b.chunks = append(b.chunks, chunk{seg: cs, off: c.off, n: c.n})
	}
	for i := range msgs {
		rm := &msgs[i]
		if rm.id != b.first+ID(i) {
			return fmt.Errorf("message ids not consecutive: %v after %v", rm.id, b.first)
		}
		r.maxID = max(r.maxID, rm.id)
		m := l.msgs[rm.id]
		if rm.ref {
			// A set is shared by the messages using it: rm.devs is only
			// read, never changed.
			devs, ok := r.devSets[rm.set]
			if !ok {
				return fmt.Errorf("message %v: device set %x not defined in this segment", rm.id, rm.set[:8])
			}
			rm.devs = devs
		}
		if m != nil {
			if !fh.typ.copyType() {
				return fmt.Errorf("message %v committed twice", rm.id)
			}
			l.relocate(m, b, rm)
			continue
		}
		// A new message, or a copy whose original was in a deleted segment
		// (then its devices are those that still had it when it was copied).
		devs := rm.devs
		if !rm.ref {
			devs = dedup(rm.devs)
		}
		if len(devs) == 0 {
			continue
		}
		rm.devs = devs
		l.msgs[rm.id] = l.newMessage(b, rm)
		for _, dev := range devs {
			set := r.sets[dev]
			if set == nil {
				set = map[ID]struct{}{}
				r.sets[dev] = set
			}
			set[rm.id] = struct{}{}
		}
	}
	return nil
}

func (r *replayer) ack(dev string, id ID) {
	set := r.sets[dev]
	if _, ok := set[id]; !ok {
		return // the message died or moved with a deleted segment
	}
	delete(set, id)
	r.l.unref(id, r.l.msgs[id])
}

func (r *replayer) queue(dst string, ids []ID) {
	l := r.l
	set := make(map[ID]struct{}, len(ids))
	for _, id := range ids {
		if m := l.msgs[id]; m != nil {
			if _, dup := set[id]; !dup {
				set[id] = struct{}{}
				m.refs++
			}
		}
	}
	for id := range r.sets[dst] {
		l.unref(id, l.msgs[id])
	}
	r.sets[dst] = set
}

// finish checks that every live message has its data and builds the queues.
func (r *replayer) finish() error {
	l := r.l
	for id, m := range l.msgs {
		if m.blob.missing {
			return fmt.Errorf("store: message %v: its data was in a deleted segment", id)
		}
	}
	for dev, set := range r.sets {
		if len(set) == 0 {
			continue
		}
		q := &devQueue{}
		for id := range set {
			p := l.msgs[id].prio
			q.prio[p].ids = append(q.prio[p].ids, id)
		}
		for p := range q.prio {
			slices.Sort(q.prio[p].ids)
		}
		l.recount(q)
		l.queues[dev] = q
	}
	return nil
}

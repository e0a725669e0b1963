package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"testing"

	"mnm/durable"
)

// appendBlobPayloadV1 encodes a commit or copy record in the format written
// before device sets (recCommitV1, recCopyV1), which the store still reads:
// tests use it to build such logs.
func appendBlobPayloadV1(buf []byte, chunks []chunk, tail []byte, msgs []recMsg) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(chunks)))
	for _, c := range chunks {
		buf = binary.AppendUvarint(buf, c.seg.seq)
		buf = binary.AppendUvarint(buf, uint64(c.off))
		buf = binary.AppendUvarint(buf, uint64(c.n))
	}
	buf = binary.AppendUvarint(buf, uint64(len(tail)))
	buf = append(buf, tail...)
	buf = binary.AppendUvarint(buf, uint64(len(msgs)))
	for _, m := range msgs {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(m.id))
		buf = append(buf, byte(m.prio))
		buf = binary.AppendUvarint(buf, uint64(m.off))
		buf = binary.AppendUvarint(buf, uint64(m.n))
		buf = binary.AppendUvarint(buf, uint64(len(m.env)))
		buf = append(buf, m.env...)
		buf = binary.AppendUvarint(buf, uint64(len(m.devs)))
		buf = appendDevs(buf, m.devs)
	}
	return buf
}

// bigSet returns n sorted device keys, enough for a device set if n is at
// least minSetDevs.
func bigSet(tag string, n int) []string {
	devs := make([]string, n)
	for i := range devs {
		devs[i] = fmt.Sprintf("%s%04d", tag, i)
	}
	return devs
}

// refMsg returns m referring to the set of devs.
func refMsg(m recMsg, devs []string) recMsg {
	m.devs, m.ref, m.set = devs, true, hashSet(devs)
	return m
}

func TestBlobPayloadRoundTrip(t *testing.T) {
	s1, s2 := &segment{seq: 1}, &segment{seq: 7}
	chunks := []chunk{{seg: s1, off: 20, n: 100}, {seg: s2, off: 4000, n: 100}}
	group := bigSet("g", minSetDevs)
	msgs := []recMsg{
		{id: 42, prio: High, secret: true, off: 0, n: 10, env: []byte("envelope"), devs: []string{"a", "b"}},
		{id: 43, prio: Normal, off: 10, n: 195, env: nil, devs: nil},
		refMsg(recMsg{id: 44, prio: High, off: 5, n: 1, env: []byte("e")}, group),
		refMsg(recMsg{id: 45, off: 0, n: 0}, group), // the same set: defined once
	}
	tail := []byte("tail-data")
	p, tailPos := appendBlobPayload(nil, chunks, tail, []int{2}, msgs)
	b, got, err := decodeBlobPayload(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if b.tailPos != tailPos || b.tailLen != int64(len(tail)) || b.size != 209 || len(b.chunks) != 2 ||
		b.chunks[1] != (chunkRef{seq: 7, off: 4000, n: 100}) {
		t.Errorf("blob %+v, tailPos %d", b, tailPos)
	}
	if len(b.sets) != 1 || b.sets[0].hash != hashSet(group) || !slices.Equal(b.sets[0].devs, group) ||
		b.sets[0].size != setLen(group) {
		t.Errorf("sets %+v, want the group's definition", b.sets)
	}
	for i, m := range got {
		w := msgs[i]
		wantDevs := w.devs
		if w.ref {
			wantDevs = nil // references come back unresolved
		}
		if m.id != w.id || m.prio != w.prio || m.secret != w.secret || m.off != w.off || m.n != w.n ||
			!bytes.Equal(m.env, w.env) || !slices.Equal(m.devs, wantDevs) || m.ref != w.ref || m.set != w.set ||
			m.envPos != w.envPos || m.envLen != len(w.env) {
			t.Errorf("message %d = %+v, want %+v", i, m, w)
		}
		if !bytes.Equal(p[m.envPos:m.envPos+m.envLen], w.env) {
			t.Errorf("message %d envPos does not locate the envelope", i)
		}
	}
	// A reference costs its hash, not its devices.
	if n := len(p); n > 2*setLen(group)+200 {
		t.Errorf("payload of %d octets for two references to a %d-octet set", n, setLen(group))
	}

	// The old format still decodes, without sets or secrets.
	old := []recMsg{{id: 7, prio: High, off: 0, n: 3, env: []byte("v1"), devs: []string{"x", "y"}}}
	p1 := appendBlobPayloadV1(nil, nil, []byte("old"), old)
	if b, got, err := decodeBlobPayload(p1, true); err != nil || len(b.sets) != 0 || len(got) != 1 ||
		got[0].id != 7 || got[0].prio != High || got[0].secret || !slices.Equal(got[0].devs, old[0].devs) {
		t.Errorf("v1 record = %+v %+v %v", b, got, err)
	}

	// Damage: a range outside the data, trailing bytes, truncation.
	bad, _ := appendBlobPayload(nil, nil, []byte("x"), nil, []recMsg{{id: 1, off: 0, n: 2}})
	if _, _, err := decodeBlobPayload(bad, false); err == nil {
		t.Error("range outside data accepted")
	}
	if _, _, err := decodeBlobPayload(append(slices.Clone(p), 0), false); err == nil {
		t.Error("trailing byte accepted")
	}
	for n := range len(p) {
		if _, _, err := decodeBlobPayload(p[:n], false); err == nil {
			t.Errorf("payload cut at %d accepted", n)
		}
	}
}

// Impossible contents of the new record format are errors, not panics.
func TestBlobPayloadDamage(t *testing.T) {
	msg := func(flags, kind byte) []byte {
		p := binary.AppendUvarint(nil, 0) // chunks
		p = binary.AppendUvarint(p, 0)    // tail
		p = binary.AppendUvarint(p, 0)    // sets
		p = binary.AppendUvarint(p, 1)    // messages
		p = binary.LittleEndian.AppendUint64(p, 9)
		p = append(p, flags, 0, 0, 0, kind) // off, len, envlen, devices
		if kind == devsListed {
			p = append(p, 0)
		} else {
			p = append(p, make([]byte, sha256.Size)...)
		}
		return p
	}
	if _, _, err := decodeBlobPayload(msg(byte(High)|flagSecret, devsListed), false); err != nil {
		t.Fatalf("valid message refused: %v", err)
	}
	if _, _, err := decodeBlobPayload(msg(byte(High)|flagSecret, devsRef), false); err != nil {
		t.Fatalf("valid reference refused: %v", err)
	}
	if _, _, err := decodeBlobPayload(msg(5, devsListed), false); err == nil {
		t.Error("priority 5 accepted")
	}
	if _, _, err := decodeBlobPayload(msg(flagSecret, devsListed), true); err == nil {
		t.Error("a flag bit accepted in a v1 record's priority")
	}
	if _, _, err := decodeBlobPayload(msg(0, 2), false); err == nil {
		t.Error("device field kind 2 accepted")
	}
	set := func(devs ...string) []byte {
		p := binary.AppendUvarint(nil, 0) // chunks
		p = binary.AppendUvarint(p, 0)    // tail
		p = binary.AppendUvarint(p, 1)    // sets
		raw := appendDevs(nil, devs)
		p = binary.AppendUvarint(p, uint64(len(raw)))
		p = append(p, raw...)
		return binary.AppendUvarint(p, 0) // messages
	}
	if _, _, err := decodeBlobPayload(set("a", "b"), false); err != nil {
		t.Fatalf("valid set refused: %v", err)
	}
	for name, p := range map[string][]byte{
		"unsorted":  set("b", "a"),
		"duplicate": set("a", "a"),
		"empty":     set(),
	} {
		if _, _, err := decodeBlobPayload(p, false); err == nil {
			t.Errorf("%s device set accepted", name)
		}
	}
}

func TestFrameHeader(t *testing.T) {
	f := beginFrame(nil, recAck)
	f = appendAckPayload(f, "dev", 9)
	endFrame(f)
	stampFrame(f, 5)
	fh, ok := parseFrameHeader(f)
	if !ok || fh.typ != recAck || fh.epoch != 5 || fh.n != int64(len(f)-frameHeaderSize) || fh.check(f) != nil {
		t.Fatalf("header %+v ok %v", fh, ok)
	}
	for i := range frameHeaderSize {
		g := slices.Clone(f)
		g[i] ^= 0x10
		if _, ok := parseFrameHeader(g); ok {
			t.Errorf("header with byte %d flipped parses", i)
		}
	}
	dev, id, err := decodeAck(f[frameHeaderSize:])
	if dev != "dev" || id != 9 || err != nil {
		t.Errorf("ack = %q %v %v", dev, id, err)
	}
}

// Decoders never panic and never accept trailing garbage, whatever the input.
func FuzzDecodeRecord(f *testing.F) {
	s := &segment{seq: 3}
	commit, _ := appendBlobPayload(nil, []chunk{{seg: s, off: 20, n: 5}}, []byte("tail"), nil,
		[]recMsg{{id: 1, off: 0, n: 9, env: []byte("e"), devs: []string{"a"}}})
	group := bigSet("d", minSetDevs)
	withSet, _ := appendBlobPayload(nil, nil, []byte("x"), []int{0},
		[]recMsg{refMsg(recMsg{id: 2, n: 1, secret: true}, group), refMsg(recMsg{id: 3}, group)})
	refOnly, _ := appendBlobPayload(nil, nil, nil, nil, []recMsg{refMsg(recMsg{id: 4}, group)})
	f.Add(commit)                                                                                        // a valid commit
	f.Add(withSet)                                                                                       // a commit defining a device set, two secret/plain references to it
	f.Add(refOnly)                                                                                       // a commit referring to a set defined elsewhere
	f.Add(appendBlobPayloadV1(nil, nil, []byte("t"), []recMsg{{id: 1, n: 1, devs: []string{"a", "b"}}})) // the old format
	f.Add(appendAckPayload(nil, "device", 77))                                                           // a valid ack
	f.Add(appendQueuePayload(nil, "d", []ID{1, 2}))                                                      // a valid queue copy
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})                                                          // a huge count
	f.Add([]byte{})                                                                                      // nothing
	f.Fuzz(func(t *testing.T, p []byte) {
		for _, v1 := range []bool{false, true} {
			b, msgs, err := decodeBlobPayload(p, v1)
			if err != nil {
				continue
			}
			for _, m := range msgs {
				if m.off+m.n > b.size || m.envPos+m.envLen > len(p) {
					t.Fatalf("accepted message outside the payload: %+v", m)
				}
				if m.ref && (v1 || m.devs != nil) {
					t.Fatalf("bad reference accepted: %+v", m)
				}
			}
			for _, s := range b.sets {
				if len(s.devs) == 0 || !slices.IsSorted(s.devs) || s.hash != hashSet(s.devs) {
					t.Fatalf("accepted a set that is not canonical: %+v", s)
				}
			}
		}
		decodeAck(p)
		decodeQueue(p)
		parseFrameHeader(p)
	})
}

// Recovery of an arbitrary segment file never panics: it fails or opens.
func FuzzRecover(f *testing.F) {
	// Seed: a real segment with commits, an ack and a queue copy. (Small:
	// the fuzzer slows to a crawl on inputs the size of a chunk.)
	m := durable.NewMemFS()
	l, err := Open(Options{Dir: testDir, FS: m, Logger: quiet()})
	if err != nil {
		f.Fatal(err)
	}
	d := l.Draft()
	d.Write([]byte("zzzzzzzzzzzz"))
	d.Commit(Message{To: []string{"a", "b"}, Len: 5}, Message{To: []string{"c"}, Off: 5, Len: 7})
	id, _ := l.Head("a")
	l.Ack("a", id)
	l.CopyQueue("b", "e")
	// A group post defining a device set, a second one referring to it,
	// and a secret message.
	group := append(bigSet("", minSetDevs-1), "a")
	post(f, l, Normal, []byte("g1"), group...)
	post(f, l, Normal, []byte("g2"), group...)
	d = l.Draft()
	d.Commit(Message{Prio: High, To: []string{"b"}, Secret: true})
	l.Close()
	seg, _ := m.ReadFile(testDir + "/" + segName(1))
	offs := frameOffsets(f, seg)
	f.Add(seg)                                                             // a valid segment
	f.Add(seg[:len(seg)-7])                                                // a torn tail
	f.Add(make([]byte, 100))                                               // zeroes
	f.Add(seg[:offs[len(offs)-3]])                                         // up to the first group post
	f.Add(slices.Concat(seg[:offs[len(offs)-3]], seg[offs[len(offs)-2]:])) // the reference without its definition
	f.Fuzz(func(t *testing.T, data []byte) {
		m := durable.NewMemFS()
		m.MkdirAll(testDir, 0o700)
		m.WriteFile(testDir+"/"+segName(1), data)
		l, err := Open(Options{Dir: testDir, FS: m, Logger: quiet()})
		if err != nil {
			return
		}
		for _, dev := range []string{"a", "b", "c", "e", "0000"} {
			if id, ok := l.Head(dev); ok {
				l.WriteTo(&bytes.Buffer{}, id)
			}
		}
		l.Close()
	})
}

// frameRecords turns data into a segment of validly framed records, so that
// fuzzing reaches replay logic past the checksums: each record is a type
// octet, a 2-octet length and that much payload.
func frameRecords(data []byte) []byte {
	var seg []byte
	for len(data) >= 3 {
		t := recType(data[0])
		n := min(int(binary.LittleEndian.Uint16(data[1:])), len(data)-3)
		start := len(seg)
		seg = beginFrame(seg, t)
		seg = append(seg, data[3:3+n]...)
		endFrame(seg[start:])
		data = data[3+n:]
	}
	return seg
}

// recordSeeds returns records in frameRecords' input form.
func recordSeeds(recs ...[]byte) []byte {
	var b []byte
	for _, r := range recs {
		b = append(b, r[0])
		b = binary.LittleEndian.AppendUint16(b, uint16(len(r)-1))
		b = append(b, r[1:]...)
	}
	return b
}

// Replay of well-framed but arbitrary records never panics, and what it
// accepts is consistent: every queued message is readable.
func FuzzReplayRecords(f *testing.F) {
	s1 := &segment{seq: 1}
	rec := func(t recType, p []byte) []byte { return append([]byte{byte(t)}, p...) }
	commit := appendBlobPayloadV1(nil, nil, []byte("data"),
		[]recMsg{{id: 5, off: 0, n: 4, env: []byte("e"), devs: []string{"a", "b"}}})
	chunked := appendBlobPayloadV1(nil, []chunk{{seg: s1, off: frameHeaderSize, n: 3}}, []byte("t"),
		[]recMsg{{id: 6, off: 1, n: 3, devs: []string{"a"}}})
	cp := appendBlobPayloadV1(nil, nil, []byte("copy"), []recMsg{{id: 5, n: 4, devs: []string{"b"}}})
	// Old format: a commit, an ack, a queue copy and a copy record.
	f.Add(recordSeeds(rec(recCommitV1, commit),
		rec(recAck, appendAckPayload(nil, "a", 5)),
		rec(recQueue, appendQueuePayload(nil, "c", []ID{5})),
		rec(recCopyV1, cp)))
	// A chunk and a commit using it.
	f.Add(recordSeeds([]byte{byte(recChunk), 'x', 'y', 'z'}, rec(recCommitV1, chunked)))
	// A commit of an id twice.
	f.Add(recordSeeds(rec(recCommitV1, commit), rec(recCommitV1, commit)))

	// Device sets (small ones: the fuzzer slows on big inputs, and the
	// replayer does not care how many devices a set has).
	group := []string{"a", "b", "c"}
	def, _ := appendBlobPayload(nil, nil, []byte("g1"), []int{0},
		[]recMsg{refMsg(recMsg{id: 7, n: 2, env: []byte("e")}, group)})
	ref, _ := appendBlobPayload(nil, nil, []byte("g2"), nil, []recMsg{refMsg(recMsg{id: 8, n: 2}, group)})
	secret, _ := appendBlobPayload(nil, nil, []byte("s"), nil,
		[]recMsg{{id: 9, prio: High, secret: true, n: 1, devs: []string{"a"}}})
	cpRef, _ := appendBlobPayload(nil, nil, []byte("g1"), nil, []recMsg{refMsg(recMsg{id: 7, n: 2}, group)})
	// A set defined, referred to by a later commit and a copy; a secret
	// message acked.
	f.Add(recordSeeds(rec(recCommit, def), rec(recCommit, ref), rec(recCopy, cpRef),
		rec(recCommit, secret), rec(recAck, appendAckPayload(nil, "a", 9))))
	// A reference to a set never defined.
	f.Add(recordSeeds(rec(recCommit, ref)))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := durable.NewMemFS()
		m.MkdirAll(testDir, 0o700)
		m.WriteFile(testDir+"/"+segName(1), frameRecords(data))
		l, err := Open(Options{Dir: testDir, FS: m, Logger: quiet()})
		if err != nil {
			return
		}
		defer l.Close()
		l.mu.Lock()
		var devs []string
		for dev := range l.queues {
			devs = append(devs, dev)
		}
		l.mu.Unlock()
		for _, dev := range devs {
			for _, id := range l.Queue(dev) {
				if _, err := l.WriteTo(io.Discard, id); err != nil {
					t.Fatalf("queued message %v unreadable: %v", id, err)
				}
			}
		}
	})
}

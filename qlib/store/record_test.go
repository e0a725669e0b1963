package store

import (
	"bytes"
	"encoding/binary"
	"io"
	"slices"
	"testing"
)

func TestBlobPayloadRoundTrip(t *testing.T) {
	s1, s2 := &segment{seq: 1}, &segment{seq: 7}
	chunks := []chunk{{seg: s1, off: 20, n: 100}, {seg: s2, off: 4000, n: 100}}
	msgs := []recMsg{
		{id: 42, prio: High, off: 0, n: 10, env: []byte("envelope"), devs: []string{"a", "b"}},
		{id: 43, prio: Normal, off: 10, n: 195, env: nil, devs: nil},
	}
	tail := []byte("tail-data")
	p, tailPos := appendBlobPayload(nil, chunks, tail, msgs)
	b, got, err := decodeBlobPayload(p)
	if err != nil {
		t.Fatal(err)
	}
	if b.tailPos != tailPos || b.tailLen != int64(len(tail)) || b.size != 209 || len(b.chunks) != 2 ||
		b.chunks[1] != (chunkRef{seq: 7, off: 4000, n: 100}) {
		t.Errorf("blob %+v, tailPos %d", b, tailPos)
	}
	for i, m := range got {
		w := msgs[i]
		if m.id != w.id || m.prio != w.prio || m.off != w.off || m.n != w.n || !bytes.Equal(m.env, w.env) ||
			!slices.Equal(m.devs, w.devs) || m.envPos != w.envPos || m.envLen != len(w.env) {
			t.Errorf("message %d = %+v, want %+v", i, m, w)
		}
		if !bytes.Equal(p[m.envPos:m.envPos+m.envLen], w.env) {
			t.Errorf("message %d envPos does not locate the envelope", i)
		}
	}
	// Damage: a range outside the data, trailing bytes, truncation.
	bad, _ := appendBlobPayload(nil, nil, []byte("x"), []recMsg{{id: 1, off: 0, n: 2}})
	if _, _, err := decodeBlobPayload(bad); err == nil {
		t.Error("range outside data accepted")
	}
	if _, _, err := decodeBlobPayload(append(slices.Clone(p), 0)); err == nil {
		t.Error("trailing byte accepted")
	}
	for n := range len(p) {
		if _, _, err := decodeBlobPayload(p[:n]); err == nil {
			t.Errorf("payload cut at %d accepted", n)
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
	commit, _ := appendBlobPayload(nil, []chunk{{seg: s, off: 20, n: 5}}, []byte("tail"),
		[]recMsg{{id: 1, off: 0, n: 9, env: []byte("e"), devs: []string{"a"}}})
	f.Add(commit)                                   // a valid commit
	f.Add(appendAckPayload(nil, "device", 77))      // a valid ack
	f.Add(appendQueuePayload(nil, "d", []ID{1, 2})) // a valid queue copy
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})     // a huge count
	f.Add([]byte{})                                 // nothing
	f.Fuzz(func(t *testing.T, p []byte) {
		if b, msgs, err := decodeBlobPayload(p); err == nil {
			for _, m := range msgs {
				if m.off+m.n > b.size || m.envPos+m.envLen > len(p) {
					t.Fatalf("accepted message outside the payload: %+v", m)
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
	m := NewMemFS()
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
	l.Close()
	seg, _ := m.ReadFile(testDir + "/" + segName(1))
	f.Add(seg)               // a valid segment
	f.Add(seg[:len(seg)-7])  // a torn tail
	f.Add(make([]byte, 100)) // zeroes
	f.Fuzz(func(t *testing.T, data []byte) {
		m := NewMemFS()
		m.MkdirAll(testDir, 0o700)
		m.WriteFile(testDir+"/"+segName(1), data)
		l, err := Open(Options{Dir: testDir, FS: m, Logger: quiet()})
		if err != nil {
			return
		}
		for _, dev := range []string{"a", "b", "c", "e"} {
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
	commit, _ := appendBlobPayload(nil, nil, []byte("data"),
		[]recMsg{{id: 5, off: 0, n: 4, env: []byte("e"), devs: []string{"a", "b"}}})
	chunked, _ := appendBlobPayload(nil, []chunk{{seg: s1, off: frameHeaderSize, n: 3}}, []byte("t"),
		[]recMsg{{id: 6, off: 1, n: 3, devs: []string{"a"}}})
	cp, _ := appendBlobPayload(nil, nil, []byte("copy"), []recMsg{{id: 5, n: 4, devs: []string{"b"}}})
	// A commit, an ack, a queue copy and a copy record.
	f.Add(recordSeeds(append([]byte{byte(recCommit)}, commit...),
		append([]byte{byte(recAck)}, appendAckPayload(nil, "a", 5)...),
		append([]byte{byte(recQueue)}, appendQueuePayload(nil, "c", []ID{5})...),
		append([]byte{byte(recCopy)}, cp...)))
	// A chunk and a commit using it.
	f.Add(recordSeeds([]byte{byte(recChunk), 'x', 'y', 'z'}, append([]byte{byte(recCommit)}, chunked...)))
	// A commit of an id twice.
	f.Add(recordSeeds(append([]byte{byte(recCommit)}, commit...), append([]byte{byte(recCommit)}, commit...)))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := NewMemFS()
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

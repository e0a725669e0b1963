package store

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"mnm/durable"
)

// segRecords decodes the commit and copy records of the segment file name:
// for each, its type, the sets it defines and its messages.
type segRecord struct {
	typ  recType
	sets []setDef
	msgs []recMsg
}

func segRecords(t *testing.T, fsys *durable.MemFS, name string) []segRecord {
	t.Helper()
	b, err := fsys.ReadFile(testDir + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var recs []segRecord
	for _, off := range frameOffsets(t, b) {
		fh, ok := parseFrameHeader(b[off:])
		if !ok {
			t.Fatalf("%s: bad frame at %d", name, off)
		}
		isBlob, v1 := fh.typ.blob()
		if !isBlob {
			continue
		}
		br, msgs, err := decodeBlobPayload(b[off+frameHeaderSize:off+frameHeaderSize+int(fh.n)], v1)
		if err != nil {
			t.Fatalf("%s: record at %d: %v", name, off, err)
		}
		recs = append(recs, segRecord{typ: fh.typ, sets: br.sets, msgs: msgs})
	}
	return recs
}

// checkGroupQueues checks that each of devs has exactly ids queued.
func checkGroupQueues(t *testing.T, l *Log, devs []string, ids []ID) {
	t.Helper()
	for _, dev := range devs {
		if got := l.Queue(dev); !slices.Equal(got, ids) {
			t.Fatalf("%s has %v, want %v", dev, got, ids)
		}
	}
}

// The log grows by what is new: a post to a big group carries the group's
// device list once, the later ones a reference to it.
func TestGroupPostBytes(t *testing.T) {
	const (
		members = 5000
		posts   = 20
		// maxLaterPost bounds what a later post to the same devices may
		// append: its frame, data, envelope and a reference, nothing
		// proportional to the group.
		maxLaterPost = 1 << 10
	)
	l, fsys := openMem(t, nil)
	devs := groupDevices(members)
	list := setLen(dedup(devs))
	var ids []ID
	for i := range posts {
		_, before, _ := segStats(l)
		ids = append(ids, post(t, l, Normal, []byte{byte('a' + i)}, devs...))
		_, after, _ := segStats(l)
		switch n := after - before; {
		case i == 0 && n < int64(list):
			t.Errorf("first post appended %d octets, less than its %d-octet device list", n, list)
		case i > 0 && n >= maxLaterPost:
			t.Errorf("post %d appended %d octets, want < %d", i+1, n, maxLaterPost)
		}
	}
	recs := segRecords(t, fsys, segName(1))
	if len(recs) != posts || len(recs[0].sets) != 1 || !recs[0].msgs[0].ref {
		t.Fatalf("first record defines %d sets (want 1), %d records", len(recs[0].sets), len(recs))
	}
	for i, r := range recs[1:] {
		if len(r.sets) != 0 || !r.msgs[0].ref || r.msgs[0].set != recs[0].sets[0].hash {
			t.Errorf("record %d: %d sets, ref %v: want a reference to the first record's set", i+2, len(r.sets), r.msgs[0].ref)
		}
	}
	checkGroupQueues(t, l, devs, ids)
	l.Close()
	l2, _ := openMem(t, fsys)
	checkGroupQueues(t, l2, devs, ids)
	for _, id := range ids {
		if got := content(t, l2, id); !bytes.HasSuffix(got, []byte{byte('a' + int(id-ids[0]))}) {
			t.Errorf("message %v = %q after reopen", id, got)
		}
	}
}

// Each segment defines the sets its records use: references never cross
// segments, across reopens too, and recovery needs nothing from a segment
// before.
func TestDeviceSetsPerSegment(t *testing.T) {
	const segSize = 4 << 10
	small := func(o *Options) { o.SegmentSize = segSize }
	l, fsys := openMem(t, nil, small)
	group := bigSet("member", 40)
	other := bigSet("other", 20)
	var ids, otherIDs []ID
	for i := range 60 {
		ids = append(ids, post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 200), group...))
		if i%7 == 0 {
			otherIDs = append(otherIDs, post(t, l, High, []byte("other"), other...))
		}
		if i == 30 {
			// A reopen starts a new segment, which defines again.
			l.Close()
			l, _ = openMem(t, fsys, small)
		}
	}
	files := segFiles(t, fsys)
	if len(files) < 4 {
		t.Fatalf("only %d segments", len(files))
	}
	for _, name := range files {
		defined := map[setHash]bool{}
		for i, r := range segRecords(t, fsys, name) {
			for _, s := range r.sets {
				if defined[s.hash] {
					t.Errorf("%s record %d defines a set again", name, i)
				}
				defined[s.hash] = true
			}
			for _, m := range r.msgs {
				if !m.ref {
					t.Errorf("%s: message %v lists %d devices", name, m.id, len(m.devs))
				} else if !defined[m.set] {
					t.Errorf("%s: message %v refers to a set not defined before in the segment", name, m.id)
				}
			}
		}
	}
	check := func(l *Log) {
		t.Helper()
		checkGroupQueues(t, l, group, ids)
		checkGroupQueues(t, l, other, otherIDs)
	}
	check(l)
	l.Close()
	l2, _ := openMem(t, fsys, small)
	check(l2)
}

// Compaction copies a group post forward with the devices that still have
// it, as a set defined in the segment the copy goes to; dropping the old
// segment breaks nothing.
func TestDeviceSetsCompaction(t *testing.T) {
	const segSize = 8 << 10
	small := func(o *Options) { o.SegmentSize = segSize }
	l, fsys := openMem(t, nil, small)
	group := bigSet("member", 30)
	var kept []ID
	for i := range 6 {
		kept = append(kept, post(t, l, Normal, []byte(fmt.Sprint("group post ", i)), group...))
	}
	// Some members read everything: the copies are for the others.
	readers, waiting := group[:4], group[4:]
	for _, dev := range readers {
		drain(t, l, dev)
	}
	for i := range 200 {
		post(t, l, Normal, bytes.Repeat([]byte{byte(i)}, 300), "busy")
	}
	drain(t, l, "busy")
	bodies := map[ID][]byte{}
	for _, id := range kept {
		bodies[id] = content(t, l, id)
	}
	if !l.compactSync() {
		t.Fatal("store closed")
	}
	if _, err := fsys.ReadFile(testDir + "/" + segName(1)); err == nil {
		t.Fatal("the group posts' segment was not compacted away")
	}
	// The copies sit together in a later segment: one defines the set of
	// the waiting devices, the others refer to it. The background
	// compactor may have run before compactSync (the acks above make
	// segments mostly dead), so a message may have been copied more than
	// once, and an older copy may still be on disk in a segment not yet
	// reclaimed: every kept message has a copy, and the copies share sets.
	copied := map[ID]bool{}
	copies, defs := 0, 0
	for _, name := range segFiles(t, fsys) {
		for _, r := range segRecords(t, fsys, name) {
			if r.typ != recCopy || !slices.Contains(kept, r.msgs[0].id) {
				continue
			}
			copies++
			copied[r.msgs[0].id] = true
			defs += len(r.sets)
			if !r.msgs[0].ref {
				t.Errorf("copy of %v lists its devices", r.msgs[0].id)
			}
			for _, s := range r.sets {
				if !slices.Equal(s.devs, waiting) {
					t.Errorf("copy defines the set %v, want the waiting devices", s.devs)
				}
			}
		}
	}
	if len(copied) != len(kept) || defs < 1 || defs >= copies {
		t.Errorf("%d copies of %d messages defining %d sets, want copies of all %d sharing sets", copies, len(copied), defs, len(kept))
	}
	check := func(l *Log) {
		t.Helper()
		checkGroupQueues(t, l, readers, nil)
		checkGroupQueues(t, l, waiting, kept)
		for _, id := range kept {
			if got := content(t, l, id); !bytes.Equal(got, bodies[id]) {
				t.Errorf("message %v differs after compaction", id)
			}
		}
	}
	check(l)
	l.Close()
	l2, _ := openMem(t, fsys, small)
	check(l2)
}

// A reference to a set that its segment does not define is damage, never a
// panic, and the error names the file and offset.
func TestUnknownDeviceSet(t *testing.T) {
	group := bigSet("g", minSetDevs)
	ref, _ := appendBlobPayload(nil, nil, []byte("x"), nil, []recMsg{refMsg(recMsg{id: 5, n: 1}, group)})
	def, _ := appendBlobPayload(nil, nil, []byte("y"), []int{0}, []recMsg{refMsg(recMsg{id: 6, n: 1}, group)})
	frame := func(t recType, p []byte) []byte {
		f := beginFrame(nil, t)
		f = append(f, p...)
		endFrame(f)
		return f
	}
	cases := map[string][][]byte{
		"never defined": {frame(recCommit, ref)},
		// A definition in an earlier segment does not count.
		"defined in the segment before": {frame(recCommit, def), frame(recCommit, ref)},
	}
	for name, segs := range cases {
		t.Run(name, func(t *testing.T) {
			fsys := durable.NewMemFS()
			fsys.MkdirAll(testDir, 0o700)
			for i, seg := range segs {
				fsys.WriteFile(testDir+"/"+segName(uint64(i+1)), seg)
			}
			_, err := Open(Options{Dir: testDir, FS: fsys, Logger: quiet()})
			last := segName(uint64(len(segs)))
			if err == nil || !strings.Contains(err.Error(), "not defined") || !strings.Contains(err.Error(), last) ||
				!strings.Contains(err.Error(), "offset 0") {
				t.Errorf("Open = %v, want an error naming %s offset 0 and the undefined set", err, last)
			}
		})
	}
}

// planSets stops defining sets in a segment at its bounds, and lists the
// devices instead.
func TestDeviceSetBounds(t *testing.T) {
	group := bigSet("g", minSetDevs)
	msgs := []recMsg{{devs: group, set: hashSet(group)}, {devs: []string{"a"}}}
	seg := &segment{devSets: map[setHash]struct{}{}}
	if defs := planSets(seg, msgs, nil); !slices.Equal(defs, []int{0}) || !msgs[0].ref || msgs[1].ref {
		t.Fatalf("defs %v, refs %v %v: want the group defined and referred to", defs, msgs[0].ref, msgs[1].ref)
	}
	for i := range maxSegSets {
		seg.devSets[setHash{byte(i), byte(i >> 8), 1}] = struct{}{}
	}
	if defs := planSets(seg, msgs, nil); len(defs) != 0 || msgs[0].ref {
		t.Errorf("with %d sets defined: defs %v, ref %v, want the devices listed", maxSegSets, defs, msgs[0].ref)
	}
	seg = &segment{devSetBytes: maxSegSetBytes - setLen(group) + 1}
	if defs := planSets(seg, msgs, nil); len(defs) != 0 || msgs[0].ref {
		t.Errorf("with the set octets nearly used up: defs %v, ref %v, want the devices listed", defs, msgs[0].ref)
	}
	seg.devSets = map[setHash]struct{}{msgs[0].set: {}}
	if defs := planSets(seg, msgs, nil); len(defs) != 0 || !msgs[0].ref {
		t.Errorf("a set already defined: defs %v, ref %v, want a reference", defs, msgs[0].ref)
	}
}

// A commit defining a device set, cut short by a power loss during its
// fsync, is there for every device or for none, wherever the torn write
// ends; so is a later commit referring to the set.
func TestCrashDeviceSets(t *testing.T) {
	group := bigSet("member", 24)
	for _, name := range []string{"definition", "reference"} {
		t.Run(name, func(t *testing.T) {
			// run commits a group post (after one that defined the set,
			// for "reference") and loses power at its fsync, keeping
			// keep(unsynced) bytes.
			run := func(keep func(n int) int) (earlier []ID, after *Log, unsynced []byte) {
				l, fsys := openMem(t, nil)
				earlier = []ID{post(t, l, Normal, []byte("earlier"), group[0])}
				if name == "reference" {
					earlier = append(earlier, post(t, l, Normal, []byte("defines"), group...))
				}
				crash := powerLossAtSync(fsys, keep)
				d := l.Draft()
				d.Write([]byte("the post"))
				if _, err := d.Commit(Message{To: group, Len: 8}); err == nil {
					t.Fatal("commit succeeded although its fsync failed")
				}
				l.Close()
				crashed, unsynced := crash()
				after, _ = openMem(t, crashed)
				return earlier, after, unsynced
			}
			_, _, unsynced := run(func(int) int { return 0 })
			present := 0
			for k := range len(unsynced) + 1 {
				earlier, l, _ := run(func(int) int { return k })
				q := l.Queue(group[0])
				if len(q) < len(earlier) || !slices.Equal(q[:len(earlier)], earlier) {
					t.Fatalf("keep %d: durable messages lost: %v, want %v first", k, q, earlier)
				}
				rest := earlier[1:]
				switch len(q) - len(earlier) {
				case 0:
				case 1:
					present++
					rest = append(rest, q[len(q)-1])
					if got := content(t, l, q[len(q)-1]); !bytes.Equal(got, []byte("the post")) {
						t.Fatalf("keep %d: recovered post %q", k, got)
					}
				default:
					t.Fatalf("keep %d: %s has %v", k, group[0], q)
				}
				checkGroupQueues(t, l, group[1:], rest)
				l.Close()
			}
			if present == 0 {
				t.Error("the commit never survived, even with its whole record on disk")
			}
		})
	}
}

// Segments written before device sets (commitV1, copyV1 records) still
// recover, and new records follow them in a new segment.
func TestReadOldRecords(t *testing.T) {
	frame := func(t recType, p []byte) []byte {
		f := beginFrame(nil, t)
		f = append(f, p...)
		endFrame(f)
		return f
	}
	group := bigSet("g", minSetDevs)
	seg := slices.Concat(
		frame(recCommitV1, appendBlobPayloadV1(nil, nil, []byte("old"), []recMsg{{id: 5, prio: High, n: 3, env: []byte("E"), devs: group}})),
		frame(recCopyV1, appendBlobPayloadV1(nil, nil, []byte("old"), []recMsg{{id: 5, prio: High, n: 3, env: []byte("E"), devs: group[:3]}})),
	)
	fsys := durable.NewMemFS()
	fsys.MkdirAll(testDir, 0o700)
	fsys.WriteFile(testDir+"/"+segName(1), seg)
	l, _ := openMem(t, fsys)
	checkGroupQueues(t, l, group, []ID{5})
	if got := content(t, l, 5); string(got) != "Eold" {
		t.Errorf("old message = %q", got)
	}
	if err := l.Ack(group[0], 5); err != nil {
		t.Errorf("Ack of an old message = %v", err)
	}
	id := post(t, l, Normal, []byte("new"), group...)
	l.Close()
	l2, _ := openMem(t, fsys)
	checkGroupQueues(t, l2, group[:1], []ID{id})
	checkGroupQueues(t, l2, group[1:], []ID{5, id})
}

package store

import (
	"bytes"
	"io"
	"slices"
	"sync"
)

// Snapshots: a consistent copy of the log taken while it serves (mnm
// backup).
//
// A snapshot is the log as a crash at one instant would leave it, keeping
// every byte written by then: the segment files listed in the index at that
// instant, each cut at the length the writer had reached, and the id
// ceiling. Recovery accepts exactly that:
//
//   - every segment but the last is whole: the writer fsyncs a segment
//     before the next one gets its name and joins the index (rotate), so
//     no later write touches it;
//   - the last one is cut where the writer's last write ended, and the
//     writer writes whole frames (a batch is whole frames; seg.size grows
//     after each write, under mu), so the cut is at a record boundary: the
//     shape of a crash that lost nothing written, with no torn tail;
//   - segments deleted by compaction are not listed: a segment leaves the
//     index only after the records that killed its messages are durable
//     (dropOldest), and those records lie in the listed ones, before the
//     cut;
//   - the ceiling read afterwards covers every id in the listed records,
//     since a ceiling is persisted before ids below it are issued.
//
// Everything committed before Snapshot was called is in it: a commit
// returns after its batch is written (and fsynced), so its bytes are below
// the recorded length. Snapshot also makes whatever was appended before it
// durable first (a barrier), so acks appended just before are included too.
//
// While a snapshot is held, compaction deletes nothing (the oldest listed
// segment is pinned, and only the oldest can go), and the listed files stay
// open even if the store closes. Appends go on: the head grows past the
// recorded length, which the copy ignores.

// SnapshotFile is one file of a snapshot: its name in the store's directory
// and how many of its bytes belong to the snapshot.
type SnapshotFile struct {
	Name string
	Size int64
	r    io.ReaderAt
}

// Open returns a reader of the snapshot's Size bytes of the file.
func (f SnapshotFile) Open() io.Reader { return io.NewSectionReader(f.r, 0, f.Size) }

// Snapshot is a consistent cut of the log. Release it when done: until
// then compaction waits.
type Snapshot struct {
	l     *Log
	files []SnapshotFile
	segs  []*segment
	once  sync.Once
}

// Snapshot takes a snapshot of the log (see above). It fails if the store
// has failed or is closed.
func (l *Log) Snapshot() (*Snapshot, error) {
	if err := l.barrier(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if err := l.failure(); err != nil {
		return nil, err
	}
	s := &Snapshot{l: l, segs: slices.Clone(l.segs)}
	if len(s.segs) > 0 {
		// Pinned under mu: dropOldest checks pins under mu before it takes
		// a segment out of the index, so the oldest listed one stays, and
		// with it every later one.
		s.segs[0].pins.Add(1)
	}
	for _, seg := range s.segs {
		seg.readers++ // its file stays open until Release
		s.files = append(s.files, SnapshotFile{Name: segName(seg.seq), Size: seg.size, r: seg.f})
	}
	l.pendMu.Lock()
	ceiling := l.ceiling
	l.pendMu.Unlock()
	floor := []byte(ceiling.String() + "\n")
	s.files = append(s.files, SnapshotFile{Name: floorName, Size: int64(len(floor)), r: bytes.NewReader(floor)})
	return s, nil
}

// Files lists the snapshot's files: the segments, oldest first, then the id
// ceiling. Copied into an empty directory, they are a store Open accepts.
func (s *Snapshot) Files() []SnapshotFile { return s.files }

// Bytes is the total size of the snapshot's files.
func (s *Snapshot) Bytes() int64 {
	var n int64
	for _, f := range s.files {
		n += f.Size
	}
	return n
}

// Release lets compaction go on and closes files the store no longer needs.
// Readers from Open must not be used after it. Calling it again does
// nothing.
func (s *Snapshot) Release() {
	s.once.Do(func() {
		l := s.l
		l.mu.Lock()
		for _, seg := range s.segs {
			seg.readers--
			l.closeIfIdle(seg)
		}
		l.mu.Unlock()
		if len(s.segs) > 0 && s.segs[0].pins.Add(-1) == 0 {
			l.kickCompactor()
		}
	})
}

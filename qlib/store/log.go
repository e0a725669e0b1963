package store

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mnm/durable"
)

// Options configure Open.
type Options struct {
	Dir         string           // qstore directory; created if missing
	FS          durable.FS       // nil = the real OS filesystem
	Now         func() time.Time // clock (NTP-corrected by the caller); nil = time.Now
	SegmentSize int64            // target segment size; 0 = default (64 MiB)
	Logger      *slog.Logger     // nil = slog.Default()
	// MinFree, if positive, is the free space (bytes, as FS.Free reports
	// it) below which new messages are refused with ErrFull, before the
	// disk is actually full. Acks, queue copies and compaction go on: they
	// free space or need little of it. 0 = no watermark.
	MinFree int64
	// CommitSeconds, if set, observes how long each durable write takes:
	// writing a batch of commits and fsyncing it, in seconds. Called from
	// the writer goroutine: it must be quick.
	CommitSeconds Observer
}

// Observer takes one measurement; a Prometheus histogram is one.
type Observer interface {
	Observe(float64)
}

const (
	// defaultSegmentSize is the unit of space reclamation: big enough that
	// rotations (two fsyncs and a directory fsync) are rare, small enough that
	// copying a segment's few live messages forward is quick.
	defaultSegmentSize = 64 << 20

	// chunkSize is how much of a draft is held in memory. Larger data goes to
	// the log in chunk records of this size as it arrives, so a draft costs at
	// most this much memory whatever the message size; a write of this size
	// also amortises its frame and system call well.
	chunkSize = 64 << 10

	// maxPending bounds the records waiting for the writer. Chunk writers wait
	// above it, so a fast upload cannot fill memory faster than the disk
	// drains it; commits and acks never wait on it (they are small and their
	// number is bounded by their callers).
	maxPending = 4 << 20

	// maxSpare is the largest batch buffer kept for reuse; a rare huge batch
	// (a big queue copy) is not kept around.
	maxSpare = 2 * maxPending

	// ackSyncDelay bounds how long acks, written without an fsync, wait for
	// the next commit's fsync to make them durable too. Under load a commit
	// comes within milliseconds and acks cost no fsync of their own; on an
	// idle server this bounds how far back a crash can take acknowledged
	// deliveries (they come again), at one fsync per interval at most.
	// (Chunks of uploads in progress need no such bound: their commit will
	// fsync them, and an upload cut short is garbage.)
	ackSyncDelay = 200 * time.Millisecond

	dirPerm  = 0o700
	filePerm = 0o600

	// tmpSuffix marks files written then renamed into place; any left at
	// Open are from a crash and are removed.
	tmpSuffix = ".tmp"
)

// ErrFull: the free space is below Options.MinFree. New messages are refused
// until space returns; nothing else is affected, and the store recovers by
// itself.
var ErrFull = errors.New("store: storage full")

// How often the free space is asked for while a watermark is set: a statfs
// costs about a microsecond, so once per MiB appended or per tenth of a
// second costs nothing, and the watermark need only be larger than what can
// be appended between two looks.
const (
	spaceCheckEvery = 100 * time.Millisecond
	spaceCheckBytes = 1 << 20
)

// ErrTooBig: a commit (envelopes, device lists, inline data) or a queue copy
// would exceed the log format's record size limit.
var ErrTooBig = errors.New("store: record too big")

// Log is the log-structured store (a qlib.Store): append-only segment files
// written by one goroutine with group commit, an in-memory index rebuilt at
// Open, and a bounded cache of recent messages for WriteTo (cache.go).
//
// Envelope functions run while the log's tail is locked (their ids must be
// issued in log order): they must be quick and must not call the store.
// Watch functions run on the writer goroutine: they must not block, and in
// particular must not Commit or CopyQueue, which wait for that goroutine.
//
// Locks: mu guards the index; pendMu guards the tail of the log (the batch
// being gathered for the writer, the head segment, id issue). Where both are
// held, mu is taken first, so that index changes and the records describing
// them are ordered the same way (locksordering.txt).
type Log struct {
	fs      durable.FS
	dir     string
	now     func() time.Time
	segSize int64
	log     *slog.Logger
	bufs    sync.Pool // *[]byte of chunkSize: draft and read buffers

	failed  atomic.Pointer[error] // the I/O error that stopped the store
	closing atomic.Bool

	// Counters for tests and benchmarks.
	nSyncs, nCommits atomic.Int64

	opened        int64    // when Open was called, Unix nanoseconds (Backlog)
	commitSeconds Observer // Options.CommitSeconds; nil: none

	mu sync.Mutex
	// Guarded by mu: the index.
	msgs   map[ID]*message
	queues map[string]*devQueue
	segs   []*segment      // files of the log, oldest first
	moving map[ID][]string // devices of messages being copied forward
	total  int64           // bytes in segs
	live   int64           // bytes of live blobs
	closed bool
	stamp  uint64   // count of applied batches
	cache  msgCache // bytes of recent messages, for WriteTo
	// scrubSeq is the last segment holding bytes of a secret message that
	// died: once scrubDue, compaction goes on until every segment up to it
	// is gone. scrubTimer makes scrubDue true scrubDelay after the first
	// secret of a batch died.
	scrubSeq   uint64
	scrubDue   bool
	scrubTimer *time.Timer
	scrubDelay time.Duration // the constant scrubDelay; tests change it

	pendMu sync.Mutex
	wake   sync.Cond // the writer waits for work
	space  sync.Cond // chunk writers wait for the pending batch to drain
	// Guarded by pendMu: the tail of the log.
	pend     *batch
	spare    []byte   // a batch buffer for reuse
	head     *segment // where new records go
	headSize int64    // its size, counting records not yet written
	nextID   ID
	ceiling  ID // persisted: no id at or above it has been issued
	// Out of file descriptors (fdShortage): the head is not rotated before
	// rotateAt, rotateWait being the current backoff (rotateRetryMin, a
	// field for tests, doubling up to rotateRetryMax); rotateShort and
	// ceilingShort say the shortage was logged.
	rotateAt       time.Time
	rotateWait     time.Duration
	rotateRetryMin time.Duration
	rotateShort    bool
	ceilingShort   bool
	// rotateNow: the head holds the bytes of a dead secret message, so the
	// next record starts a new segment and compaction can reclaim it.
	rotateNow bool
	// The free-space watermark (roomLocked): minFree is Options.MinFree, 0
	// once the FS turns out not to tell; full is the last verdict.
	minFree      int64
	full         bool
	spaceAt      time.Time     // when the FS was last asked
	spaceWritten int64         // bytes appended since
	spaceEvery   time.Duration // spaceCheckEvery; tests change it
	spaceErr     bool          // the last look failed (logged once)

	// syncDue is set by syncTimer: the writer is to fsync what it wrote.
	syncDue   bool
	syncDelay time.Duration // ackSyncDelay; tests change it

	// Writer goroutine only.
	cur          *segment // the segment the writer appends to
	dirty        bool     // cur has writes not yet fsynced
	unsyncedAcks bool     // among them ack records
	syncTimer    *time.Timer
	syncArmed    bool // syncTimer runs or has fired and set syncDue

	stop        chan struct{}      // closed by Close
	compactC    chan chan struct{} // wakes the compactor; see compactSync
	writerDone  chan struct{}
	compactDone chan struct{}
	closeOnce   sync.Once
	closeErr    error

	// beforeCopy, if set (by tests, under mu), is called by the compactor
	// before it appends each copy record.
	beforeCopy func(ID)
}

// batch is the records gathered while the writer was busy, written with one
// write (per segment) and made durable with one fsync.
type batch struct {
	buf     []byte
	cuts    []cut   // where each segment's records begin in buf; cuts[0].pos is 0
	sync    bool    // a caller waits for durability: fsync after writing
	acks    bool    // holds ack records
	applies []apply // index changes to make once written (and synced if sync)
	commits []completion
	done    chan struct{}
	err     error // set before done is closed
}

// completion is a commit of the batch to report, in the order committed.
type completion struct {
	fn    func([]Receipt, error)
	rcpts []Receipt
	// pin is the committing draft's pin (see segment.pins), released once
	// the commit is applied or has failed.
	pin *segment
}

type cut struct {
	pos int
	seg *segment
}

func (b *batch) empty() bool { return len(b.buf) == 0 && !b.sync && len(b.commits) == 0 }

type applyKind uint8

const (
	applyCommit applyKind = iota // new messages: index them, fan out to queues
	applyCopy                    // a message moved: point the index at the copy
	applyNotify                  // entries were added to dev's queue: wake its watcher
)

type apply struct {
	kind applyKind
	blob *blob
	msgs []recMsg
	dev  string
}

// Open opens (creating if needed) the store in opts.Dir, recovering its state
// from the log.
func Open(opts Options) (*Log, error) {
	if opts.Dir == "" {
		return nil, errors.New("store: no directory")
	}
	l := &Log{
		fs:            opts.FS,
		dir:           opts.Dir,
		now:           opts.Now,
		segSize:       opts.SegmentSize,
		log:           opts.Logger,
		minFree:       opts.MinFree,
		commitSeconds: opts.CommitSeconds,
		msgs:          map[ID]*message{},
		queues:        map[string]*devQueue{},
		cache:         newMsgCache(defaultCacheBudget),
		stop:          make(chan struct{}),
		compactC:      make(chan chan struct{}, 1),
		writerDone:    make(chan struct{}),
		compactDone:   make(chan struct{}),
	}
	if l.fs == nil {
		l.fs = durable.OSFS{}
	}
	if l.now == nil {
		l.now = time.Now
	}
	l.opened = l.now().UnixNano()
	if l.segSize <= 0 {
		l.segSize = defaultSegmentSize
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.bufs.New = func() any {
		b := make([]byte, chunkSize)
		return &b
	}
	l.wake.L = &l.pendMu
	l.space.L = &l.pendMu
	l.syncDelay = ackSyncDelay
	l.spaceEvery = spaceCheckEvery
	l.rotateRetryMin = rotateRetryMin
	l.scrubDelay = scrubDelay
	start := time.Now()
	if err := l.open(); err != nil {
		for _, s := range l.segs {
			if s.f != nil {
				s.f.Close()
			}
		}
		return nil, err
	}
	l.log.Info("store: opened", "dir", l.dir, "segments", len(l.segs),
		"messages", len(l.msgs), "queues", len(l.queues), "elapsed", time.Since(start))
	go l.run()
	go l.compactor()
	l.kickCompactor()
	return l, nil
}

func (l *Log) open() error {
	if err := l.fs.MkdirAll(l.dir, dirPerm); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	names, err := l.fs.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	var seqs []uint64
	for _, name := range names {
		if seq, ok := parseSegName(name); ok {
			seqs = append(seqs, seq)
			continue
		}
		switch {
		case strings.HasSuffix(name, tmpSuffix):
			l.log.Info("store: removing leftover temporary file", "file", name)
			if err := l.fs.Remove(l.path(name)); err != nil {
				return fmt.Errorf("store: %w", err)
			}
		case name != floorName:
			l.log.Warn("store: ignoring unknown file", "file", name)
		}
	}
	slices.Sort(seqs)
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			return fmt.Errorf("store: %s: segments missing before it (previous is %s)",
				l.path(segName(seqs[i])), segName(seqs[i-1]))
		}
	}
	ceiling, err := readCeiling(l.fs, l.dir)
	if err != nil {
		return err
	}
	maxID, err := l.recover(seqs)
	if err != nil {
		return err
	}

	// Ids continue from the clock, but never at or below one already issued
	// (the persisted ceiling covers every id issued before; maxID is a check).
	next := ID(max(l.now().UnixNano(), 0))
	next = max(next, ceiling, maxID+1)
	l.nextID = next
	if err := l.raiseCeiling(next); err != nil {
		return err
	}

	seq := uint64(1)
	if len(seqs) > 0 {
		seq = seqs[len(seqs)-1] + 1
	}
	// Created under its own name at once: recovery has made everything
	// before it durable. Running out of file descriptors here fails Open
	// like any other error: nothing is being served yet.
	head := newSegment(l.dir, seq)
	f, err := l.fs.OpenFile(head.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	head.f = f
	l.segs = append(l.segs, head)
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	l.head, l.cur = head, head
	l.pend = l.newBatch()
	return nil
}

func (l *Log) path(name string) string { return l.dir + string(os.PathSeparator) + name }

// failure returns the error that stopped the store, or nil.
func (l *Log) failure() error {
	if p := l.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail stops the store after an I/O error that may have left stable storage
// in an unknown state. Only the first error is kept and logged.
func (l *Log) fail(err error) {
	wrapped := fmt.Errorf("%w: %w", ErrFailed, err)
	if l.failed.CompareAndSwap(nil, &wrapped) {
		l.log.Error("store: i/o error, refusing further work", "err", err)
	}
}

// writable returns why records cannot be appended, or nil.
func (l *Log) writable() error {
	if err := l.failure(); err != nil {
		return err
	}
	if l.closing.Load() {
		return ErrClosed
	}
	return nil
}

// newBatch returns an empty batch. pendMu must be held.
func (l *Log) newBatch() *batch {
	b := &batch{buf: l.spare[:0], cuts: []cut{{0, l.head}}, done: make(chan struct{})}
	l.spare = nil
	return b
}

// place completes the frame at b.buf[start:] and assigns it its place in the
// log, starting a new segment when the head is full (or holds a dead secret,
// rotateNow) and one can be created. reencode, if not nil, is called to redo
// the frame for the new segment first: a commit's references to device sets
// do not cross segments. pendMu must be held.
func (l *Log) place(b *batch, start int, reencode func(*segment)) (*segment, int64, error) {
	n := int64(len(b.buf) - start)
	if n-frameHeaderSize > maxPayload {
		b.buf = b.buf[:start]
		return nil, 0, ErrTooBig
	}
	if l.headSize > 0 && (l.headSize+n > l.segSize || l.rotateNow) {
		rotated, err := l.rotateHead()
		if err != nil {
			b.buf = b.buf[:start]
			return nil, 0, err
		}
		if rotated {
			if last := &b.cuts[len(b.cuts)-1]; last.pos == start {
				last.seg = l.head
			} else {
				b.cuts = append(b.cuts, cut{start, l.head})
			}
			if reencode != nil {
				reencode(l.head)
				if n = int64(len(b.buf) - start); n-frameHeaderSize > maxPayload {
					b.buf = b.buf[:start]
					return nil, 0, ErrTooBig
				}
			}
		}
	}
	endFrame(b.buf[start:])
	off := l.headSize
	l.headSize += n
	return l.head, off, nil
}

// Backoff of segment rotation while file descriptors are short: retried soon
// at first, since a burst of connections passes, then at most every few
// seconds (an open that fails costs little, but logs and latency need not
// pay for it at every record).
const (
	rotateRetryMin = 50 * time.Millisecond
	rotateRetryMax = 5 * time.Second
)

// fdShortage reports whether err is the process or the system running out of
// file descriptors: a passing condition (a flood of connections), not damage
// to storage, so no reason to stop the store.
//
// Where the store opens files, and what a shortage does there:
//   - Open (the segments to replay, the id ceiling, the first head): Open
//     fails; nothing is being served, and the operator sees why.
//   - rotateHead (a new segment): the records go to the current segment,
//     and rotation is retried with backoff.
//   - raiseCeiling at run time (ceilingFor): raised ahead of need and
//     retried at later commits; only a commit that needs ids above the
//     ceiling is refused meanwhile, with ErrNoFiles.
//
// Nothing else opens a file: a segment's file stays open from its creation
// (or recovery) until it is removed, so reading for delivery or compaction
// needs no descriptor.
func fdShortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// rotateHead makes a new segment the head. Its file is created here, while
// the records that will go to it are still being placed, so that if it
// cannot be opened for want of file descriptors they go to the current head
// instead: the head grows past its target size, and rotation is retried with
// backoff (logged once, and once more when it succeeds). It is created under
// a temporary name, renamed by the writer (rotate) once everything before it
// is durable: a crash must not leave a segment after one whose tail is torn.
// Any other error fails the store. pendMu must be held.
func (l *Log) rotateHead() (bool, error) {
	now := time.Now()
	if now.Before(l.rotateAt) {
		return false, nil
	}
	next := newSegment(l.dir, l.head.seq+1)
	f, err := l.fs.OpenFile(next.path+tmpSuffix, os.O_RDWR|os.O_CREATE|os.O_TRUNC, filePerm)
	if err != nil {
		if !fdShortage(err) {
			l.fail(fmt.Errorf("store: create segment: %w", err))
			return false, l.failure()
		}
		l.rotateWait = min(max(2*l.rotateWait, l.rotateRetryMin), rotateRetryMax)
		l.rotateAt = now.Add(l.rotateWait)
		if !l.rotateShort {
			l.rotateShort = true
			l.log.Warn("store: cannot create a segment; appending to the current one past its target size",
				"file", l.head.path, "err", err)
		}
		return false, nil
	}
	if l.rotateShort {
		l.rotateShort = false
		l.log.Info("store: segment created after a shortage of file descriptors", "file", next.path,
			"size", l.headSize)
	}
	l.rotateWait, l.rotateAt = 0, time.Time{}
	l.rotateNow = false
	l.head.devSets = nil // no more records go there
	next.f = f
	l.head, l.headSize = next, 0
	return true, nil
}

// appendChunk appends a chunk record holding p and returns where its data
// is. It does not wait for the write. If pin, the chunk's segment is pinned
// (see segment.pins). It waits while too much is pending.
func (l *Log) appendChunk(p []byte, pin bool) (chunk, error) {
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	for len(l.pend.buf) >= maxPending && l.writable() == nil {
		l.space.Wait()
	}
	if err := l.writable(); err != nil {
		return chunk{}, err
	}
	if err := l.roomLocked(int64(len(p))); err != nil {
		return chunk{}, err
	}
	b := l.pend
	start := len(b.buf)
	b.buf = beginFrame(b.buf, recChunk)
	b.buf = append(b.buf, p...)
	seg, off, err := l.place(b, start, nil)
	if err != nil {
		return chunk{}, err
	}
	if pin {
		seg.pins.Add(1)
	}
	l.wake.Signal()
	return chunk{seg: seg, off: off + frameHeaderSize, n: int64(len(p))}, nil
}

// appendBlob appends a commit or copy record for msgs with d's data. A
// message with a big device list refers to the list's device set, defined in
// this record unless an earlier one of the same segment did (record.go).
// msgs' devices must be distinct and sorted. pendMu must be held.
func (l *Log) appendBlob(t recType, d *draft, msgs []recMsg) (*batch, *blob, error) {
	for i := range msgs {
		if len(msgs[i].devs) >= minSetDevs {
			msgs[i].set = hashSet(msgs[i].devs)
		}
	}
	b := l.pend
	start := len(b.buf)
	var tailPos int
	var defs []int
	encode := func(seg *segment) {
		defs = planSets(seg, msgs, defs[:0])
		b.buf = beginFrame(b.buf[:start], t)
		b.buf, tailPos = appendBlobPayload(b.buf, d.chunks, d.buf, defs, msgs)
	}
	encode(l.head)
	seg, off, err := l.place(b, start, encode)
	if err != nil {
		return nil, nil, err
	}
	if len(defs) > 0 {
		if seg.devSets == nil {
			seg.devSets = map[setHash]struct{}{}
		}
		for _, i := range defs {
			seg.devSets[msgs[i].set] = struct{}{}
			seg.devSetBytes += setLen(msgs[i].devs)
		}
	}
	bl := &blob{
		seg:     seg,
		chunks:  d.chunks,
		recOff:  off,
		first:   msgs[0].id,
		recLen:  uint32(len(b.buf) - start),
		tailRel: uint32(frameHeaderSize + tailPos),
		tailLen: uint32(len(d.buf)),
		count:   uint32(len(msgs)),
	}
	for i := range msgs {
		msgs[i].env = nil // the batch has the bytes; the index needs only the place
	}
	return b, bl, nil
}

// planSets decides, for a record of msgs going to seg, which messages refer
// to a device set (ref) and which sets the record defines (returned as
// indexes of msgs, appended to defs): a big list's set is referred to if seg
// has it, else defined here, once per record, while seg has room for more
// sets; otherwise its devices are listed. pendMu must be held.
func planSets(seg *segment, msgs []recMsg, defs []int) []int {
	count, size := len(seg.devSets), seg.devSetBytes
	for i := range msgs {
		m := &msgs[i]
		m.ref = false
		if len(m.devs) < minSetDevs {
			continue
		}
		if _, ok := seg.devSets[m.set]; ok || slices.ContainsFunc(defs, func(j int) bool { return msgs[j].set == m.set }) {
			m.ref = true
			continue
		}
		n := setLen(m.devs)
		if count+1 > maxSegSets || size+n > maxSegSetBytes {
			continue
		}
		count, size = count+1, size+n
		defs = append(defs, i)
		m.ref = true
	}
	return defs
}

// appendCommit issues ids for msgs and appends their commit record to the
// pending batch, whose writer calls done once the batch is durable and
// applied, or has failed. On success the batch owns d's pin. An empty commit
// stores nothing but still completes in turn.
//
// fixed, when not zero, is the id of the commit's single message, issued
// elsewhere (see Import); ids issued later are above it.
func (l *Log) appendCommit(d *draft, msgs []Message, fixed ID, done func([]Receipt, error)) error {
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		l.pend.commits = append(l.pend.commits, completion{fn: done, pin: d.pin})
		l.wake.Signal()
		return nil
	}
	if err := l.roomLocked(int64(len(d.buf))); err != nil {
		return err
	}
	ids := make([]ID, len(msgs))
	next := l.nextID + ID(len(msgs))
	if fixed != 0 {
		next = max(l.nextID, fixed+1)
	}
	if err := l.ceilingFor(next); err != nil {
		return err
	}
	if fixed != 0 {
		ids[0] = fixed
	} else {
		for i := range ids {
			ids[i] = l.nextID + ID(i)
		}
	}
	l.nextID = next
	posted := l.now()
	rms := make([]recMsg, len(msgs))
	rcpts := make([]Receipt, len(msgs))
	for i, m := range msgs {
		var env []byte
		if m.Envelope != nil {
			env = m.Envelope(ids[i], posted, ids)
		}
		rms[i] = recMsg{id: ids[i], prio: m.Prio, secret: m.Secret, off: m.Off, n: m.Len, env: env, devs: dedup(m.To), at: posted.UnixNano()}
		if len(rms[i].devs) > 0 {
			rms[i].cache = cacheCopy(d, env, m.Off, m.Len)
		}
		rcpts[i] = Receipt{ID: ids[i], Posted: posted}
	}
	b, bl, err := l.appendBlob(recCommit, d, rms)
	if err != nil {
		return err
	}
	b.applies = append(b.applies, apply{kind: applyCommit, blob: bl, msgs: rms})
	b.commits = append(b.commits, completion{fn: done, rcpts: rcpts, pin: d.pin})
	b.sync = true
	l.wake.Signal()
	return nil
}

// ErrNoFiles: a commit needed the id ceiling raised (see idfloor.go), and
// the file for it could not be opened for want of file descriptors. Nothing
// was stored; the store goes on, and a later commit retries.
var ErrNoFiles = errors.New("store: out of file descriptors")

// ceilingHeadroom is how far below the persisted ceiling ids may come before
// it is raised: far enough ahead (half a step, millions of ids) that a raise
// failing for want of file descriptors is retried by later commits long
// before any of them needs an id above the ceiling.
const ceilingHeadroom = idStep / 2

// ceilingFor makes sure that ids below next may be issued, raising the
// persisted ceiling ahead of need. A raise that cannot open its file for want
// of file descriptors is logged once and retried at the next commit; only a
// commit that needs an id at or above the ceiling then fails (ErrNoFiles).
// Any other error fails the store. pendMu must be held.
func (l *Log) ceilingFor(next ID) error {
	if next <= l.ceiling && l.ceiling-next >= ceilingHeadroom {
		return nil
	}
	err := l.raiseCeiling(next)
	switch {
	case err == nil:
		if l.ceilingShort {
			l.ceilingShort = false
			l.log.Info("store: id ceiling raised after a shortage of file descriptors")
		}
		return nil
	case !fdShortage(err):
		l.fail(err)
		return l.failure()
	}
	if !l.ceilingShort {
		l.ceilingShort = true
		l.log.Warn("store: cannot raise the id ceiling; retrying at later commits", "err", err)
	}
	if next > l.ceiling {
		return fmt.Errorf("%w: %w", ErrNoFiles, err)
	}
	return nil
}

// roomLocked returns ErrFull while the free space is below the watermark,
// n being the bytes about to be appended. It asks the FS at most every
// spaceCheckEvery or spaceCheckBytes, so a refused client retrying finds the
// store accepting again soon after space returns. pendMu is held.
func (l *Log) roomLocked(n int64) error {
	if l.minFree <= 0 {
		return nil
	}
	l.spaceWritten += n
	if time.Since(l.spaceAt) < l.spaceEvery && l.spaceWritten < spaceCheckBytes {
		if l.full {
			return ErrFull
		}
		return nil
	}
	l.spaceAt, l.spaceWritten = time.Now(), 0
	sfs, ok := l.fs.(durable.SpaceFS)
	if !ok {
		l.log.Warn("store: the file system cannot tell its free space; no watermark", "dir", l.dir)
		l.minFree, l.full = 0, false
		return nil
	}
	free, err := sfs.Free(l.dir)
	if err != nil {
		// Unknown is not full: a watermark must not stop a server whose
		// disk is fine. Asked again at the next look; logged once.
		if !l.spaceErr {
			l.log.Warn("store: cannot tell the free space; accepting messages", "dir", l.dir, "err", err)
		}
		l.spaceErr, l.full = true, false
		return nil
	}
	l.spaceErr = false
	switch full := free < l.minFree; {
	case full && !l.full:
		l.log.Warn("store: free space below the watermark; refusing new messages", "free", free, "minFree", l.minFree)
	case !full && l.full:
		l.log.Info("store: free space above the watermark; accepting new messages", "free", free, "minFree", l.minFree)
	}
	l.full = free < l.minFree
	if l.full {
		return ErrFull
	}
	return nil
}

// dedup returns the distinct device keys of to, in a new slice.
func dedup(to []string) []string {
	devs := slices.Clone(to)
	if len(devs) > 1 {
		slices.Sort(devs)
		devs = slices.Compact(devs)
	}
	return devs
}

// appendAck appends an ack record. It is written with the next batch and
// made durable by the next fsync; nobody waits for it. mu and pendMu must be
// held.
func (l *Log) appendAck(dev string, id ID) error {
	b := l.pend
	start := len(b.buf)
	b.buf = beginFrame(b.buf, recAck)
	b.buf = appendAckPayload(b.buf, dev, id)
	if _, _, err := l.place(b, start, nil); err != nil {
		return err
	}
	b.acks = true
	l.wake.Signal()
	return nil
}

// barrier returns once everything appended before it is durable.
func (l *Log) barrier() error {
	l.pendMu.Lock()
	if err := l.writable(); err != nil {
		l.pendMu.Unlock()
		return err
	}
	b := l.pend
	b.sync = true
	l.wake.Signal()
	l.pendMu.Unlock()
	<-b.done
	return b.err
}

// run is the writer goroutine: it takes each batch, writes it, fsyncs it if
// anyone waits for durability, applies it to the index and wakes the waiters.
// Acks it writes without an fsync are fsynced within syncDelay.
func (l *Log) run() {
	defer close(l.writerDone)
	for {
		l.pendMu.Lock()
		for l.pend.empty() && !l.syncDue && !l.closing.Load() {
			l.wake.Wait()
		}
		b := l.pend
		due := l.syncDue
		if b.empty() && !due {
			l.pendMu.Unlock()
			l.finish()
			return
		}
		l.syncDue = false
		delay := l.syncDelay
		l.pend = l.newBatch()
		l.space.Broadcast()
		l.pendMu.Unlock()
		if due {
			b.sync = true
			l.syncArmed = false
		}

		err := l.failure()
		if err == nil {
			start := time.Now()
			werr := l.writeBatch(b)
			if werr == nil && b.sync && l.commitSeconds != nil {
				l.commitSeconds.Observe(time.Since(start).Seconds())
			}
			if werr != nil {
				l.fail(werr)
				err = l.failure()
				l.pendMu.Lock()
				l.space.Broadcast()
				l.pendMu.Unlock()
			}
		}
		if err != nil {
			b.err = err
			close(b.done)
			l.complete(b, err)
			continue
		}
		fns := l.apply(b)
		for _, fn := range fns {
			fn()
		}
		// After the watchers, so that a receipt, or the return of Sync or
		// CopyQueue, means the entries are durable, visible to Head and
		// announced.
		close(b.done)
		l.complete(b, nil)
		if b.acks && !b.sync {
			l.unsyncedAcks = true
		}
		if l.unsyncedAcks && !l.syncArmed {
			l.armSync(delay)
		}
		if cap(b.buf) <= maxSpare {
			l.pendMu.Lock()
			l.spare = b.buf[:0]
			l.pendMu.Unlock()
		}
	}
}

// armSync has the writer fsync within delay, in case no commit comes to make
// the acks written durable. An fsync by a commit meanwhile does not disarm it: the timer then finds
// nothing to sync, or syncs later writes early.
func (l *Log) armSync(delay time.Duration) {
	if l.syncTimer == nil {
		l.syncTimer = time.AfterFunc(delay, func() {
			l.pendMu.Lock()
			l.syncDue = true
			l.wake.Signal()
			l.pendMu.Unlock()
		})
	} else {
		l.syncTimer.Reset(delay)
	}
	l.syncArmed = true
}

// complete reports b's commits, in order, and releases their pins.
func (l *Log) complete(b *batch, err error) {
	for _, c := range b.commits {
		if c.pin != nil && c.pin.pins.Add(-1) == 0 {
			l.kickCompactor() // it may have been waiting for this segment
		}
		if err != nil {
			c.fn(nil, err)
		} else {
			c.fn(c.rcpts, nil)
		}
	}
}

// writeBatch writes b, rotating segments at its cuts, and fsyncs if b.sync.
// On rotation the old segment is fsynced before the new one is created (a
// commit record in the new one may name chunks in the old), and the directory
// after.
func (l *Log) writeBatch(b *batch) error {
	for i, c := range b.cuts {
		end := len(b.buf)
		if i+1 < len(b.cuts) {
			end = b.cuts[i+1].pos
		}
		if c.seg != l.cur {
			if err := l.rotate(c.seg); err != nil {
				return err
			}
		}
		part := b.buf[c.pos:end]
		if len(part) == 0 {
			continue
		}
		stampFrames(part, l.cur.syncs)
		if _, err := l.cur.f.Write(part); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		l.dirty = true
		l.mu.Lock()
		l.cur.size += int64(len(part))
		l.total += int64(len(part))
		l.mu.Unlock()
	}
	if b.sync && l.dirty {
		return l.syncCur()
	}
	return nil
}

func (l *Log) syncCur() error {
	if err := l.cur.f.Sync(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	l.cur.syncs++
	l.dirty = false
	l.unsyncedAcks = false
	l.nSyncs.Add(1)
	return nil
}

// rotate moves the writer to next, whose file rotateHead created under a
// temporary name: it gets its own name only now, once the segment before it
// is durable.
func (l *Log) rotate(next *segment) error {
	if l.dirty {
		if err := l.syncCur(); err != nil {
			return err
		}
	}
	if err := l.fs.Rename(next.path+tmpSuffix, next.path); err != nil {
		return fmt.Errorf("store: name segment: %w", err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	l.mu.Lock()
	l.segs = append(l.segs, next)
	l.mu.Unlock()
	l.cur = next
	return nil
}

// finish makes everything written durable as the writer stops.
func (l *Log) finish() {
	if l.syncTimer != nil {
		l.syncTimer.Stop()
	}
	if l.dirty && l.failure() == nil {
		if err := l.syncCur(); err != nil {
			l.fail(err)
		}
	}
}

// apply makes a written batch visible in the index and returns the watchers
// to call.
func (l *Log) apply(b *batch) []func() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stamp++
	var fns []func()
	notify := func(q *devQueue) {
		if q.watch != nil && q.stamp != l.stamp {
			q.stamp = l.stamp
			fns = append(fns, q.watch)
		}
	}
	for i := range b.applies {
		a := &b.applies[i]
		switch a.kind {
		case applyCommit:
			for j := range a.msgs {
				rm := &a.msgs[j]
				if len(rm.devs) == 0 {
					continue
				}
				m := l.newMessage(a.blob, rm)
				l.msgs[rm.id] = m
				if rm.cache != nil {
					l.cache.put(rm.id, rm.cache)
					rm.cache = nil
				}
				for _, dev := range rm.devs {
					q := l.queue(dev)
					q.prio[rm.prio].push(rm.id)
					q.bytes += m.size()
					notify(q)
				}
			}
			l.nCommits.Add(1)
		case applyCopy:
			if m := l.msgs[a.msgs[0].id]; m != nil {
				l.relocate(m, a.blob, &a.msgs[0])
			}
		case applyNotify:
			if q := l.queues[a.dev]; q != nil {
				notify(q)
			}
		}
	}
	if l.compactDue() {
		l.kickCompactor()
	}
	return fns
}

// newMessage indexes a message of blob b with one reference per device.
// mu must be held.
func (l *Log) newMessage(b *blob, rm *recMsg) *message {
	m := &message{
		blob:   b,
		off:    rm.off,
		n:      rm.n,
		envRel: uint32(frameHeaderSize + rm.envPos),
		envLen: uint32(rm.envLen),
		refs:   int32(len(rm.devs)),
		prio:   rm.prio,
		secret: rm.secret,
		at:     rm.at,
	}
	if m.at == 0 {
		m.at = l.opened // recovered: the log has no commit times
	}
	l.blobRef(b)
	return m
}

// relocate points m at its copy in blob b. mu must be held.
func (l *Log) relocate(m *message, b *blob, rm *recMsg) {
	old := m.blob
	m.blob = b
	m.envRel = uint32(frameHeaderSize + rm.envPos)
	m.envLen = uint32(rm.envLen)
	m.off, m.n = rm.off, rm.n
	l.blobRef(b)
	l.blobUnref(old)
}

// queue returns dev's queue, creating it. mu must be held.
func (l *Log) queue(dev string) *devQueue {
	q := l.queues[dev]
	if q == nil {
		q = &devQueue{}
		l.queues[dev] = q
	}
	return q
}

// dropIfIdle forgets an empty, unwatched queue. mu must be held.
func (l *Log) dropIfIdle(dev string, q *devQueue) {
	if q.watch == nil && q.len() == 0 {
		delete(l.queues, dev)
	}
}

// unref drops one queue entry's reference to message id; the message is
// forgotten with its last one. mu must be held.
func (l *Log) unref(id ID, m *message) {
	m.refs--
	if m.refs <= 0 {
		delete(l.msgs, id)
		l.cache.drop(id)
		if m.secret {
			l.secretDied(m.blob)
		}
		l.blobUnref(m.blob)
	}
}

// scrubDelay is how long the bytes of a dead secret message may stay on
// disk. Removing them compacts every segment up to theirs (compactDue),
// which on a large backlog copies much of the live data; the delay gathers
// the secrets that die meanwhile into one such pass, so that a member
// adding devices in a loop costs the disk at most one pass per delay,
// while a password still leaves the disk minutes after its device got it.
const scrubDelay = 5 * time.Minute

// secretDied records that the secret message in b is dead: its segments
// are to be scrubbed. The first secret of a batch arms the timer; later ones
// join its pass. mu must be held.
func (l *Log) secretDied(b *blob) {
	pending := len(l.segs) > 0 && l.segs[0].seq <= l.scrubSeq
	for _, s := range b.segments(nil) {
		l.scrubSeq = max(l.scrubSeq, s.seq)
	}
	if pending || l.closed {
		return
	}
	l.scrubDue = false
	if l.scrubTimer == nil {
		l.scrubTimer = time.AfterFunc(l.scrubDelay, l.scrubNow)
	} else {
		l.scrubTimer.Reset(l.scrubDelay)
	}
}

// scrubNow starts the scrubbing of dead secrets: the head rotates if it
// holds one (scrubHead), and the compactor removes every segment up to
// scrubSeq. It runs on scrubTimer, and from Reclaim.
func (l *Log) scrubNow() {
	l.mu.Lock()
	l.scrubDue = true
	l.pendMu.Lock()
	l.scrubHead()
	rotate := l.rotateNow
	l.pendMu.Unlock()
	l.mu.Unlock()
	if rotate {
		// The head may see no record for a while: an empty chunk, garbage
		// by design like the chunks of an aborted draft, starts the next
		// segment. If it cannot be written (the store full or failed),
		// the next record rotates instead.
		if _, err := l.appendChunk(nil, false); err == nil {
			l.barrier()
		}
	}
	l.kickCompactor()
}

// scrubHead has the next record start a new segment if the head holds bytes
// of a dead secret message due to be scrubbed, so that compaction can
// reclaim it (compactDue). mu and pendMu must be held.
func (l *Log) scrubHead() {
	if l.scrubDue && l.scrubSeq >= l.head.seq {
		l.rotateNow = true
	}
}

func (l *Log) blobRef(b *blob) {
	b.live++
	if b.live == 1 {
		l.account(b, 1)
	}
}

func (l *Log) blobUnref(b *blob) {
	b.live--
	if b.live == 0 {
		l.account(b, -1)
	}
}

// account adds (sign 1) or removes (sign -1) the bytes of a blob that became
// live or dead to its segments' tallies. mu must be held.
func (l *Log) account(b *blob, sign int) {
	l.accountSeg(b.seg, int64(b.recLen), sign, b)
	for _, c := range b.chunks {
		l.accountSeg(c.seg, c.n+frameHeaderSize, sign, b)
	}
}

func (l *Log) accountSeg(s *segment, n int64, sign int, b *blob) {
	if s == nil {
		return
	}
	s.live += sign
	s.liveBytes += int64(sign) * n
	l.live += int64(sign) * n
	switch {
	case sign > 0 && (len(s.blobs) == 0 || s.blobs[len(s.blobs)-1] != b):
		s.blobs = append(s.blobs, b)
	case sign < 0:
		if s.dead++; s.dead >= pruneAt && 2*s.dead >= len(s.blobs) {
			s.pruneBlobs()
		}
	}
}

// Draft implements qlib.Store.
func (l *Log) Draft() Draft { return &draft{l: l} }

// Head implements qlib.Store.
func (l *Log) Head(dev string) (ID, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if q := l.queues[dev]; q != nil {
		return q.head()
	}
	return 0, false
}

// Len implements qlib.Store.
func (l *Log) Len(dev string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if q := l.queues[dev]; q != nil {
		return q.len()
	}
	return 0
}

// Watch implements qlib.Store. fn is called from the writer goroutine, after the
// index lock is released, so it may call the store, but it must not block.
// A watcher removed while a batch is being applied may be called once more.
func (l *Log) Watch(dev string, fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if fn == nil {
		if q := l.queues[dev]; q != nil {
			q.watch = nil
			l.dropIfIdle(dev, q)
		}
		return
	}
	l.queue(dev).watch = fn
}

// Ack implements qlib.Store.
func (l *Log) Ack(dev string, id ID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	q, m := l.queues[dev], l.msgs[id]
	if q == nil || m == nil || !q.prio[m.prio].remove(id) {
		return ErrNotQueued
	}
	if devs, ok := l.moving[id]; ok {
		l.moving[id] = slices.DeleteFunc(devs, func(d string) bool { return d == dev })
	}
	q.bytes -= m.size()
	l.unref(id, m)
	l.dropIfIdle(dev, q)
	l.scrubHead()
	return l.appendAck(dev, id)
}

// CopyQueue implements qlib.Store.
func (l *Log) CopyQueue(src, dst string) error {
	l.mu.Lock()
	l.pendMu.Lock()
	if err := l.writable(); err != nil {
		l.pendMu.Unlock()
		l.mu.Unlock()
		return err
	}
	if src == dst {
		l.pendMu.Unlock()
		l.mu.Unlock()
		return nil
	}
	// Secret messages are not copied: a device added later must not get
	// another device's password.
	nq := &devQueue{}
	if sq := l.queues[src]; sq != nil {
		for p := range sq.prio {
			for _, id := range sq.prio[p].slice() {
				if m := l.msgs[id]; !m.secret {
					nq.prio[p].ids = append(nq.prio[p].ids, id)
					nq.bytes += m.size()
				}
			}
		}
	}
	ids := nq.ids()
	// Reference the new entries before dropping the old, so that a message
	// in both is never forgotten in between.
	for _, id := range ids {
		l.msgs[id].refs++
		if devs, ok := l.moving[id]; ok {
			l.moving[id] = append(devs, dst)
		}
	}
	if dq := l.queues[dst]; dq != nil {
		nq.watch = dq.watch
		for _, id := range dq.ids() {
			if devs, ok := l.moving[id]; ok {
				if i := slices.Index(devs, dst); i >= 0 {
					l.moving[id] = slices.Delete(devs, i, i+1)
				}
			}
			l.unref(id, l.msgs[id])
		}
	}
	l.queues[dst] = nq
	l.dropIfIdle(dst, nq)

	l.scrubHead()
	b := l.pend
	start := len(b.buf)
	b.buf = beginFrame(b.buf, recQueue)
	b.buf = appendQueuePayload(b.buf, dst, ids)
	_, _, err := l.place(b, start, nil)
	if err == nil {
		if len(ids) > 0 {
			b.applies = append(b.applies, apply{kind: applyNotify, dev: dst})
		}
		b.sync = true
		l.wake.Signal()
	}
	l.pendMu.Unlock()
	l.mu.Unlock()
	if err != nil {
		// The index has changed but cannot be logged: stop rather than
		// diverge from the log.
		l.fail(err)
		return l.failure()
	}
	<-b.done
	return b.err
}

// msgRef is a message being read: its cached bytes, or where its parts are,
// with read references on their segments so that compaction cannot close the
// files meanwhile.
type msgRef struct {
	cached []byte // if hit, the message; the rest is unset
	hit    bool

	blob        *blob
	prio        Priority
	secret      bool
	env, envLen int64
	off, n      int64
	segs        []*segment
}

// acquire returns message id for reading, from the cache if useCache and it
// is there. The caller releases it.
func (l *Log) acquire(id ID, useCache bool) (msgRef, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return msgRef{}, ErrClosed
	}
	if useCache {
		if p, ok := l.cache.get(id); ok {
			return msgRef{cached: p, hit: true}, nil
		}
	}
	m := l.msgs[id]
	if m == nil {
		return msgRef{}, ErrNoMessage
	}
	r := msgRef{blob: m.blob, prio: m.prio, secret: m.secret, env: m.blob.recOff + int64(m.envRel), envLen: int64(m.envLen), off: m.off, n: m.n}
	r.segs = m.blob.segments(nil)
	for _, s := range r.segs {
		s.readers++
	}
	return r, nil
}

func (l *Log) release(r *msgRef) {
	if len(r.segs) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range r.segs {
		s.readers--
		l.closeIfIdle(s)
	}
}

// closeIfIdle closes the file of a removed segment (or of any, once the store
// is closed) when nobody reads it. mu must be held.
func (l *Log) closeIfIdle(s *segment) {
	if (s.removed || l.closed) && s.readers == 0 && s.f != nil {
		if err := s.f.Close(); err != nil {
			l.log.Warn("store: close segment", "file", s.path, "err", err)
		}
		s.f = nil
	}
}

// WriteTo implements qlib.Store. It writes the message from the cache if it is
// there, else streams it from its segment files through one pooled buffer.
func (l *Log) WriteTo(w io.Writer, id ID) (int64, error) {
	return l.writeTo(w, id, true)
}

func (l *Log) writeTo(w io.Writer, id ID, useCache bool) (int64, error) {
	if err := l.failure(); err != nil {
		return 0, err
	}
	r, err := l.acquire(id, useCache)
	if err != nil {
		return 0, err
	}
	if r.hit {
		n, err := w.Write(r.cached)
		return int64(n), err
	}
	defer l.release(&r)
	bp := l.bufs.Get().(*[]byte)
	defer l.bufs.Put(bp)
	buf := *bp
	n, err := copyAt(w, r.blob.seg.f, r.env, r.envLen, buf)
	if err != nil {
		return n, err
	}
	err = r.blob.pieces(r.off, r.n, func(f durable.File, at, k int64) error {
		m, err := copyAt(w, f, at, k, buf)
		n += m
		return err
	})
	return n, err
}

// copyAt copies n bytes at offset off of f to w through buf.
func copyAt(w io.Writer, f durable.File, off, n int64, buf []byte) (int64, error) {
	var done int64
	for done < n {
		k := min(n-done, int64(len(buf)))
		if err := readAt(f, buf[:k], off+done); err != nil {
			return done, err
		}
		m, err := w.Write(buf[:k])
		done += int64(m)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// readAt reads len(p) bytes at offset off of f.
func readAt(f durable.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n < len(p) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("store: read: %w", err)
	}
	return nil
}

// Close implements qlib.Store. Commits already handed to the writer complete;
// everything written is fsynced; later calls fail with ErrClosed.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.pendMu.Lock()
		l.closing.Store(true)
		l.wake.Broadcast()
		l.space.Broadcast()
		l.pendMu.Unlock()
		close(l.stop)
		<-l.compactDone
		<-l.writerDone
		l.mu.Lock()
		l.closed = true
		if l.scrubTimer != nil {
			l.scrubTimer.Stop()
		}
		l.cache.reset()
		for _, s := range l.segs {
			l.closeIfIdle(s)
		}
		l.pendMu.Lock()
		if h := l.head; h.f != nil && !slices.Contains(l.segs, h) {
			// Created by rotateHead but never written to (the store
			// failed first): a temporary file, removed at the next Open.
			h.f.Close()
			h.f = nil
		}
		l.pendMu.Unlock()
		l.mu.Unlock()
		l.closeErr = l.failure()
		l.log.Info("store: closed", "dir", l.dir)
	})
	return l.closeErr
}

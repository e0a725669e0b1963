// Package jsstore is a qlib.Store on a NATS JetStream cluster, so that
// several mnm frontends can share one site's messages and queues (design
// note shared/design/scale-out-jetstream.md, issue #14).
//
// Everything lives in one stream, so that a commit is one atomic batch: the
// batch's ack is the durability point (the servers run with
// sync_interval: always), and only then is the caller told. The stream holds,
// under the subject prefix p:
//
//	p.m.<id>         a message record: headers (priority, secret, sizes, where
//	                 its data is) and a body of the envelope, then the data
//	                 when the draft was small enough to keep in memory
//	p.q.<dev>.h|n    a queue entry of device dev, High or Normal priority
//	p.r.<id>.<dev>   a ref: one per (message, device), published right after
//	                 the entry it belongs to, so that the last ack finds the
//	                 message unreferenced and deletes it (data once)
//	p.c.<draft>.<n>  chunk n of a large draft's data, published as written
//	p.d.<draft>.<id> a marker: message id reads chunks of draft; the chunks
//	                 go when the last marker does
//	p.i.<node>       the id ceiling of frontend node (see ids.go)
//
// Device keys are base64url in subjects (keys contain '.'). Core NATS
// subjects p.w.<dev>, outside the stream's subjects, carry wakes: after a
// commit's batch ack, the committing frontend publishes one per device, and
// every frontend calls its own watcher of that device.
//
// Nothing is cached between calls but a hint (the sequence of the entry
// Head returned last), because other frontends change the same queues.
// Reads go to the stream leader (no direct get): followers may be stale.
//
// Not done yet, and why it is safe to leave for now:
//   - Orphans: the chunks of a draft whose frontend crashed mid-draft, or
//     whose commit failed with an unknown outcome (timeout, lost
//     connection), and id ceilings of nodes no longer used. Nothing reads
//     them; a sweeper is to delete chunks no marker refers to.
//   - Len, Queue and QueueBytes read every entry of the queue (one request
//     each): correct, but a long queue makes them slow.
//   - No fail-stop (store.ErrFailed): each call returns its own error, and
//     JetStream, not this process, holds the durable state.
//   - CopyQueue racing with the last ack of a message on src, on another
//     frontend, can leave dst an entry whose message is gone (WriteTo says
//     ErrNoMessage, writing nothing): the copy read src's entry before the
//     ack deleted it. The server drops such an entry and goes on (qlib's
//     skipGone); the device misses nothing it had not been sent.
package jsstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/internal/jskv"
	"mnm/qlib/store"
)

// Defaults of Options.
const (
	DefaultStream   = "MNM"
	DefaultPrefix   = "mnm"
	DefaultReplicas = 3
	// DefaultMaxBatch is nats-server's default atomic batch limit
	// (jetstream { limits { batch { max_msgs } } }).
	DefaultMaxBatch = 1000
)

// opTimeout bounds one JetStream request (a read, a delete, a chunk
// publish): long enough for a leader election after a crash (4-9 s in
// nats-server) plus a retry, short enough that a stuck call is reported.
const opTimeout = 15 * time.Second

// chunkSize is how much draft data one chunk message holds: large enough
// that a 5 MB post is 20 publishes, well under the server's default 1 MiB
// max_payload with room for an envelope (at most 64 KiB, its length is 4
// hex digits) in an inline record.
const chunkSize = 256 << 10

// ErrTooManyRecipients: the commit needs more stream messages than one
// atomic batch may hold (Options.MaxBatch): a message takes one record plus
// an entry and a ref per device. It is the known limit for huge groups: the
// server limit can be raised (5,000 works), beyond that a post needs the
// "store once, fan out by idempotent workers" path of the design note.
var ErrTooManyRecipients = errors.New("store: too many recipients for one atomic commit")

// Options configures a Store.
type Options struct {
	// JS is the JetStream context, Conn the connection under it (for
	// core NATS wakes and batch replies).
	JS   jetstream.JetStream
	Conn *nats.Conn

	Stream   string // stream name; "" means DefaultStream
	Prefix   string // subject prefix; "" means DefaultPrefix
	Replicas int    // 0 means DefaultReplicas

	// Node is this frontend's number, unique on the site: it is part of
	// every id the frontend issues, so that frontends never issue the same.
	Node uint8

	// MaxBatch is the server's atomic batch limit; 0 means DefaultMaxBatch.
	MaxBatch int

	Now    func() time.Time // nil means time.Now
	Logger *slog.Logger     // nil means slog.Default()
}

// Store is a qlib.Store on JetStream. Open one per frontend process.
type Store struct {
	opts   Options
	js     jetstream.JetStream
	nc     *nats.Conn
	stream jetstream.Stream
	p      string // subject prefix
	log    *slog.Logger
	tag    string // random, names this Store's drafts and batches

	// dead is closed when the connection is gone for good (crash): waits
	// for replies stop at once.
	dead     chan struct{}
	deadOnce sync.Once

	wakeSub, replySub *nats.Subscription
	replyPrefix       string

	// mu is the append lock: ids are issued and jobs queued under it, so
	// that jobs are in id order.
	mu      sync.Mutex
	closed  bool
	last    store.ID // last id issued, or the floor found at Open
	ceiling store.ID // no id at or above it is issued before a higher one is in a batch
	jobs    []*job   // handed over, not yet published
	jobSeq  uint64   // numbers jobs for reply subjects and batch ids
	drafts  uint64   // numbers drafts
	waiting map[uint64]*batch

	kick     chan struct{} // a job was queued or Close began; capacity 1
	complete chan *batch   // published batches, in order, to the completer
	slots    chan struct{} // batches in flight
	batches  atomic.Int64  // batches sent, for tests
	pipeDone chan struct{} // the completer has finished

	watch watchers

	hintMu sync.Mutex
	// Guarded by hintMu: the entry Head returned last, per device.
	hints map[string]entryRef
	// floors: per device and priority, a stream sequence below which the
	// queue has no entry, raised by each ack of its first entry. Queue
	// reads start there: the server finds the next message of a subject
	// by scanning its blocks from the given sequence, and from 1 that
	// scan crosses every message the stream has held since (measured
	// under load: most of the leader's CPU). Entries are only ever
	// appended, so a floor stays true on every frontend for ever.
	floors map[floorKey]uint64
	// qbytes keeps QueueBytes's count per device (queue.go).
	qbytes map[string]queueBytes
}

// entryRef is where a queue entry is: enough for Ack without a scan.
type entryRef struct {
	id     store.ID
	seq    uint64
	refOff int64
	prio   store.Priority
	size   int64
}

// floorKey names a device's queue of one priority in Store.floors.
type floorKey struct {
	dev  string
	prio store.Priority
}

// maxInflight bounds batches published and not yet acked: the server keeps
// at most 50 open per stream (max_inflight_per_stream), shared by every
// frontend; 16 leaves room for three frontends at full pipeline.
const maxInflight = 16

// Open creates or updates the stream and returns a Store on it.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.JS == nil || opts.Conn == nil {
		return nil, errors.New("jsstore: open: Options.JS and Options.Conn are required")
	}
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Replicas == 0 {
		opts.Replicas = DefaultReplicas
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := opts.Prefix
	cfg := jetstream.StreamConfig{
		Name: opts.Stream,
		// Not p.>: p.w.> is core NATS wakes, which must not be stored.
		Subjects:           []string{p + ".m.>", p + ".q.>", p + ".r.>", p + ".c.>", p + ".d.>", p + ".i.>"},
		Storage:            jetstream.FileStorage,
		Replicas:           opts.Replicas,
		Retention:          jetstream.LimitsPolicy,
		MaxMsgs:            -1,
		MaxBytes:           -1,
		MaxAge:             0,
		AllowAtomicPublish: true,
		// Reads by subject must come from the leader: a follower can be
		// behind, and would show an acked entry or miss a new one.
		AllowDirect: false,
	}
	st, err := jskv.Stream(ctx, opts.JS, cfg, opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("jsstore: create stream %s: %w", opts.Stream, err)
	}
	var tag [8]byte
	rand.Read(tag[:])
	s := &Store{
		opts:     opts,
		js:       opts.JS,
		nc:       opts.Conn,
		stream:   st,
		p:        p,
		log:      opts.Logger.With("stream", opts.Stream),
		tag:      hex.EncodeToString(tag[:]),
		dead:     make(chan struct{}),
		waiting:  map[uint64]*batch{},
		kick:     make(chan struct{}, 1),
		complete: make(chan *batch, maxInflight),
		slots:    make(chan struct{}, maxInflight),
		pipeDone: make(chan struct{}),
		hints:    map[string]entryRef{},
		floors:   map[floorKey]uint64{},
		qbytes:   map[string]queueBytes{},
	}
	if err := s.loadFloor(ctx); err != nil {
		return nil, err
	}
	if err := s.raiseCeiling(ctx); err != nil {
		return nil, err
	}
	s.watch.init(s)
	s.replyPrefix = opts.Conn.NewInbox()
	if s.replySub, err = opts.Conn.Subscribe(s.replyPrefix+".*", s.onReply); err != nil {
		return nil, fmt.Errorf("jsstore: subscribe to batch replies: %w", err)
	}
	if s.wakeSub, err = opts.Conn.Subscribe(p+".w.*", s.onWake); err != nil {
		s.replySub.Unsubscribe()
		return nil, fmt.Errorf("jsstore: subscribe to wakes: %w", err)
	}
	// The subscriptions must be in place on the server before Open
	// returns, or a wake sent right after would be missed.
	if err := opts.Conn.FlushWithContext(ctx); err != nil {
		s.replySub.Unsubscribe()
		s.wakeSub.Unsubscribe()
		return nil, fmt.Errorf("jsstore: flush subscriptions: %w", err)
	}
	go s.publisher()
	go s.completer()
	go s.watch.run()
	s.log.Info("jsstore open", "prefix", p, "node", opts.Node, "floor", s.last)
	return s, nil
}

// Subjects.

// devKey encodes a device key as one subject token: base64url, with a
// leading 'k' so that the empty key is a token too.
func devKey(dev string) string { return "k" + base64.RawURLEncoding.EncodeToString([]byte(dev)) }

// parseDevKey reverses devKey.
func parseDevKey(tok string) (string, bool) {
	if !strings.HasPrefix(tok, "k") {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(tok[1:])
	return string(b), err == nil
}

func (s *Store) recordSubj(id store.ID) string { return s.p + ".m." + id.String() }
func (s *Store) refSubj(id store.ID, dev string) string {
	return s.p + ".r." + id.String() + "." + devKey(dev)
}
func (s *Store) refsSubj(id store.ID) string { return s.p + ".r." + id.String() + ".>" }
func (s *Store) queueSubj(dev string, prio store.Priority) string {
	if prio == store.High {
		return s.p + ".q." + devKey(dev) + ".h"
	}
	return s.p + ".q." + devKey(dev) + ".n"
}
func (s *Store) chunkSubj(draft string, n int64) string {
	return fmt.Sprintf("%s.c.%s.%d", s.p, draft, n)
}
func (s *Store) markerSubj(draft string, id store.ID) string {
	return s.p + ".d." + draft + "." + id.String()
}
func (s *Store) wakeSubj(dev string) string { return s.p + ".w." + devKey(dev) }
func (s *Store) ceilingSubj() string        { return fmt.Sprintf("%s.i.%d", s.p, s.opts.Node) }

// ctx returns a context for one JetStream request.
func (s *Store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

// isClosed reports whether Close has begun.
func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops the store: commits already handed over complete (or fail
// with ErrClosed if the connection is gone), then the subscriptions and
// the watcher goroutine stop. Later calls fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	<-s.pipeDone
	s.wakeSub.Unsubscribe()
	s.replySub.Unsubscribe()
	s.watch.stop()
	s.log.Info("jsstore closed")
	return nil
}

// crash stops the store as a killed process would: the connection goes
// first, so that nothing more reaches the servers, and commits in flight
// fail (their batches may or may not have been stored). Used by tests; the
// caller owns the connection and it is closed here.
func (s *Store) crash() {
	s.deadOnce.Do(func() { close(s.dead) })
	s.nc.Close()
	s.Close()
}

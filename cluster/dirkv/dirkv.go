// Package dirkv is the clustered directory's transport (cluster/DESIGN.md,
// "The directory"): the user database's records in a JetStream KV bucket,
// written by one elected writer, watched by every frontend, and the
// requests that forward a frontend's directory writes to that writer.
//
// It knows nothing of users or groups: a record is a key and opaque bytes.
// The user database (the root package) encodes, checks and installs them.
//
// # Records
//
// The bucket <prefix>_DIR (history 1, file storage, Options.Replicas) holds
// one key per record. Write is a compare-and-set over the last revision this
// Dir has seen of the key (its own writes and its watcher's), a create when
// it has seen none: a writer that lost its lease without noticing fails
// instead of overwriting its successor. A write whose outcome is unknown (no
// reply: a leader election) is resolved by reading the key back from the
// stream leader before Write returns: a revision above the one written over
// that holds the bytes written is taken as this write's (another writer
// storing the very same bytes there at the same moment is
// indistinguishable, and equivalent); an unchanged key is an error that
// says nothing was written; ErrInDoubt when the cluster did not answer
// within ctx.
//
// Reads go to the stream leader, never a follower (the buckets are made
// with direct get off), so a read after a write sees it.
//
// # The writer
//
// One Dir of a site is the writer: it holds the key "writer" in the bucket
// <prefix>_DIRL (max age Options.LeaseTTL), created when absent and renewed
// by compare-and-set every LeaseTTL/5. It writes only while its lease is
// valid (leaseFraction of the TTL from the send of its last successful
// renewal); a Dir whose renewals fail stops serving and writing before the
// key can expire, so a successor never overlaps it. The key expires no
// earlier than the TTL after the server stored the renewal, which is after
// its send; clocks are assumed to run at the same rate, and the margin
// covers scheduling delays, not clock drift. Close deletes the key so that
// another Dir takes over at once. A newly elected Dir first waits until its
// watcher has applied every revision the bucket held; only then does it
// count as the writer (IsWriter, Write, Serve's handler).
//
// # Forwarded writes
//
// Call runs a directory write on the writer: in process when this Dir is
// the writer, else as a NATS request on <prefix>.dir.call answered by the
// writer's Serve handler. The handler's rev is the bucket revision that
// covers the call's writes; the caller waits (WaitApplied) until its own
// watcher has applied it, so a member reads its own writes on every
// frontend.
//
// A request that finds no writer, or a Dir that is no longer the writer, or
// gets no answer in time, is sent again until the caller's ctx ends. Each
// call carries an id, and the writer answers a repeated id with the first
// answer (waiting for it if the first is still running), so a call retried
// because its answer was lost runs once on that writer. A call whose writer
// died while running it may have run, or not: Call then returns ErrNoWriter
// like any call that got no answer, and the caller's client retries.
package dirkv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/internal/jskv"
)

// Options configures Open.
type Options struct {
	Conn *nats.Conn
	JS   jetstream.JetStream
	// Prefix names the buckets and subjects; "" is "MNM".
	Prefix string
	// Frontend names this frontend (unique in the site).
	Frontend string
	// Replicas is the buckets' replication; 0 is 3.
	Replicas int
	// LeaseTTL is how long a writer's lease lives without renewal; 0 is
	// 15 s (it must outlast a JetStream election). Every Dir of a site must
	// use the same value: it is the lease bucket's max age, and the last Dir
	// opened sets it.
	LeaseTTL time.Duration
	// CallTimeout bounds a forwarded call when the caller's ctx has no
	// deadline; 0 is 10 s.
	CallTimeout time.Duration
	Logger      *slog.Logger // nil discards
}

// Record is one record of the bucket: its key, its bytes, and the bucket
// revision that wrote it. Data is nil only for a deletion passed to Watch's
// apply (the bucket's key was deleted or purged, by hand: this package
// never deletes a record); a record stored empty has non-nil empty Data.
type Record struct {
	Key  string
	Data []byte
	Rev  uint64
}

// Handler runs a forwarded call on the writer. reply and code are carried
// back to Call; code is "" on success, else the caller's name for the error
// (the directory maps its sentinel errors to codes). rev is the bucket
// revision covering the call's writes (0 when it wrote nothing). ctx ends
// when this Dir stops being the writer, or after Options.CallTimeout.
type Handler func(ctx context.Context, method string, args []byte) (reply []byte, rev uint64, code string)

// Errors.
var (
	ErrConflict  = errors.New("dirkv: the record changed since this frontend last saw it")
	ErrNotWriter = errors.New("dirkv: this frontend is not the directory's writer")
	ErrInDoubt   = errors.New("dirkv: the cluster did not say whether the write happened")
	ErrNoWriter  = errors.New("dirkv: no directory writer answered")
	ErrClosed    = errors.New("dirkv: closed")
	ErrBadKey    = errors.New("dirkv: bad key")
)

// defaultPrefix names buckets and subjects when Options.Prefix is empty.
const defaultPrefix = "MNM"

// defaultReplicas is the buckets' replication when Options.Replicas is 0:
// a 3-node cluster survives the loss of one node.
const defaultReplicas = 3

// defaultLeaseTTL is the lease TTL when Options.LeaseTTL is 0: how long the
// site waits for a new writer after its writer crashed. It must outlast a
// JetStream election (4-9 s after a real crash, SPIKE.md) plus a renewal
// interval, or the writer fences itself whenever the lease bucket's leader
// dies.
const defaultLeaseTTL = 15 * time.Second

// minLeaseTTL is the shortest TTL accepted: renewals and polls are
// fractions of it and must stay well above a round trip.
const minLeaseTTL = 500 * time.Millisecond

// defaultCallTimeout bounds a Call whose ctx has no deadline: it rides out
// a writer's orderly handover and a JetStream election; a member's request
// should not hang for the TTL of a crashed writer, its client retries.
const defaultCallTimeout = 10 * time.Second

// opTimeout bounds one NATS or JetStream request, so that a request lost in
// an election is retried (or resolved) rather than waited on.
const opTimeout = 2 * time.Second

// maxKeyLen bounds a record's key: a key is a subject token of every write
// and watch message, and the directory's keys are short ids.
const maxKeyLen = 255

// keyPattern is what a record key may hold: the characters a KV key allows
// (it becomes part of a subject), dots only between tokens.
var keyPattern = regexp.MustCompile(`^[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*$`)

// prefixPattern is what a prefix may hold: it is a subject token and part
// of a bucket name.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// kvOperation is the header nats.go's KV puts on delete and purge markers.
const kvOperation = "KV-Operation"

// leaseKey is the lease bucket's one key.
const leaseKey = "writer"

// Dir is one frontend's handle on the directory's bucket. Its methods are
// safe for concurrent use.
type Dir struct {
	opts Options
	log  *slog.Logger
	nc   *nats.Conn
	js   jetstream.JetStream

	dir       jetstream.Stream // <prefix>_DIR's stream
	dirBucket string
	lease     jetstream.Stream // <prefix>_DIRL's stream
	lBucket   string
	leaseVal  []byte // what this Dir writes to the lease key
	callSubj  string

	renewEvery time.Duration
	leaseFor   time.Duration // leaseFraction of the TTL
	pollEvery  time.Duration

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	loops  sync.WaitGroup // the lease loop, catch-ups
	// applyMu is held while the watcher applies a record, so that Close
	// can wait for an apply under way.
	applyMu sync.Mutex
	calls   sync.WaitGroup // forwarded calls being handled
	callID  callIDs
	dedupe  dedupe

	// mu guards the fields below.
	mu       sync.Mutex
	closed   bool
	lastSeen map[string]uint64 // each key's last revision seen, deletions included
	watching bool
	iter     jetstream.MessagesContext // the watcher's, nil when not watching
	applied  uint64
	advanced chan struct{} // closed and replaced whenever applied grows
	handler  Handler
	// The lease: leaseRev is our lease key's revision as last known (0 if
	// we do not know of one naming us), leaseUntil the end of a valid lease
	// (zero while none is held), term counts elections and losses,
	// termStop ends the current term's work, ready says the watcher caught
	// up in this term, and sub is the call subscription while ready.
	leaseRev   uint64
	leaseUntil time.Time
	term       uint64
	termCtx    context.Context
	termStop   context.CancelFunc
	ready      bool
	sub        *nats.Subscription
}

// Open binds (creating when missing) the site's buckets. It does not load,
// watch, campaign or serve: the caller does, in that order.
func Open(ctx context.Context, o Options) (*Dir, error) {
	if o.Conn == nil {
		return nil, errors.New("dirkv: Conn is required")
	}
	if o.Frontend == "" {
		return nil, errors.New("dirkv: Frontend is required")
	}
	if o.Prefix == "" {
		o.Prefix = defaultPrefix
	}
	if !prefixPattern.MatchString(o.Prefix) {
		return nil, fmt.Errorf("dirkv: bad prefix %q", o.Prefix)
	}
	if o.Replicas == 0 {
		o.Replicas = defaultReplicas
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = defaultLeaseTTL
	}
	if o.LeaseTTL < minLeaseTTL {
		return nil, fmt.Errorf("dirkv: lease TTL %s below %s", o.LeaseTTL, minLeaseTTL)
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = defaultCallTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.JS == nil {
		js, err := jetstream.New(o.Conn)
		if err != nil {
			return nil, fmt.Errorf("dirkv: jetstream: %w", err)
		}
		o.JS = js
	}
	inc := make([]byte, 12)
	rand.Read(inc)
	leaseVal, err := json.Marshal(leaseValue{Frontend: o.Frontend, Incarnation: hex.EncodeToString(inc)})
	if err != nil {
		return nil, fmt.Errorf("dirkv: lease value: %w", err)
	}
	ttl := o.LeaseTTL
	d := &Dir{
		opts:       o,
		log:        o.Logger.With("frontend", o.Frontend),
		nc:         o.Conn,
		js:         o.JS,
		dirBucket:  o.Prefix + "_DIR",
		lBucket:    o.Prefix + "_DIRL",
		leaseVal:   leaseVal,
		callSubj:   o.Prefix + ".dir.call",
		renewEvery: ttl / renewDivisor,
		leaseFor:   time.Duration(float64(ttl) * leaseFraction),
		pollEvery:  ttl / pollDivisor,
		lastSeen:   make(map[string]uint64),
		advanced:   make(chan struct{}),
		callID:     newCallIDs(),
		dedupe:     dedupe{calls: make(map[string]*callResult)},
	}
	if d.dir, err = d.bucket(ctx, d.dirBucket, 0); err != nil {
		return nil, err
	}
	if d.lease, err = d.bucket(ctx, d.lBucket, ttl); err != nil {
		return nil, err
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// leaseValue is the lease key's value: who holds it. The incarnation is new
// at each Open, so a Dir restarted under the same name does not take its
// predecessor's key for its own.
type leaseValue struct {
	Frontend    string `json:"frontend"`
	Incarnation string `json:"incarnation"`
}

// bucket creates or updates the KV bucket name (history 1, max age ttl)
// and returns its stream: the stream itself, with reads from its leader
// only (jskv.Bucket).
func (d *Dir) bucket(ctx context.Context, name string, ttl time.Duration) (jetstream.Stream, error) {
	cfg := jskv.Bucket(name, d.opts.Replicas, ttl)
	st, err := jskv.Stream(ctx, d.js, cfg, d.log)
	if err != nil {
		return nil, fmt.Errorf("dirkv: bucket %s: %w", name, err)
	}
	return st, nil
}

// subject is the stream subject of key in bucket.
func subject(bucket, key string) string {
	return "$KV." + bucket + "." + key
}

// validKey reports whether key may name a record.
func validKey(key string) bool {
	return len(key) <= maxKeyLen && keyPattern.MatchString(key)
}

// Load returns every record of the bucket, and the bucket revision they
// reflect (its last sequence when read): start Watch from it. Deleted keys
// are left out (their revisions count in upto).
func (d *Dir) Load(ctx context.Context) (recs []Record, upto uint64, err error) {
	if d.isClosed() {
		return nil, 0, ErrClosed
	}
	info, err := d.dir.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("dirkv: load: stream info: %w", err)
	}
	// Every write up to this sequence is in what the consumer below
	// delivers, or superseded by a later write of its key that is.
	upto = info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil, upto, nil
	}
	// With history 1 every message of the stream is its key's last value,
	// so delivering all of them is delivering the bucket.
	cons, err := d.dir.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, 0, fmt.Errorf("dirkv: load: consumer: %w", err)
	}
	for {
		// The stream holds messages not yet delivered (pending was not 0),
		// so a fetch that does not wait for a full batch finds some.
		batch, err := cons.FetchNoWait(loadBatch)
		if err != nil {
			return nil, 0, fmt.Errorf("dirkv: load: fetch: %w", err)
		}
		n, pending := 0, uint64(1)
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return nil, 0, fmt.Errorf("dirkv: load: %w", err)
			}
			pending = meta.NumPending
			rec, ok := d.record(m, meta.Sequence.Stream)
			if !ok {
				continue
			}
			d.see(rec.Key, rec.Rev)
			upto = max(upto, rec.Rev)
			if rec.Data != nil {
				recs = append(recs, rec)
			}
		}
		if err := batch.Error(); err != nil {
			return nil, 0, fmt.Errorf("dirkv: load: fetch: %w", err)
		}
		if n > 0 && pending == 0 {
			return recs, upto, nil
		}
		if n == 0 {
			// The server has not caught up with the consumer yet.
			select {
			case <-ctx.Done():
				return nil, 0, fmt.Errorf("dirkv: load: %w", ctx.Err())
			case <-time.After(d.pollEvery):
			}
		}
	}
}

// loadBatch is how many records Load asks for at a time: large enough that
// a directory of tens of thousands of records loads in tens of round trips.
const loadBatch = 1000

// record turns a bucket message into a Record (Data nil for a deletion);
// ok is false, and the message logged, if its subject is not a key of the
// bucket.
func (d *Dir) record(m jetstream.Msg, rev uint64) (Record, bool) {
	pre := "$KV." + d.dirBucket + "."
	subj := m.Subject()
	if len(subj) <= len(pre) || subj[:len(pre)] != pre {
		d.log.Warn("dirkv message outside the bucket", "subject", subj, "rev", rev)
		return Record{}, false
	}
	rec := Record{Key: subj[len(pre):], Rev: rev}
	if m.Headers().Get(kvOperation) == "" {
		rec.Data = bytes.Clone(m.Data())
		if rec.Data == nil {
			rec.Data = []byte{}
		}
	}
	return rec, true
}

// see notes that key was at rev: a later Write compares and sets over it.
func (d *Dir) see(key string, rev uint64) {
	d.mu.Lock()
	if rev > d.lastSeen[key] {
		d.lastSeen[key] = rev
	}
	d.mu.Unlock()
}

func (d *Dir) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// Write stores data under key by compare-and-set (see the package doc) and
// returns its revision. ErrNotWriter when this Dir does not hold a valid
// lease (or has not caught up since it was elected), ErrConflict,
// ErrInDoubt, ErrBadKey, ErrClosed; another error when the write was
// refused or is known not to have happened.
func (d *Dir) Write(ctx context.Context, key string, data []byte) (rev uint64, err error) {
	if !validKey(key) {
		return 0, fmt.Errorf("%w: %q", ErrBadKey, key)
	}
	subj := subject(d.dirBucket, key)
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return 0, ErrClosed
		}
		if !d.writerLocked() {
			d.mu.Unlock()
			return 0, ErrNotWriter
		}
		last := d.lastSeen[key]
		d.mu.Unlock()
		if err := ctx.Err(); err != nil {
			// Not sent: a request on a done ctx is not published.
			return 0, fmt.Errorf("dirkv: write %s: %w", key, err)
		}

		pctx, cancel := context.WithTimeout(ctx, opTimeout)
		ack, err := d.js.PublishMsg(pctx, &nats.Msg{Subject: subj, Data: data},
			jetstream.WithExpectStream("KV_"+d.dirBucket),
			jetstream.WithExpectLastSequencePerSubject(last))
		cancel()
		switch {
		case err == nil:
			d.see(key, ack.Sequence)
			return ack.Sequence, nil
		case isWrongLastSeq(err):
			return 0, fmt.Errorf("%w: %s", ErrConflict, key)
		case errors.Is(err, jetstream.ErrNoStreamResponse):
			// Nobody took the request (no stream leader yet): nothing
			// was written, try again while ctx lasts.
			if ctx.Err() != nil {
				return 0, fmt.Errorf("dirkv: write %s: %w", key, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(d.pollEvery):
			}
			continue
		case isAPIError(err):
			return 0, fmt.Errorf("dirkv: write %s: %w", key, err)
		}
		return d.resolve(ctx, key, data, last, err)
	}
}

// resolve finds out whether a write of data over revision last of key,
// which got no reply (cause), happened, by reading the key back from the
// stream leader until ctx ends.
func (d *Dir) resolve(ctx context.Context, key string, data []byte, last uint64, cause error) (uint64, error) {
	d.log.Warn("dirkv write got no reply, reading it back", "key", key, "err", cause)
	for {
		value, rev, err := lastValue(ctx, d.dir, d.dirBucket, key)
		if err == nil {
			switch {
			case rev == last:
				return 0, fmt.Errorf("dirkv: write %s not stored (no reply: %w)", key, cause)
			case rev > last && value != nil && bytes.Equal(value, data):
				d.see(key, rev)
				return rev, nil
			default:
				// Someone else wrote the key: ours, if it landed,
				// would have had to be over last and is gone too.
				return 0, fmt.Errorf("%w: %s", ErrConflict, key)
			}
		}
		d.log.Warn("dirkv read back failed", "key", key, "err", err)
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %s: %w", ErrInDoubt, key, cause)
		case <-time.After(d.pollEvery):
		}
	}
}

// lastValue is jskv.LastValue within opTimeout.
func lastValue(ctx context.Context, st jetstream.Stream, bucket, key string) (value []byte, rev uint64, err error) {
	return jskv.LastValue(ctx, st, bucket, key, opTimeout)
}

// isWrongLastSeq reports whether a publish was refused by its
// compare-and-set.
func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// isAPIError reports whether err is the stream's answer: the write was
// refused, not lost.
func isAPIError(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr)
}

// Close stops watching, serving and campaigning, and gives up the lease if
// held: the key is deleted by compare-and-set over our revision, after the
// calls being handled have returned, so a successor takes over at once.
func (d *Dir) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.fenceLocked("closing")
	iter := d.iter
	d.mu.Unlock()

	d.cancel()
	if iter != nil {
		iter.Stop()
	}
	// Wait for an apply under way; none starts once closed is set.
	d.applyMu.Lock()
	d.applyMu.Unlock()
	d.loops.Wait()
	d.calls.Wait()

	d.mu.Lock()
	rev := d.leaseRev
	d.leaseRev = 0
	d.mu.Unlock()
	if rev == 0 {
		d.log.Info("dirkv closed")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	m := nats.NewMsg(subject(d.lBucket, leaseKey))
	m.Header.Set(kvOperation, "DEL")
	if _, err := d.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev)); err != nil {
		// The key expires after the TTL instead.
		d.log.Warn("dirkv delete lease failed", "err", err)
		return fmt.Errorf("dirkv: give up lease: %w", err)
	}
	d.log.Info("dirkv closed, lease given up")
	return nil
}

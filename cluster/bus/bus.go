// Package bus is what the frontends of a clustered mnm site tell each other
// over NATS: which frontend holds each device's session, the takeover of a
// device that logs in on another frontend, each frontend's liveness, and
// presence notices (cluster/DESIGN.md, "Presence and takeover").
//
// # The invariant
//
// At no time do two live frontends both believe they hold a device. A Bus
// believes it holds a device from a successful Claim until its OnEvict
// returns, its Release, its Close, or the loss of its lease (below).
//
// # Sessions
//
// A device's session is a record in the KV bucket <prefix>_SESS, key the
// device (base64url), value the holder: frontend name, incarnation, and a
// claim number unique within the incarnation. The record is written only by
// compare-and-set on the revision the writer read, and a writer first makes
// sure that the claim it is about to overwrite is no longer held:
//
//  1. read the record (from the stream leader, never a follower);
//  2. if it names a claim of another incarnation, resolve it: ask that
//     frontend to evict it (request <prefix>.evict.<frontend>, answered
//     "released" after its OnEvict has returned), or see that the
//     incarnation is dead (its liveness key is gone or names another
//     incarnation);
//  3. write our claim over the revision read in 1; on a conflict start over.
//
// Why the invariant holds: every write of the record overwrites exactly the
// revision its writer read and resolved, so the holder of each claim had
// stopped believing before the next claim was written, and a claim is
// believed only after its write. A frontend answers "released" for a claim
// it does not hold; a claim whose write is still in flight when the request
// comes is marked superseded and its Claim returns ErrTakenOver instead of
// holding. Concurrent Claims terminate: a Claim retries only when another
// Claim's write succeeded since its read, and each Claim writes successfully
// at most once, so with n concurrent Claims each retries at most n-1 times;
// the last writer wins, as with logins on one machine.
//
// # Liveness and the lease
//
// Each Bus keeps a key in the bucket <prefix>_FE (max age LivenessTTL), its
// value the Bus's incarnation, renewed by compare-and-set every renewEvery.
// A renewal counts only after a request to the Bus's own evict subscription
// is answered, so a frontend whose evict handling is stuck stops renewing.
// The key expires no earlier than LivenessTTL after the server stored the
// renewal, which is after the renewal was sent; so the Bus's lease runs
// from the send of its last successful renewal for leaseFraction of the
// TTL. When the lease runs out the Bus fences itself: it drops every device
// (calling OnEvict) and takes a new incarnation, so every claim of the old
// one counts as dead. Other frontends therefore conclude "dead" only after
// the Bus has dropped everything. Clocks are assumed to run at the same
// rate; the margin covers scheduling delays, not clock drift.
package bus

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
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

// DefaultPrefix names buckets and subjects when Options.Prefix is empty.
const DefaultPrefix = "MNM"

// DefaultReplicas is the buckets' replication when Options.Replicas is 0:
// a 3-node cluster survives the loss of one node.
const DefaultReplicas = 3

// DefaultLivenessTTL is how long a frontend's liveness key lives without
// renewal when Options.LivenessTTL is 0: how long a crashed frontend's
// devices wait before another frontend may take them. It must outlast a
// JetStream election (4-9 s after a real crash, SPIKE.md) plus a renewal
// interval, or every frontend fences itself when the bucket's leader dies.
const DefaultLivenessTTL = 15 * time.Second

// minLivenessTTL is the shortest TTL accepted: renewals, polls and evict
// requests are fractions of it and must stay well above a round trip.
const minLivenessTTL = 500 * time.Millisecond

// renewDivisor sets the renewal interval to LivenessTTL/renewDivisor: four
// chances to renew within a lease.
const renewDivisor = 5

// leaseFraction is the part of LivenessTTL, counted from the send of the
// last successful renewal, during which a Bus trusts its own liveness. The
// rest (a fifth of the TTL) is the margin for the fence to run before the
// key can expire on the server.
const leaseFraction = 0.8

// expirySlack is how late the server may remove an expired liveness key:
// nats-server runs its age check no more often than every 250 ms, and
// every 2 s when replicas remove messages through proposals.
const expirySlack = 2500 * time.Millisecond

// opTimeout bounds one NATS or JetStream request, so that a request lost in
// an election is retried rather than waited on.
const opTimeout = 2 * time.Second

// defaultClaimTimeout bounds a Claim whose context has no deadline.
const defaultClaimTimeout = 30 * time.Second

// Options configures a Bus.
type Options struct {
	// Conn is the Bus's own NATS connection; the Bus does not close it.
	Conn *nats.Conn

	// JS is the JetStream context on Conn; nil makes one.
	JS jetstream.JetStream

	// Prefix names the buckets (<Prefix>_SESS, <Prefix>_FE, <Prefix>_OHI)
	// and subjects (<Prefix>.evict.*, <Prefix>.user.*, <Prefix>.users.*,
	// <Prefix>.ohi.*); empty means DefaultPrefix.
	Prefix string

	// Frontend is this frontend's name, unique among running frontends. A
	// restarted frontend may reuse its name: it gets a new incarnation.
	Frontend string

	// Replicas is the buckets' replication; 0 means DefaultReplicas.
	Replicas int

	// LivenessTTL is how long a liveness key lives without renewal; 0 means
	// DefaultLivenessTTL. Every frontend of a site must use the same value:
	// it is the bucket's max age, and the last frontend started sets it.
	LivenessTTL time.Duration

	// Logger receives the Bus's logs; nil discards them.
	Logger *slog.Logger

	// OnEvict is called when dev, held by this Bus, is taken by another
	// frontend or dropped because the lease ran out. The caller closes the
	// device's link and stops delivering to it, then returns; the other
	// frontend proceeds after the return. It is not called for Release or
	// Close. Calls for different devices may run concurrently. Required.
	OnEvict func(dev string)

	// OnPresence is called with the presence notices other frontends
	// send (Notify) for a user online here: to is told that from's status
	// changed. One at a time, in arrival order, with no lock of the Bus
	// held; nil ignores them.
	OnPresence func(to, from string, status int64)

	// OnUserGone is called when uid, online on some frontend, is now
	// online on none (its last device here or elsewhere went, or the
	// frontend holding it died), with uid's last presence list: this
	// frontend's devices of those users are to be told. Called with no
	// lock of the Bus held, possibly from within SetOnline; nil ignores.
	OnUserGone func(uid string, list []string)
}

// Bus is one frontend's end of the bus.
type Bus struct {
	opts       Options
	log        *slog.Logger
	nc         *nats.Conn
	sess       jetstream.KeyValue
	sessStream jetstream.Stream
	fe         jetstream.KeyValue
	feStream   jetstream.Stream
	feKey      string
	evictSubj  string

	renewEvery time.Duration
	lease      time.Duration
	evictWait  time.Duration
	pollEvery  time.Duration
	resolveFor time.Duration

	subs   []*nats.Subscription
	stop   context.CancelFunc
	loopWG sync.WaitGroup

	p presence // who is online where, and the lists (online.go)

	// mu guards the fields below.
	mu         sync.Mutex
	closed     bool
	inc        string    // current incarnation
	feRev      uint64    // revision of our liveness key, 0 if unknown
	leaseUntil time.Time // zero while no lease is held
	nextClaim  uint64
	sessions   map[string]*session      // claims pending or held, by device
	evicting   map[string]chan struct{} // devices whose OnEvict runs, closed when it returned
	devLocks   map[string]*devLock
}

// Errors of New and Claim.
var (
	ErrClosed      = errors.New("bus: closed")
	ErrTakenOver   = errors.New("bus: device taken over by a later login")
	ErrHolderAlive = errors.New("bus: previous holder neither released the device nor expired")
	ErrBadName     = errors.New("bus: empty device, uid or frontend name")
)

// prefixPattern is what a prefix may hold: it is a subject token and part
// of a bucket name.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// New starts a Bus: it creates or binds the buckets, subscribes, writes the
// liveness key and starts renewing it. Close stops it.
func New(ctx context.Context, opts Options) (*Bus, error) {
	if opts.Conn == nil || opts.OnEvict == nil {
		return nil, errors.New("bus: Conn and OnEvict are required")
	}
	if opts.Frontend == "" {
		return nil, ErrBadName
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !prefixPattern.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("bus: bad prefix %q", opts.Prefix)
	}
	if opts.Replicas == 0 {
		opts.Replicas = DefaultReplicas
	}
	if opts.LivenessTTL == 0 {
		opts.LivenessTTL = DefaultLivenessTTL
	}
	if opts.LivenessTTL < minLivenessTTL {
		return nil, fmt.Errorf("bus: liveness TTL %s below %s", opts.LivenessTTL, minLivenessTTL)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.JS == nil {
		js, err := jetstream.New(opts.Conn)
		if err != nil {
			return nil, fmt.Errorf("bus: jetstream: %w", err)
		}
		opts.JS = js
	}
	ttl := opts.LivenessTTL
	b := &Bus{
		opts:       opts,
		log:        opts.Logger.With("frontend", opts.Frontend),
		nc:         opts.Conn,
		feKey:      encode(opts.Frontend),
		evictSubj:  opts.Prefix + ".evict." + encode(opts.Frontend),
		renewEvery: ttl / renewDivisor,
		lease:      time.Duration(float64(ttl) * leaseFraction),
		// An evict request is re-sent while the holder lives, so one
		// attempt may be short; a quarter of the TTL leaves several tries
		// before the holder's key could expire.
		evictWait: min(ttl/4, opTimeout),
		pollEvery: ttl / 20,
		// A holder's key expires at most TTL after our first look, and the
		// server's expiry check may lag by expirySlack.
		resolveFor: ttl + expirySlack,
		inc:        newIncarnation(),
		sessions:   make(map[string]*session),
		evicting:   make(map[string]chan struct{}),
		devLocks:   make(map[string]*devLock),
	}
	var err error
	if b.sess, b.sessStream, err = b.bucket(ctx, "SESS", 0); err != nil {
		return nil, err
	}
	if b.fe, b.feStream, err = b.bucket(ctx, "FE", ttl); err != nil {
		return nil, err
	}
	if err := b.subscribe(); err != nil {
		b.unsubscribe()
		return nil, err
	}
	start := time.Now()
	if err := b.renew(ctx, start); err != nil {
		b.unsubscribe()
		return nil, fmt.Errorf("bus: write liveness key: %w", err)
	}
	loopCtx, stop := context.WithCancel(context.Background())
	b.stop = stop
	b.loopWG.Go(func() { b.renewLoop(loopCtx) })
	if err := b.startPresence(ctx, loopCtx); err != nil {
		b.Close()
		return nil, err
	}
	b.log.Info("bus started", "incarnation", b.inc)
	return b, nil
}

// bucket creates or updates the KV bucket <prefix>_<name> and binds it. It
// makes the stream itself, with the settings nats.go gives a KV bucket of
// history 1, because it needs direct get off: with it on, reads may be
// served by a follower that has not yet applied the last write, and a
// liveness key read from a lagging follower could look expired while its
// frontend still holds a lease.
func (b *Bus) bucket(ctx context.Context, name string, ttl time.Duration) (jetstream.KeyValue, jetstream.Stream, error) {
	bucket := b.opts.Prefix + "_" + name
	cfg := jskv.Bucket(bucket, b.opts.Replicas, ttl)
	st, err := jskv.Stream(ctx, b.opts.JS, cfg, b.log)
	if err != nil {
		return nil, nil, fmt.Errorf("bus: bucket %s: %w", bucket, err)
	}
	kv, err := jskv.Retry(ctx, b.log, "bind bucket "+bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return b.opts.JS.KeyValue(ctx, bucket)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("bus: bind bucket %s: %w", bucket, err)
	}
	return kv, st, nil
}

// subscribe starts the evict and presence subscriptions.
func (b *Bus) subscribe() error {
	s, err := b.nc.Subscribe(b.evictSubj, b.onEvictRequest)
	if err != nil {
		return fmt.Errorf("bus: subscribe %s: %w", b.evictSubj, err)
	}
	b.subs = append(b.subs, s)
	// The server must know the subscriptions before anyone can find our
	// liveness key and send us requests.
	if err := b.nc.FlushTimeout(opTimeout); err != nil {
		return fmt.Errorf("bus: flush subscriptions: %w", err)
	}
	return nil
}

func (b *Bus) unsubscribe() {
	for _, s := range b.subs {
		if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			b.log.Warn("unsubscribe failed", "subject", s.Subject, "err", err)
		}
	}
	b.subs = nil
}

// Close releases every device this Bus holds (without OnEvict: the caller
// is shutting its links down itself), deletes its liveness key so that
// other frontends need not wait for it to expire, and stops. Errors are
// logged: a record left behind is resolved by the next claimer, a liveness
// key by its expiry.
func (b *Bus) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	held := make(map[string]*session, len(b.sessions))
	for dev, s := range b.sessions {
		if s.held {
			held[dev] = s
		}
	}
	b.sessions = make(map[string]*session)
	b.leaseUntil = time.Time{}
	b.mu.Unlock()

	b.stop()
	b.stopWatcher()
	b.loopWG.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for dev, s := range held {
		b.deleteRecord(ctx, dev, s.rev)
	}
	b.mu.Lock()
	rev := b.feRev
	b.mu.Unlock()
	if rev != 0 {
		if err := b.fe.Delete(ctx, b.feKey, jetstream.LastRevision(rev)); err != nil {
			b.log.Warn("delete liveness key failed", "err", err)
		}
	}
	b.unsubscribe()
	b.stopPresence()
	b.log.Info("bus closed", "released", len(held))
}

// encode turns a device key, uid or frontend name into a subject token and
// KV key: they may hold '.', '%' and '+', which subjects and keys reserve.
func encode(s string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

func decode(s string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return string(b), err
}

// newIncarnation returns a random name for one life of a Bus: a frontend
// restarted under the same name, or fenced, is a new incarnation, and
// claims of the old one are known dead.
func newIncarnation() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

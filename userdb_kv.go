package main

// The user database's records in a cluster's KV bucket (cluster/DESIGN.md,
// "The directory"): kvRecords is the record store of every frontend of a
// clustered site. One frontend, the directory writer, runs the database's
// writes as on disk, each record write a compare-and-set on the record's
// key; every frontend, the writer included, loads the bucket at open and
// then applies what the bucket's watcher delivers (applyRecord), so that
// its reads stay memory reads a moment behind the writer.
//
// A key is "u." and the uid (encoded: kvUIDKey) or "g." and the gid's
// groupFileStem; its value is the record exactly as a record file holds it
// (encodeRecord), checksum included, so a record moves between a file and
// the bucket unchanged.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"mnm/cluster/dirkv"
)

// dirKV is what the clustered user database needs of the directory's KV
// bucket and of its writer's election: *dirkv.Dir, whose package doc is
// the contract in full, and an in-memory fake in the tests.
type dirKV interface {
	// Load returns every record of the bucket and the revision they
	// reflect, from which Watch starts.
	Load(ctx context.Context) (recs []dirkv.Record, upto uint64, err error)
	// Watch calls apply, on one goroutine and in revision order, for
	// every write above from, this frontend's own included.
	Watch(from uint64, apply func(dirkv.Record)) error
	// Applied is the last revision the watcher has applied;
	// WaitApplied returns once it is at least rev.
	Applied() uint64
	WaitApplied(ctx context.Context, rev uint64) error
	// Write stores data under key by compare-and-set over the last
	// revision this frontend has seen of it, and returns the new
	// revision. dirkv.ErrNotWriter and dirkv.ErrConflict change nothing;
	// dirkv.ErrInDoubt may have.
	Write(ctx context.Context, key string, data []byte) (rev uint64, err error)
	// Serve answers forwarded calls with h whenever this frontend is the
	// writer; IsWriter reports whether it is now.
	Serve(h dirkv.Handler) error
	IsWriter() bool
	// Call runs method on the writer (through Serve's handler) and
	// returns its reply, the revision covering its writes and its error
	// code; err is the transport's (dirkv.ErrNoWriter, dirkv.ErrClosed).
	Call(ctx context.Context, method string, args []byte) (reply []byte, rev uint64, code string, err error)
}

var _ dirKV = (*dirkv.Dir)(nil)

// kvWriteTimeout bounds one record write to the bucket. The database's
// write methods have no context (qlib.Directory has none), and a write
// that has not been answered by then is ErrInDoubt, which stops all writes:
// it is long enough for a JetStream leader election (a few seconds), after
// which dirkv reads the key back to settle the outcome.
const kvWriteTimeout = 10 * time.Second

// Key prefixes of the two kinds of record.
const (
	kvUserPrefix  = "u."
	kvGroupPrefix = "g."
)

// kvRecords is the record store of a clustered database: the records in
// the directory's KV bucket.
type kvRecords struct {
	kv dirKV
	// loaded is the revision load read the bucket at: the watcher starts
	// after it. Set by load, then only read.
	loaded uint64
	// written is the highest revision this frontend's writes got, so that
	// the writer can tell a forwarded call which revision covers it.
	written atomic.Uint64
}

// newKVRecords is the record store over kv, for UserDBOptions.Records.
func newKVRecords(kv dirKV) *kvRecords {
	return &kvRecords{kv: kv}
}

// kvKey is the key of the record of kind named stem.
func kvKey(kind recordKind, stem string) string {
	if kind == groupKind {
		return kvGroupPrefix + stem // hex: a valid key as it is
	}
	return kvUserPrefix + kvUIDKey(stem)
}

// kvUIDKey encodes uid for a key, whose characters are [-/_=.a-zA-Z0-9]: a
// uid is letters, digits, '=', '%' and '+' (validUID), and never '_', so
// '%' and '+' become "_25" and "_2B" (their hex, like a URL's escapes)
// and the encoding is one-to-one.
func kvUIDKey(uid string) string {
	return strings.NewReplacer("%", "_25", "+", "_2B").Replace(uid)
}

// kvKeyStem returns the kind and the stem (the uid, or the gid's
// groupFileStem) of a record's key, or false for a key that is not a
// record's.
func kvKeyStem(key string) (recordKind, string, bool) {
	if stem, ok := strings.CutPrefix(key, kvGroupPrefix); ok {
		return groupKind, stem, true // parseRecord checks it against the gid
	}
	enc, ok := strings.CutPrefix(key, kvUserPrefix)
	if !ok {
		return 0, "", false
	}
	uid := strings.NewReplacer("_25", "%", "_2B", "+").Replace(enc)
	if !validUID(uid) || kvUIDKey(uid) != enc {
		return 0, "", false
	}
	return userKind, uid, true
}

// write stores data under the record's key. dirkv's errors come back
// wrapped: ErrNotWriter and ErrConflict are clean refusals (the writer has
// lost its lease, or its view of the record is behind the bucket's), and
// ErrInDoubt is a write that may have happened.
func (s *kvRecords) write(kind recordKind, stem string, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), kvWriteTimeout)
	defer cancel()
	key := kvKey(kind, stem)
	rev, err := s.kv.Write(ctx, key, data)
	if err != nil {
		return fmt.Errorf("userdb: write %s: %w", key, err)
	}
	for {
		w := s.written.Load()
		if rev <= w || s.written.CompareAndSwap(w, rev) {
			return nil
		}
	}
}

func (*kvRecords) inDoubt(err error) (error, bool) {
	if errors.Is(err, dirkv.ErrInDoubt) {
		return err, true
	}
	return nil, false
}

func (*kvRecords) name(kind recordKind, stem string) string { return kvKey(kind, stem) }

// kvLoadTimeout bounds reading the whole bucket at open: thousands of
// small records, read once, well within it on a healthy cluster.
const kvLoadTimeout = time.Minute

// load reads every record of the bucket, then checks and indexes them as
// loadFiles does the files (there are no temp files: a bucket write is
// whole or absent).
func (s *kvRecords) load(db *UserDB) error {
	ctx, cancel := context.WithTimeout(context.Background(), kvLoadTimeout)
	defer cancel()
	recs, upto, err := s.kv.Load(ctx)
	if err != nil {
		return fmt.Errorf("userdb: load the cluster's records: %w", err)
	}
	for _, r := range recs {
		kind, stem, ok := kvKeyStem(r.Key)
		if !ok {
			db.logger.Warn("userdb ignoring unexpected key", "key", r.Key)
			continue
		}
		if kind == groupKind {
			rec, err := parseRecord[groupRecord](r.Data, stem)
			if err != nil {
				return fmt.Errorf("userdb: corrupt record %s: %w", r.Key, err)
			}
			g := &groupState{}
			g.rec.Store(rec)
			db.groups[rec.GID] = g
			continue
		}
		rec, err := parseRecord[userRecord](r.Data, stem)
		if err != nil {
			return fmt.Errorf("userdb: corrupt record %s: %w", r.Key, err)
		}
		u := &userState{}
		u.rec.Store(rec)
		db.users[rec.UID] = u
	}
	if err := db.indexNames(); err != nil {
		return err
	}
	db.indexIdentities()
	if err := db.checkMembers(); err != nil {
		return err
	}
	s.loaded = upto
	return nil
}

// errNotReplica refuses applyRecord on a database that keeps its own files.
var errNotReplica = errors.New("userdb: not a cluster's records")

// applyRecord installs a record the bucket's watcher delivers: one written
// by the directory writer, this frontend or another. It is checked as at
// load, and ignored unless its Rev is newer than the record held (the
// writer sees its own writes come back, and a record is never rewritten
// with a lower Rev), so applying a record twice, or late, changes nothing.
// The new record replaces the old one in every index: a name it no longer
// holds stops resolving, a new one resolves.
//
// A record whose names another record holds would mean the writer broke
// its own invariants; the bucket is the truth, so the newer record takes
// the names, and the conflict is logged.
func (db *UserDB) applyRecord(r dirkv.Record) error {
	if !db.replicated {
		return errNotReplica
	}
	kind, stem, ok := kvKeyStem(r.Key)
	if !ok {
		return fmt.Errorf("userdb: apply: %w %q", dirkv.ErrBadKey, r.Key)
	}
	if r.Data == nil {
		// The database never deletes a record: someone did, by hand.
		// Dropping a user or group here would leave the names and
		// groups that refer to it dangling; a restart reloads the
		// bucket, with its checks.
		return fmt.Errorf("userdb: apply: record %s deleted by hand: not applied", r.Key)
	}
	if kind == groupKind {
		rec, err := parseRecord[groupRecord](r.Data, stem)
		if err != nil {
			return fmt.Errorf("userdb: apply: corrupt record %s: %w", r.Key, err)
		}
		db.applyGroup(rec)
		return nil
	}
	rec, err := parseRecord[userRecord](r.Data, stem)
	if err != nil {
		return fmt.Errorf("userdb: apply: corrupt record %s: %w", r.Key, err)
	}
	db.applyUser(rec)
	return nil
}

// lockForApply returns the state of id in states (db.users or db.groups),
// listed unpublished if missing, with its wmu held: the replica's apply
// waits for a write of the same record in progress (on the writer), like
// any writer of it.
func lockForApply[T any](db *UserDB, states map[string]*recordState[T], id string) *recordState[T] {
	for {
		db.mu.Lock()
		s := states[id]
		if s == nil {
			s = &recordState[T]{}
			states[id] = s
		}
		db.mu.Unlock()
		s.wmu.Lock()
		db.mu.RLock()
		current := states[id] == s
		db.mu.RUnlock()
		if current {
			return s
		}
		// A creation that failed unlisted it; whatever is listed now
		// is another.
		s.wmu.Unlock()
	}
}

// applyUser installs rec, a checked user record, unless the one held is as
// new.
func (db *UserDB) applyUser(rec *userRecord) {
	u := lockForApply(db, db.users, rec.UID)
	defer u.wmu.Unlock()
	old := u.rec.Load()
	if old != nil && rec.Rev <= old.Rev {
		return
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if old != nil {
		old.eachName(func(a string, _ nameKind) {
			if e := db.names[a]; e != nil && e.kind != nameGroup && e.owner == rec.UID {
				delete(db.names, a)
			}
		})
		db.unindexIdentityLocked(old)
	}
	rec.eachName(func(a string, kind nameKind) {
		if e := db.names[a]; e != nil && (e.kind == nameGroup || e.owner != rec.UID) {
			db.logger.Error("userdb apply: name held by another record", "uid", rec.UID, "owner", e.owner)
		}
		db.names[a] = &nameEntry{kind: kind, owner: rec.UID}
	})
	if key := identityKey(rec.Claims); key != "" {
		db.identities[key] = append(db.identities[key], rec.UID)
	}
	u.rec.Store(rec)
}

// unindexIdentityLocked removes rec's uid from its identity's accounts.
// db.mu is held.
func (db *UserDB) unindexIdentityLocked(rec *userRecord) {
	key := identityKey(rec.Claims)
	if key == "" {
		return
	}
	uids := db.identities[key]
	for i, uid := range uids {
		if uid == rec.UID {
			uids = append(uids[:i:i], uids[i+1:]...)
			break
		}
	}
	if len(uids) == 0 {
		delete(db.identities, key)
		return
	}
	db.identities[key] = uids
}

// applyGroup installs rec, a checked group record, unless the one held is
// as new. Its members are not checked against the user records
// (checkMembers): the writer wrote the users it lists first, so they are
// applied already.
func (db *UserDB) applyGroup(rec *groupRecord) {
	g := lockForApply(db, db.groups, rec.GID)
	defer g.wmu.Unlock()
	old := g.rec.Load()
	if old != nil && rec.Rev <= old.Rev {
		return
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if e := db.names[rec.GID]; e == nil || e.kind != nameGroup || e.pending {
		if e != nil && e.kind != nameGroup {
			db.logger.Error("userdb apply: gid is an alias of another record", "owner", e.owner)
		}
		db.names[rec.GID] = &nameEntry{kind: nameGroup, owner: rec.GID}
	}
	g.rec.Store(rec)
}

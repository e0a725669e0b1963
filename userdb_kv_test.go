package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mnm/cluster/dirkv"
	"mnm/qlib"
	"mnm/qlib/tmtp"
)

// fakeBucket is an in-memory stand-in for the directory's KV bucket and its
// writer election (cluster/dirkv), faithful where the database relies on
// it: every write gets the next revision, a write is a compare-and-set over
// the last revision the writing Dir has seen of the key, only the writer
// writes and answers calls, and each Dir's watcher delivers every write in
// revision order.
type fakeBucket struct {
	mu      sync.Mutex
	rev     uint64
	log     []dirkv.Record    // every write, in revision order
	last    map[string]uint64 // key → revision of its last write
	writer  *fakeDir
	changed chan struct{} // closed and replaced at every write
	// fault, if set, is asked before each write: a non-nil err is
	// returned instead, the write done first when write is true (a
	// write in doubt that happened).
	fault func(key string) (err error, write bool)
	// writes counts the Write calls that stored something.
	writes int
}

func newFakeBucket() *fakeBucket {
	return &fakeBucket{last: make(map[string]uint64), changed: make(chan struct{})}
}

// fakeDir is one frontend's handle on a fakeBucket, as *dirkv.Dir is.
type fakeDir struct {
	b *fakeBucket
	// Guarded by b.mu.
	seen    map[string]uint64 // last revision seen of each key
	handler dirkv.Handler
	// Guarded by amu.
	amu         sync.Mutex
	applied     uint64
	appliedCh   chan struct{} // closed and replaced when applied grows
	stop        chan struct{}
	watchDone   chan struct{}
	closeOnce   sync.Once
	watchActive bool
}

var _ dirKV = (*fakeDir)(nil)

func (b *fakeBucket) dir(t *testing.T) *fakeDir {
	d := &fakeDir{b: b, seen: make(map[string]uint64), appliedCh: make(chan struct{}), stop: make(chan struct{}), watchDone: make(chan struct{})}
	t.Cleanup(d.close)
	return d
}

// setWriter makes d the writer (nil: none), once its watcher, if it has
// one, has applied every write, as dirkv's Serve does before answering.
func (b *fakeBucket) setWriter(t *testing.T, d *fakeDir) {
	t.Helper()
	if d != nil && d.watching() {
		b.mu.Lock()
		upto := b.rev
		b.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.WaitApplied(ctx, upto); err != nil {
			t.Fatalf("new writer catching up: %v", err)
		}
	}
	b.mu.Lock()
	b.writer = d
	b.mu.Unlock()
}

func (b *fakeBucket) setFault(f func(key string) (error, bool)) {
	b.mu.Lock()
	b.fault = f
	b.mu.Unlock()
}

func (b *fakeBucket) revision() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rev
}

func (d *fakeDir) Load(context.Context) ([]dirkv.Record, uint64, error) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	latest := make(map[string]dirkv.Record)
	for _, r := range d.b.log {
		latest[r.Key] = r
	}
	var recs []dirkv.Record
	for _, k := range slices.Sorted(maps.Keys(latest)) {
		r := latest[k]
		r.Data = bytes.Clone(r.Data)
		recs = append(recs, r)
		d.seen[k] = r.Rev
	}
	return recs, d.b.rev, nil
}

func (d *fakeDir) Watch(from uint64, apply func(dirkv.Record)) error {
	d.amu.Lock()
	if d.watchActive {
		d.amu.Unlock()
		return errors.New("fake: watching already")
	}
	d.watchActive = true
	if from > d.applied {
		d.advanceLocked(from)
	}
	d.amu.Unlock()
	go func() {
		defer close(d.watchDone)
		next := from // revisions are log indexes plus one
		for {
			d.b.mu.Lock()
			var batch []dirkv.Record
			if next < uint64(len(d.b.log)) {
				batch = slices.Clone(d.b.log[next:])
			}
			changed := d.b.changed
			d.b.mu.Unlock()
			for _, r := range batch {
				d.b.mu.Lock()
				d.seen[r.Key] = max(d.seen[r.Key], r.Rev)
				d.b.mu.Unlock()
				r.Data = bytes.Clone(r.Data)
				apply(r)
				d.amu.Lock()
				d.advanceLocked(r.Rev)
				d.amu.Unlock()
				next = r.Rev
			}
			if len(batch) > 0 {
				continue
			}
			select {
			case <-changed:
			case <-d.stop:
				return
			}
		}
	}()
	return nil
}

func (d *fakeDir) watching() bool {
	d.amu.Lock()
	defer d.amu.Unlock()
	return d.watchActive
}

func (d *fakeDir) advanceLocked(rev uint64) {
	d.applied = rev
	close(d.appliedCh)
	d.appliedCh = make(chan struct{})
}

func (d *fakeDir) Applied() uint64 {
	d.amu.Lock()
	defer d.amu.Unlock()
	return d.applied
}

func (d *fakeDir) WaitApplied(ctx context.Context, rev uint64) error {
	for {
		d.amu.Lock()
		applied, ch := d.applied, d.appliedCh
		d.amu.Unlock()
		if applied >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// kvKeyChars are the characters of a NATS KV key.
var kvKeyChars = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func (d *fakeDir) Write(_ context.Context, key string, data []byte) (uint64, error) {
	b := d.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if !kvKeyChars.MatchString(key) || strings.HasPrefix(key, ".") || strings.HasSuffix(key, ".") {
		return 0, dirkv.ErrBadKey
	}
	if b.writer != d {
		return 0, dirkv.ErrNotWriter
	}
	var fault error
	if b.fault != nil {
		var write bool
		if fault, write = b.fault(key); fault != nil && !write {
			return 0, fault
		}
	}
	if b.last[key] != d.seen[key] {
		return 0, dirkv.ErrConflict
	}
	b.rev++
	b.log = append(b.log, dirkv.Record{Key: key, Data: bytes.Clone(data), Rev: b.rev})
	b.last[key] = b.rev
	d.seen[key] = b.rev
	b.writes++
	close(b.changed)
	b.changed = make(chan struct{})
	if fault != nil {
		return 0, fault
	}
	return b.rev, nil
}

func (d *fakeDir) Serve(h dirkv.Handler) error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	d.handler = h
	return nil
}

func (d *fakeDir) IsWriter() bool {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	return d.b.writer == d
}

// Call runs the writer's handler in process, on a JSON round trip of the
// arguments and of the reply, as a NATS request carries them.
func (d *fakeDir) Call(ctx context.Context, method string, args []byte) ([]byte, uint64, string, error) {
	d.b.mu.Lock()
	w := d.b.writer
	var h dirkv.Handler
	if w != nil {
		h = w.handler
	}
	d.b.mu.Unlock()
	if h == nil {
		return nil, 0, "", dirkv.ErrNoWriter
	}
	var in bytes.Buffer
	if err := json.Compact(&in, args); err != nil {
		return nil, 0, "", fmt.Errorf("fake: call arguments are not JSON: %w", err)
	}
	reply, rev, code := h(ctx, method, in.Bytes())
	return bytes.Clone(reply), rev, code, nil
}

func (d *fakeDir) close() {
	d.closeOnce.Do(func() {
		close(d.stop)
		d.amu.Lock()
		active := d.watchActive
		d.amu.Unlock()
		if active {
			<-d.watchDone
		}
	})
}

// openKVDB opens a user database over kv.
func openKVDB(t *testing.T, kv dirKV) *UserDB {
	t.Helper()
	db, err := OpenUserDB(UserDBOptions{Records: newKVRecords(kv)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// replicate opens a database over a new Dir of b and has it apply every
// write of b, as a frontend's watcher does.
func replicate(t *testing.T, b *fakeBucket) (*UserDB, *fakeDir) {
	t.Helper()
	kv := b.dir(t)
	db := openKVDB(t, kv)
	if err := kv.Watch(db.records.(*kvRecords).loaded, func(r dirkv.Record) {
		if err := db.applyRecord(r); err != nil {
			t.Errorf("apply %s: %v", r.Key, err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return db, kv
}

// caughtUp waits until kv has applied every write of b.
func caughtUp(t *testing.T, b *fakeBucket, kv *fakeDir) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := kv.WaitApplied(ctx, b.revision()); err != nil {
		t.Fatal(err)
	}
}

func TestUserDBKVKeys(t *testing.T) {
	for _, uid := range []string{"u100002", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "a%b+c=", "%%", "++==", "_"} {
		key := kvKey(userKind, uid)
		kind, stem, ok := kvKeyStem(key)
		if validUID(uid) {
			if !kvKeyChars.MatchString(key) {
				t.Errorf("uid %q: key %q has characters a key may not", uid, key)
			}
			if !ok || kind != userKind || stem != uid {
				t.Errorf("uid %q: key %q reads back as %v %q %v", uid, key, kind, stem, ok)
			}
		} else if ok {
			t.Errorf("invalid uid %q: key %q read back", uid, key)
		}
	}
	gkey := kvKey(groupKind, groupFileStem("../any gid/ with spaces"))
	if kind, stem, ok := kvKeyStem(gkey); !kvKeyChars.MatchString(gkey) || !ok || kind != groupKind || stem != groupFileStem("../any gid/ with spaces") {
		t.Errorf("group key %q: %v %q %v", gkey, kind, stem, ok)
	}
	// Keys that are no record's: another prefix, an encoding that is not
	// ours ("_2b", a '_' of its own), an empty uid.
	for _, key := range []string{"x.abc", "u.", "u.a_2bc", "u.a_c", "u.a%", "writer", ""} {
		if _, _, ok := kvKeyStem(key); ok {
			t.Errorf("key %q read as a record's", key)
		}
	}
}

// TestUserDBKVOpen: a database over the bucket loads what another wrote,
// with the checks a database on disk makes.
func TestUserDBKVOpen(t *testing.T) {
	b := newFakeBucket()
	wkv := b.dir(t)
	b.setWriter(t, wkv)
	w := openKVDB(t, wkv)
	if _, err := w.CreateFixture("u%1+", []string{"phone"}, []string{"alice"}); err != nil {
		t.Fatal(err)
	}
	uid, _, _, err := w.Register("laptop", map[string]any{"iss": "https://id", "sub": "42", "email": "x@y"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddAlias(uid, "bob the builder"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupInvite(uid, "builders guild", "bob the builder", "alice"); err != nil {
		t.Fatal(err)
	}
	r := openKVDB(t, b.dir(t))
	sameAnswers(t, w, r)
	if _, err := r.Snapshot(); !errors.Is(err, errSnapshotReplicated) {
		t.Errorf("Snapshot over the bucket: %v", err)
	}
	if _, err := OpenUserDB(UserDBOptions{Records: newKVRecords(b.dir(t)), AwayAfter: time.Hour}); err == nil {
		t.Error("away policy over the bucket accepted")
	}
	// The identity bound holds on the records loaded.
	if _, _, _, err := w.Register("x", map[string]any{"iss": "https://id", "sub": "42"}); !errors.Is(err, qlib.ErrIdentityUsed) {
		t.Errorf("second account for one identity: %v", err)
	}

	// Records that a database must refuse to open.
	bad := func(name string, key string, data []byte) {
		t.Helper()
		b2 := newFakeBucket()
		kv := b2.dir(t)
		b2.setWriter(t, kv)
		for _, rec := range b.log {
			if _, err := kv.Write(context.Background(), rec.Key, rec.Data); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := kv.Write(context.Background(), key, data); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenUserDB(UserDBOptions{Records: newKVRecords(b2.dir(t))}); err == nil {
			t.Errorf("%s: opened", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	stolen := &userRecord{UID: "mallory", Rev: 1, NextDevice: 0, Aliases: []string{"alice"}}
	data, _ := encodeRecord(stolen)
	bad("alias twice", kvKey(userKind, "mallory"), data)
	data, _ = encodeRecord(&userRecord{UID: "mallory", Rev: 1})
	bad("record under another uid's key", kvKey(userKind, "eve"), data)
	corrupt := bytes.Replace(data, []byte("mallory"), []byte("mallorz"), 1)
	bad("checksum", kvKey(userKind, "mallory"), corrupt)
	ghost, _ := encodeRecord(&groupRecord{GID: "ghosts", Rev: 1, Members: []memberRecord{{UID: "nobody", Alias: "casper", Status: memberJoined}}})
	bad("group member no user", kvKey(groupKind, groupFileStem("ghosts")), ghost)
	clash, _ := encodeRecord(&groupRecord{GID: "alice", Rev: 1})
	bad("gid is an alias", kvKey(groupKind, groupFileStem("alice")), clash)
}

// TestUserDBKVWriteRefusals: the bucket's clean refusals change nothing in
// memory; a write in doubt stops all writes.
func TestUserDBKVWriteRefusals(t *testing.T) {
	b := newFakeBucket()
	wkv := b.dir(t)
	b.setWriter(t, wkv)
	w := openKVDB(t, wkv)
	var fatal []error
	w.SetOnFatal(func(err error) { fatal = append(fatal, err) })
	uid, _, _, err := w.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, refusal := range []error{dirkv.ErrConflict, dirkv.ErrNotWriter} {
		b.setFault(func(string) (error, bool) { return refusal, false })
		if err := w.AddAlias(uid, "refused alias"); !errors.Is(err, refusal) {
			t.Errorf("AddAlias refused with %v: got %v", refusal, err)
		}
		if _, _, _, err := w.Register("phone", nil); !errors.Is(err, refusal) {
			t.Errorf("Register refused with %v: got %v", refusal, err)
		}
		if _, err := w.GroupInvite(uid, "refused group", "x", "y"); err == nil {
			t.Error("GroupInvite accepted")
		}
		b.setFault(nil)
		if _, ok := w.AliasUID("refused alias"); ok {
			t.Errorf("%v: alias resolves", refusal)
		}
		if w.UserCount() != 1 {
			t.Errorf("%v: %d users", refusal, w.UserCount())
		}
		// Nothing is left reserved: the same write goes through now.
		if err := w.AddAlias(uid, fmt.Sprintf("alias after %d", len(b.log))); err != nil {
			t.Errorf("after %v: %v", refusal, err)
		}
	}
	if len(fatal) != 0 {
		t.Fatalf("clean refusals were fatal: %v", fatal)
	}
	// A conflict for real: another Dir wrote the key meanwhile.
	other := b.dir(t)
	if _, _, err := other.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.setWriter(t, other)
	rec, _ := w.lookup(uid)
	data, _ := encodeRecord(rec.rec.Load())
	if _, err := other.Write(context.Background(), kvKey(userKind, uid), data); err != nil {
		t.Fatal(err)
	}
	b.setWriter(t, wkv)
	if err := w.AddAlias(uid, "behind the bucket"); !errors.Is(err, dirkv.ErrConflict) {
		t.Errorf("write over a newer revision: %v", err)
	}
	if len(fatal) != 0 {
		t.Fatalf("conflict was fatal: %v", fatal)
	}

	b.setFault(func(string) (error, bool) { return dirkv.ErrInDoubt, true })
	if _, _, _, err := w.Register("doubt", nil); !errors.Is(err, dirkv.ErrInDoubt) {
		t.Errorf("Register in doubt: %v", err)
	}
	b.setFault(nil)
	if len(fatal) != 1 {
		t.Fatalf("write in doubt: onFatal called %d times", len(fatal))
	}
	if _, _, err := w.AddDevice(uid, "later"); err == nil || !strings.Contains(err.Error(), "earlier failure") {
		t.Errorf("write after a doubtful one: %v", err)
	}
}

// TestUserDBKVLoginWritesNothing: a replica's Login never writes, even for
// a device marked away (which a database on disk clears at its login).
func TestUserDBKVLoginWritesNothing(t *testing.T) {
	b := newFakeBucket()
	wkv := b.dir(t)
	b.setWriter(t, wkv)
	w := openKVDB(t, wkv)
	nodeids, err := w.CreateFixture("u1", []string{"phone"}, []string{"alice"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := w.lookup("u1")
	rec := u.rec.Load().clone()
	rec.Rev++
	rec.Devices[0].Away = true
	data, _ := encodeRecord(rec)
	if _, err := wkv.Write(context.Background(), kvKey(userKind, "u1"), data); err != nil {
		t.Fatal(err)
	}
	for _, kv := range []*fakeDir{wkv, b.dir(t)} {
		db := openKVDB(t, kv)
		before := b.revision()
		node, _ := decodeNodeID(nodeids[0])
		if dev, err := db.Login("u1", node); err != nil || dev != "u1.0" {
			t.Fatalf("Login: %q %v", dev, err)
		}
		if b.revision() != before {
			t.Error("Login wrote the record")
		}
	}
}

// decodeNodeID is a nodeid as Login takes it.
func decodeNodeID(nodeid string) ([]byte, error) {
	return tmtp.Base32.DecodeString(nodeid)
}

// TestUserDBReplicaApply: a replica fed every record the writer writes
// answers every read as the writer does, through every kind of change:
// names added, used, withdrawn and relisted; devices added, dropped and
// retired; groups created, joined, renamed, dropped, opened; blocks;
// receive-only.
func TestUserDBReplicaApply(t *testing.T) {
	b := newFakeBucket()
	wkv := b.dir(t)
	b.setWriter(t, wkv)
	w := openKVDB(t, wkv)
	// One replica from the start, one opened midway (load, then watch).
	r1, kv1 := replicate(t, b)

	nodes := map[string]string{} // uid → a nodeid
	reg := func(label string, claims map[string]any) string {
		t.Helper()
		uid, nodeid, _, err := w.Register(label, claims)
		if err != nil {
			t.Fatal(err)
		}
		nodes[uid] = nodeid
		return uid
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	alice := reg("alice phone", map[string]any{"iss": "https://id", "sub": "alice", "name": "Alice"})
	bob := reg("bob phone", nil)
	carol := reg("carol phone", map[string]any{"iss": "https://id", "sub": "carol"})
	must(w.AddAlias(alice, "alice smith"))
	must(w.AddAlias(alice, "alice jones"))
	must(w.AddAlias(bob, "bob brown1"))
	must(w.AddAlias(carol, "carol white"))
	must(w.AddOnceAlias(bob, "bob once 1"))
	must(w.AddOnceAlias(bob, "bob once 2"))
	must(w.AddOnceAlias(carol, "carol once"))
	_, dev, err := w.AddDevice(alice, "alice laptop")
	must(err)
	_, _, err = w.AddDevice(bob, "bob laptop")
	must(err)
	must(w.RetireDevice(dev))
	if _, _, err := w.DropDevice(bob, "0"); err != nil {
		t.Fatal(err)
	}

	r2, kv2 := replicate(t, b)

	if _, err := w.GroupInvite(alice, "the alices", "alice smith", "bob brown1"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupInvite(alice, "the alices", "alice smith", "carol once"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupEdit(bob, qlib.GroupJoin, "the alices", "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupEdit(alice, qlib.GroupOpenPost, "the alices", "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupInvite(bob, "bobs group", "bob brown1", "alice jones"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupEdit(alice, qlib.GroupJoin, "bobs group", "alice smith", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupEdit(alice, qlib.GroupDrop, "bobs group", "", "bob brown1"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.UseAlias("bob once 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.DropAlias(bob, "bob once 2"); err != nil {
		t.Fatal(err)
	}
	// Withdrawing alice smith relists alice in both groups.
	moves, err := w.DropAlias(alice, "alice smith")
	if err != nil || len(moves) != 2 {
		t.Fatalf("DropAlias: %v %v", moves, err)
	}
	for _, blocked := range []string{bob, "carol white"} {
		if _, _, err := w.Block(alice, blocked); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := w.Unblock(alice, bob); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Block(carol, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := w.SetReceiveOnly(carol, true); err != nil {
		t.Fatal(err)
	}

	for _, kv := range []*fakeDir{kv1, kv2} {
		caughtUp(t, b, kv)
	}
	sameAnswers(t, w, r1)
	sameAnswers(t, w, r2)
	r3 := openKVDB(t, b.dir(t)) // loaded at the end, no watcher
	sameAnswers(t, w, r3)

	// Withdrawn and used names resolve on no replica; the groups list
	// alice under her next alias.
	for _, r := range []*UserDB{r1, r2} {
		if _, ok := r.AliasUID("alice smith"); ok {
			t.Error("a withdrawn alias resolves on a replica")
		}
		if _, _, ok := r.RecipientUID("bob once 1"); ok {
			t.Error("a used single-use alias resolves on a replica")
		}
		if err := r.names["alice smith"]; err == nil || err.kind != nameRetired {
			t.Errorf("withdrawn alias on a replica: %+v", err)
		}
	}
	for uid, nodeid := range nodes {
		node, err := decodeNodeID(nodeid)
		if err != nil {
			t.Fatal(err)
		}
		wdev, werr := w.Login(uid, node)
		for _, r := range []*UserDB{r1, r2, r3} {
			if dev, err := r.Login(uid, node); dev != wdev || fmt.Sprint(err) != fmt.Sprint(werr) {
				t.Errorf("Login(%s) on a replica: %q %v, writer %q %v", uid, dev, err, wdev, werr)
			}
		}
	}

	// Applying again, or an older record, changes nothing: every record,
	// newest first.
	b.mu.Lock()
	log := slices.Clone(b.log)
	b.mu.Unlock()
	for _, rec := range slices.Backward(log) {
		if err := r1.applyRecord(rec); err != nil {
			t.Fatalf("apply again %s: %v", rec.Key, err)
		}
	}
	sameAnswers(t, w, r1)

	// A record that no longer holds a name (no write of the database's
	// removes one, but the replica must not depend on it) frees it on the
	// replica; a name it gains resolves.
	u, _ := w.lookup(carol)
	edited := u.rec.Load().clone()
	edited.Rev++
	edited.Aliases = []string{"carol renamed"}
	data, _ := encodeRecord(edited)
	rev, err := wkv.Write(context.Background(), kvKey(userKind, carol), data)
	if err != nil {
		t.Fatal(err)
	}
	// The writer applies it too (its watcher would: w has none here).
	if err := w.applyRecord(dirkv.Record{Key: kvKey(userKind, carol), Data: data, Rev: rev}); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, b, kv1)
	if _, ok := r1.AliasUID("carol white"); ok {
		t.Error("a name the record no longer holds resolves")
	}
	if got, ok := r1.AliasUID("carol renamed"); !ok || got != carol {
		t.Errorf("the record's new name: %q %v", got, ok)
	}
	if e := r1.names["carol white"]; e != nil {
		t.Errorf("a name the record no longer holds is indexed: %+v", e)
	}

	// What applyRecord refuses.
	if err := r1.applyRecord(dirkv.Record{Key: "x.y", Data: log[0].Data}); err == nil {
		t.Error("applied a record under a key that is no record's")
	}
	if err := r1.applyRecord(dirkv.Record{Key: log[0].Key, Data: []byte(`{"v":1}`)}); err == nil {
		t.Error("applied a corrupt record")
	}
	if err := r1.applyRecord(dirkv.Record{Key: log[0].Key, Rev: b.revision() + 1}); err == nil {
		t.Error("applied a deletion")
	}
	if err := r1.applyRecord(dirkv.Record{Key: kvKey(userKind, "someone"), Data: log[0].Data}); err == nil {
		t.Error("applied a record under another uid's key")
	}
	sameAnswers(t, w, r1)
	files := openTestUserDB(t)
	if err := files.applyRecord(log[0]); !errors.Is(err, errNotReplica) {
		t.Errorf("apply on a database on disk: %v", err)
	}
}

// openTestUserDB opens a database on disk in a temp directory.
func openTestUserDB(t *testing.T) *UserDB {
	t.Helper()
	db, err := OpenUserDB(UserDBOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// sameIndexes fails unless b holds the records and indexes a holds, and
// returns a's uids, gids and names.
func sameIndexes(t *testing.T, a, b *UserDB) (uids, gids, names []string) {
	t.Helper()
	a.mu.RLock()
	defer a.mu.RUnlock()
	b.mu.RLock()
	defer b.mu.RUnlock()
	uids = slices.Sorted(maps.Keys(a.users))
	gids = slices.Sorted(maps.Keys(a.groups))
	names = slices.Sorted(maps.Keys(a.names))
	if got := slices.Sorted(maps.Keys(b.users)); !slices.Equal(got, uids) {
		t.Fatalf("users: %v, want %v", got, uids)
	}
	if got := slices.Sorted(maps.Keys(b.groups)); !slices.Equal(got, gids) {
		t.Fatalf("groups: %v, want %v", got, gids)
	}
	for _, uid := range uids {
		ra, rb := a.users[uid].rec.Load(), b.users[uid].rec.Load()
		da, _ := encodeRecord(ra)
		db, _ := encodeRecord(rb)
		if !bytes.Equal(da, db) {
			t.Errorf("user %s:\n%s\nwant\n%s", uid, db, da)
		}
		if !maps.Equal(ra.blocked, rb.blocked) {
			t.Errorf("user %s blocks index: %v, want %v", uid, rb.blocked, ra.blocked)
		}
	}
	for _, gid := range gids {
		da, _ := encodeRecord(a.groups[gid].rec.Load())
		db, _ := encodeRecord(b.groups[gid].rec.Load())
		if !bytes.Equal(da, db) {
			t.Errorf("group %s:\n%s\nwant\n%s", gid, db, da)
		}
	}
	if len(a.names) != len(b.names) {
		t.Errorf("%d names, want %d", len(b.names), len(a.names))
	}
	for n, e := range a.names {
		if f := b.names[n]; f == nil || *f != *e {
			t.Errorf("name %q: %+v, want %+v", n, f, e)
		}
	}
	sortedIdentities := func(m map[string][]string) map[string][]string {
		out := make(map[string][]string, len(m))
		for k, v := range m {
			out[k] = slices.Sorted(slices.Values(v))
		}
		return out
	}
	if ia, ib := sortedIdentities(a.identities), sortedIdentities(b.identities); !maps.EqualFunc(ia, ib, slices.Equal) {
		t.Errorf("identities: %v, want %v", ib, ia)
	}
	return uids, gids, names
}

// sameAnswers fails unless b holds what a holds and answers every read as
// a does: the records byte for byte, every index, and every read method
// for every user, name and group.
func sameAnswers(t *testing.T, a, b *UserDB) {
	t.Helper()
	uids, gids, names := sameIndexes(t, a, b)
	same := func(what string, x, y any) {
		t.Helper()
		jx, _ := json.Marshal(x)
		jy, _ := json.Marshal(y)
		if !bytes.Equal(jx, jy) {
			t.Errorf("%s: %s, want %s", what, jy, jx)
		}
	}
	two := func(v any, err error) []any { return []any{v, fmt.Sprint(err)} }
	for _, uid := range append(slices.Clone(uids), "nosuchuser") {
		same("Devices "+uid, two(a.Devices(uid)), two(b.Devices(uid)))
		same("Nodes "+uid, two(a.Nodes(uid)), two(b.Nodes(uid)))
		same("Aliases "+uid, two(a.Aliases(uid)), two(b.Aliases(uid)))
		same("OnceAliases "+uid, two(a.OnceAliases(uid)), two(b.OnceAliases(uid)))
		same("Blocks "+uid, two(a.Blocks(uid)), two(b.Blocks(uid)))
		same("Claims "+uid, two(a.Claims(uid)), two(b.Claims(uid)))
		same("ReceiveOnly "+uid, a.ReceiveOnly(uid), b.ReceiveOnly(uid))
		same("Exists "+uid, a.Exists(uid), b.Exists(uid))
		same("MemberGroups "+uid, a.MemberGroups(uid), b.MemberGroups(uid))
		ma, oka := a.Member(uid)
		mb, okb := b.Member(uid)
		ma.Devices, mb.Devices = nil, nil // LastLogin: each frontend's own logins
		same("Member "+uid, []any{ma, oka}, []any{mb, okb})
		for _, other := range uids {
			same("Blocked "+uid+" "+other, a.Blocked(uid, other), b.Blocked(uid, other))
		}
		for _, gid := range gids {
			same("GroupMembers "+uid+" "+gid, two(a.GroupMembers(uid, gid)), two(b.GroupMembers(uid, gid)))
		}
	}
	for _, n := range append(names, "no such name") {
		ua, oka := a.AliasUID(n)
		ub, okb := b.AliasUID(n)
		same("AliasUID "+n, []any{ua, oka}, []any{ub, okb})
		ua, oncea, oka := a.RecipientUID(n)
		ub, onceb, okb := b.RecipientUID(n)
		same("RecipientUID "+n, []any{ua, oncea, oka}, []any{ub, onceb, okb})
		ma, oka2 := a.Member(n)
		mb, okb2 := b.Member(n)
		same("Member "+n, []any{ma.UID, oka2}, []any{mb.UID, okb2})
	}
	strip := func(ms []memberInfo) []memberInfo {
		for i := range ms {
			ms[i].Devices = nil
		}
		return ms
	}
	same("Members", strip(a.Members("", 1000)), strip(b.Members("", 1000)))
	same("ReceiveOnlyUIDs", a.ReceiveOnlyUIDs(), b.ReceiveOnlyUIDs())
	same("counts", []int{a.UserCount(), a.GroupCount()}, []int{b.UserCount(), b.GroupCount()})
}

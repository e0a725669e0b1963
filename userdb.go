package main

// The user database: members, their devices (each with a nodeid, the device's
// password) and their aliases. Every record lives in memory, so logins and
// lookups never touch the disk; every change is written to disk, durably,
// before the call that made it returns.
//
// On disk (dir is "userdb" beside the config):
//
//	dir/user/<uid>.json      one record per user
//	dir/user/<uid>.json.tmp  a write in progress (or interrupted by a crash)
//	dir/group/               reserved for group records (next milestone)
//
// A record file is one line of JSON, {"v":1,"crc32c":"<8 hex>","user":{...}},
// where the checksum covers the exact bytes of the "user" value, so a flipped
// bit anywhere in the record is detected at open instead of silently changing
// a member's devices or aliases.
//
// Persistence order for every change: write the temp file, fsync it, rename it
// over the record, fsync the directory. A crash leaves either the old record
// or the new one, plus possibly a temp file; OpenUserDB completes a temp file
// that is whole and checksummed (the rename is all that was missing) and
// discards one that is not.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"mnm/qlib"
	"mnm/qlib/tmtp"
)

var _ qlib.Directory = (*UserDB)(nil)

const (
	// uidBytes and nodeidBytes are fixed by SPEC §3: a uid is the base32 of
	// 20 random bytes (32 characters), a nodeid of 25 (200 bits, 40 characters).
	uidBytes    = 20
	nodeidBytes = 25

	// maxUIDLen bounds a uid taken from the network before it is used as a map
	// key or a file name. Generated uids have 32 characters; fixtures use
	// shorter ones; 64 leaves room without letting a client name a file longer
	// than any filesystem accepts.
	maxUIDLen = 64

	// maxLabelBytes and maxAliasBytes bound client-supplied strings that are
	// stored in a record and echoed to every device of the user. 200 bytes is
	// far more than any human-chosen name needs and keeps a record of
	// maxDevices devices small enough to rewrite on every change.
	maxLabelBytes = 200
	maxAliasBytes = 200

	// minAliasChars is the shortest alias a member may claim (SPEC §4 op 3,
	// §7), counted in characters, not bytes. Fixtures may use shorter ones.
	minAliasChars = 8

	// maxDevices is the number of live devices a user may have (SPEC §7).
	// Defunct devices do not count.
	maxDevices = 100

	// recordVersion is the "v" of a record file; a reader refuses versions it
	// does not know rather than misreading them.
	recordVersion = 1

	userSubdir      = "user"
	recordSuffix    = ".json"
	recordTmpSuffix = ".tmp"
	userDirPerm     = 0o700 // records hold nodeid hashes and sign-up claims
	recordPerm      = 0o600
)

// nodeHashPrefix separates the nodeid derivation from any other use of
// SHA-256 on the same bytes.
const nodeHashPrefix = "mnm userdb nodeid v1\x00"

// userRecord is the stored form of a user. A published record is immutable:
// a writer clones it, changes the clone, writes it and then publishes it, so
// readers never lock.
type userRecord struct {
	UID string `json:"uid"`
	// Rev counts the writes of this record, so that OpenUserDB can tell a
	// temp file that is newer than the record from a stale one.
	Rev        uint64         `json:"rev"`
	Created    time.Time      `json:"created"`
	NextDevice int            `json:"nextDevice"` // device numbers are never reused
	Devices    []deviceRecord `json:"devices"`    // in creation order, defunct ones included
	Aliases    []string       `json:"aliases,omitempty"`
	// Claims holds the OpenID Connect claims of a third-party sign-up. It is
	// never modified in place once stored, so clones share it.
	Claims map[string]any `json:"claims,omitempty"`
}

type deviceRecord struct {
	Num     int       `json:"num"`
	Label   string    `json:"label"`
	Created time.Time `json:"created"`
	// NodeHash is nodeHash(uid, nodeid); the nodeid itself is never stored.
	NodeHash []byte `json:"nodeHash"`
	Defunct  bool   `json:"defunct,omitempty"`
}

func (r *userRecord) clone() *userRecord {
	c := *r
	c.Devices = slices.Clone(r.Devices)
	c.Aliases = slices.Clone(r.Aliases)
	return &c
}

func (r *userRecord) liveDevices() int {
	n := 0
	for _, d := range r.Devices {
		if !d.Defunct {
			n++
		}
	}
	return n
}

// nameKind says what owns an entry of the name index. Aliases and group ids
// share one namespace (SPEC §4: a gid may not equal an alias and vice versa),
// so the group milestone adds a kind here rather than a second index.
type nameKind int

const (
	nameAlias nameKind = iota // owner is a uid
)

// nameEntry is one claimed name. A pending entry is reserved by a write in
// progress: it blocks other claims but does not resolve until it is durable.
type nameEntry struct {
	kind    nameKind
	owner   string
	pending bool
}

// userState is the in-memory state of one user.
type userState struct {
	// wmu serialises the writers of this user's record; it is held across
	// the file write and fsync, so only writers of the same user wait.
	wmu sync.Mutex
	// rec is the durable record; nil while the user's first write is in
	// progress (the uid is reserved but does not exist yet).
	rec atomic.Pointer[userRecord]
}

// UserDB is the user database. It implements qlib.Directory; all methods are
// safe for concurrent use.
type UserDB struct {
	userDir string
	logger  *slog.Logger
	now     func() time.Time

	// mu guards the fields below. It is held only for map operations, never
	// across file I/O.
	mu     sync.RWMutex
	users  map[string]*userState
	names  map[string]*nameEntry
	failed error // set when a write left the disk in an unknown state
	closed bool
}

// OpenUserDB opens the user database in dir, creating it if missing, and
// loads every record into memory. It completes or discards temp files left by
// an interrupted write, and refuses to open if any record is corrupt.
func OpenUserDB(dir string, logger *slog.Logger) (*UserDB, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	db := &UserDB{
		userDir: filepath.Join(dir, userSubdir),
		logger:  logger,
		now:     time.Now,
		users:   make(map[string]*userState),
		names:   make(map[string]*nameEntry),
	}
	if _, err := os.Stat(db.userDir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(db.userDir, userDirPerm); err != nil {
			return nil, fmt.Errorf("userdb: create %s: %w", db.userDir, err)
		}
		// Make the new directory entries durable before any record goes in.
		for _, d := range []string{filepath.Dir(dir), dir, db.userDir} {
			if err := syncRecordDir(d); err != nil {
				return nil, err
			}
		}
	}
	if err := db.load(); err != nil {
		return nil, err
	}
	logger.Info("userdb open", "dir", dir, "users", len(db.users), "names", len(db.names))
	return db, nil
}

// load reads every record, then indexes the aliases, then deals with temp
// files; the last step needs the index to refuse a temp file whose alias
// another user holds.
func (db *UserDB) load() error {
	entries, err := os.ReadDir(db.userDir)
	if err != nil {
		return fmt.Errorf("userdb: read %s: %w", db.userDir, err)
	}
	var temps []string
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(db.userDir, name)
		switch {
		case strings.HasSuffix(name, recordSuffix+recordTmpSuffix):
			temps = append(temps, name)
		case strings.HasSuffix(name, recordSuffix) && e.Type().IsRegular():
			uid := strings.TrimSuffix(name, recordSuffix)
			data, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("userdb: read %s: %w", path, err)
			}
			rec, err := parseRecord(data, uid)
			if err != nil {
				return fmt.Errorf("userdb: corrupt record %s: %w", path, err)
			}
			u := &userState{}
			u.rec.Store(rec)
			db.users[uid] = u
		default:
			db.logger.Warn("userdb ignoring unexpected file", "file", path)
		}
	}

	// Index in uid order so that a conflict is reported the same way every time.
	uids := make([]string, 0, len(db.users))
	for uid := range db.users {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	for _, uid := range uids {
		for _, a := range db.users[uid].rec.Load().Aliases {
			if e, ok := db.names[a]; ok {
				return fmt.Errorf("userdb: alias %q is in both %s and %s", a,
					db.recordPath(e.owner), db.recordPath(uid))
			}
			db.names[a] = &nameEntry{kind: nameAlias, owner: uid}
		}
	}

	changed := false
	for _, name := range temps {
		c, err := db.recoverTemp(name)
		if err != nil {
			return err
		}
		changed = changed || c
	}
	if changed {
		return syncRecordDir(db.userDir)
	}
	return nil
}

// recoverTemp completes or discards the temp file name, reporting whether it
// changed the directory. A temp file is completed only if it is whole, newer
// than the record it replaces and claims no alias held by another user; a
// write that was never acknowledged may be lost, but a record must never be
// replaced by something worse.
func (db *UserDB) recoverTemp(name string) (bool, error) {
	path := filepath.Join(db.userDir, name)
	uid := strings.TrimSuffix(name, recordSuffix+recordTmpSuffix)
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("userdb: read %s: %w", path, err)
	}
	rec, reason := parseRecord(data, uid)
	if reason == nil {
		reason = db.checkReplacement(rec)
	}
	if reason != nil {
		if err := os.Remove(path); err != nil {
			return false, fmt.Errorf("userdb: remove %s: %w", path, err)
		}
		db.logger.Warn("userdb discarded interrupted write", "file", path, "reason", reason.Error())
		return true, nil
	}
	if err := os.Rename(path, db.recordPath(uid)); err != nil {
		return false, fmt.Errorf("userdb: complete %s: %w", path, err)
	}
	u := db.users[uid]
	if u == nil {
		u = &userState{}
		db.users[uid] = u
	} else {
		for _, a := range u.rec.Load().Aliases {
			delete(db.names, a)
		}
	}
	u.rec.Store(rec)
	for _, a := range rec.Aliases {
		db.names[a] = &nameEntry{kind: nameAlias, owner: uid}
	}
	db.logger.Info("userdb completed interrupted write", "file", path, "uid", uid)
	return true, nil
}

// checkReplacement says why rec may not replace the loaded record of its
// user, or nil if it may.
func (db *UserDB) checkReplacement(rec *userRecord) error {
	if u := db.users[rec.UID]; u != nil && u.rec.Load().Rev >= rec.Rev {
		return fmt.Errorf("stale: rev %d, record has rev %d", rec.Rev, u.rec.Load().Rev)
	}
	for _, a := range rec.Aliases {
		if e, ok := db.names[a]; ok && e.owner != rec.UID {
			return fmt.Errorf("alias %q belongs to %s", a, e.owner)
		}
	}
	return nil
}

// recordFile is the envelope of a record on disk. User keeps the exact bytes
// the checksum covers.
type recordFile struct {
	V      int             `json:"v"`
	CRC32C string          `json:"crc32c"`
	User   json.RawMessage `json:"user"`
}

// recordCRCTable is the CRC-32C table: a checksum against accidental corruption
// (a torn or flipped sector), not an adversary, who could rewrite the file
// anyway. It detects every single-bit and short burst error.
var recordCRCTable = crc32.MakeTable(crc32.Castagnoli)

// encodeRecord returns the file contents for rec. The envelope is written by
// hand so that the checksummed bytes appear in the file exactly as hashed.
func encodeRecord(rec *userRecord) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("userdb: encode %s: %w", rec.UID, err)
	}
	out := fmt.Appendf(nil, `{"v":%d,"crc32c":"%08x","user":`, recordVersion, crc32.Checksum(body, recordCRCTable))
	out = append(out, body...)
	return append(out, "}\n"...), nil
}

// parseRecord decodes and checks the contents of the record file for uid.
func parseRecord(data []byte, uid string) (*userRecord, error) {
	var f recordFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not a record: %w", err)
	}
	if f.V != recordVersion {
		return nil, fmt.Errorf("unknown version %d", f.V)
	}
	if want := fmt.Sprintf("%08x", crc32.Checksum(f.User, recordCRCTable)); f.CRC32C != want {
		return nil, fmt.Errorf("checksum mismatch: file says %q, contents give %q", f.CRC32C, want)
	}
	var rec userRecord
	if err := json.Unmarshal(f.User, &rec); err != nil {
		return nil, fmt.Errorf("bad user: %w", err)
	}
	if err := rec.check(uid); err != nil {
		return nil, err
	}
	return &rec, nil
}

// check validates a decoded record, so that the rest of the code can trust
// what it loaded.
func (r *userRecord) check(uid string) error {
	if !validUID(uid) || r.UID != uid {
		return fmt.Errorf("uid %q does not match file name", r.UID)
	}
	prev := -1
	for _, d := range r.Devices {
		if d.Num <= prev || d.Num >= r.NextDevice {
			return fmt.Errorf("device number %d out of order", d.Num)
		}
		prev = d.Num
		if len(d.NodeHash) != sha256.Size {
			return fmt.Errorf("device %d: bad node hash", d.Num)
		}
		if checkLabel(d.Label) != nil {
			return fmt.Errorf("device %d: bad label", d.Num)
		}
	}
	seen := make(map[string]bool, len(r.Aliases))
	for _, a := range r.Aliases {
		if checkAlias(a, 1) != nil || seen[a] {
			return fmt.Errorf("bad alias %q", a)
		}
		seen[a] = true
	}
	return nil
}

// validUID reports whether uid may name a record: bounded length and only
// characters of the base32 alphabet, letters and '=', so it can never be a
// path ("../x") or too long for a file name. Anything else is not a user.
func validUID(uid string) bool {
	if uid == "" || len(uid) > maxUIDLen {
		return false
	}
	for i := 0; i < len(uid); i++ {
		c := uid[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '%' || c == '+' || c == '=') {
			return false
		}
	}
	return true
}

// ErrLabelInvalid refuses a device label that is empty, longer than
// maxLabelBytes or not valid UTF-8 (which JSON could not store as is). A
// client sees its text in an ack error.
var ErrLabelInvalid = fmt.Errorf("newnode must be 1 to %d bytes of UTF-8", maxLabelBytes)

func checkLabel(label string) error {
	if label == "" || len(label) > maxLabelBytes || !utf8.ValidString(label) {
		return ErrLabelInvalid
	}
	return nil
}

// ErrAliasLong refuses an alias longer than maxAliasBytes. It wraps
// qlib.ErrAliasInvalid, so errors.Is(err, qlib.ErrAliasInvalid) holds for
// callers that only know the Directory errors; a client sees its text in an
// ack error.
var ErrAliasLong = fmt.Errorf("%w (at most %d bytes)", qlib.ErrAliasInvalid, maxAliasBytes)

// checkAlias applies the alias rules of SPEC §7 with a minimum of minChars
// characters. Aliases are compared byte for byte, so they are case-sensitive
// and not Unicode-normalised: "Alice Smith" and "alice smith" are different
// aliases.
func checkAlias(alias string, minChars int) error {
	if len(alias) > maxAliasBytes {
		return ErrAliasLong
	}
	if !utf8.ValidString(alias) {
		return qlib.ErrAliasInvalid
	}
	for _, r := range alias {
		if !unicode.IsPrint(r) {
			return qlib.ErrAliasInvalid
		}
	}
	if utf8.RuneCountInString(alias) < minChars {
		return qlib.ErrAliasShort
	}
	return nil
}

// nodeHash derives what is stored for a nodeid. A single SHA-256 suffices,
// with no salt or slow KDF: a nodeid is 200 random bits, so a stolen hash
// cannot be brute-forced or looked up in a table, unlike a chosen password.
// The uid is mixed in so a hash is only good for its own user.
func nodeHash(uid string, node []byte) []byte {
	h := sha256.New()
	h.Write([]byte(nodeHashPrefix))
	h.Write([]byte(uid))
	h.Write([]byte{0})
	h.Write(node)
	return h.Sum(nil)
}

// newID returns the base32 of n random bytes. crypto/rand.Read never fails:
// the runtime aborts rather than return weak randomness.
func newID(n int) (string, []byte) {
	b := make([]byte, n)
	rand.Read(b)
	return tmtp.Base32.EncodeToString(b), b
}

func devKey(uid string, num int) string {
	return uid + "." + strconv.Itoa(num)
}

// newDevice makes a device numbered num with a fresh nodeid.
func (db *UserDB) newDevice(uid string, num int, label string) (deviceRecord, string) {
	nodeid, raw := newID(nodeidBytes)
	return deviceRecord{
		Num:      num,
		Label:    label,
		Created:  db.now().UTC(),
		NodeHash: nodeHash(uid, raw),
	}, nodeid
}

// lookup returns uid's user and durable record, or nils if there is no such
// user (including a uid that is not even valid).
func (db *UserDB) lookup(uid string) (*userState, *userRecord) {
	if !validUID(uid) {
		return nil, nil
	}
	db.mu.RLock()
	u := db.users[uid]
	db.mu.RUnlock()
	if u == nil {
		return nil, nil
	}
	rec := u.rec.Load()
	if rec == nil {
		return nil, nil
	}
	return u, rec
}

// ErrClosed refuses writes after Close.
var ErrClosed = errors.New("userdb: closed")

// writableLocked returns why writes are refused, if they are. db.mu is held.
func (db *UserDB) writableLocked() error {
	if db.closed {
		return ErrClosed
	}
	if db.failed != nil {
		return fmt.Errorf("userdb: refusing writes after an earlier failure: %w", db.failed)
	}
	return nil
}

// writable is writableLocked for callers that do not hold db.mu.
func (db *UserDB) writable() error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	return db.writableLocked()
}

// Register creates a user with one device labelled label.
func (db *UserDB) Register(label string) (uid, nodeid, dev string, err error) {
	if err := checkLabel(label); err != nil {
		return "", "", "", err
	}
	for {
		uid, _ = newID(uidBytes)
		nodeids, err := db.create(uid, []string{label}, nil)
		if errors.Is(err, ErrUserExists) {
			continue // 2^-160 per existing user; retry rather than reason about it
		}
		if err != nil {
			return "", "", "", err
		}
		db.logger.Info("user registered", "uid", uid)
		return uid, nodeids[0], devKey(uid, 0), nil
	}
}

// ErrUserExists refuses CreateFixture for a uid that is taken.
var ErrUserExists = errors.New("userdb: user exists")

// CreateFixture creates a user with a caller-chosen uid, one device per label
// (numbered from 0) and the given aliases, which may be shorter than ordinary
// aliases (down to one character). It returns the devices' nodeids. It exists
// for conformance fixtures, whose uids ("u100002") and aliases ("test1") no
// request could create, and stores them exactly like any other user.
func (db *UserDB) CreateFixture(uid string, labels []string, aliases []string) (nodeids []string, err error) {
	if !validUID(uid) {
		return nil, fmt.Errorf("userdb: invalid fixture uid %q", uid)
	}
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return nil, err
		}
	}
	for _, a := range aliases {
		if err := checkAlias(a, 1); err != nil {
			return nil, fmt.Errorf("userdb: fixture alias %q: %w", a, err)
		}
	}
	nodeids, err = db.create(uid, labels, dedup(aliases))
	if err != nil {
		return nil, err
	}
	db.logger.Info("fixture user created", "uid", uid, "devices", len(labels), "aliases", len(aliases))
	return nodeids, nil
}

// dedup returns names without repeats, in first-seen order.
func dedup(names []string) []string {
	var out []string
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// create writes a new user record; the uid and the aliases are reserved first
// so that no concurrent request can take them while the record is written.
func (db *UserDB) create(uid string, labels, aliases []string) ([]string, error) {
	u := &userState{}
	u.wmu.Lock()
	defer u.wmu.Unlock()

	db.mu.Lock()
	if err := db.writableLocked(); err != nil {
		db.mu.Unlock()
		return nil, err
	}
	if _, ok := db.users[uid]; ok {
		db.mu.Unlock()
		return nil, ErrUserExists
	}
	if err := db.reserveLocked(uid, aliases); err != nil {
		db.mu.Unlock()
		return nil, err
	}
	db.users[uid] = u
	db.mu.Unlock()

	rec := &userRecord{UID: uid, Rev: 1, Created: db.now().UTC(), NextDevice: len(labels), Aliases: aliases}
	nodeids := make([]string, len(labels))
	for i, l := range labels {
		var d deviceRecord
		d, nodeids[i] = db.newDevice(uid, i, l)
		rec.Devices = append(rec.Devices, d)
	}
	err := db.writeRecord(rec)

	db.mu.Lock()
	defer db.mu.Unlock()
	if err != nil {
		delete(db.users, uid)
		db.releaseLocked(aliases)
		return nil, err
	}
	u.rec.Store(rec)
	db.commitLocked(aliases)
	return nodeids, nil
}

// reserveLocked claims names for uid as pending entries, all or none; a name
// already held, even by a write still in progress, is taken. db.mu is held.
func (db *UserDB) reserveLocked(uid string, names []string) error {
	for _, n := range names {
		if _, ok := db.names[n]; ok {
			return qlib.ErrAliasTaken
		}
	}
	for _, n := range names {
		db.names[n] = &nameEntry{kind: nameAlias, owner: uid, pending: true}
	}
	return nil
}

// commitLocked makes reserved names resolve, once their record is durable.
func (db *UserDB) commitLocked(names []string) {
	for _, n := range names {
		db.names[n].pending = false
	}
}

// releaseLocked drops reserved names after a failed write. If the failure
// left the disk in doubt (the record holding them may yet be completed at the
// next open), db.failed is set and refuses every later write, so no one else
// can claim the names before a restart reloads the disk.
func (db *UserDB) releaseLocked(names []string) {
	for _, n := range names {
		delete(db.names, n)
	}
}

// Login checks node against uid's live devices in constant time and returns
// the matching device's key.
func (db *UserDB) Login(uid string, node []byte) (string, error) {
	_, rec := db.lookup(uid)
	if rec == nil || len(node) != nodeidBytes {
		return "", qlib.ErrLoginFailed
	}
	h := nodeHash(uid, node)
	match := -1
	// Compare against every device, so the time taken says nothing about
	// which bytes of which hash matched.
	for i, d := range rec.Devices {
		if subtle.ConstantTimeCompare(h, d.NodeHash) == 1 {
			match = i
		}
	}
	if match < 0 || rec.Devices[match].Defunct {
		return "", qlib.ErrLoginFailed
	}
	return devKey(uid, rec.Devices[match].Num), nil
}

// Devices returns the keys of uid's live devices in creation order.
func (db *UserDB) Devices(uid string) ([]string, error) {
	_, rec := db.lookup(uid)
	if rec == nil {
		return nil, qlib.ErrNoUser
	}
	devs := make([]string, 0, len(rec.Devices))
	for _, d := range rec.Devices {
		if !d.Defunct {
			devs = append(devs, devKey(uid, d.Num))
		}
	}
	return devs, nil
}

// Aliases returns uid's aliases in the order they were added.
func (db *UserDB) Aliases(uid string) ([]string, error) {
	_, rec := db.lookup(uid)
	if rec == nil {
		return nil, qlib.ErrNoUser
	}
	return slices.Clone(rec.Aliases), nil
}

// Exists reports whether uid is a user.
func (db *UserDB) Exists(uid string) bool {
	_, rec := db.lookup(uid)
	return rec != nil
}

// AliasUID resolves an alias to its user's uid.
func (db *UserDB) AliasUID(alias string) (string, bool) {
	db.mu.RLock()
	defer db.mu.RUnlock()
	e, ok := db.names[alias]
	if !ok || e.pending || e.kind != nameAlias {
		return "", false
	}
	return e.owner, true
}

// errDone is returned by an update's change function when the record already
// holds the change.
var errDone = errors.New("userdb: no change")

// update applies change to a clone of uid's record and makes the result
// durable, holding the user's write lock so changes to one user are applied
// one at a time. change may return errDone to say that nothing needs writing.
func (db *UserDB) update(uid string, change func(rec *userRecord) error) error {
	u, _ := db.lookup(uid)
	if u == nil {
		return qlib.ErrNoUser
	}
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if err := db.writable(); err != nil {
		return err
	}
	rec := u.rec.Load().clone()
	if err := change(rec); err != nil {
		if errors.Is(err, errDone) {
			return nil
		}
		return err
	}
	rec.Rev++
	if err := db.writeRecord(rec); err != nil {
		return err
	}
	u.rec.Store(rec)
	return nil
}

// AddAlias gives uid the alias; see checkAlias for the rules.
func (db *UserDB) AddAlias(uid, alias string) error {
	if err := checkAlias(alias, minAliasChars); err != nil {
		return err
	}
	reserved := false
	err := db.update(uid, func(rec *userRecord) error {
		db.mu.Lock()
		defer db.mu.Unlock()
		// Under the user's write lock, a name this user owns is never pending.
		if e, ok := db.names[alias]; ok && e.kind == nameAlias && e.owner == uid {
			return errDone
		}
		if err := db.reserveLocked(uid, []string{alias}); err != nil {
			return err
		}
		reserved = true
		rec.Aliases = append(rec.Aliases, alias)
		return nil
	})
	if reserved {
		db.mu.Lock()
		if err != nil {
			db.releaseLocked([]string{alias})
		} else {
			db.commitLocked([]string{alias})
		}
		db.mu.Unlock()
	}
	if err == nil && reserved {
		db.logger.Info("alias added", "uid", uid)
	}
	return err
}

// ErrTooManyDevices refuses AddDevice when the user has maxDevices live
// devices. A client sees its text in an ack error.
var ErrTooManyDevices = errors.New("too many devices")

// AddDevice gives uid a new device labelled label and returns its nodeid and
// key. ErrTooManyDevices when uid has maxDevices live devices.
func (db *UserDB) AddDevice(uid, label string) (nodeid, dev string, err error) {
	if err := checkLabel(label); err != nil {
		return "", "", err
	}
	err = db.update(uid, func(rec *userRecord) error {
		if rec.liveDevices() >= maxDevices {
			return ErrTooManyDevices
		}
		var d deviceRecord
		d, nodeid = db.newDevice(uid, rec.NextDevice, label)
		rec.Devices = append(rec.Devices, d)
		rec.NextDevice++
		dev = devKey(uid, d.Num)
		return nil
	})
	if err != nil {
		return "", "", err
	}
	db.logger.Info("device added", "dev", dev)
	return nodeid, dev, nil
}

// ErrNoDevice refuses RetireDevice for a device that does not exist.
var ErrNoDevice = errors.New("userdb: no such device")

// RetireDevice marks the device dev defunct: it can no longer log in and is
// not listed by Devices. Its number is never reused. Retiring a defunct device
// is a no-op.
func (db *UserDB) RetireDevice(dev string) error {
	uid, numStr, ok := strings.Cut(dev, ".")
	num, err := strconv.Atoi(numStr)
	if !ok || err != nil {
		return ErrNoDevice
	}
	err = db.update(uid, func(rec *userRecord) error {
		i := slices.IndexFunc(rec.Devices, func(d deviceRecord) bool { return d.Num == num })
		if i < 0 {
			return ErrNoDevice
		}
		if rec.Devices[i].Defunct {
			return errDone
		}
		rec.Devices[i].Defunct = true
		return nil
	})
	if errors.Is(err, qlib.ErrNoUser) {
		return ErrNoDevice
	}
	if err == nil {
		db.logger.Info("device retired", "dev", dev)
	}
	return err
}

// writeRecord makes rec durable: write the temp file, fsync it, rename it over
// the record, fsync the directory. If a failure leaves the disk in an unknown
// state (the temp file could not be removed, or the rename or directory fsync
// failed), the database refuses all further writes: memory and disk may
// disagree, and only a restart, which reloads the disk, can reconcile them.
func (db *UserDB) writeRecord(rec *userRecord) error {
	data, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	final := db.recordPath(rec.UID)
	tmp := final + recordTmpSuffix
	if err := writeRecordFile(tmp, data); err != nil {
		if rmErr := os.Remove(tmp); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			db.fail(rmErr)
		}
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		db.fail(err)
		return fmt.Errorf("userdb: rename %s: %w", tmp, err)
	}
	if err := syncRecordDir(db.userDir); err != nil {
		db.fail(err)
		return err
	}
	return nil
}

// fail records the first write failure that leaves the disk in doubt.
func (db *UserDB) fail(err error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.failed == nil {
		db.failed = err
		db.logger.Error("userdb write failed, refusing further writes", "err", err.Error())
	}
}

func (db *UserDB) recordPath(uid string) string {
	return filepath.Join(db.userDir, uid+recordSuffix)
}

// writeRecordFile writes data to a new file at path and fsyncs it.
func writeRecordFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, recordPerm)
	if err != nil {
		return fmt.Errorf("userdb: create %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("userdb: write %s: %w", path, err)
	}
	return nil
}

// syncRecordDir fsyncs a directory, making the names created in it durable.
func syncRecordDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("userdb: open %s: %w", dir, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("userdb: sync %s: %w", dir, err)
	}
	return nil
}

// Close stops the database from accepting writes; writes already in progress
// complete. Records are written synchronously, so nothing is left to flush.
func (db *UserDB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.closed = true
	return nil
}

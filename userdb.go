package main

// The user database: members, their devices (each with a nodeid, the device's
// password), their aliases and their groups. Every record lives in memory, so
// logins and lookups never touch the disk; every change is written to disk,
// durably, before the call that made it returns.
//
// On disk (dir is "userdb" beside the config):
//
//	dir/user/<uid>.json       one record per user
//	dir/user/<uid>.json.tmp   a write in progress (or interrupted by a crash)
//	dir/group/<hash>.json     one record per group; hash is the hex SHA-256 of
//	                          the gid, which is client input and never a file name
//	dir/group/<hash>.json.tmp a write in progress
//
// A record file is one line of JSON, {"v":1,"crc32c":"<8 hex>","user":{...}}
// (or "group":{...}), where the checksum covers the exact bytes of the record
// value, so a flipped bit anywhere in the record is detected at open instead
// of silently changing a member's devices, aliases or groups.
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
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"maps"
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

	// maxGidBytes bounds a group id like an alias: it shares the aliases'
	// namespace, is stored in the group record and echoed in every member
	// notice. It is never a file name, so the filesystem does not bound it.
	maxGidBytes = maxAliasBytes

	// minAliasChars and minGidChars are the shortest alias a member may
	// claim and the shortest gid a new group may have (SPEC §4 ops 3 and 5,
	// §7), counted in characters, not bytes. Fixtures may use shorter ones.
	minAliasChars = 8
	minGidChars   = 8

	// maxDevices is the number of live devices a user may have (SPEC §7).
	// Defunct devices do not count.
	maxDevices = 100

	// maxAliases is the number of aliases a user may add. Every alias is
	// stored in the user's record, which is rewritten and fsynced whole on
	// every change, so without a bound one member adding aliases makes each
	// addition costlier than the last (3,000 aliases of 200 octets made a
	// 609 KB record) and takes names from everyone else without end. A
	// person uses a handful (a name, a nickname, one per community); 100
	// keeps the record under 25 KB at maxAliasBytes each. Retired aliases
	// (imported) do not count, and records already holding more (imported)
	// keep them: only adding is refused.
	maxAliases = 100

	// DefaultAccountsPerIdentity is how many accounts one third-party
	// identity (issuer and subject of a sign-up token) may create unless
	// the operator says otherwise: one. A site that requires a provider's
	// token to sign up does so to tie each account to a person; a second
	// account for the same person is a second device of the first
	// (UserEdit newnode), and without the bound one token signs up any
	// number of accounts, which sidesteps every per-member limit.
	DefaultAccountsPerIdentity = 1

	// recordVersion is the "v" of a record file; a reader refuses versions it
	// does not know rather than misreading them.
	recordVersion = 1

	userSubdir      = "user"
	groupSubdir     = "group"
	recordSuffix    = ".json"
	recordTmpSuffix = ".tmp"
	userDirPerm     = 0o700 // records hold nodeid hashes, sign-up claims and memberships
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
	// RetiredAliases no longer reach the user but stay reserved, so that
	// nobody else can claim them and receive what was meant for the user:
	// aliases that were defunct on the deployed server when it was imported.
	RetiredAliases []string `json:"retiredAliases,omitempty"`
	// Claims holds the OpenID Connect claims of a third-party sign-up. It is
	// never modified in place once stored, so clones share it.
	Claims map[string]any `json:"claims,omitempty"`
}

type deviceRecord struct {
	Num     int       `json:"num"`
	Label   string    `json:"label"`
	Created time.Time `json:"created"`
	// NodeHash is nodeHash(uid, nodeid), or v0NodeHash(nodeid) if HashV0;
	// the nodeid itself is never stored.
	NodeHash []byte `json:"nodeHash"`
	// HashV0 marks a device imported from the deployed server with the
	// derivation that server stored: the nodeid cannot be recovered from it
	// to derive ours.
	HashV0  bool `json:"hashV0,omitempty"`
	Defunct bool `json:"defunct,omitempty"`
}

func (r *userRecord) clone() *userRecord {
	c := *r
	c.Devices = slices.Clone(r.Devices)
	c.Aliases = slices.Clone(r.Aliases)
	c.RetiredAliases = slices.Clone(r.RetiredAliases)
	return &c
}

// eachName calls fn for every name the user holds in the name index.
func (r *userRecord) eachName(fn func(name string, kind nameKind)) {
	for _, a := range r.Aliases {
		fn(a, nameAlias)
	}
	for _, a := range r.RetiredAliases {
		fn(a, nameRetired)
	}
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
// so one index holds both and one reservation claims a name for either.
type nameKind int

const (
	nameAlias   nameKind = iota // owner is a uid
	nameGroup                   // owner is the gid itself
	nameRetired                 // a retired alias of the uid owner: reserved, never resolves
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

// groupRecord is the stored form of a group. Like a userRecord, a published
// groupRecord is immutable: writers clone, change, write, then publish.
type groupRecord struct {
	// GID is the group id as the client gave it; the file name is only its
	// hash (groupFileStem), so the record is the one place that holds it.
	GID     string    `json:"gid"`
	Rev     uint64    `json:"rev"` // as userRecord.Rev
	Created time.Time `json:"created"`
	// Members lists every user the group knows, in the order they last
	// joined: an invitee is appended when first invited and moved to the end
	// when it joins, so the joined members, read in list order, are in join
	// order. A member appears once.
	Members []memberRecord `json:"members"`
}

// memberRecord is one user's standing in a group.
type memberRecord struct {
	UID string `json:"uid"`
	// Alias is the alias the member is listed under: the one it was
	// invited under, or the one it chose when joining or renaming. It is
	// always one of the member's own aliases.
	Alias  string       `json:"alias"`
	Status memberStatus `json:"status"`
}

// memberStatus is a member's standing. A barred member has been dropped by
// another member: it receives nothing, may not post, and may not join again
// until someone re-invites it.
type memberStatus string

const (
	memberInvited memberStatus = "invited"
	memberJoined  memberStatus = "joined"
	memberBarred  memberStatus = "barred"
)

func (r *groupRecord) clone() *groupRecord {
	c := *r
	c.Members = slices.Clone(r.Members)
	return &c
}

// member returns the index of uid in r.Members, or -1.
func (r *groupRecord) member(uid string) int {
	return slices.IndexFunc(r.Members, func(m memberRecord) bool { return m.UID == uid })
}

// memberByAlias returns the index of the member listed under alias, or -1.
func (r *groupRecord) memberByAlias(alias string) int {
	return slices.IndexFunc(r.Members, func(m memberRecord) bool { return m.Alias == alias })
}

// joined returns the uids of the joined members, in join order.
func (r *groupRecord) joined() []string {
	var uids []string
	for _, m := range r.Members {
		if m.Status == memberJoined {
			uids = append(uids, m.UID)
		}
	}
	return uids
}

// moveToEnd moves member i to the end of the list, which keeps the joined
// members in join order when i joins.
func (r *groupRecord) moveToEnd(i int) {
	m := r.Members[i]
	r.Members = append(slices.Delete(r.Members, i, i+1), m)
}

// groupState is the in-memory state of one group, like userState.
type groupState struct {
	// wmu serialises the edits of this group, across their file write.
	wmu sync.Mutex
	// rec is the durable record; nil while the group's creation is in
	// progress, and forever if it failed (the state is then unlisted).
	rec atomic.Pointer[groupRecord]
}

// UserDB is the user database. It implements qlib.Directory; all methods are
// safe for concurrent use.
type UserDB struct {
	userDir  string
	groupDir string
	logger   *slog.Logger
	now      func() time.Time
	// groupLimit is maxGroupMembers; tests lower it.
	groupLimit int
	// openFile is os.OpenFile; tests replace it to make opening fail as it
	// does when the process is out of file descriptors.
	openFile func(name string, flag int, perm fs.FileMode) (*os.File, error)

	// mu guards the fields below. It is held only for map operations, never
	// across file I/O.
	mu     sync.RWMutex
	users  map[string]*userState
	groups map[string]*groupState // by gid
	names  map[string]*nameEntry  // aliases and gids
	failed error                  // set when a write left the disk in an unknown state
	closed bool
	// identities maps a sign-up identity (identityKey) to the uids signed
	// up with it, those being written included. It is derived from the
	// records, never stored, so it is rebuilt at open and cannot disagree
	// with them after a crash.
	identities map[string][]string
	// identityLimit bounds len(identities[key]) for new registrations;
	// 0 = no bound. See SetAccountsPerIdentity.
	identityLimit int
	// onFatal is told of the failure that sets failed; see SetOnFatal.
	onFatal func(error)
}

// SetOnFatal has fn called, once, when a write fails in a way that leaves the
// disk in an unknown state. The database then refuses every write (nobody can
// register, add a device or an alias, or edit a group) until a restart
// reloads the disk, so the server stops, as it does when the store fails,
// rather than run on half-working. fn must not block.
func (db *UserDB) SetOnFatal(fn func(error)) {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.onFatal = fn
}

// SetAccountsPerIdentity bounds the accounts that one third-party identity
// may register (DefaultAccountsPerIdentity until it is called); 0 removes
// the bound. Accounts over the bound that already exist (imported from the
// deployed server, or made under a higher bound) are kept and log in as
// before: only new registrations are refused.
func (db *UserDB) SetAccountsPerIdentity(n int) {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.identityLimit = max(n, 0)
}

// OpenUserDB opens the user database in dir, creating it if missing, and
// loads every record into memory. It completes or discards temp files left by
// an interrupted write, and refuses to open if any record is corrupt or the
// records contradict each other.
func OpenUserDB(dir string, logger *slog.Logger) (*UserDB, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	db := &UserDB{
		userDir:       filepath.Join(dir, userSubdir),
		groupDir:      filepath.Join(dir, groupSubdir),
		logger:        logger,
		now:           time.Now,
		groupLimit:    maxGroupMembers,
		openFile:      os.OpenFile,
		users:         make(map[string]*userState),
		groups:        make(map[string]*groupState),
		names:         make(map[string]*nameEntry),
		identities:    make(map[string][]string),
		identityLimit: DefaultAccountsPerIdentity,
	}
	for _, sub := range []string{db.userDir, db.groupDir} {
		if err := ensureRecordDir(sub); err != nil {
			return nil, err
		}
	}
	if err := db.load(); err != nil {
		return nil, err
	}
	logger.Info("userdb open", "dir", dir, "users", len(db.users), "groups", len(db.groups), "names", len(db.names))
	return db, nil
}

// ensureRecordDir creates the record directory path if it is missing, and
// makes the new directory entries durable before any record goes in. A
// database from before groups existed gets its group directory this way.
func ensureRecordDir(path string) error {
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil // present, or an error that load reports when reading it
	}
	if err := os.MkdirAll(path, userDirPerm); err != nil {
		return fmt.Errorf("userdb: create %s: %w", path, err)
	}
	parent := filepath.Dir(path)
	for _, d := range []string{filepath.Dir(parent), parent, path} {
		if err := syncRecordDir(d); err != nil {
			return err
		}
	}
	return nil
}

// load reads every record, then indexes the aliases and gids, then deals with
// temp files, then checks that groups list only users under their own
// aliases. Temp files come after the index, which refuses one that claims a
// name held elsewhere; the group check comes last, once every record that
// will be used is known.
func (db *UserDB) load() error {
	userTemps, err := scanRecords(db.userDir, db.logger, func(uid, path string, data []byte) error {
		rec, err := parseRecord(data, uid)
		if err != nil {
			return fmt.Errorf("userdb: corrupt record %s: %w", path, err)
		}
		u := &userState{}
		u.rec.Store(rec)
		db.users[uid] = u
		return nil
	})
	if err != nil {
		return err
	}
	groupTemps, err := scanRecords(db.groupDir, db.logger, func(stem, path string, data []byte) error {
		rec, err := parseGroup(data, stem)
		if err != nil {
			return fmt.Errorf("userdb: corrupt record %s: %w", path, err)
		}
		g := &groupState{}
		g.rec.Store(rec)
		db.groups[rec.GID] = g
		return nil
	})
	if err != nil {
		return err
	}

	// Index in uid and gid order so that a conflict is reported the same way
	// every time.
	for _, uid := range slices.Sorted(maps.Keys(db.users)) {
		var err error
		db.users[uid].rec.Load().eachName(func(a string, kind nameKind) {
			if e, ok := db.names[a]; ok && err == nil {
				err = fmt.Errorf("userdb: alias %q is in both %s and %s", a,
					db.recordPath(e.owner), db.recordPath(uid))
			}
			db.names[a] = &nameEntry{kind: kind, owner: uid}
		})
		if err != nil {
			return err
		}
	}
	for _, gid := range slices.Sorted(maps.Keys(db.groups)) {
		// Gids cannot collide with each other (the file name is the gid's
		// hash), only with an alias.
		if e, ok := db.names[gid]; ok {
			return fmt.Errorf("userdb: %q is both an alias in %s and the group %s", gid,
				db.recordPath(e.owner), db.groupPath(gid))
		}
		db.names[gid] = &nameEntry{kind: nameGroup, owner: gid}
	}

	for _, t := range []struct {
		dir     string
		names   []string
		recover func(string) (bool, error)
	}{
		{db.userDir, userTemps, db.recoverTemp},
		{db.groupDir, groupTemps, db.recoverGroupTemp},
	} {
		changed := false
		for _, name := range t.names {
			c, err := t.recover(name)
			if err != nil {
				return err
			}
			changed = changed || c
		}
		if changed {
			if err := syncRecordDir(t.dir); err != nil {
				return err
			}
		}
	}
	// From the records as completed: a recovered temp file may be a
	// registration.
	for _, uid := range slices.Sorted(maps.Keys(db.users)) {
		if key := identityKey(db.users[uid].rec.Load().Claims); key != "" {
			db.identities[key] = append(db.identities[key], uid)
		}
	}
	return db.checkMembers()
}

// scanRecords calls read for every record file in dir, with the file name
// minus its suffix, and returns the names of the temp files, which the
// caller can only judge once every record is loaded.
func scanRecords(dir string, logger *slog.Logger, read func(stem, path string, data []byte) error) (temps []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("userdb: read %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		switch {
		case strings.HasSuffix(name, recordSuffix+recordTmpSuffix):
			temps = append(temps, name)
		case strings.HasSuffix(name, recordSuffix) && e.Type().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("userdb: read %s: %w", path, err)
			}
			if err := read(strings.TrimSuffix(name, recordSuffix), path, data); err != nil {
				return nil, err
			}
		default:
			logger.Warn("userdb ignoring unexpected file", "file", path)
		}
	}
	return temps, nil
}

// checkMembers verifies that every group member is a user listed under one of
// its own aliases. Every write keeps this true (a group only ever names users
// and aliases that are already durable, and aliases are never removed), so a
// violation means a record was damaged or edited by hand, and reading on
// would deliver group posts to the wrong people.
func (db *UserDB) checkMembers() error {
	for _, gid := range slices.Sorted(maps.Keys(db.groups)) {
		for _, m := range db.groups[gid].rec.Load().Members {
			if _, ok := db.users[m.UID]; !ok {
				return fmt.Errorf("userdb: group record %s lists %s, who is not a user", db.groupPath(gid), m.UID)
			}
			// A member may be listed under an alias it has since retired.
			if e, ok := db.names[m.Alias]; !ok || e.kind == nameGroup || e.owner != m.UID {
				return fmt.Errorf("userdb: group record %s lists %s under alias %q, which is not theirs (%s)",
					db.groupPath(gid), m.UID, m.Alias, db.recordPath(m.UID))
			}
		}
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
		u.rec.Load().eachName(func(a string, _ nameKind) { delete(db.names, a) })
	}
	u.rec.Store(rec)
	rec.eachName(func(a string, kind nameKind) { db.names[a] = &nameEntry{kind: kind, owner: uid} })
	db.logger.Info("userdb completed interrupted write", "file", path, "uid", uid)
	return true, nil
}

// checkReplacement says why rec may not replace the loaded record of its
// user, or nil if it may.
func (db *UserDB) checkReplacement(rec *userRecord) error {
	if u := db.users[rec.UID]; u != nil && u.rec.Load().Rev >= rec.Rev {
		return fmt.Errorf("stale: rev %d, record has rev %d", rec.Rev, u.rec.Load().Rev)
	}
	var err error
	rec.eachName(func(a string, _ nameKind) {
		if e, ok := db.names[a]; ok && err == nil && (e.kind == nameGroup || e.owner != rec.UID) {
			err = fmt.Errorf("alias %q belongs to %s", a, e.owner)
		}
	})
	return err
}

// recoverGroupTemp is recoverTemp for a group record: the temp file is
// completed only if it is whole, named after its gid, newer than the record
// and its gid is not an alias.
func (db *UserDB) recoverGroupTemp(name string) (bool, error) {
	path := filepath.Join(db.groupDir, name)
	stem := strings.TrimSuffix(name, recordSuffix+recordTmpSuffix)
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("userdb: read %s: %w", path, err)
	}
	rec, reason := parseGroup(data, stem)
	if reason == nil {
		if g := db.groups[rec.GID]; g != nil && g.rec.Load().Rev >= rec.Rev {
			reason = fmt.Errorf("stale: rev %d, record has rev %d", rec.Rev, g.rec.Load().Rev)
		} else if e, ok := db.names[rec.GID]; ok && e.kind != nameGroup {
			reason = fmt.Errorf("gid is an alias of %s", e.owner)
		}
	}
	if reason != nil {
		if err := os.Remove(path); err != nil {
			return false, fmt.Errorf("userdb: remove %s: %w", path, err)
		}
		db.logger.Warn("userdb discarded interrupted write", "file", path, "reason", reason.Error())
		return true, nil
	}
	if err := os.Rename(path, db.groupPath(rec.GID)); err != nil {
		return false, fmt.Errorf("userdb: complete %s: %w", path, err)
	}
	g := db.groups[rec.GID]
	if g == nil {
		g = &groupState{}
		db.groups[rec.GID] = g
		db.names[rec.GID] = &nameEntry{kind: nameGroup, owner: rec.GID}
	}
	g.rec.Store(rec)
	db.logger.Info("userdb completed interrupted write", "file", path)
	return true, nil
}

// recordFile is the envelope of a record on disk. User or Group keeps the
// exact bytes the checksum covers.
type recordFile struct {
	V      int             `json:"v"`
	CRC32C string          `json:"crc32c"`
	User   json.RawMessage `json:"user"`
	Group  json.RawMessage `json:"group"`
}

// The envelope field that holds each kind of record.
const (
	userField  = "user"
	groupField = "group"
)

// recordCRCTable is the CRC-32C table: a checksum against accidental corruption
// (a torn or flipped sector), not an adversary, who could rewrite the file
// anyway. It detects every single-bit and short burst error.
var recordCRCTable = crc32.MakeTable(crc32.Castagnoli)

// encodeEnvelope returns the file contents for a record whose JSON is body,
// stored under field. The envelope is written by hand so that the
// checksummed bytes appear in the file exactly as hashed.
func encodeEnvelope(field string, body []byte) []byte {
	out := fmt.Appendf(nil, `{"v":%d,"crc32c":"%08x","%s":`, recordVersion, crc32.Checksum(body, recordCRCTable), field)
	out = append(out, body...)
	return append(out, "}\n"...)
}

// parseEnvelope checks the envelope of a record file and returns the
// checksummed record JSON under field.
func parseEnvelope(data []byte, field string) (json.RawMessage, error) {
	var f recordFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not a record: %w", err)
	}
	if f.V != recordVersion {
		return nil, fmt.Errorf("unknown version %d", f.V)
	}
	body := f.User
	if field == groupField {
		body = f.Group
	}
	if len(body) == 0 {
		return nil, fmt.Errorf("no %s", field)
	}
	if want := fmt.Sprintf("%08x", crc32.Checksum(body, recordCRCTable)); f.CRC32C != want {
		return nil, fmt.Errorf("checksum mismatch: file says %q, contents give %q", f.CRC32C, want)
	}
	return body, nil
}

// encodeRecord returns the file contents for rec.
func encodeRecord(rec *userRecord) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("userdb: encode %s: %w", rec.UID, err)
	}
	return encodeEnvelope(userField, body), nil
}

// parseRecord decodes and checks the contents of the record file for uid.
func parseRecord(data []byte, uid string) (*userRecord, error) {
	body, err := parseEnvelope(data, userField)
	if err != nil {
		return nil, err
	}
	var rec userRecord
	if err := json.Unmarshal(body, &rec); err != nil {
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
		if len(d.NodeHash) != sha256.Size { // both derivations are SHA-256
			return fmt.Errorf("device %d: bad node hash", d.Num)
		}
		if checkLabel(d.Label) != nil {
			return fmt.Errorf("device %d: bad label", d.Num)
		}
	}
	seen := make(map[string]bool, len(r.Aliases)+len(r.RetiredAliases))
	var err error
	r.eachName(func(a string, _ nameKind) {
		if (checkAlias(a, 1) != nil || seen[a]) && err == nil {
			err = fmt.Errorf("bad alias %q", a)
		}
		seen[a] = true
	})
	return err
}

// encodeGroup returns the file contents for rec.
func encodeGroup(rec *groupRecord) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("userdb: encode group %s: %w", groupFileStem(rec.GID), err)
	}
	return encodeEnvelope(groupField, body), nil
}

// parseGroup decodes and checks the contents of the group record file named
// stem (plus recordSuffix).
func parseGroup(data []byte, stem string) (*groupRecord, error) {
	body, err := parseEnvelope(data, groupField)
	if err != nil {
		return nil, err
	}
	var rec groupRecord
	if err := json.Unmarshal(body, &rec); err != nil {
		return nil, fmt.Errorf("bad group: %w", err)
	}
	if err := rec.check(stem); err != nil {
		return nil, err
	}
	return &rec, nil
}

// check validates a decoded group record. Whether its members are users
// under their own aliases needs the user records; checkMembers sees to it.
func (r *groupRecord) check(stem string) error {
	if checkGid(r.GID, 1) != nil || groupFileStem(r.GID) != stem {
		return errors.New("gid does not match file name")
	}
	uids := make(map[string]bool, len(r.Members))
	aliases := make(map[string]bool, len(r.Members))
	for _, m := range r.Members {
		if !validUID(m.UID) || uids[m.UID] {
			return fmt.Errorf("bad or repeated member %q", m.UID)
		}
		// Two members under one alias would make a drop ambiguous.
		if checkAlias(m.Alias, 1) != nil || aliases[m.Alias] {
			return fmt.Errorf("bad or repeated member alias %q", m.Alias)
		}
		switch m.Status {
		case memberInvited, memberJoined, memberBarred:
		default:
			return fmt.Errorf("member %s: bad status %q", m.UID, m.Status)
		}
		uids[m.UID], aliases[m.Alias] = true, true
	}
	return nil
}

// groupFileStem is the file name of gid's record, minus its suffix: the hex
// SHA-256 of the gid. A gid is client input (any printable characters,
// "../x" included), so it is never used as a path itself; the hash has a
// fixed length and alphabet whatever the gid.
func groupFileStem(gid string) string {
	sum := sha256.Sum256([]byte(gid))
	return hex.EncodeToString(sum[:])
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

// checkLabel refuses, with qlib.ErrLabelInvalid, a device label that is
// empty, longer than maxLabelBytes (the limit the error's text states) or not
// valid UTF-8 (which JSON could not store as is).
func checkLabel(label string) error {
	if label == "" || len(label) > maxLabelBytes || !utf8.ValidString(label) {
		return qlib.ErrLabelInvalid
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
	if !printable(alias) {
		return qlib.ErrAliasInvalid
	}
	if utf8.RuneCountInString(alias) < minChars {
		return qlib.ErrAliasShort
	}
	return nil
}

// checkGid applies the group id rules (SPEC §4 op 5, §7), which are the
// alias rules, with a minimum of minChars characters. A gid over maxGidBytes
// is ErrGidInvalid: qlib.Directory's contract has no separate error for it.
func checkGid(gid string, minChars int) error {
	if len(gid) > maxGidBytes || !printable(gid) {
		return qlib.ErrGidInvalid
	}
	if utf8.RuneCountInString(gid) < minChars {
		return qlib.ErrGidShort
	}
	return nil
}

// printable reports whether s is valid UTF-8 made of printable characters
// only: no control or format characters that could hide or reorder text in a
// client's display.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
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

// v0Rounds is how many times the deployed (v0) server applies SHA-256 to a
// nodeid to get what it stores. Found by reading its user records against
// known nodeids (../shared/tmtp/v0-site); its README does not say.
const v0Rounds = 22389

// v0NodeHash derives what the deployed server stored for a nodeid, so that
// devices imported from it log in with their old nodeids.
func v0NodeHash(node []byte) []byte {
	h := sha256.Sum256(node)
	for range v0Rounds - 1 {
		h = sha256.Sum256(h[:])
	}
	return h[:]
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

// Register creates a user with one device labelled label, keeping of claims
// (the verified sign-up claims, or nil) what keptClaims keeps in the user's
// record. qlib.ErrIdentityUsed when the identity the claims name already
// has as many accounts as SetAccountsPerIdentity allows.
func (db *UserDB) Register(label string, claims map[string]any) (uid, nodeid, dev string, err error) {
	if err := checkLabel(label); err != nil {
		return "", "", "", err
	}
	claims, err = copyClaims(keptClaims(claims))
	if err != nil {
		return "", "", "", err
	}
	for {
		uid, _ = newID(uidBytes)
		nodeids, err := db.create(uid, []string{label}, nil, claims)
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

// keptClaims returns what a record keeps of sign-up claims: only the issuer
// and the subject, which name the account at the provider (OpenID Connect
// Core §2) and are all that Login (auth 2) and the accounts-per-identity
// bound need. The rest of a token (an e-mail address, a name, a picture) is
// personal data the site has no use for, so it is not stored. Claims that
// name no identity (imported from the deployed server in another shape)
// are kept as they are: whether a record has claims at all decides whether
// its logins need a token. keptClaims never changes claims.
func keptClaims(claims map[string]any) map[string]any {
	if identityKey(claims) == "" || len(claims) == 2 {
		return claims
	}
	return map[string]any{"iss": claims["iss"], "sub": claims["sub"]}
}

// identityKey returns the identities index key of the identity claims name
// (non-empty iss and sub strings), or "" if they name none. The issuer's
// length leads, so that no two pairs make one key.
func identityKey(claims map[string]any) string {
	iss, _ := claims["iss"].(string)
	sub, _ := claims["sub"].(string)
	if iss == "" || sub == "" {
		return ""
	}
	return strconv.Itoa(len(iss)) + ":" + iss + sub
}

// copyClaims returns claims as the record will hold them: a deep copy, so
// that the caller's later changes cannot reach a published record, in the
// form they take after a JSON round trip (numbers become float64), so that
// Claims returns the same before and after a reopen. Empty claims are nil,
// and are omitted from the record.
func copyClaims(claims map[string]any) (map[string]any, error) {
	if len(claims) == 0 {
		return nil, nil
	}
	data, err := json.Marshal(claims)
	if err != nil {
		return nil, fmt.Errorf("userdb: encode claims: %w", err)
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("userdb: decode claims: %w", err)
	}
	return out, nil
}

// Claims returns a copy of the sign-up claims kept by Register, or nil if
// there are none.
func (db *UserDB) Claims(uid string) (map[string]any, error) {
	_, rec := db.lookup(uid)
	if rec == nil {
		return nil, qlib.ErrNoUser
	}
	// A copy, because the record's map is shared by every clone of it.
	return cloneJSON(rec.Claims).(map[string]any), nil
}

// cloneJSON deep-copies a value decoded from JSON. Maps and slices are the
// only mutable types json.Unmarshal produces into an any.
func cloneJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if v == nil {
			return v
		}
		c := make(map[string]any, len(v))
		for k, e := range v {
			c[k] = cloneJSON(e)
		}
		return c
	case []any:
		if v == nil {
			return v
		}
		c := make([]any, len(v))
		for i, e := range v {
			c[i] = cloneJSON(e)
		}
		return c
	default:
		return v
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
	nodeids, err = db.create(uid, labels, dedup(aliases), nil)
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

// create writes a new user record; the uid, the aliases and the sign-up
// identity's place are reserved first so that no concurrent request can take
// them while the record is written.
func (db *UserDB) create(uid string, labels, aliases []string, claims map[string]any) ([]string, error) {
	u := &userState{}
	u.wmu.Lock()
	defer u.wmu.Unlock()
	identity := identityKey(claims)

	db.mu.Lock()
	if err := db.writableLocked(); err != nil {
		db.mu.Unlock()
		return nil, err
	}
	if _, ok := db.users[uid]; ok {
		db.mu.Unlock()
		return nil, ErrUserExists
	}
	if identity != "" && db.identityLimit > 0 && len(db.identities[identity]) >= db.identityLimit {
		db.mu.Unlock()
		return nil, qlib.ErrIdentityUsed
	}
	if err := db.reserveLocked(uid, aliases); err != nil {
		db.mu.Unlock()
		return nil, err
	}
	db.users[uid] = u
	if identity != "" {
		db.identities[identity] = append(db.identities[identity], uid)
	}
	db.mu.Unlock()

	rec := &userRecord{UID: uid, Rev: 1, Created: db.now().UTC(), NextDevice: len(labels), Aliases: aliases, Claims: claims}
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
		if identity != "" {
			// As with the names: a doubtful failure has set db.failed, so
			// the freed place cannot be taken before a restart.
			db.identities[identity] = slices.DeleteFunc(db.identities[identity], func(u string) bool { return u == uid })
			if len(db.identities[identity]) == 0 {
				delete(db.identities, identity)
			}
		}
		return nil, err
	}
	u.rec.Store(rec)
	db.commitLocked(aliases)
	return nodeids, nil
}

// reserveLocked claims names for uid as pending aliases, all or none; a name
// already held, even by a write still in progress, and whether by an alias or
// a group, is taken. db.mu is held.
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
	var h0 []byte // v0NodeHash(node), made only for a user with imported devices
	match := -1
	// Compare against every device, so the time taken says nothing about
	// which bytes of which hash matched.
	for i, d := range rec.Devices {
		want := h
		if d.HashV0 {
			if h0 == nil {
				h0 = v0NodeHash(node)
			}
			want = h0
		}
		if subtle.ConstantTimeCompare(want, d.NodeHash) == 1 {
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
	// Records written before only the identity was kept lose the other
	// claims at their next write (keptClaims); the identity stays, so the
	// index is unchanged.
	rec.Claims = keptClaims(rec.Claims)
	rec.Rev++
	if err := db.writeRecord(rec); err != nil {
		return err
	}
	u.rec.Store(rec)
	return nil
}

// AddAlias gives uid the alias; see checkAlias for the rules.
// qlib.ErrTooManyAliases when uid has maxAliases aliases.
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
		if len(rec.Aliases) >= maxAliases {
			return qlib.ErrTooManyAliases
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

// AddDevice gives uid a new device labelled label and returns its nodeid and
// key. qlib.ErrTooManyDevices when uid has maxDevices live devices.
func (db *UserDB) AddDevice(uid, label string) (nodeid, dev string, err error) {
	if err := checkLabel(label); err != nil {
		return "", "", err
	}
	err = db.update(uid, func(rec *userRecord) error {
		if rec.liveDevices() >= maxDevices {
			return qlib.ErrTooManyDevices
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

// ErrGroupExists refuses CreateGroupFixture for a gid that is already a group.
var ErrGroupExists = errors.New("userdb: group exists")

// ErrGroupAct refuses a GroupEdit action other than qlib's three. qlib's
// header parser refuses unknown actions first, so no client should see it.
var ErrGroupAct = errors.New("userdb: unknown group action")

// ownsAlias reports whether alias is one of uid's aliases. The answer cannot
// go stale: an alias, once durable, never changes owner and is never removed.
func (db *UserDB) ownsAlias(uid, alias string) bool {
	owner, ok := db.AliasUID(alias)
	return ok && owner == uid
}

// lockGroup returns gid's state with its write lock held, or nil if there is
// no such group. It waits for a creation in progress to finish.
func (db *UserDB) lockGroup(gid string) *groupState {
	for {
		db.mu.RLock()
		g := db.groups[gid]
		db.mu.RUnlock()
		if g == nil {
			return nil
		}
		g.wmu.Lock()
		if g.rec.Load() != nil {
			return g
		}
		// Its creation failed, and the creator unlisted it before
		// unlocking; whatever is listed now is another attempt.
		g.wmu.Unlock()
	}
}

// GroupInvite has uid, under its alias from, invite the user with alias to
// into gid, creating the group if it does not exist; see qlib.Directory for
// the rules. The gid's length is checked only when the group is created, so
// fixture groups with short gids ("blab") can be invited into.
func (db *UserDB) GroupInvite(uid, gid, from, to string) (qlib.GroupChange, error) {
	if err := checkGid(gid, 1); err != nil {
		return qlib.GroupChange{}, err
	}
	if !db.ownsAlias(uid, from) {
		return qlib.GroupChange{}, qlib.ErrFromNotSender
	}
	invitee, ok := db.AliasUID(to)
	if !ok {
		return qlib.GroupChange{}, qlib.ErrAliasUnknown
	}
	for {
		if g := db.lockGroup(gid); g != nil {
			change, err := db.invite(g, uid, invitee, to)
			g.wmu.Unlock()
			if err == nil {
				db.logger.Info("group invite", "gid", gid, "uid", uid, "invitee", invitee)
			}
			return change, err
		}
		change, err := db.createGroup(uid, gid, from, invitee, to)
		if err != ErrGroupExists {
			return change, err
		}
		// Another invite created gid after lockGroup looked; invite into
		// it like any existing group.
	}
}

// invite adds invitee to the existing group g, as GroupInvite's sender uid.
// g.wmu is held.
func (db *UserDB) invite(g *groupState, uid, invitee, to string) (qlib.GroupChange, error) {
	if err := db.writable(); err != nil {
		return qlib.GroupChange{}, err
	}
	rec := g.rec.Load().clone()
	if i := rec.member(uid); i < 0 || rec.Members[i].Status != memberJoined {
		return qlib.GroupChange{}, qlib.ErrNotMember
	}
	// to is the invitee's own alias, so no other member is listed under it.
	switch i := rec.member(invitee); {
	case i < 0 && len(rec.Members) >= db.groupLimit:
		return qlib.GroupChange{}, qlib.ErrGroupFull
	case i < 0:
		rec.Members = append(rec.Members, memberRecord{UID: invitee, Alias: to, Status: memberInvited})
	case rec.Members[i].Status == memberJoined:
		return qlib.GroupChange{}, qlib.ErrAlreadyMember
	default: // invited or barred: invited again, under to
		rec.Members[i].Alias, rec.Members[i].Status = to, memberInvited
	}
	if err := db.saveGroup(g, rec); err != nil {
		return qlib.GroupChange{}, err
	}
	return qlib.GroupChange{Alias: to, Invitee: invitee, Notify: rec.joined()}, nil
}

// maxGroupMembers bounds a group's member list (invited, joined and barred).
// Every group edit rewrites the whole record and every group post fans out
// to every joined member's devices, so an unbounded list would let one
// member make each edit and post arbitrarily expensive; distribution groups
// of real people stay far below this.
const maxGroupMembers = 5000

// createGroup creates gid with uid joined under from and invitee invited
// under to. ErrGroupExists if gid became a group meanwhile.
func (db *UserDB) createGroup(uid, gid, from, invitee, to string) (qlib.GroupChange, error) {
	if err := checkGid(gid, minGidChars); err != nil {
		return qlib.GroupChange{}, err
	}
	if invitee == uid {
		// The creator is joined, so it cannot also be the invitee.
		return qlib.GroupChange{}, qlib.ErrAlreadyMember
	}
	rec := &groupRecord{GID: gid, Rev: 1, Created: db.now().UTC(), Members: []memberRecord{
		{UID: uid, Alias: from, Status: memberJoined},
		{UID: invitee, Alias: to, Status: memberInvited},
	}}
	if err := db.createGroupRecord(rec); err != nil {
		return qlib.GroupChange{}, err
	}
	db.logger.Info("group created", "gid", gid, "uid", uid, "invitee", invitee)
	return qlib.GroupChange{Alias: to, Invitee: invitee, Notify: []string{uid}}, nil
}

// createGroupRecord writes the record of a new group. The gid is reserved in
// the shared namespace first, as a pending name, and the group listed with
// its write lock held, so that neither an alias nor another creation can
// take it, and edits wait, while the record is written.
func (db *UserDB) createGroupRecord(rec *groupRecord) error {
	gid := rec.GID
	g := &groupState{}
	g.wmu.Lock()
	defer g.wmu.Unlock()

	db.mu.Lock()
	if err := db.writableLocked(); err != nil {
		db.mu.Unlock()
		return err
	}
	if _, ok := db.groups[gid]; ok {
		db.mu.Unlock()
		return ErrGroupExists
	}
	if _, ok := db.names[gid]; ok {
		db.mu.Unlock()
		return qlib.ErrGidTaken
	}
	db.names[gid] = &nameEntry{kind: nameGroup, owner: gid, pending: true}
	db.groups[gid] = g
	db.mu.Unlock()

	err := db.writeGroup(rec)

	db.mu.Lock()
	defer db.mu.Unlock()
	if err != nil {
		// As in create: a doubtful failure has set db.failed, so the
		// released gid cannot be claimed before a restart.
		delete(db.groups, gid)
		delete(db.names, gid)
		return err
	}
	g.rec.Store(rec)
	db.names[gid].pending = false
	return nil
}

// saveGroup makes rec, an edited clone of g's record, durable, then publishes
// it. An edit that changed nothing (a repeated invite or rename) is not
// written. g.wmu is held.
func (db *UserDB) saveGroup(g *groupState, rec *groupRecord) error {
	if slices.Equal(g.rec.Load().Members, rec.Members) {
		return nil
	}
	rec.Rev++
	if err := db.writeGroup(rec); err != nil {
		return err
	}
	g.rec.Store(rec)
	return nil
}

// GroupEdit applies act to uid's membership of gid; see qlib.Directory for
// the rules.
func (db *UserDB) GroupEdit(uid string, act qlib.GroupAct, gid, newalias, to string) (qlib.GroupChange, error) {
	var edit func(rec *groupRecord) (qlib.GroupChange, error)
	switch act {
	case qlib.GroupJoin:
		edit = func(rec *groupRecord) (qlib.GroupChange, error) { return db.join(rec, uid, newalias) }
	case qlib.GroupAlias:
		edit = func(rec *groupRecord) (qlib.GroupChange, error) { return db.rename(rec, uid, newalias) }
	case qlib.GroupDrop:
		edit = func(rec *groupRecord) (qlib.GroupChange, error) { return drop(rec, uid, to) }
	default:
		return qlib.GroupChange{}, ErrGroupAct
	}
	g := db.lockGroup(gid)
	if g == nil {
		return qlib.GroupChange{}, qlib.ErrNoGroup
	}
	defer g.wmu.Unlock()
	if err := db.writable(); err != nil {
		return qlib.GroupChange{}, err
	}
	rec := g.rec.Load().clone()
	change, err := edit(rec)
	if err != nil {
		return qlib.GroupChange{}, err
	}
	if err := db.saveGroup(g, rec); err != nil {
		return qlib.GroupChange{}, err
	}
	db.logger.Info("group edit", "gid", gid, "uid", uid, "act", string(act))
	return change, nil
}

// join makes the invited uid a joined member of rec, under newalias if given.
func (db *UserDB) join(rec *groupRecord, uid, newalias string) (qlib.GroupChange, error) {
	i := rec.member(uid)
	if i < 0 || rec.Members[i].Status != memberInvited {
		return qlib.GroupChange{}, qlib.ErrNotInvited
	}
	if newalias != "" && !db.ownsAlias(uid, newalias) {
		return qlib.GroupChange{}, qlib.ErrNewAliasNotOwn
	}
	change := qlib.GroupChange{Alias: rec.Members[i].Alias}
	if newalias != "" && newalias != change.Alias {
		change.NewAlias = newalias
		rec.Members[i].Alias = newalias
	}
	rec.Members[i].Status = memberJoined
	rec.moveToEnd(i)
	change.Notify = rec.joined()
	return change, nil
}

// rename lists the joined uid under newalias in rec.
func (db *UserDB) rename(rec *groupRecord, uid, newalias string) (qlib.GroupChange, error) {
	i := rec.member(uid)
	if i < 0 || rec.Members[i].Status != memberJoined {
		return qlib.GroupChange{}, qlib.ErrNotMember
	}
	if !db.ownsAlias(uid, newalias) {
		return qlib.GroupChange{}, qlib.ErrNewAliasNotOwn
	}
	change := qlib.GroupChange{Alias: rec.Members[i].Alias, NewAlias: newalias}
	rec.Members[i].Alias = newalias
	change.Notify = rec.joined()
	return change, nil
}

// drop has uid leave rec, when to is its own listing alias, or bar the
// member listed under to.
func drop(rec *groupRecord, uid, to string) (qlib.GroupChange, error) {
	i, target := rec.member(uid), rec.memberByAlias(to)
	switch {
	case i >= 0 && target == i && rec.Members[i].Status != memberBarred:
		rec.Members[i].Status = memberInvited
	case i < 0 || rec.Members[i].Status != memberJoined:
		return qlib.GroupChange{}, qlib.ErrNotMember
	case target < 0:
		return qlib.GroupChange{}, qlib.ErrAliasUnknown
	default:
		rec.Members[target].Status = memberBarred
	}
	dropped := rec.Members[target]
	notify := rec.joined()
	if !slices.Contains(notify, dropped.UID) {
		notify = append(notify, dropped.UID)
	}
	return qlib.GroupChange{Alias: dropped.Alias, Notify: notify}, nil
}

// GroupMembers returns the uids of gid's joined members in join order, for a
// post from uid, which must be joined or invited.
func (db *UserDB) GroupMembers(uid, gid string) ([]string, error) {
	db.mu.RLock()
	g := db.groups[gid]
	db.mu.RUnlock()
	var rec *groupRecord
	if g != nil {
		rec = g.rec.Load()
	}
	if rec == nil {
		return nil, qlib.ErrNoGroup
	}
	if i := rec.member(uid); i < 0 || rec.Members[i].Status == memberBarred {
		return nil, qlib.ErrNotMember
	}
	return rec.joined(), nil
}

// CreateGroupFixture creates the group gid with the given members (uid →
// the alias it is listed under, which must be its own), joined where joined
// says so and invited otherwise. Like CreateFixture it exists for
// conformance fixtures: their gid ("blab") is shorter than any request may
// create. Members are listed in uid order.
func (db *UserDB) CreateGroupFixture(gid string, members map[string]string, joined map[string]bool) error {
	if err := checkGid(gid, 1); err != nil {
		return fmt.Errorf("userdb: fixture gid %q: %w", gid, err)
	}
	for uid := range joined {
		if _, ok := members[uid]; !ok {
			return fmt.Errorf("userdb: fixture group %q: joined %s is not a member", gid, uid)
		}
	}
	rec := &groupRecord{GID: gid, Rev: 1, Created: db.now().UTC()}
	for _, uid := range slices.Sorted(maps.Keys(members)) {
		alias := members[uid]
		if !db.ownsAlias(uid, alias) {
			return fmt.Errorf("userdb: fixture group %q: %q is not an alias of %s", gid, alias, uid)
		}
		status := memberInvited
		if joined[uid] {
			status = memberJoined
		}
		rec.Members = append(rec.Members, memberRecord{UID: uid, Alias: alias, Status: status})
	}
	if err := db.createGroupRecord(rec); err != nil {
		return err
	}
	db.logger.Info("fixture group created", "gid", gid, "members", len(members))
	return nil
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
	return db.writeFile(db.userDir, db.recordPath(rec.UID), data)
}

// writeGroup makes rec durable, exactly as writeRecord does.
func (db *UserDB) writeGroup(rec *groupRecord) error {
	data, err := encodeGroup(rec)
	if err != nil {
		return err
	}
	return db.writeFile(db.groupDir, db.groupPath(rec.GID), data)
}

// writeFile replaces the record file final, in dir, with data, in the order
// and with the failure handling writeRecord describes.
//
// The directory is opened first, before anything on disk changes, and held
// for the fsync that ends the write. Opening a file is what fails when the
// process or the system is out of file descriptors (EMFILE, ENFILE), which
// a flood of links can bring about; failing here, or when creating the temp
// file, leaves the disk as it was, so the write is only refused and the
// database stays usable. Opened after the rename, the same failure would
// leave the rename not durable and stop the database.
func (db *UserDB) writeFile(dir, final string, data []byte) error {
	d, err := db.openFile(dir, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("userdb: open %s: %w", dir, err)
	}
	// Read-only: closing it can lose nothing.
	defer d.Close()
	tmp := final + recordTmpSuffix
	if err := createRecordFile(db.openFile, tmp, data); err != nil {
		if rmErr := os.Remove(tmp); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			db.fail(rmErr)
		}
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		db.fail(err)
		return fmt.Errorf("userdb: rename %s: %w", tmp, err)
	}
	if err := d.Sync(); err != nil {
		db.fail(err)
		return fmt.Errorf("userdb: sync %s: %w", dir, err)
	}
	return nil
}

// fail records the first write failure that leaves the disk in doubt.
func (db *UserDB) fail(err error) {
	db.mu.Lock()
	first := db.failed == nil
	if first {
		db.failed = err
		db.logger.Error("userdb write failed, refusing further writes", "err", err.Error())
	}
	onFatal := db.onFatal
	db.mu.Unlock()
	if first && onFatal != nil {
		onFatal(err)
	}
}

func (db *UserDB) recordPath(uid string) string {
	return filepath.Join(db.userDir, uid+recordSuffix)
}

func (db *UserDB) groupPath(gid string) string {
	return filepath.Join(db.groupDir, groupFileStem(gid)+recordSuffix)
}

// writeRecordFile writes data to a new file at path and fsyncs it.
func writeRecordFile(path string, data []byte) error {
	return createRecordFile(os.OpenFile, path, data)
}

// createRecordFile is writeRecordFile opening the file with open.
func createRecordFile(open func(string, int, fs.FileMode) (*os.File, error), path string, data []byte) error {
	f, err := open(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, recordPerm)
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

func syncRecordDir(dir string) error {
	if err := syncDir(dir); err != nil {
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

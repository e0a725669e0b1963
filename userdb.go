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
// Persistence order for every change (durable.Replace): write the temp file,
// fsync it, rename it over the record, fsync the directory. A crash leaves
// either the old record or the new one, plus possibly a temp file;
// OpenUserDB completes a temp file that is whole and checksummed (the rename
// is all that was missing) and discards one that is not.
//
// The files of the user database:
//
//	userdb.go          the type, OpenUserDB and Close, the locks, failure
//	userdb_records.go  the records and the rules for what they may hold
//	userdb_file.go     record files of either kind: encoding, writing
//	userdb_recover.go  loading at open, completing interrupted writes
//	userdb_kv.go       records in a cluster's KV bucket instead of files, and
//	                   a replica's applying of the records others write
//	userdb_users.go    registration, login, devices and aliases
//	userdb_groups.go   group invitations and edits
//	userdb_blocks.go   block lists (the "block" extension)
//	userdb_dropalias.go  withdrawing a regular alias (the "dropalias" extension)
//
// Locks, and the order they nest in:
//
//	recordState.wmu  one per user and per group: serialises the writers of
//	                 that record and is held across its file write, so only
//	                 writers of the same record wait. A goroutine holds at
//	                 most one wmu at a time, with one exception: an
//	                 invitation through a single-use alias spends it (the
//	                 invitee's user wmu) while holding the group's wmu.
//	                 So group wmu → user wmu, never the reverse: no user
//	                 wmu holder takes a group's. A replica applying a
//	                 record from the cluster (applyRecord) takes that
//	                 record's wmu alone, like any writer of it.
//	UserDB.dropMu    serialises withdrawals of regular aliases (DropAlias,
//	                 userdb_dropalias.go), which rewrite several records.
//	                 Taken first, before any wmu, and by nothing else.
//	UserDB.snapMu    held shared across each record file write
//	                 (writeRecord), under the record's wmu; held exclusive
//	                 by Snapshot alone, with no other lock, while it reads
//	                 the files. So wmu → snapMu → mu.
//	UserDB.mu        guards the maps (users, groups, names, identities) and
//	                 the failed/closed state. Held only for map operations,
//	                 never across file I/O, and never while taking a wmu:
//	                 it may be taken while a wmu is held (wmu → mu), not the
//	                 other way round.
//	                 Callers may hold locks of their own around any method
//	                 (qlib asks Blocked with its Server.mu held, for
//	                 presence): the database never calls out while holding
//	                 one of its locks.
//
// Published records (recordState.rec) are immutable and read without a
// lock. onFatal is called with no lock held.

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"mnm/durable"
	"mnm/qlib"
)

var _ qlib.Directory = (*UserDB)(nil)

// UserDB is the user database. It implements qlib.Directory; all methods are
// safe for concurrent use.
type UserDB struct {
	// Set by OpenUserDB, then only read.
	fs            durable.FS
	userDir       string
	groupDir      string
	logger        *slog.Logger
	now           func() time.Time
	identityLimit int // accounts per sign-up identity; 0 = no bound
	groupLimit    int // members per group
	// records is where the records are kept: files in the directory, or
	// a cluster's KV bucket (UserDBOptions.Records).
	records recordStore
	// replicated is set when records is shared with other frontends
	// (UserDBOptions.Records): Login then writes nothing, and there is
	// nothing on disk to snapshot.
	replicated bool

	receiveOnly bool // Register makes receive-only members

	awayAfter time.Duration // the away policy; 0 = off
	opened    time.Time     // when OpenUserDB ran: see deviceRecord.LastLogin
	// logins holds each device's last login since OpenUserDB (device key
	// → time.Time), in memory only: the disk records logins only for the
	// away policy (Login), and the operator wants the exact time.
	logins sync.Map

	// dropMu serialises alias withdrawals (see the lock order above).
	dropMu sync.Mutex

	// snapMu is held shared by every record write, exclusive by Snapshot
	// (userdb_snapshot.go) while it reads the record files.
	snapMu sync.RWMutex

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
	// onFatal is told of the failure that sets failed; see SetOnFatal.
	onFatal func(error)
}

// UserDBOptions configures OpenUserDB. Only Dir, or Records, is required.
type UserDBOptions struct {
	// Dir holds the database; it is created if missing. Unused with
	// Records.
	Dir string
	// Records, when set, keeps the records there instead of in Dir: a
	// cluster's KV bucket (newKVRecords), written only by the site's
	// directory writer and read by every frontend (clusterdir.go). There
	// is then nothing on disk (no directory, no snapshot), Login writes
	// nothing, and AwayAfter must be 0.
	Records recordStore
	// FS is the file system Dir is on; nil is the operating system's.
	FS durable.FS
	// Now dates records; nil is time.Now.
	Now func() time.Time
	// Logger receives the database's events; nil discards them.
	Logger *slog.Logger
	// AccountsPerIdentity bounds the accounts that one third-party identity
	// may register: 0 is DefaultAccountsPerIdentity, NoAccountBound (any
	// negative value) removes the bound. Accounts over the bound that
	// already exist (imported from the deployed server, or made under a
	// higher bound) are kept and log in as before: only new registrations
	// are refused.
	AccountsPerIdentity int
	// MaxGroupMembers bounds a group's member list; 0 is maxGroupMembers.
	MaxGroupMembers int
	// ReceiveOnly makes every member Register creates receive-only (the
	// "receiveonly" extension) until SetReceiveOnly promotes it.
	ReceiveOnly bool
	// AwayAfter is the away policy (the "away" extension): a device not
	// logged in for this long is due (AwayDue); 0, the default, is off,
	// and then logins write nothing.
	AwayAfter time.Duration
}

// NoAccountBound is the UserDBOptions.AccountsPerIdentity that lets one
// identity register any number of accounts.
const NoAccountBound = -1

// OpenUserDB opens the user database in opts.Dir, creating it if missing,
// and loads every record into memory. It completes or discards temp files
// left by an interrupted write, and refuses to open if any record is corrupt
// or the records contradict each other.
func OpenUserDB(opts UserDBOptions) (*UserDB, error) {
	db := &UserDB{
		fs:            opts.FS,
		userDir:       filepath.Join(opts.Dir, userKind.String()),
		groupDir:      filepath.Join(opts.Dir, groupKind.String()),
		logger:        opts.Logger,
		now:           opts.Now,
		identityLimit: opts.AccountsPerIdentity,
		groupLimit:    opts.MaxGroupMembers,
		receiveOnly:   opts.ReceiveOnly,
		awayAfter:     opts.AwayAfter,
		users:         make(map[string]*userState),
		groups:        make(map[string]*groupState),
		names:         make(map[string]*nameEntry),
		identities:    make(map[string][]string),
	}
	if db.fs == nil {
		db.fs = durable.OSFS{}
	}
	if db.logger == nil {
		db.logger = slog.New(slog.DiscardHandler)
	}
	if db.now == nil {
		db.now = time.Now
	}
	db.opened = db.now().UTC()
	switch {
	case db.identityLimit == 0:
		db.identityLimit = DefaultAccountsPerIdentity
	case db.identityLimit < 0:
		db.identityLimit = 0
	}
	if db.groupLimit <= 0 {
		db.groupLimit = maxGroupMembers
	}
	db.records = opts.Records
	if db.records != nil {
		// The away policy writes at logins, which a replica cannot.
		if db.awayAfter > 0 {
			return nil, errors.New("userdb: the away policy needs a database on disk, not a cluster's records")
		}
		db.replicated = true
	} else {
		db.records = fileRecords{db}
		for _, sub := range []string{db.userDir, db.groupDir} {
			if err := db.ensureRecordDir(sub); err != nil {
				return nil, err
			}
		}
	}
	if err := db.records.load(db); err != nil {
		return nil, err
	}
	where := opts.Dir
	if db.replicated {
		where = "cluster"
	}
	db.logger.Info("userdb open", "dir", where, "users", len(db.users), "groups", len(db.groups), "names", len(db.names))
	return db, nil
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

// ErrClosed refuses writes after Close.
var ErrClosed = errors.New("userdb: closed")

// ErrFailed refuses writes after one left the records in doubt (fail); the
// refusal wraps that failure too.
var ErrFailed = errors.New("userdb: refusing writes after an earlier failure")

// writableLocked returns why writes are refused, if they are. db.mu is held.
func (db *UserDB) writableLocked() error {
	if db.closed {
		return ErrClosed
	}
	if db.failed != nil {
		return fmt.Errorf("%w: %w", ErrFailed, db.failed)
	}
	return nil
}

// writable is writableLocked for callers that do not hold db.mu.
func (db *UserDB) writable() error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	return db.writableLocked()
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

// Close stops the database from accepting writes; writes already in progress
// complete. Records are written synchronously, so nothing is left to flush.
func (db *UserDB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.closed = true
	return nil
}

// UserCount is the number of members, for monitoring.
func (db *UserDB) UserCount() int {
	db.mu.RLock()
	defer db.mu.RUnlock()
	return len(db.users)
}

// GroupCount is the number of groups, for monitoring.
func (db *UserDB) GroupCount() int {
	db.mu.RLock()
	defer db.mu.RUnlock()
	return len(db.groups)
}

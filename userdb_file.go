package main

// Record files, of either kind (a user or a group): one layer that encodes,
// checks and durably writes both, keyed by the record's kind.

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"sync"
	"sync/atomic"

	"mnm/durable"
)

const (
	// recordVersion is the "v" of a record file; a reader refuses versions it
	// does not know rather than misreading them.
	recordVersion = 1

	recordSuffix    = ".json"
	recordTmpSuffix = durable.TempSuffix // durable.Replace's temp file
	userDirPerm     = 0o700              // records hold nodeid hashes, sign-up claims and memberships
	recordPerm      = 0o600
)

// recordKind is a kind of record. Its name (String) is both the
// subdirectory holding its files and the envelope field holding its JSON.
type recordKind int

const (
	userKind recordKind = iota
	groupKind
)

// The names of the kinds.
const (
	userSubdir  = "user"
	groupSubdir = "group"
)

func (k recordKind) String() string {
	if k == groupKind {
		return groupSubdir
	}
	return userSubdir
}

// record is what the record-file layer needs of a record type: *userRecord
// or *groupRecord.
type record[T any] interface {
	*T
	// kind is the record's kind; it does not look at the receiver, which
	// may be nil.
	kind() recordKind
	// stem is the record's file name minus recordSuffix: the uid, or the
	// gid's groupFileStem.
	stem() string
	// check validates a decoded record found in the file named stem.
	check(stem string) error
}

func (*userRecord) kind() recordKind { return userKind }
func (r *userRecord) stem() string   { return r.UID }

func (*groupRecord) kind() recordKind { return groupKind }
func (r *groupRecord) stem() string   { return groupFileStem(r.GID) }

// recordState is the in-memory state of one record.
type recordState[T any] struct {
	// wmu serialises the writers of this record; it is held across the file
	// write and fsync, so only writers of the same record wait.
	wmu sync.Mutex
	// rec is the durable record; nil while the record's first write is in
	// progress (its uid or gid is reserved but does not exist yet), and
	// forever if that write failed (the state is then unlisted).
	rec atomic.Pointer[T]
}

type (
	userState  = recordState[userRecord]
	groupState = recordState[groupRecord]
)

// recordFile is the envelope of a record on disk. User or Group keeps the
// exact bytes the checksum covers.
type recordFile struct {
	V      int             `json:"v"`
	CRC32C string          `json:"crc32c"`
	User   json.RawMessage `json:"user"`
	Group  json.RawMessage `json:"group"`
}

// recordCRCTable is the CRC-32C table: a checksum against accidental corruption
// (a torn or flipped sector), not an adversary, who could rewrite the file
// anyway. It detects every single-bit and short burst error.
var recordCRCTable = crc32.MakeTable(crc32.Castagnoli)

// encodeRecord returns the file contents for rec. The envelope is written by
// hand so that the checksummed bytes appear in the file exactly as hashed.
func encodeRecord[T any, P record[T]](rec P) ([]byte, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("userdb: encode %s %s: %w", rec.kind(), rec.stem(), err)
	}
	out := fmt.Appendf(nil, `{"v":%d,"crc32c":"%08x","%s":`, recordVersion, crc32.Checksum(body, recordCRCTable), rec.kind())
	out = append(out, body...)
	return append(out, "}\n"...), nil
}

// parseRecord decodes and checks the contents of the record file named stem
// (plus recordSuffix).
func parseRecord[T any, P record[T]](data []byte, stem string) (P, error) {
	kind := P(nil).kind()
	var f recordFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not a record: %w", err)
	}
	if f.V != recordVersion {
		return nil, fmt.Errorf("unknown version %d", f.V)
	}
	body := f.User
	if kind == groupKind {
		body = f.Group
	}
	if len(body) == 0 {
		return nil, fmt.Errorf("no %s", kind)
	}
	if want := fmt.Sprintf("%08x", crc32.Checksum(body, recordCRCTable)); f.CRC32C != want {
		return nil, fmt.Errorf("checksum mismatch: file says %q, contents give %q", f.CRC32C, want)
	}
	rec := P(new(T))
	if err := json.Unmarshal(body, rec); err != nil {
		return nil, fmt.Errorf("bad %s: %w", kind, err)
	}
	if err := rec.check(stem); err != nil {
		return nil, err
	}
	return rec, nil
}

// kindDir is the directory of the records of kind k.
func (db *UserDB) kindDir(k recordKind) string {
	if k == groupKind {
		return db.groupDir
	}
	return db.userDir
}

// recordPath is the file of uid's record.
func (db *UserDB) recordPath(uid string) string {
	return filepath.Join(db.userDir, uid+recordSuffix)
}

// groupPath is the file of gid's record.
func (db *UserDB) groupPath(gid string) string {
	return filepath.Join(db.groupDir, groupFileStem(gid)+recordSuffix)
}

// recordStore is where the records are kept: one file each in the
// database's directory (fileRecords), or one key each in a cluster's KV
// bucket (kvRecords, userdb_kv.go). The database's rules, locks and indexes
// are the same over either; only writing and loading differ.
type recordStore interface {
	// write makes data, the encoded record of kind named stem, durable
	// before it returns. The caller holds the record's wmu. An error
	// leaves the stored record as it was, unless inDoubt says otherwise.
	write(kind recordKind, stem string, data []byte) error
	// inDoubt reports whether err, from write, leaves the stored record
	// unknown (the old one or the new one), and the cause to fail with:
	// memory and storage may then disagree, so the database refuses all
	// further writes (db.fail) until a restart reloads the records.
	inDoubt(err error) (cause error, ok bool)
	// load reads every record into db's maps and indexes them, as
	// OpenUserDB does, or says why the records cannot be used.
	load(db *UserDB) error
	// name is how messages name the record of kind named stem: its file,
	// or its key.
	name(kind recordKind, stem string) string
}

// writeRecord encodes rec and makes it durable in db's record store. If a
// failure leaves the stored record unknown, the database refuses all
// further writes: memory and storage may disagree, and only a restart,
// which reloads the records, can reconcile them. The caller holds the
// record's wmu.
func writeRecord[T any, P record[T]](db *UserDB, rec P) error {
	data, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	if err := db.records.write(rec.kind(), rec.stem(), data); err != nil {
		if cause, ok := db.records.inDoubt(err); ok {
			db.fail(cause)
		}
		return err
	}
	return nil
}

// fileRecords is the record store of a database on disk: the record files
// in db's directory, on db's file system (userDir, groupDir, fs).
type fileRecords struct {
	db *UserDB
}

// write makes data durable with durable.Replace: write the temp file,
// fsync it, rename it over the record, fsync the directory, which was
// opened first so that running out of file descriptors merely refuses the
// write. The rename or the directory's fsync failing, or the temp file
// that could not be removed, leaves the record in doubt.
func (f fileRecords) write(kind recordKind, stem string, data []byte) error {
	f.db.snapMu.RLock() // a snapshot sees the file before this write or after it
	defer f.db.snapMu.RUnlock()
	if err := durable.Replace(f.db.fs, f.name(kind, stem), data, recordPerm); err != nil {
		return fmt.Errorf("userdb: %w", err)
	}
	return nil
}

func (fileRecords) inDoubt(err error) (error, bool) { return durable.InDoubt(err) }

func (fileRecords) load(db *UserDB) error { return db.loadFiles() }

func (f fileRecords) name(kind recordKind, stem string) string {
	return filepath.Join(f.db.kindDir(kind), stem+recordSuffix)
}

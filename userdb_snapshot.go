package main

// Snapshots of the user database for online backups (backup.go).
//
// A copy made file by file while writers go on could pair records from
// different moments: user A's alias dropped and then taken by user B, copied
// as B after and A before, holds the alias twice, and OpenUserDB refuses
// that. So every record write holds snapMu shared across its file write
// (writeRecord), and Snapshot holds it exclusive while it reads the files:
// no write is in progress then, so the files are the database as a crash
// at that instant would leave it, with no temp file, which OpenUserDB is
// built to load (operations that rewrite several records, like an alias
// withdrawal, are crash-safe record by record). Writers wait for as long as
// the read takes: the records are small (a few hundred bytes each), so
// reading them all is short next to a record write's own fsyncs at any
// size the database is meant for. Reading the files rather than the
// in-memory records keeps the argument to "this is what was on disk":
// memory is published after the file write, outside the lock.

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"mnm/durable"
)

// UserDBFile is one record file of a snapshot: its path relative to the
// database's directory ("user/alice.json") and its bytes.
type UserDBFile struct {
	Name string
	Data []byte
}

// errSnapshotReplicated refuses a snapshot of a database whose records are
// a cluster's (UserDBOptions.Records): there are no files to copy.
var errSnapshotReplicated = errors.New("userdb: snapshot: the records are in the cluster's KV bucket: back up the bucket instead")

// Snapshot returns the database's record files as they are at one instant
// with no write in progress. Temp files (a write that failed in doubt) are
// left out: the record they would replace is the durable one.
func (db *UserDB) Snapshot() ([]UserDBFile, error) {
	if db.replicated {
		return nil, errSnapshotReplicated
	}
	db.snapMu.Lock()
	defer db.snapMu.Unlock()
	var out []UserDBFile
	for _, k := range []recordKind{userKind, groupKind} {
		dir := db.kindDir(k)
		names, err := db.fs.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("userdb: snapshot: read %s: %w", dir, err)
		}
		for _, name := range names {
			path := filepath.Join(dir, name)
			if !strings.HasSuffix(name, recordSuffix) || !db.isRegular(path) {
				continue
			}
			data, err := durable.ReadFile(db.fs, path)
			if err != nil {
				return nil, fmt.Errorf("userdb: snapshot: read %s: %w", path, err)
			}
			out = append(out, UserDBFile{Name: k.String() + "/" + name, Data: data})
		}
	}
	return out, nil
}

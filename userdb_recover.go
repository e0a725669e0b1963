package main

// Opening the user database: reading every record, indexing the names,
// completing or discarding the temp files of interrupted writes, and
// checking that the records agree with each other.

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"mnm/durable"
)

// ensureRecordDir creates the record directory path if it is missing, and
// makes the new directory entries durable before any record goes in. A
// database from before groups existed gets its group directory this way.
func (db *UserDB) ensureRecordDir(path string) error {
	if _, err := db.fs.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil // present, or an error that load reports when reading it
	}
	if err := db.fs.MkdirAll(path, userDirPerm); err != nil {
		return fmt.Errorf("userdb: create %s: %w", path, err)
	}
	parent := filepath.Dir(path)
	for _, d := range []string{filepath.Dir(parent), parent, path} {
		if err := db.syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// syncDir makes the entries of directory dir durable.
func (db *UserDB) syncDir(dir string) error {
	if err := db.fs.SyncDir(dir); err != nil {
		return fmt.Errorf("userdb: sync %s: %w", dir, err)
	}
	return nil
}

// loadFiles reads every record file, then indexes the aliases and gids,
// then deals with temp files, then checks that groups list only users under
// their own aliases. Temp files come after the index, which refuses one
// that claims a name held elsewhere; the group check comes last, once every
// record that will be used is known.
func (db *UserDB) loadFiles() error {
	userTemps, err := loadRecords(db, func(rec *userRecord) {
		u := &userState{}
		u.rec.Store(rec)
		db.users[rec.UID] = u
	})
	if err != nil {
		return err
	}
	groupTemps, err := loadRecords(db, func(rec *groupRecord) {
		g := &groupState{}
		g.rec.Store(rec)
		db.groups[rec.GID] = g
	})
	if err != nil {
		return err
	}

	if err := db.indexNames(); err != nil {
		return err
	}

	for _, name := range userTemps {
		rec, path, err := recoverTemp(db, name, db.userReplaces)
		if err != nil {
			return err
		}
		if rec != nil {
			db.installUser(rec)
			db.logger.Info("userdb completed interrupted write", "file", path, "uid", rec.UID)
		}
	}
	if len(userTemps) > 0 {
		if err := db.syncDir(db.userDir); err != nil {
			return err
		}
	}
	for _, name := range groupTemps {
		rec, path, err := recoverTemp(db, name, db.groupReplaces)
		if err != nil {
			return err
		}
		if rec != nil {
			db.installGroup(rec)
			db.logger.Info("userdb completed interrupted write", "file", path)
		}
	}
	if len(groupTemps) > 0 {
		if err := db.syncDir(db.groupDir); err != nil {
			return err
		}
	}

	// From the records as completed: a recovered temp file may be a
	// registration.
	db.indexIdentities()
	return db.checkMembers()
}

// indexNames indexes the aliases and gids of the loaded records, in uid and
// gid order so that a conflict is reported the same way every time.
func (db *UserDB) indexNames() error {
	for _, uid := range slices.Sorted(maps.Keys(db.users)) {
		var err error
		db.users[uid].rec.Load().eachName(func(a string, kind nameKind) {
			if e, ok := db.names[a]; ok && err == nil {
				err = fmt.Errorf("userdb: alias %q is in both %s and %s", a,
					db.records.name(userKind, e.owner), db.records.name(userKind, uid))
			}
			db.names[a] = &nameEntry{kind: kind, owner: uid}
		})
		if err != nil {
			return err
		}
	}
	for _, gid := range slices.Sorted(maps.Keys(db.groups)) {
		// Gids cannot collide with each other (the record's name is the
		// gid's hash), only with an alias.
		if e, ok := db.names[gid]; ok {
			return fmt.Errorf("userdb: %q is both an alias in %s and the group %s", gid,
				db.records.name(userKind, e.owner), db.records.name(groupKind, groupFileStem(gid)))
		}
		db.names[gid] = &nameEntry{kind: nameGroup, owner: gid}
	}
	return nil
}

// indexIdentities indexes the sign-up identities of the loaded records.
func (db *UserDB) indexIdentities() {
	for _, uid := range slices.Sorted(maps.Keys(db.users)) {
		if key := identityKey(db.users[uid].rec.Load().Claims); key != "" {
			db.identities[key] = append(db.identities[key], uid)
		}
	}
}

// loadRecords calls add for every record of one kind, and returns the names
// of the temp files, which the caller can only judge once every record is
// loaded.
func loadRecords[T any, P record[T]](db *UserDB, add func(P)) (temps []string, err error) {
	dir := db.kindDir(P(nil).kind())
	names, err := db.fs.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("userdb: read %s: %w", dir, err)
	}
	for _, name := range names {
		path := filepath.Join(dir, name)
		switch {
		case strings.HasSuffix(name, recordSuffix+recordTmpSuffix):
			temps = append(temps, name)
		case strings.HasSuffix(name, recordSuffix) && db.isRegular(path):
			data, err := durable.ReadFile(db.fs, path)
			if err != nil {
				return nil, fmt.Errorf("userdb: read %s: %w", path, err)
			}
			rec, err := parseRecord[T, P](data, strings.TrimSuffix(name, recordSuffix))
			if err != nil {
				return nil, fmt.Errorf("userdb: corrupt record %s: %w", path, err)
			}
			add(rec)
		default:
			db.logger.Warn("userdb ignoring unexpected file", "file", path)
		}
	}
	return temps, nil
}

// isRegular reports whether path is a regular file, and not a directory or
// a symbolic link, which are not records.
func (db *UserDB) isRegular(path string) bool {
	fi, err := db.fs.Lstat(path)
	return err == nil && fi.Mode().IsRegular()
}

// checkMembers verifies that every group member is a user listed under one of
// its own aliases. Every write keeps this true (a group only ever names users
// and aliases that are already durable, and aliases are never removed), so a
// violation means a record was damaged or edited by hand, and reading on
// would deliver group posts to the wrong people.
func (db *UserDB) checkMembers() error {
	for _, gid := range slices.Sorted(maps.Keys(db.groups)) {
		group := db.records.name(groupKind, groupFileStem(gid))
		for _, m := range db.groups[gid].rec.Load().Members {
			if _, ok := db.users[m.UID]; !ok {
				return fmt.Errorf("userdb: group record %s lists %s, who is not a user", group, m.UID)
			}
			// A member may be listed under an alias it has since retired.
			if e, ok := db.names[m.Alias]; !ok || e.kind == nameGroup || e.owner != m.UID {
				return fmt.Errorf("userdb: group record %s lists %s under alias %q, which is not theirs (%s)",
					group, m.UID, m.Alias, db.records.name(userKind, m.UID))
			}
		}
	}
	return nil
}

// recoverTemp completes or discards the temp file name of one kind of
// record. A temp file is completed only if it is whole, named after its
// record, and replaces says it may replace what is loaded (it is newer, and
// claims no name held elsewhere); a write that was never acknowledged may be
// lost, but a record must never be replaced by something worse. It returns
// the completed record and the temp file's path, or a nil record if the
// file was discarded; either way the directory has changed.
func recoverTemp[T any, P record[T]](db *UserDB, name string, replaces func(P) error) (P, string, error) {
	dir := db.kindDir(P(nil).kind())
	path := filepath.Join(dir, name)
	stem := strings.TrimSuffix(name, recordSuffix+recordTmpSuffix)
	data, err := durable.ReadFile(db.fs, path)
	if err != nil {
		return nil, path, fmt.Errorf("userdb: read %s: %w", path, err)
	}
	rec, reason := parseRecord[T, P](data, stem)
	if reason == nil {
		reason = replaces(rec)
	}
	if reason != nil {
		if err := db.fs.Remove(path); err != nil {
			return nil, path, fmt.Errorf("userdb: remove %s: %w", path, err)
		}
		db.logger.Warn("userdb discarded interrupted write", "file", path, "reason", reason.Error())
		return nil, path, nil
	}
	if err := db.fs.Rename(path, filepath.Join(dir, stem+recordSuffix)); err != nil {
		return nil, path, fmt.Errorf("userdb: complete %s: %w", path, err)
	}
	return rec, path, nil
}

// notNewer says why a temp file's record of revision rev may not replace the
// loaded one of revision loaded, or nil if it is newer.
func notNewer(rev, loaded uint64) error {
	if loaded >= rev {
		return fmt.Errorf("stale: rev %d, record has rev %d", rev, loaded)
	}
	return nil
}

// userReplaces says why rec, from a temp file, may not replace the loaded
// record of its user, or nil if it may.
func (db *UserDB) userReplaces(rec *userRecord) error {
	if u := db.users[rec.UID]; u != nil {
		if err := notNewer(rec.Rev, u.rec.Load().Rev); err != nil {
			return err
		}
	}
	var err error
	rec.eachName(func(a string, _ nameKind) {
		if e, ok := db.names[a]; ok && err == nil && (e.kind == nameGroup || e.owner != rec.UID) {
			err = fmt.Errorf("alias %q belongs to %s", a, e.owner)
		}
	})
	return err
}

// installUser puts rec, a completed temp file, in place of its user's
// record and names.
func (db *UserDB) installUser(rec *userRecord) {
	u := db.users[rec.UID]
	if u == nil {
		u = &userState{}
		db.users[rec.UID] = u
	} else {
		u.rec.Load().eachName(func(a string, _ nameKind) { delete(db.names, a) })
	}
	u.rec.Store(rec)
	rec.eachName(func(a string, kind nameKind) { db.names[a] = &nameEntry{kind: kind, owner: rec.UID} })
}

// groupReplaces says why rec, from a temp file, may not replace the loaded
// record of its group, or nil if it may: its gid must not be an alias.
func (db *UserDB) groupReplaces(rec *groupRecord) error {
	if g := db.groups[rec.GID]; g != nil {
		if err := notNewer(rec.Rev, g.rec.Load().Rev); err != nil {
			return err
		}
	}
	if e, ok := db.names[rec.GID]; ok && e.kind != nameGroup {
		return fmt.Errorf("gid is an alias of %s", e.owner)
	}
	return nil
}

// installGroup puts rec, a completed temp file, in place of its group's
// record.
func (db *UserDB) installGroup(rec *groupRecord) {
	g := db.groups[rec.GID]
	if g == nil {
		g = &groupState{}
		db.groups[rec.GID] = g
		db.names[rec.GID] = &nameEntry{kind: nameGroup, owner: rec.GID}
	}
	g.rec.Store(rec)
}

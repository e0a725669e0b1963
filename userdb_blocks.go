package main

// Block lists (the "block" extension, Protocol.md, Extensions): a user's
// list is in its record (Blocks), changed like the rest of the record by
// one durable write, and indexed by uid in the published record (blocked),
// so that Blocked, asked for every recipient of every post, is a map lookup
// with no lock but the name index's read lock.

import (
	"slices"

	"mnm/qlib"
	"mnm/qlib/tmtp"
)

// Bounds of a block list; qlib's, whose doc says why.
const (
	maxBlocks         = qlib.MaxBlocks
	maxBlockListBytes = qlib.MaxBlockListBytes
)

// uidChars is the length of every uid Register creates.
var uidChars = tmtp.Base32.EncodedLen(uidBytes)

// resolveBlock finds the user a Block or Unblock name gives: a user's uid,
// or else one of a user's aliases (a single-use alias is none). For a name
// that is neither: qlib.ErrNoUser if it has the form of a uid, so that the
// client is told "recipient not found" as for a post to it, and
// qlib.ErrAliasUnknown otherwise.
func (db *UserDB) resolveBlock(name string) (string, error) {
	if _, rec := db.lookup(name); rec != nil {
		return name, nil
	}
	if uid, ok := db.AliasUID(name); ok {
		return uid, nil
	}
	if len(name) == uidChars && validUID(name) {
		return "", qlib.ErrNoUser
	}
	return "", qlib.ErrAliasUnknown
}

// Block adds the user name resolves to to uid's block list; see
// qlib.Directory.
func (db *UserDB) Block(uid, name string) (entry string, added bool, err error) {
	target, err := db.resolveBlock(name)
	if err != nil {
		return "", false, err
	}
	if target == uid {
		return "", false, qlib.ErrBlockSelf
	}
	err = db.update(uid, func(rec *userRecord) error {
		if i := slices.IndexFunc(rec.Blocks, func(b blockRecord) bool { return b.UID == target }); i >= 0 {
			entry = rec.Blocks[i].By
			return errDone
		}
		if len(rec.Blocks) >= maxBlocks || blockListBytes(rec.Blocks, name) > maxBlockListBytes {
			return qlib.ErrTooManyBlocks
		}
		rec.Blocks = append(rec.Blocks, blockRecord{UID: target, By: name})
		rec.indexBlocks()
		entry, added = name, true
		return nil
	})
	if err != nil {
		return "", false, err
	}
	if added {
		db.logger.Info("sender blocked", "uid", uid, "blocked", target)
	}
	return entry, added, nil
}

// blockListBytes is the size of the listblock reply's "block" field for
// blocks and one more name, as the frame writer escapes them.
func blockListBytes(blocks []blockRecord, name string) int {
	names := make([]string, 0, len(blocks)+1)
	for _, b := range blocks {
		names = append(names, b.By)
	}
	frame := tmtp.AppendFrame(nil, tmtp.Strings("block", append(names, name)))
	if len(frame) == 0 {
		return tmtp.MaxHeaderLen + 1 // over a frame: over any budget
	}
	return len(frame)
}

// Unblock removes an entry from uid's block list; see qlib.Directory.
func (db *UserDB) Unblock(uid, name string) (entry string, removed bool, err error) {
	target, rerr := db.resolveBlock(name) // aliases are never removed: still the user blocked
	err = db.update(uid, func(rec *userRecord) error {
		i := slices.IndexFunc(rec.Blocks, func(b blockRecord) bool { return b.By == name })
		if i < 0 && rerr == nil {
			i = slices.IndexFunc(rec.Blocks, func(b blockRecord) bool { return b.UID == target })
		}
		if i < 0 {
			return errDone
		}
		entry, target = rec.Blocks[i].By, rec.Blocks[i].UID
		rec.Blocks = slices.Delete(rec.Blocks, i, i+1)
		rec.indexBlocks()
		removed = true
		return nil
	})
	if err != nil {
		return "", false, err
	}
	if removed {
		db.logger.Info("sender unblocked", "uid", uid, "unblocked", target)
	}
	return entry, removed, nil
}

// Blocks returns the names of uid's block list entries, sorted.
func (db *UserDB) Blocks(uid string) ([]string, error) {
	_, rec := db.lookup(uid)
	if rec == nil {
		return nil, qlib.ErrNoUser
	}
	names := make([]string, 0, len(rec.Blocks))
	for _, b := range rec.Blocks {
		names = append(names, b.By)
	}
	slices.Sort(names)
	return names, nil
}

// Blocked reports whether recipient blocks sender: a lookup in recipient's
// published record, which no writer changes.
func (db *UserDB) Blocked(recipient, sender string) bool {
	_, rec := db.lookup(recipient)
	return rec != nil && rec.blocked[sender]
}

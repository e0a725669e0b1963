package main

import "slices"

// Receive-only members (the "receiveonly" extension, Protocol.md): a flag in
// the member's record, set at Register when the site makes new members
// receive-only (UserDBOptions.ReceiveOnly), and changed by the operator
// (mnm member promote and demote, member.go) with SetReceiveOnly.

// ReceiveOnly reports whether uid is a receive-only member: a lookup in its
// published record, which no writer changes. False for unknown uids.
func (db *UserDB) ReceiveOnly(uid string) bool {
	_, rec := db.lookup(uid)
	return rec != nil && rec.ReceiveOnly
}

// SetReceiveOnly makes uid receive-only (on true) or a full member (false),
// durably: one record write, so a crash leaves the old flag or the new one.
// changed is false, and nothing is written, when uid already had it.
// qlib.ErrNoUser.
func (db *UserDB) SetReceiveOnly(uid string, on bool) (changed bool, err error) {
	err = db.update(uid, func(rec *userRecord) error {
		if rec.ReceiveOnly == on {
			return errDone
		}
		rec.ReceiveOnly = on
		changed = true
		return nil
	})
	if err != nil {
		return false, err
	}
	if changed {
		db.logger.Info("receive-only changed", "uid", uid, "receiveOnly", on)
	}
	return changed, nil
}

// ReceiveOnlyUIDs returns the uids of the receive-only members, sorted.
func (db *UserDB) ReceiveOnlyUIDs() []string {
	db.mu.RLock()
	uids := make([]string, 0, len(db.users))
	for uid := range db.users {
		uids = append(uids, uid)
	}
	db.mu.RUnlock()
	var out []string
	for _, uid := range uids {
		if db.ReceiveOnly(uid) {
			out = append(out, uid)
		}
	}
	slices.Sort(out)
	return out
}

package main

// Away devices (the "away" extension, Protocol.md): under a policy the
// operator sets (UserDBOptions.AwayAfter), a device that has not logged in
// for that long is marked away, and qlib drops its queue. The database keeps
// when each device last logged in and the mark; qlib.Server.SweepAway asks
// for the devices due and marks them one by one.

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"mnm/qlib"
)

// awayGranularity is how far a device's last login may lag behind before a
// login writes it again. Every write rewrites and fsyncs the member's whole
// record, so a member logging in many times a day costs one write a day;
// the policy counts in days (awayAfterDays), so a day of lag makes a device
// at most a day late to be dropped, never early.
const awayGranularity = 24 * time.Hour

// lastLogin is when d counts as last logged in: its stored time, or for a
// device that has none (created before the policy was set, or imported) the
// later of its creation and the opening of the database, so that turning
// the policy on drops nothing until it has run for its whole period.
func (db *UserDB) lastLogin(d deviceRecord) time.Time {
	if !d.LastLogin.IsZero() {
		return d.LastLogin
	}
	if d.Created.After(db.opened) {
		return d.Created
	}
	return db.opened
}

// seen records a login of uid's device num: its time, and the end of its
// away mark. The login is refused (qlib.ErrLoginFailed) if the device was
// retired meanwhile.
func (db *UserDB) seen(uid string, num int) error {
	err := db.update(uid, func(rec *userRecord) error {
		i := slices.IndexFunc(rec.Devices, func(d deviceRecord) bool { return d.Num == num })
		if i < 0 || rec.Devices[i].Defunct {
			return qlib.ErrLoginFailed
		}
		rec.Devices[i].LastLogin = db.now().UTC()
		rec.Devices[i].Away = false
		return nil
	})
	return err
}

// AwayDue returns the keys of the live devices, not already away, whose last
// login is at least the policy's period before now; none when the policy is
// off. It reads only: MarkAway checks each again.
func (db *UserDB) AwayDue(now time.Time) []string {
	if db.awayAfter <= 0 {
		return nil
	}
	db.mu.RLock()
	users := make([]*userState, 0, len(db.users))
	for _, u := range db.users {
		users = append(users, u)
	}
	db.mu.RUnlock()
	var due []string
	for _, u := range users {
		rec := u.rec.Load()
		for _, d := range rec.Devices {
			if !d.Defunct && !d.Away && db.isDue(d, now) {
				due = append(due, devKey(rec.UID, d.Num))
			}
		}
	}
	slices.Sort(due)
	return due
}

func (db *UserDB) isDue(d deviceRecord, now time.Time) bool {
	return now.Sub(db.lastLogin(d)) >= db.awayAfter
}

// MarkAway marks dev away, durably, if it is still due at now (a login
// since AwayDue clears that, under the same per-member lock as this), and
// returns its number and label and the member's other live devices that are
// not away, which are to be told. ok is false, and nothing changes, when
// dev is not due (any more), is away already, retired or unknown.
func (db *UserDB) MarkAway(dev string, now time.Time) (num, label string, others []string, ok bool, err error) {
	uid, numStr, cut := strings.Cut(dev, ".")
	n, aerr := strconv.Atoi(numStr)
	if !cut || aerr != nil || db.awayAfter <= 0 {
		return "", "", nil, false, nil
	}
	err = db.update(uid, func(rec *userRecord) error {
		others = others[:0]
		i := slices.IndexFunc(rec.Devices, func(d deviceRecord) bool { return d.Num == n })
		if i < 0 || rec.Devices[i].Defunct || rec.Devices[i].Away || !db.isDue(rec.Devices[i], now) {
			return errDone
		}
		for j, d := range rec.Devices {
			if j != i && !d.Defunct && !d.Away {
				others = append(others, devKey(uid, d.Num))
			}
		}
		label = rec.Devices[i].Label
		rec.Devices[i].Away = true
		ok = true
		return nil
	})
	if errors.Is(err, qlib.ErrNoUser) {
		err = nil
	}
	if err != nil || !ok {
		return "", "", nil, false, err
	}
	db.logger.Info("device away", "dev", dev)
	return strconv.Itoa(n), label, others, true, nil
}

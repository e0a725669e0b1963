package main

// What the admin listener reads of the user database (adminsite_members.go):
// copies of members' records, listed or one at a time, and the devices that
// queue keys name. Nothing here writes. db.mu is held only to copy the maps'
// entries out; the records themselves are published and immutable, and read
// without a lock.

import (
	"slices"
	"strconv"
	"strings"
	"time"
)

// memberInfo is an operator's view of a member: a copy of its record's
// fields, the live devices only.
type memberInfo struct {
	UID         string
	Aliases     []string // regular aliases, in the order added
	OnceAliases []string // unused single-use aliases, sorted
	Blocks      []string // block list entries as given, sorted
	ReceiveOnly bool
	Devices     []memberDevice // live devices, in creation order
}

// memberDevice is one live device of a member.
type memberDevice struct {
	Num   int
	Label string
	Away  bool
	// LastLogin is when the device last logged in: exactly for a login
	// since the server started, else as recorded on disk, which is only
	// under an away policy and to a day (awayGranularity); zero when
	// neither knows.
	LastLogin time.Time
}

// Dev is the device's key, as the store's queues and qlib name it.
func (d memberDevice) Dev(uid string) string { return devKey(uid, d.Num) }

// info copies what an operator sees of r, with its devices' logins
// since the database opened.
func (db *UserDB) info(r *userRecord) memberInfo {
	m := memberInfo{
		UID:         r.UID,
		Aliases:     slices.Clone(r.Aliases),
		OnceAliases: slices.Sorted(slices.Values(r.OnceAliases)),
		ReceiveOnly: r.ReceiveOnly,
	}
	for _, b := range r.Blocks {
		m.Blocks = append(m.Blocks, b.By)
	}
	slices.Sort(m.Blocks)
	for _, d := range r.Devices {
		if !d.Defunct {
			m.Devices = append(m.Devices, db.deviceInfo(r.UID, d))
		}
	}
	return m
}

// deviceInfo copies what an operator sees of uid's device d.
func (db *UserDB) deviceInfo(uid string, d deviceRecord) memberDevice {
	last := d.LastLogin
	if t, ok := db.logins.Load(devKey(uid, d.Num)); ok && t.(time.Time).After(last) {
		last = t.(time.Time)
	}
	return memberDevice{Num: d.Num, Label: d.Label, Away: d.Away, LastLogin: last}
}

// matches reports whether match is a substring of r's uid or of one of its
// regular aliases. Single-use aliases are not searched: each is an address
// handed to one person, not a name the member goes by.
func (r *userRecord) matches(match string) bool {
	if strings.Contains(r.UID, match) {
		return true
	}
	return slices.ContainsFunc(r.Aliases, func(a string) bool { return strings.Contains(a, match) })
}

// Members returns the members whose uid or a regular alias contains match
// (every member when match is empty), ordered by uid, at most limit of
// them. A member whose first write is still in progress is not one yet
// (its published record is nil).
func (db *UserDB) Members(match string, limit int) []memberInfo {
	type entry struct {
		uid string
		u   *userState
	}
	db.mu.RLock()
	users := make([]entry, 0, len(db.users))
	for uid, u := range db.users {
		users = append(users, entry{uid, u})
	}
	db.mu.RUnlock()
	slices.SortFunc(users, func(a, b entry) int { return strings.Compare(a.uid, b.uid) })
	var out []memberInfo
	for _, e := range users {
		if len(out) >= limit {
			break
		}
		if rec := e.u.rec.Load(); rec != nil && rec.matches(match) {
			out = append(out, db.info(rec))
		}
	}
	return out
}

// Member returns the member named by uid or regular alias, or false.
func (db *UserDB) Member(name string) (memberInfo, bool) {
	_, rec := db.lookup(name)
	if rec == nil {
		uid, ok := db.AliasUID(name)
		if !ok {
			return memberInfo{}, false
		}
		if _, rec = db.lookup(uid); rec == nil {
			return memberInfo{}, false
		}
	}
	return db.info(rec), true
}

// MemberGroups returns the gids of the groups uid has joined, sorted. It
// reads every group's record: for an operator's request, not a member's.
func (db *UserDB) MemberGroups(uid string) []string {
	db.mu.RLock()
	groups := make([]*groupState, 0, len(db.groups))
	for _, g := range db.groups {
		groups = append(groups, g)
	}
	db.mu.RUnlock()
	var gids []string
	for _, g := range groups {
		rec := g.rec.Load()
		if rec == nil {
			continue
		}
		if i := rec.member(uid); i >= 0 && rec.Members[i].Status == memberJoined {
			gids = append(gids, rec.GID)
		}
	}
	slices.Sort(gids)
	return gids
}

// DeviceOf returns the member and the live device that the key dev names,
// or false: a device retired since its queue was listed, or a key that is
// not a device's.
func (db *UserDB) DeviceOf(dev string) (uid string, d memberDevice, ok bool) {
	uid, num, ok := splitDevKey(dev)
	if !ok {
		return "", memberDevice{}, false
	}
	_, rec := db.lookup(uid)
	if rec == nil {
		return "", memberDevice{}, false
	}
	i := slices.IndexFunc(rec.Devices, func(d deviceRecord) bool { return d.Num == num && !d.Defunct })
	if i < 0 {
		return "", memberDevice{}, false
	}
	return uid, db.deviceInfo(uid, rec.Devices[i]), true
}

// splitDevKey returns the member and the device number of a device key
// (devKey), or false for a string that is not one.
func splitDevKey(dev string) (uid string, num int, ok bool) {
	uid, numStr, cut := strings.Cut(dev, ".")
	num, err := strconv.Atoi(numStr)
	if !cut || err != nil || devKey(uid, num) != dev {
		return "", 0, false
	}
	return uid, num, true
}

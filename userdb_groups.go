package main

// The groups' side of the database: invitations (which create a group),
// joins, renames and drops, the member lists that group posts fan out to,
// and fixture groups.

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"mnm/qlib"
)

// ErrGroupExists refuses CreateGroupFixture for a gid that is already a group.
var ErrGroupExists = errors.New("userdb: group exists")

// ErrGroupAct refuses a GroupEdit action other than qlib's. qlib's
// header parser refuses unknown actions first, so no client should see it.
var ErrGroupAct = errors.New("userdb: unknown group action")

// ownsAlias reports whether alias is one of uid's aliases. An alias, once
// durable, never changes owner; it is removed only by DropAlias, which makes
// it stop resolving before it rewrites any group, so a check made with a
// group's write lock held stays true until that lock is released.
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
	invitee, once, ok := db.RecipientUID(to)
	if !ok {
		return qlib.GroupChange{}, qlib.ErrAliasUnknown
	}
	// A single-use to is consumed once every check has passed, right
	// before the group's record is written (with the group's write lock
	// held, then the invitee's: the one place two write locks nest).
	// Consumed first, so that a crash between the two writes leaves the
	// alias spent and no invitation, never an invitation through an alias
	// that is still usable.
	// Both aliases are checked again there, with the group's write lock
	// held, so that one withdrawn meanwhile (DropAlias) is never listed.
	consume := func() error {
		switch {
		case !db.ownsAlias(uid, from):
			return qlib.ErrFromNotSender
		case once:
			return db.spendOnce(invitee, to)
		case !db.ownsAlias(invitee, to):
			return qlib.ErrAliasUnknown
		}
		return nil
	}
	for {
		if g := db.lockGroup(gid); g != nil {
			change, err := db.invite(g, uid, invitee, to, consume)
			g.wmu.Unlock()
			change.Once = once && err == nil
			if err == nil {
				db.logger.Info("group invite", "gid", gid, "uid", uid, "invitee", invitee)
			}
			return change, err
		}
		change, err := db.createGroup(uid, gid, from, invitee, to, consume)
		if err != ErrGroupExists {
			change.Once = once && err == nil
			return change, err
		}
		// Another invite created gid after lockGroup looked; invite into
		// it like any existing group.
	}
}

// invite adds invitee to the existing group g, as GroupInvite's sender uid,
// calling consume once the invitation is sure to be accepted. g.wmu is held.
func (db *UserDB) invite(g *groupState, uid, invitee, to string, consume func() error) (qlib.GroupChange, error) {
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
	if err := consume(); err != nil {
		return qlib.GroupChange{}, err
	}
	if err := db.saveGroup(g, rec); err != nil {
		return qlib.GroupChange{}, err
	}
	return qlib.GroupChange{Alias: to, Invitee: invitee, Notify: rec.joined()}, nil
}

// createGroup creates gid with uid joined under from and invitee invited
// under to, calling consume once the creation is sure to be accepted.
// ErrGroupExists if gid became a group meanwhile.
func (db *UserDB) createGroup(uid, gid, from, invitee, to string, consume func() error) (qlib.GroupChange, error) {
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
	if err := db.createGroupRecord(rec, consume); err != nil {
		return qlib.GroupChange{}, err
	}
	db.logger.Info("group created", "gid", gid, "uid", uid, "invitee", invitee)
	return qlib.GroupChange{Alias: to, Invitee: invitee, Notify: []string{uid}}, nil
}

// createGroupRecord writes the record of a new group. The gid is reserved in
// the shared namespace first, as a pending name, and the group listed with
// its write lock held, so that neither an alias nor another creation can
// take it, and edits wait, while the record is written. before, if not nil,
// runs once the gid is reserved, right before the write; its error undoes
// the reservation and is returned.
func (db *UserDB) createGroupRecord(rec *groupRecord, before func() error) error {
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

	var err error
	if before != nil {
		err = before()
	}
	if err == nil {
		err = writeRecord(db, rec)
	}

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
// it. An edit that changed nothing (a repeated invite, rename or open) is
// not written. g.wmu is held.
func (db *UserDB) saveGroup(g *groupState, rec *groupRecord) error {
	old := g.rec.Load()
	if slices.Equal(old.Members, rec.Members) && old.Open == rec.Open && old.OpenPost == rec.OpenPost {
		return nil
	}
	rec.Rev++
	if err := writeRecord(db, rec); err != nil {
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
	case qlib.GroupOpen, qlib.GroupOpenPost, qlib.GroupClose:
		edit = func(rec *groupRecord) (qlib.GroupChange, error) { return setOpen(rec, uid, act) }
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

// join makes the invited uid a joined member of rec, under newalias if given,
// or, when rec is open, the uid rec does not list, under newalias.
func (db *UserDB) join(rec *groupRecord, uid, newalias string) (qlib.GroupChange, error) {
	i := rec.member(uid)
	if i < 0 && rec.Open {
		return db.subscribe(rec, uid, newalias)
	}
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

// subscribe adds uid, which rec does not list, to the open group rec as a
// joined member under newalias (the "opengroup" extension). It has no alias
// to be listed under otherwise, so newalias is required. Its notice is a
// join's, under the alias it joined with.
func (db *UserDB) subscribe(rec *groupRecord, uid, newalias string) (qlib.GroupChange, error) {
	if newalias == "" {
		return qlib.GroupChange{}, qlib.ErrJoinAlias
	}
	if !db.ownsAlias(uid, newalias) {
		return qlib.GroupChange{}, qlib.ErrNewAliasNotOwn
	}
	// Aliases are never shared, and uid is not listed, so no member is
	// listed under newalias.
	if len(rec.Members) >= db.groupLimit {
		return qlib.GroupChange{}, qlib.ErrGroupFull
	}
	rec.Members = append(rec.Members, memberRecord{UID: uid, Alias: newalias, Status: memberJoined})
	return qlib.GroupChange{Alias: newalias, Notify: rec.joined()}, nil
}

// setOpen has the joined uid open (act GroupOpen or GroupOpenPost) or close
// rec (the "opengroup" extension).
func setOpen(rec *groupRecord, uid string, act qlib.GroupAct) (qlib.GroupChange, error) {
	i := rec.member(uid)
	if i < 0 || rec.Members[i].Status != memberJoined {
		return qlib.GroupChange{}, qlib.ErrNotMember
	}
	rec.Open = act != qlib.GroupClose
	rec.OpenPost = act == qlib.GroupOpenPost
	return qlib.GroupChange{Alias: rec.Members[i].Alias, Notify: rec.joined()}, nil
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
// post from uid, which must be joined or invited, or unlisted in a group open
// for posting.
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
	switch i := rec.member(uid); {
	case i < 0 && rec.OpenPost:
		// Anyone may post to it (the "opengroup" extension); a barred
		// member, being listed, may not.
	case i < 0 || rec.Members[i].Status == memberBarred:
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
	if err := db.createGroupRecord(rec, nil); err != nil {
		return err
	}
	db.logger.Info("fixture group created", "gid", gid, "members", len(members))
	return nil
}

package main

// The users' side of the database: registration and fixtures, login, and
// the changes a member makes to its own record (devices and aliases).

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"mnm/qlib"
	"mnm/qlib/tmtp"
)

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

// Register creates a user with one device labelled label, keeping of claims
// (the verified sign-up claims, or nil) what keptClaims keeps in the user's
// record. qlib.ErrIdentityUsed when the identity the claims name already
// has as many accounts as UserDBOptions.AccountsPerIdentity allows.
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
		nodeids, err := db.create(uid, []string{label}, nil, claims, db.receiveOnly)
		if errors.Is(err, ErrUserExists) {
			continue // 2^-160 per existing user; retry rather than reason about it
		}
		if err != nil {
			return "", "", "", err
		}
		db.logger.Info("user registered", "uid", uid)
		dev = devKey(uid, 0)
		db.logins.Store(dev, db.now().UTC()) // registering logs the device in
		return uid, nodeids[0], dev, nil
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
	nodeids, err = db.create(uid, labels, dedup(aliases), nil, false)
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
func (db *UserDB) create(uid string, labels, aliases []string, claims map[string]any, receiveOnly bool) ([]string, error) {
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

	rec := &userRecord{UID: uid, Rev: 1, Created: db.now().UTC(), NextDevice: len(labels), Aliases: aliases, Claims: claims, ReceiveOnly: receiveOnly}
	nodeids := make([]string, len(labels))
	for i, l := range labels {
		var d deviceRecord
		d, nodeids[i] = db.newDevice(uid, i, l)
		rec.Devices = append(rec.Devices, d)
	}
	err := writeRecord(db, rec)

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
	d := rec.Devices[match]
	// The away extension: a login is recorded when a policy is set, and
	// always clears an away mark (one left from a policy since turned off
	// too, which would otherwise keep the device from a later sweep).
	// A replica (UserDBOptions.Records) never writes at a login: only the
	// cluster's directory writer may write, a login must not wait for it,
	// and the away policy, the one reason to, is refused in cluster mode.
	if !db.replicated && (d.Away || db.awayAfter > 0 && (d.LastLogin.IsZero() || db.now().Sub(d.LastLogin) >= awayGranularity)) {
		if err := db.seen(uid, d.Num); err != nil {
			return "", err
		}
	}
	dev := devKey(uid, d.Num)
	db.logins.Store(dev, db.now().UTC())
	return dev, nil
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
	if err := writeRecord(db, rec); err != nil {
		return err
	}
	u.rec.Store(rec)
	return nil
}

// AddAlias gives uid the alias; see checkAlias for the rules.
// qlib.ErrTooManyAliases when uid has maxAliases aliases.
func (db *UserDB) AddAlias(uid, alias string) error {
	return db.addName(uid, alias, nameAlias, "alias added", func(rec *userRecord) (*[]string, error) {
		if len(rec.Aliases) >= maxAliases {
			return nil, qlib.ErrTooManyAliases
		}
		return &rec.Aliases, nil
	})
}

// addName gives uid the alias as a name of kind, in the record list that
// room returns (or the error it returns when the record has no room for
// one more), and logs event. Adding a name uid already has in that kind is
// a success that writes nothing.
func (db *UserDB) addName(uid, alias string, kind nameKind, event string, room func(*userRecord) (*[]string, error)) error {
	if err := checkAlias(alias, minAliasChars); err != nil {
		return err
	}
	reserved := false
	err := db.update(uid, func(rec *userRecord) error {
		db.mu.Lock()
		defer db.mu.Unlock()
		// Under the user's write lock, a name this user owns is never pending.
		if e, ok := db.names[alias]; ok && e.kind == kind && e.owner == uid {
			return errDone
		}
		list, err := room(rec)
		if err != nil {
			return err
		}
		if err := db.reserveLocked(uid, []string{alias}); err != nil {
			return err
		}
		db.names[alias].kind = kind
		reserved = true
		*list = append(*list, alias)
		return nil
	})
	db.settleReservation(uid, alias, reserved, err, event)
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

// ErrNoDevice refuses RetireDevice for a device that does not exist, and
// DropDevice also for one retired already: the text a client gets.
var ErrNoDevice = qlib.ErrNoDevice

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

// DropDevice retires uid's live device numbered num (UserEdit dropnode);
// see qlib.Directory. Only the number as devKey writes it is one: not
// "07", "+7" nor " 7", so that every device has one name. The device is
// removed from the record, not kept defunct: NextDevice already keeps its
// number from being given again, and a member adding and dropping devices
// in a loop must not grow its record, which every change rewrites whole.
func (db *UserDB) DropDevice(uid, num string) (dev, label string, err error) {
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || strconv.Itoa(n) != num {
		return "", "", ErrNoDevice
	}
	err = db.update(uid, func(rec *userRecord) error {
		i := slices.IndexFunc(rec.Devices, func(d deviceRecord) bool { return d.Num == n })
		if i < 0 || rec.Devices[i].Defunct {
			return ErrNoDevice
		}
		label = rec.Devices[i].Label
		rec.Devices = slices.Delete(rec.Devices, i, i+1)
		return nil
	})
	if errors.Is(err, qlib.ErrNoUser) {
		return "", "", ErrNoDevice
	}
	if err != nil {
		return "", "", err
	}
	dev = devKey(uid, n)
	db.logger.Info("device dropped", "dev", dev)
	return dev, label, nil
}

// Nodes returns uid's live devices with their numbers and labels; see
// qlib.Directory.
func (db *UserDB) Nodes(uid string) ([]qlib.Node, error) {
	_, rec := db.lookup(uid)
	if rec == nil {
		return nil, qlib.ErrNoUser
	}
	nodes := make([]qlib.Node, 0, len(rec.Devices))
	for _, d := range rec.Devices {
		if !d.Defunct {
			nodes = append(nodes, qlib.Node{Dev: devKey(uid, d.Num), Num: strconv.Itoa(d.Num), Label: d.Label})
		}
	}
	return nodes, nil
}

// The single-use aliases of the "aliasonce" extension (Protocol.md,
// Extensions). An unused one is in the record's OnceAliases and the name
// index as nameOnce; using or withdrawing it moves it to RetiredAliases
// (nameRetired), in one write of the owner's record, so that a crash leaves
// it either unused or spent, never both nor free.

// AddOnceAlias gives uid the single-use alias; see qlib.Directory.
func (db *UserDB) AddOnceAlias(uid, alias string) error {
	return db.addName(uid, alias, nameOnce, "single-use alias added", func(rec *userRecord) (*[]string, error) {
		if len(rec.OnceAliases) >= maxOnceAliases {
			return nil, qlib.ErrTooManyOnceAliases
		}
		if len(rec.OnceAliases)+len(rec.RetiredAliases) >= maxReservedAliases {
			return nil, qlib.ErrOnceAliasesUsedUp
		}
		return &rec.OnceAliases, nil
	})
}

// OnceAliases returns uid's unused single-use aliases, sorted.
func (db *UserDB) OnceAliases(uid string) ([]string, error) {
	_, rec := db.lookup(uid)
	if rec == nil {
		return nil, qlib.ErrNoUser
	}
	return slices.Sorted(slices.Values(rec.OnceAliases)), nil
}

// RecipientUID resolves the to of a Ping or GroupInvite: an alias, or an
// unused single-use alias (once).
func (db *UserDB) RecipientUID(alias string) (uid string, once, ok bool) {
	db.mu.RLock()
	defer db.mu.RUnlock()
	e, ok := db.names[alias]
	if !ok || e.pending || e.kind != nameAlias && e.kind != nameOnce {
		return "", false, false
	}
	return e.owner, e.kind == nameOnce, true
}

// UseAlias consumes the unused single-use alias and returns its owner; see
// qlib.Directory.
func (db *UserDB) UseAlias(alias string) (string, error) {
	db.mu.RLock()
	e := db.names[alias]
	var uid string
	if e != nil && !e.pending && e.kind == nameOnce {
		uid = e.owner
	}
	db.mu.RUnlock()
	if uid == "" {
		return "", qlib.ErrAliasUnknown
	}
	if err := db.spendOnce(uid, alias); err != nil {
		return "", err
	}
	db.logger.Info("single-use alias used", "uid", uid)
	return uid, nil
}

// DropOnceAlias withdraws uid's unused single-use alias; see qlib.Directory.
func (db *UserDB) DropOnceAlias(uid, alias string) error {
	_, rec := db.lookup(uid)
	if rec == nil {
		return qlib.ErrAliasUnknown
	}
	// A regular alias is removed only by DropAlias, which withdraws it
	// itself and calls this only for names that are not uid's aliases.
	if slices.Contains(rec.Aliases, alias) {
		return qlib.ErrNotOnceAlias
	}
	if err := db.spendOnce(uid, alias); err != nil {
		return err
	}
	db.logger.Info("single-use alias withdrawn", "uid", uid)
	return nil
}

// spendOnce moves alias from uid's unused single-use aliases to its retired
// ones, durably. qlib.ErrAliasUnknown if it is not unused (any more): the
// user's write lock orders concurrent spenders, and only the first finds
// it. The name stops resolving before the write starts, so that nobody
// is sent to it while it is being spent; a failed write restores it (and
// one that leaves the disk in doubt stops all writes until a restart).
func (db *UserDB) spendOnce(uid, alias string) error {
	spent := false
	err := db.update(uid, func(rec *userRecord) error {
		i := slices.Index(rec.OnceAliases, alias)
		if i < 0 {
			return qlib.ErrAliasUnknown
		}
		rec.OnceAliases = slices.Delete(rec.OnceAliases, i, i+1)
		rec.RetiredAliases = append(rec.RetiredAliases, alias)
		db.mu.Lock()
		db.names[alias].kind = nameRetired
		db.mu.Unlock()
		spent = true
		return nil
	})
	if errors.Is(err, qlib.ErrNoUser) {
		return qlib.ErrAliasUnknown
	}
	if err != nil && spent {
		db.mu.Lock()
		db.names[alias].kind = nameOnce
		db.mu.Unlock()
	}
	return err
}

// settleReservation ends the reservation of alias made by an update of uid's
// record, if it made one: the name is committed if the update succeeded,
// released if it failed, and the addition logged as event.
func (db *UserDB) settleReservation(uid, alias string, reserved bool, err error, event string) {
	if !reserved {
		return
	}
	db.mu.Lock()
	if err != nil {
		db.releaseLocked([]string{alias})
	} else {
		db.commitLocked([]string{alias})
	}
	db.mu.Unlock()
	if err == nil {
		db.logger.Info(event, "uid", uid)
	}
}

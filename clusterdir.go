package main

// The clustered directory (cluster/DESIGN.md, "The directory"): what a
// frontend of a clustered site gives qlib as its qlib.Directory. Every
// frontend holds every record in a local UserDB over the site's KV bucket
// (UserDBOptions.Records, userdb_kv.go), kept current by the bucket's
// watcher; reads are that UserDB's, memory reads as on a single server.
// Writes are forwarded (dirKV.Call) to the site's one directory writer,
// which runs the same method of its own UserDB, the only one that writes
// the bucket; the answer comes back with the bucket revision covering the
// writer's state, and the call returns once this frontend's watcher has
// applied it, so a member reads its own writes on any frontend.
//
// Login reads only: in cluster mode it never writes (UserDB.Login on a
// replicated database), which is why the away policy, whose logins write,
// is refused there.
//
// A forwarded write that does not reach a writer (none elected yet, one
// failing over) is refused with the transport's error, wrapped; nothing
// retries it here, since the client's request is refused and the client
// retries, as for any internal failure.
//
// The writer's errors cross the wire as codes (dirErrorCodes), so that
// errors.Is holds on the calling frontend for every sentinel error the
// methods return, with the text the writer's error had.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"mnm/cluster/dirkv"
	"mnm/qlib"
)

var _ qlib.Directory = (*clusterDirectory)(nil)

// dirCallTimeout bounds a forwarded write, from the call to the local
// watcher's applying of its revision. qlib's methods have no context; it
// outlasts a writer's failover (dirkv's lease TTL, 15 s by default, plus an
// election), after which a client waiting longer is better refused.
const dirCallTimeout = 20 * time.Second

// clusterDirectory is a frontend's directory on a clustered site: reads
// from db, writes forwarded to the writer through kv.
type clusterDirectory struct {
	db   *UserDB    // a replica: opened with Records over kv
	recs *kvRecords // db's records
	kv   dirKV
	log  *slog.Logger
}

// newClusterDirectory starts db's replication and serving: it watches the
// bucket from the revision db was loaded at, applying every record to db,
// and registers the handler that runs forwarded writes on db whenever this
// frontend is the writer. db must have been opened with
// UserDBOptions.Records = newKVRecords(kv). logger nil discards.
func newClusterDirectory(db *UserDB, kv dirKV, logger *slog.Logger) (*clusterDirectory, error) {
	recs, ok := db.records.(*kvRecords)
	if !ok || recs.kv != kv {
		return nil, errors.New("directory: the user database is not opened over this cluster's records")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &clusterDirectory{db: db, recs: recs, kv: kv, log: logger}
	if err := kv.Watch(recs.loaded, c.apply); err != nil {
		return nil, fmt.Errorf("directory: watch: %w", err)
	}
	if err := kv.Serve(c.serve); err != nil {
		return nil, fmt.Errorf("directory: serve: %w", err)
	}
	return c, nil
}

// apply installs a record the watcher delivers. A record that cannot be
// applied (corrupt, or not a record's key) is logged and skipped: the
// watcher must go on, and the writer, which checked it, holds it.
func (c *clusterDirectory) apply(r dirkv.Record) {
	if err := c.db.applyRecord(r); err != nil {
		c.log.Error("directory: record not applied", "key", r.Key, "rev", r.Rev, "err", err.Error())
	}
}

// The names of the forwarded methods, the dirKV.Call method argument.
const (
	callRegister       = "Register"
	callAddDevice      = "AddDevice"
	callDropDevice     = "DropDevice"
	callRetireDevice   = "RetireDevice"
	callAddAlias       = "AddAlias"
	callAddOnceAlias   = "AddOnceAlias"
	callUseAlias       = "UseAlias"
	callDropAlias      = "DropAlias"
	callDropOnceAlias  = "DropOnceAlias"
	callGroupInvite    = "GroupInvite"
	callGroupEdit      = "GroupEdit"
	callBlock          = "Block"
	callUnblock        = "Unblock"
	callSetReceiveOnly = "SetReceiveOnly"
)

// dirArgs are a forwarded call's arguments, the fields its method uses.
type dirArgs struct {
	UID      string         `json:"uid,omitempty"`
	Label    string         `json:"label,omitempty"`
	Claims   map[string]any `json:"claims,omitempty"`
	Num      string         `json:"num,omitempty"`
	Dev      string         `json:"dev,omitempty"`
	Alias    string         `json:"alias,omitempty"`
	GID      string         `json:"gid,omitempty"`
	From     string         `json:"from,omitempty"`
	To       string         `json:"to,omitempty"`
	NewAlias string         `json:"newalias,omitempty"`
	Name     string         `json:"name,omitempty"`
	Act      qlib.GroupAct  `json:"act,omitempty"`
	On       bool           `json:"on,omitempty"`
}

// dirReply is a forwarded call's results, the fields its method returns.
// NodeID is a device's password, in transit to the member: never logged.
type dirReply struct {
	UID     string           `json:"uid,omitempty"`
	NodeID  string           `json:"nodeid,omitempty"`
	Dev     string           `json:"dev,omitempty"`
	Label   string           `json:"label,omitempty"`
	Entry   string           `json:"entry,omitempty"`
	Changed bool             `json:"changed,omitempty"`
	Moves   []qlib.AliasMove `json:"moves,omitempty"`
	Change  qlib.GroupChange `json:"change,omitzero"`
}

// errUnknownCall refuses a forwarded method the writer does not know (a
// frontend of a newer version).
var errUnknownCall = errors.New("directory: unknown method")

// run runs method on db, the writer's database.
func (c *clusterDirectory) run(method string, a dirArgs) (r dirReply, err error) {
	db := c.db
	switch method {
	case callRegister:
		r.UID, r.NodeID, r.Dev, err = db.Register(a.Label, a.Claims)
	case callAddDevice:
		r.NodeID, r.Dev, err = db.AddDevice(a.UID, a.Label)
	case callDropDevice:
		r.Dev, r.Label, err = db.DropDevice(a.UID, a.Num)
	case callRetireDevice:
		err = db.RetireDevice(a.Dev)
	case callAddAlias:
		err = db.AddAlias(a.UID, a.Alias)
	case callAddOnceAlias:
		err = db.AddOnceAlias(a.UID, a.Alias)
	case callUseAlias:
		r.UID, err = db.UseAlias(a.Alias)
	case callDropAlias:
		r.Moves, err = db.DropAlias(a.UID, a.Alias)
	case callDropOnceAlias:
		err = db.DropOnceAlias(a.UID, a.Alias)
	case callGroupInvite:
		r.Change, err = db.GroupInvite(a.UID, a.GID, a.From, a.To)
	case callGroupEdit:
		r.Change, err = db.GroupEdit(a.UID, a.Act, a.GID, a.NewAlias, a.To)
	case callBlock:
		r.Entry, r.Changed, err = db.Block(a.UID, a.Name)
	case callUnblock:
		r.Entry, r.Changed, err = db.Unblock(a.UID, a.Name)
	case callSetReceiveOnly:
		r.Changed, err = db.SetReceiveOnly(a.UID, a.On)
	default:
		err = fmt.Errorf("%w %q", errUnknownCall, method)
	}
	return r, err
}

// serve is the writer's handler for forwarded calls (dirkv.Handler). Its
// rev covers the writer's whole state once the method has returned (the
// highest revision it has written or applied), not only the call's own
// writes: a caller that waits for it then reads on its frontend at least
// what the writer saw, so a refusal (a name taken by someone else) agrees
// with what the caller reads next. On an error, reply is its text and
// code its dirErrorCodes code.
func (c *clusterDirectory) serve(_ context.Context, method string, args []byte) ([]byte, uint64, string) {
	var a dirArgs
	var r dirReply
	err := json.Unmarshal(args, &a)
	if err != nil {
		err = fmt.Errorf("directory: %s: bad arguments: %w", method, err)
	} else {
		r, err = c.run(method, a)
	}
	rev := max(c.recs.written.Load(), c.kv.Applied())
	if err != nil {
		code := errorCode(err)
		if code == codeInternal {
			c.log.Error("directory: forwarded call failed", "method", method, "err", err.Error())
		}
		return []byte(err.Error()), rev, code
	}
	reply, err := json.Marshal(r)
	if err != nil { // a GroupChange or AliasMove always encodes
		return []byte(err.Error()), rev, codeInternal
	}
	return reply, rev, ""
}

// forward runs method on the writer with args a, then waits until this
// frontend has applied the writer's state, whatever the answer.
func (c *clusterDirectory) forward(method string, a dirArgs) (dirReply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dirCallTimeout)
	defer cancel()
	args, err := json.Marshal(a)
	if err != nil {
		return dirReply{}, fmt.Errorf("directory: %s: encode: %w", method, err)
	}
	reply, rev, code, err := c.kv.Call(ctx, method, args)
	if err != nil {
		return dirReply{}, fmt.Errorf("directory: %s: %w", method, err)
	}
	if rev > 0 {
		// The write is done; a frontend that cannot show it to its
		// member says so rather than answer as if it could.
		if err := c.kv.WaitApplied(ctx, rev); err != nil {
			return dirReply{}, fmt.Errorf("directory: %s: wait for revision %d: %w", method, rev, err)
		}
	}
	if code != "" {
		return dirReply{}, codeError(code, string(reply))
	}
	var r dirReply
	if err := json.Unmarshal(reply, &r); err != nil {
		return dirReply{}, fmt.Errorf("directory: %s: bad reply: %w", method, err)
	}
	return r, nil
}

// Error codes. codeInternal is every error that is none of
// dirErrorCodes': the caller gets errDirInternal with its text.
const codeInternal = "internal"

// errDirInternal is what a forwarded call's unknown error (an I/O error on
// the writer, a failed database) is on the calling frontend, with the
// writer's text.
var errDirInternal = errors.New("directory writer failed")

// dirErrorCodes are the errors a forwarded write can return that callers
// tell apart, each with its stable code. Codes cross between frontends of
// different versions during an upgrade: never change or reuse one. Order
// matters where one error wraps another: ErrAliasLong, which wraps
// qlib.ErrAliasInvalid, comes first.
var dirErrorCodes = []struct {
	code string
	err  error
}{
	{"alias-long", ErrAliasLong},
	{"login-failed", qlib.ErrLoginFailed},
	{"no-user", qlib.ErrNoUser},
	{"label-invalid", qlib.ErrLabelInvalid},
	{"too-many-devices", qlib.ErrTooManyDevices},
	{"too-many-aliases", qlib.ErrTooManyAliases},
	{"alias-short", qlib.ErrAliasShort},
	{"alias-invalid", qlib.ErrAliasInvalid},
	{"alias-taken", qlib.ErrAliasTaken},
	{"alias-unknown", qlib.ErrAliasUnknown},
	{"from-not-sender", qlib.ErrFromNotSender},
	{"newalias-not-own", qlib.ErrNewAliasNotOwn},
	{"gid-short", qlib.ErrGidShort},
	{"gid-invalid", qlib.ErrGidInvalid},
	{"gid-taken", qlib.ErrGidTaken},
	{"no-group", qlib.ErrNoGroup},
	{"not-member", qlib.ErrNotMember},
	{"already-member", qlib.ErrAlreadyMember},
	{"not-invited", qlib.ErrNotInvited},
	{"group-full", qlib.ErrGroupFull},
	{"too-many-once-aliases", qlib.ErrTooManyOnceAliases},
	{"once-aliases-used-up", qlib.ErrOnceAliasesUsedUp},
	{"not-once-alias", qlib.ErrNotOnceAlias},
	{"last-alias", qlib.ErrLastAlias},
	{"reserved-full", qlib.ErrReservedFull},
	{"block-self", qlib.ErrBlockSelf},
	{"too-many-blocks", qlib.ErrTooManyBlocks},
	{"no-device", qlib.ErrNoDevice}, // also the root package's ErrNoDevice
	{"drop-self", qlib.ErrDropSelf},
	{"join-alias", qlib.ErrJoinAlias},
	{"identity-used", qlib.ErrIdentityUsed},
	{"closed", ErrClosed},
	// Before the errors it wraps: the writer's earlier failure.
	{"failed", ErrFailed},
	{"user-exists", ErrUserExists},
	{"group-exists", ErrGroupExists},
	{"group-act", ErrGroupAct},
	{"unknown-call", errUnknownCall},
	// The writer's record write refused: nothing changed.
	{"not-writer", dirkv.ErrNotWriter},
	{"conflict", dirkv.ErrConflict},
	// The writer's record write may have happened: the writer refuses
	// writes from then on.
	{"in-doubt", dirkv.ErrInDoubt},
}

// errorCode is err's code: that of the first of dirErrorCodes it is, else
// codeInternal.
func errorCode(err error) string {
	for _, e := range dirErrorCodes {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	return codeInternal
}

// codeError is the error a forwarded call's code and text stand for: the
// sentinel itself when the text is its own (what a client is shown is
// exactly the text the writer's database gave), else an error with the
// writer's text that is the sentinel for errors.Is.
func codeError(code, text string) error {
	sentinel := errDirInternal
	for _, e := range dirErrorCodes {
		if e.code == code {
			sentinel = e.err
			break
		}
	}
	if text == sentinel.Error() {
		return sentinel
	}
	return &remoteError{text: text, err: sentinel}
}

// remoteError is an error of the writer's, its text as the writer gave it.
type remoteError struct {
	text string
	err  error
}

func (e *remoteError) Error() string { return e.text }
func (e *remoteError) Unwrap() error { return e.err }

// The qlib.Directory reads: the local replica's.

func (c *clusterDirectory) Login(uid string, node []byte) (string, error) {
	return c.db.Login(uid, node) // writes nothing on a replica
}
func (c *clusterDirectory) Claims(uid string) (map[string]any, error) { return c.db.Claims(uid) }
func (c *clusterDirectory) Devices(uid string) ([]string, error)      { return c.db.Devices(uid) }
func (c *clusterDirectory) Nodes(uid string) ([]qlib.Node, error)     { return c.db.Nodes(uid) }
func (c *clusterDirectory) AliasUID(alias string) (string, bool)      { return c.db.AliasUID(alias) }
func (c *clusterDirectory) OnceAliases(uid string) ([]string, error)  { return c.db.OnceAliases(uid) }
func (c *clusterDirectory) RecipientUID(alias string) (string, bool, bool) {
	return c.db.RecipientUID(alias)
}
func (c *clusterDirectory) GroupMembers(uid, gid string) ([]string, error) {
	return c.db.GroupMembers(uid, gid)
}
func (c *clusterDirectory) Blocks(uid string) ([]string, error) { return c.db.Blocks(uid) }
func (c *clusterDirectory) Blocked(recipient, sender string) bool {
	return c.db.Blocked(recipient, sender)
}
func (c *clusterDirectory) ReceiveOnly(uid string) bool { return c.db.ReceiveOnly(uid) }

// The writes, qlib.Directory's and the admin side's: forwarded.

func (c *clusterDirectory) Register(label string, claims map[string]any) (uid, nodeid, dev string, err error) {
	r, err := c.forward(callRegister, dirArgs{Label: label, Claims: claims})
	if err != nil {
		return "", "", "", err
	}
	// Registering logs the device in, as UserDB.Register notes on the
	// writer; the operator's view of logins is this frontend's.
	c.db.logins.Store(r.Dev, c.db.now().UTC())
	return r.UID, r.NodeID, r.Dev, nil
}

func (c *clusterDirectory) AddDevice(uid, label string) (nodeid, dev string, err error) {
	r, err := c.forward(callAddDevice, dirArgs{UID: uid, Label: label})
	return r.NodeID, r.Dev, err
}

func (c *clusterDirectory) DropDevice(uid, num string) (dev, label string, err error) {
	r, err := c.forward(callDropDevice, dirArgs{UID: uid, Num: num})
	return r.Dev, r.Label, err
}

// RetireDevice is UserDB.RetireDevice on the writer.
func (c *clusterDirectory) RetireDevice(dev string) error {
	_, err := c.forward(callRetireDevice, dirArgs{Dev: dev})
	return err
}

func (c *clusterDirectory) AddAlias(uid, alias string) error {
	_, err := c.forward(callAddAlias, dirArgs{UID: uid, Alias: alias})
	return err
}

func (c *clusterDirectory) AddOnceAlias(uid, alias string) error {
	_, err := c.forward(callAddOnceAlias, dirArgs{UID: uid, Alias: alias})
	return err
}

func (c *clusterDirectory) UseAlias(alias string) (string, error) {
	r, err := c.forward(callUseAlias, dirArgs{Alias: alias})
	return r.UID, err
}

func (c *clusterDirectory) DropAlias(uid, alias string) ([]qlib.AliasMove, error) {
	r, err := c.forward(callDropAlias, dirArgs{UID: uid, Alias: alias})
	return r.Moves, err
}

// DropOnceAlias is UserDB.DropOnceAlias on the writer.
func (c *clusterDirectory) DropOnceAlias(uid, alias string) error {
	_, err := c.forward(callDropOnceAlias, dirArgs{UID: uid, Alias: alias})
	return err
}

func (c *clusterDirectory) GroupInvite(uid, gid, from, to string) (qlib.GroupChange, error) {
	r, err := c.forward(callGroupInvite, dirArgs{UID: uid, GID: gid, From: from, To: to})
	return r.Change, err
}

func (c *clusterDirectory) GroupEdit(uid string, act qlib.GroupAct, gid, newalias, to string) (qlib.GroupChange, error) {
	r, err := c.forward(callGroupEdit, dirArgs{UID: uid, Act: act, GID: gid, NewAlias: newalias, To: to})
	return r.Change, err
}

func (c *clusterDirectory) Block(uid, name string) (entry string, added bool, err error) {
	r, err := c.forward(callBlock, dirArgs{UID: uid, Name: name})
	return r.Entry, r.Changed, err
}

func (c *clusterDirectory) Unblock(uid, name string) (entry string, removed bool, err error) {
	r, err := c.forward(callUnblock, dirArgs{UID: uid, Name: name})
	return r.Entry, r.Changed, err
}

// SetReceiveOnly is UserDB.SetReceiveOnly on the writer (the operator's
// promote and demote).
func (c *clusterDirectory) SetReceiveOnly(uid string, on bool) (changed bool, err error) {
	r, err := c.forward(callSetReceiveOnly, dirArgs{UID: uid, On: on})
	return r.Changed, err
}

package qlib

import (
	"context"
	"errors"
	"fmt"
)

// Directory is the member database as qlib sees it: users, their devices and
// aliases. The server's userdb implements it. All methods are safe for
// concurrent use and make their changes durable before returning.
//
// Errors whose text a client may see are the Err* values below; any other error
// is an internal failure (an I/O error, a corrupt record) that qlib logs and
// reports to the client as a generic failure.
type Directory interface {
	// Register creates a user with one device labelled label and returns the
	// new uid, the device's nodeid (its password, which the directory keeps
	// only as a one-way derivation) and the device's key. claims are the
	// verified third-party sign-up claims, kept with the user (nil when the
	// site has no third-party sign-up); the directory may keep only the
	// issuer and subject. ErrLabelInvalid; ErrIdentityUsed when the
	// identity the claims name (iss and sub) has as many accounts as the
	// directory allows, and then no user is created.
	Register(label string, claims map[string]any) (uid, nodeid, dev string, err error)

	// Login checks the decoded nodeid of one of uid's devices, in constant
	// time, and returns that device's key. ErrLoginFailed for an unknown uid or
	// a wrong or defunct nodeid.
	Login(uid string, node []byte) (dev string, err error)

	// Claims returns the sign-up claims kept by Register (nil if none).
	// ErrNoUser.
	Claims(uid string) (map[string]any, error)

	// Devices returns the keys of uid's live devices, in creation order.
	// ErrNoUser if uid does not exist.
	Devices(uid string) ([]string, error)

	// AddDevice gives uid a new device labelled label and returns its nodeid
	// and key. ErrTooManyDevices, ErrLabelInvalid.
	AddDevice(uid, label string) (nodeid, dev string, err error)

	// Nodes returns uid's live devices in creation order, each with its
	// number and label (the "revoke" extension's listnode). ErrNoUser.
	Nodes(uid string) ([]Node, error)

	// DropDevice retires uid's live device numbered num, the decimal
	// number Nodes gives (the "revoke" extension's dropnode), and returns
	// its key and label. When it returns the change is durable: the device
	// can no longer log in, Devices and Nodes no longer list it, and its
	// number is never reused. ErrNoDevice when num is not the number of one
	// of uid's live devices written as Nodes writes it: a retired device's,
	// an unknown one, "07", "+7" or anything but a decimal number.
	DropDevice(uid, num string) (dev, label string, err error)

	// AddAlias gives uid the alias. Adding an alias uid already has is a no-op.
	// ErrAliasShort, ErrAliasInvalid, ErrAliasTaken (also when a group has
	// that id: aliases and group ids share one namespace), ErrTooManyAliases
	// (the directory's bound on aliases per user is reached).
	AddAlias(uid, alias string) error

	// AliasUID resolves a user's alias (not a group id). A single-use alias
	// is not one: it is only an address to reach its owner by (see
	// RecipientUID), never an alias the owner sends from or is listed under.
	AliasUID(alias string) (uid string, ok bool)

	// AddOnceAlias gives uid the single-use alias (the "aliasonce"
	// extension, Protocol.md): an alias that resolves, through
	// RecipientUID, until UseAlias consumes it, and then for nobody, while
	// staying reserved for ever. Adding one uid already has unused is a
	// no-op. The name rules and errors of AddAlias apply (a name that is
	// one of uid's regular aliases is ErrAliasTaken), plus
	// ErrTooManyOnceAliases (the bound on unused single-use aliases per
	// user is reached) and ErrOnceAliasesUsedUp (the bound on the aliases a
	// user's record keeps reserved is reached).
	AddOnceAlias(uid, alias string) error

	// OnceAliases returns uid's unused single-use aliases, sorted.
	// ErrNoUser.
	OnceAliases(uid string) ([]string, error)

	// RecipientUID resolves the to of a Ping or GroupInvite: a user's alias
	// (once false), or an unused single-use alias (once true), which the
	// request must consume with UseAlias (a Ping) or GroupInvite before it
	// stores anything. ok is false for anything else: an unknown, retired
	// or used alias, or a group id.
	RecipientUID(alias string) (uid string, once, ok bool)

	// UseAlias consumes the unused single-use alias and returns its owner:
	// from then on it resolves for nobody and stays reserved. Of concurrent
	// calls for one alias exactly one succeeds; the others, and a call for
	// anything that is not an unused single-use alias, get ErrAliasUnknown.
	// The change is durable when it returns, whatever the caller then
	// manages to store.
	UseAlias(alias string) (uid string, err error)

	// DropAlias withdraws uid's alias: an unused single-use one (the
	// "aliasonce" extension) or a regular one (the "dropalias" extension).
	// Either becomes reserved for ever and resolves for nobody. Every group
	// that lists uid under a regular one lists it under uid's oldest
	// remaining alias instead, and moves reports those groups (nil for a
	// single-use alias); the change is durable when it returns.
	// ErrLastAlias when alias is uid's only regular alias; ErrReservedFull
	// when uid's record holds MaxReservedAliases reserved aliases;
	// ErrAliasUnknown for any other name that is not uid's (another
	// user's, a used or withdrawn one, an unknown name), so that the answer
	// reveals nothing about others.
	DropAlias(uid, alias string) (moves []AliasMove, err error)

	// GroupInvite has uid, under its alias from, invite the user with alias to
	// into group gid, creating the group (with uid joined under from) when it
	// does not exist. The invitee is listed under to until it joins. to may
	// be an unused single-use alias (RecipientUID): once every check has
	// passed, GroupInvite consumes it (as UseAlias) before the group
	// changes, and says so in GroupChange.Once; a refused invitation leaves
	// it unused.
	// ErrFromNotSender, ErrAliasUnknown (to), ErrGidShort, ErrGidInvalid,
	// ErrGidTaken (a new gid equal to an alias), ErrNotMember (uid is not a
	// joined member of an existing group), ErrAlreadyMember (to is joined),
	// ErrGroupFull (the directory's bound on members is reached).
	// Inviting an invited or barred user again is accepted.
	GroupInvite(uid, gid, from, to string) (GroupChange, error)

	// GroupEdit applies act to uid's membership of gid:
	//   GroupJoin: an invited uid becomes joined, under newalias (one of its
	//     own aliases) when given. ErrNotInvited, ErrNewAliasNotOwn. In an
	//     open group (the "opengroup" extension) a uid the group does not
	//     list joins too, under newalias, which it must give
	//     (ErrJoinAlias); a barred uid is refused as in a closed group.
	//     ErrGroupFull.
	//   GroupAlias: a joined uid is listed under newalias (its own) from now
	//     on. ErrNotMember, ErrNewAliasNotOwn.
	//   GroupDrop: to is uid's own listing alias: uid leaves (back to
	//     invited). Otherwise uid must be joined and to names another member,
	//     who is barred. ErrNotMember, ErrAliasUnknown.
	//   GroupOpen, GroupOpenPost, GroupClose (the "opengroup" extension): a
	//     joined uid opens the group to joins without invitation, and with
	//     GroupOpenPost to posts from users it does not list; or closes it
	//     to both. ErrNotMember. GroupChange.Alias is uid's listing alias.
	// ErrNoGroup for an unknown gid.
	GroupEdit(uid string, act GroupAct, gid, newalias, to string) (GroupChange, error)

	// GroupMembers returns the uids of gid's joined members, for a post from
	// uid, who must be a member (joined or invited), or, when gid is open
	// for posting (GroupOpenPost), a user the group does not list; a barred
	// uid never. ErrNoGroup, ErrNotMember.
	GroupMembers(uid, gid string) ([]string, error)

	// Block adds the member name resolves to, when uid calls it, to uid's
	// block list (the "block" extension, Protocol.md): name is a uid, or a
	// user's alias (AliasUID: a single-use alias is not one). The entry
	// keeps name as given, and entry returns it; added is false when the
	// member was blocked already (under whatever name), and entry is then
	// the name it is listed under. The change is durable when it returns.
	// ErrNoUser when name has the form of a uid and is no user,
	// ErrAliasUnknown when it is no user and no alias otherwise,
	// ErrBlockSelf when it names uid, ErrTooManyBlocks when the list holds
	// MaxBlocks entries or the new one would take its listing (the
	// listblock reply) past MaxBlockListBytes.
	Block(uid, name string) (entry string, added bool, err error)

	// Unblock removes from uid's block list the entry listed as name, or
	// else the entry of the member name resolves to (as for Block), and
	// returns the name the removed entry was listed under. removed is false,
	// and err nil, when there is no such entry, whatever name is.
	Unblock(uid, name string) (entry string, removed bool, err error)

	// Blocks returns the names of uid's block list entries, as given to
	// Block, sorted. ErrNoUser.
	Blocks(uid string) ([]string, error)

	// Blocked reports whether recipient blocks sender: whether nothing
	// sender sends (posts, notifications, pings, invitations, presence)
	// may reach recipient's devices. It runs for every recipient of every
	// post, so it is a lookup that does not allocate nor wait for a record
	// write. It may be called with the Server's lock held (presence), so it
	// must not call back into the Server. False for unknown uids.
	Blocked(recipient, sender string) bool

	// ReceiveOnly reports whether uid is a receive-only member (the
	// "receiveonly" extension, Protocol.md): one that may post, ping and
	// invite only as Config.MayReach allows. It runs for every Post,
	// PostNotify, Ping and GroupInvite, so it is a lookup that does not
	// allocate nor wait for a record write. False for unknown uids.
	ReceiveOnly(uid string) bool
}

// Node is one of a member's live devices, as Directory.Nodes lists it.
type Node struct {
	Dev   string // its key, the device's name in qlib and the store
	Num   string // its number in decimal, unique to the member: what dropnode names
	Label string // the label it was created with (newnode)
}

// GroupAct is a GroupEdit action (SPEC §4 op 6, "act").
type GroupAct string

const (
	GroupJoin  GroupAct = "join"
	GroupAlias GroupAct = "alias"
	GroupDrop  GroupAct = "drop"
	// The "opengroup" extension's. GroupOpenPost is GroupEdit act "open"
	// with the post flag: no client sends it as an act.
	GroupOpen     GroupAct = "open"
	GroupOpenPost GroupAct = "open post"
	GroupClose    GroupAct = "close"
)

// GroupChange describes a group change for the member notices qlib stores
// (SPEC §4: {"op":"member","act",...,"alias","newalias"?}).
type GroupChange struct {
	// Alias is the affected member's alias as listed before the change:
	// the invitee's for an invite, the joiner's, the renamed member's, or
	// the dropped member's.
	Alias string
	// NewAlias is the alias listed from now on, for GroupAlias, and for
	// GroupJoin when the member joined under another alias; else "".
	NewAlias string
	// Invitee is the invited user's uid (GroupInvite only).
	Invitee string
	// Once is set when GroupInvite's to was a single-use alias, which the
	// invitation has consumed.
	Once bool
	// Notify are the uids that receive the member notice: the joined
	// members after the change, plus the dropped user for GroupDrop.
	Notify []string
}

// AliasMove is a group relisted by DropAlias: the member was listed under
// Alias, and is listed under NewAlias from now on; Notify are the group's
// joined members, who receive the notice of a GroupEdit alias.
type AliasMove struct {
	Gid, Alias, NewAlias string
	Notify               []string
}

// Bounds of names that a Directory checks and its errors state (SPEC §4 ops
// 1, 3 and 5, §7). They live here, with the errors, so that the text a
// client reads and the check that refused it cannot disagree.
const (
	// MaxLabelBytes bounds a device label, which is stored in the user's
	// record and echoed to every device of the user: 200 bytes is far more
	// than any human-chosen name needs and keeps a record of a hundred
	// devices small enough to rewrite on every change.
	MaxLabelBytes = 200

	// MinAliasChars and MinGidChars are the shortest alias a member may
	// claim and the shortest gid a new group may have, counted in
	// characters, not bytes.
	MinAliasChars = 8
	MinGidChars   = 8

	// MaxOnceAliases bounds a member's unused single-use aliases. Each is
	// kept in the member's record, which is rewritten whole on every
	// change, and each holds a name nobody else may claim; a member hands
	// them out a few at a time, so 100 waiting is plenty. Separate from the
	// 100 regular aliases.
	MaxOnceAliases = 100
	// MaxReservedAliases bounds the used and withdrawn single-use aliases
	// (and other retired aliases) a member's record keeps reserved, together
	// with the unused ones: each used alias stays in the record for ever,
	// so without it a member could grow its record without end by creating
	// and withdrawing aliases. At 200 octets each the record stays near
	// 200 KB; a member who reaches it creates no more single-use aliases.
	MaxReservedAliases = 1000

	// MaxBlocks bounds a member's block list (the "block" extension). The
	// list is kept in the member's record, rewritten whole on every change,
	// and each entry holds a uid and the name given; with
	// MaxBlockListBytes on the names, a full list adds under 100 KB to the
	// record. A member blocks a few senders, or some dozens after a wave of
	// abuse; a thousand leaves room for that while keeping the record
	// small.
	MaxBlocks = 1000
	// MaxBlockListBytes bounds the block list as the listblock ack carries
	// it: "block":[...] as written in the frame, JSON escapes included. The
	// whole list goes in one header (at most 65,535 octets, SPEC §1) beside
	// the request's id, which may take 24 KB escaped (4,096 octets of "<",
	// six octets each); 40,000 octets holds a thousand uids, or some 195
	// aliases of 200 plain octets, so only a list of long names reaches it
	// before MaxBlocks.
	MaxBlockListBytes = 40000

	// MaxListedLabelBytes bounds a device label as the listnode ack (the
	// "revoke" extension) writes it, JSON escapes included; a longer one is
	// cut to fit. The ack lists up to 100 devices in one header (at most
	// 65,535 octets, SPEC §1) beside the request's id, which may take 24 KB
	// escaped; a label of MaxLabelBytes may take 1,200 escaped (JSON writes
	// "<" in six octets), so a hundred whole labels cannot always fit. At
	// 300 a hundred entries take under 34,000 octets, and a label is cut
	// only when more than 20 of its characters are escaped (<, >, &,
	// control characters, U+2028, U+2029).
	MaxListedLabelBytes = 300
)

// Client-visible errors of a Directory; their text goes into ack errors and
// registered replies as is.
var (
	ErrLoginFailed    = errors.New("login failed")
	ErrNoUser         = errors.New("no such user")
	ErrLabelInvalid   = fmt.Errorf("newnode must be 1 to %d bytes of UTF-8", MaxLabelBytes)
	ErrTooManyDevices = errors.New("too many devices")
	ErrTooManyAliases = errors.New("too many aliases")
	ErrAliasShort     = fmt.Errorf("newalias must be %d+ characters", MinAliasChars)
	ErrAliasInvalid   = errors.New("newalias must be printable characters")
	ErrAliasTaken     = errors.New("newalias already taken")
	ErrAliasUnknown   = errors.New("alias not found")
	ErrFromNotSender  = errors.New("from must identify sender")
	ErrNewAliasNotOwn = errors.New("newalias must identify sender")
	ErrGidShort       = fmt.Errorf("gid must be %d+ characters", MinGidChars)
	ErrGidInvalid     = errors.New("gid must be printable characters")
	ErrGidTaken       = errors.New("gid already taken")
	ErrNoGroup        = errors.New("group not found")
	ErrNotMember      = errors.New("not a member of the group")
	ErrAlreadyMember  = errors.New("already a member of the group")
	ErrNotInvited     = errors.New("not invited to the group")
	ErrGroupFull      = errors.New("group is full")
	// The "aliasonce" extension's (Protocol.md, Extensions).
	ErrTooManyOnceAliases = errors.New("too many single-use aliases")
	ErrOnceAliasesUsedUp  = fmt.Errorf("single-use aliases used up: %d reserved", MaxReservedAliases)
	ErrNotOnceAlias       = errors.New("dropalias: not a single-use alias")
	// The "dropalias" extension's.
	ErrLastAlias    = errors.New("dropalias: cannot drop the last alias")
	ErrReservedFull = fmt.Errorf("dropalias: %d aliases reserved already", MaxReservedAliases)
	// The "block" extension's.
	ErrBlockSelf     = errors.New("block: cannot block yourself")
	ErrTooManyBlocks = errors.New("block list full")
	// The "revoke" extension's.
	ErrNoDevice = errors.New("dropnode: no such device")
	ErrDropSelf = errors.New("dropnode: cannot drop this device")
	// The "opengroup" extension's.
	ErrJoinAlias = errors.New("newalias required to join an open group")
	// ErrIdentityUsed is logged, not sent: a refused Register gets the
	// quit "register failure" (SPEC §2, whose quit reasons are exact
	// strings that clients match).
	ErrIdentityUsed = errors.New("sign-up identity already has an account")
)

// clientErrors are the errors whose text a client may see.
var clientErrors = []error{
	ErrLoginFailed, ErrNoUser, ErrLabelInvalid, ErrTooManyDevices,
	ErrAliasShort, ErrAliasInvalid, ErrAliasTaken, ErrAliasUnknown,
	ErrFromNotSender, ErrNewAliasNotOwn, ErrGidShort, ErrGidInvalid,
	ErrGidTaken, ErrNoGroup, ErrNotMember, ErrAlreadyMember, ErrNotInvited,
	ErrGroupFull, ErrTooManyAliases,
	ErrTooManyOnceAliases, ErrOnceAliasesUsedUp, ErrNotOnceAlias,
	ErrLastAlias, ErrReservedFull,
	ErrBlockSelf, ErrTooManyBlocks,
	ErrNoDevice, ErrDropSelf,
	ErrJoinAlias,
}

// TokenVerifier checks a third-party sign-up token: an OpenID Connect
// id_token from one of the site's providers (SPEC §4 op 1, §8). The server's
// oidc.go implements it.
type TokenVerifier interface {
	// Verify returns the token's verified claims, or an error when the token
	// is not valid for this site (bad signature, unknown key, wrong issuer or
	// audience, expired) or no provider's keys could be fetched.
	Verify(ctx context.Context, token string) (claims map[string]any, err error)
}

package main

// The records of the user database and the rules for what they may hold:
// what is stored for a user and for a group, the limits on what a member may
// add, and the checks that both a request and a record read from disk pass.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"mnm/qlib"
	"mnm/qlib/tmtp"
)

const (
	// uidBytes and nodeidBytes are fixed by SPEC §3: a uid is the base32 of
	// 20 random bytes (32 characters), a nodeid of 25 (200 bits, 40 characters).
	uidBytes    = 20
	nodeidBytes = 25

	// maxUIDLen bounds a uid taken from the network before it is used as a map
	// key or a file name. Generated uids have 32 characters; fixtures use
	// shorter ones; 64 leaves room without letting a client name a file longer
	// than any filesystem accepts.
	maxUIDLen = 64

	// maxLabelBytes and maxAliasBytes bound client-supplied strings that are
	// stored in a record and echoed to every device of the user. 200 bytes is
	// far more than any human-chosen name needs and keeps a record of
	// maxDevices devices small enough to rewrite on every change. The
	// label's bound is qlib's, whose error states it.
	maxLabelBytes = qlib.MaxLabelBytes
	maxAliasBytes = 200

	// maxGidBytes bounds a group id like an alias: it shares the aliases'
	// namespace, is stored in the group record and echoed in every member
	// notice. It is never a file name, so the filesystem does not bound it.
	maxGidBytes = maxAliasBytes

	// minAliasChars and minGidChars are the shortest alias a member may
	// claim and the shortest gid a new group may have (SPEC §4 ops 3 and 5,
	// §7), counted in characters, not bytes; qlib's, whose errors state
	// them. Fixtures may use shorter ones.
	minAliasChars = qlib.MinAliasChars
	minGidChars   = qlib.MinGidChars

	// maxDevices is the number of live devices a user may have (SPEC §7).
	// Defunct devices do not count.
	maxDevices = 100

	// maxAliases is the number of aliases a user may add. Every alias is
	// stored in the user's record, which is rewritten and fsynced whole on
	// every change, so without a bound one member adding aliases makes each
	// addition costlier than the last (3,000 aliases of 200 octets made a
	// 609 KB record) and takes names from everyone else without end. A
	// person uses a handful (a name, a nickname, one per community); 100
	// keeps the record under 25 KB at maxAliasBytes each. Retired aliases
	// (imported) do not count, and records already holding more (imported)
	// keep them: only adding is refused.
	maxAliases = 100

	// maxOnceAliases bounds a user's unused single-use aliases, and
	// maxReservedAliases its retired and unused single-use ones together;
	// qlib's, whose errors state them and say why.
	maxOnceAliases     = qlib.MaxOnceAliases
	maxReservedAliases = qlib.MaxReservedAliases

	// DefaultAccountsPerIdentity is how many accounts one third-party
	// identity (issuer and subject of a sign-up token) may create unless
	// the operator says otherwise: one. A site that requires a provider's
	// token to sign up does so to tie each account to a person; a second
	// account for the same person is a second device of the first
	// (UserEdit newnode), and without the bound one token signs up any
	// number of accounts, which sidesteps every per-member limit.
	DefaultAccountsPerIdentity = 1

	// maxGroupMembers bounds a group's member list (invited, joined and
	// barred). Every group edit rewrites the whole record and every group
	// post fans out to every joined member's devices, so an unbounded list
	// would let one member make each edit and post arbitrarily expensive;
	// distribution groups of real people stay far below this.
	maxGroupMembers = 5000
)

// nodeHashPrefix separates the nodeid derivation from any other use of
// SHA-256 on the same bytes.
const nodeHashPrefix = "mnm userdb nodeid v1\x00"

// userRecord is the stored form of a user. A published record is immutable:
// a writer clones it, changes the clone, writes it and then publishes it, so
// readers never lock.
type userRecord struct {
	UID string `json:"uid"`
	// Rev counts the writes of this record, so that OpenUserDB can tell a
	// temp file that is newer than the record from a stale one.
	Rev        uint64         `json:"rev"`
	Created    time.Time      `json:"created"`
	NextDevice int            `json:"nextDevice"` // device numbers are never reused
	Devices    []deviceRecord `json:"devices"`    // in creation order, defunct ones included
	Aliases    []string       `json:"aliases,omitempty"`
	// RetiredAliases no longer reach the user but stay reserved, so that
	// nobody else can claim them and receive what was meant for the user:
	// aliases that were defunct on the deployed server when it was
	// imported, and single-use aliases once used or withdrawn.
	RetiredAliases []string `json:"retiredAliases,omitempty"`
	// OnceAliases are the unused single-use aliases (the "aliasonce"
	// extension), in the order they were added: each reaches the user
	// once, as the to of a Ping or GroupInvite, and then moves to
	// RetiredAliases.
	OnceAliases []string `json:"onceAliases,omitempty"`
	// Blocks is the user's block list (the "block" extension), in the
	// order the entries were added; blocked indexes it by uid for Blocked.
	// The index is derived, never stored: check builds it for a record
	// read from disk, and a change to Blocks rebuilds it before the record
	// is published.
	Blocks  []blockRecord `json:"blocks,omitempty"`
	blocked map[string]bool
	// ReceiveOnly marks a receive-only member (the "receiveonly"
	// extension); written only when set, so other records are as before.
	ReceiveOnly bool `json:"receiveOnly,omitempty"`
	// Claims holds the OpenID Connect claims of a third-party sign-up. It is
	// never modified in place once stored, so clones share it.
	Claims map[string]any `json:"claims,omitempty"`
}

// blockRecord is one entry of a block list: the blocked user, and the name
// the blocker gave for it (the uid, or an alias that resolved to it then).
type blockRecord struct {
	UID string `json:"uid"`
	By  string `json:"by"`
}

type deviceRecord struct {
	Num     int       `json:"num"`
	Label   string    `json:"label"`
	Created time.Time `json:"created"`
	// NodeHash is nodeHash(uid, nodeid), or v0NodeHash(nodeid) if HashV0;
	// the nodeid itself is never stored.
	NodeHash []byte `json:"nodeHash"`
	// HashV0 marks a device imported from the deployed server with the
	// derivation that server stored: the nodeid cannot be recovered from it
	// to derive ours.
	HashV0  bool `json:"hashV0,omitempty"`
	Defunct bool `json:"defunct,omitempty"`
	// LastLogin is when the device last logged in, kept to the
	// awayGranularity (the "away" extension): written only when a policy
	// is set. A record without it (older, imported) counts from when the
	// database was opened, and stores that at its next write.
	LastLogin time.Time `json:"lastLogin,omitzero"`
	// Away marks a device whose queue the away policy dropped; its next
	// login clears it.
	Away bool `json:"away,omitempty"`
}

func (r *userRecord) clone() *userRecord {
	c := *r
	c.Devices = slices.Clone(r.Devices)
	c.Aliases = slices.Clone(r.Aliases)
	c.RetiredAliases = slices.Clone(r.RetiredAliases)
	c.OnceAliases = slices.Clone(r.OnceAliases)
	c.Blocks = slices.Clone(r.Blocks) // blocked is shared until Blocks changes
	return &c
}

// eachName calls fn for every name the user holds in the name index.
func (r *userRecord) eachName(fn func(name string, kind nameKind)) {
	for _, a := range r.Aliases {
		fn(a, nameAlias)
	}
	for _, a := range r.RetiredAliases {
		fn(a, nameRetired)
	}
	for _, a := range r.OnceAliases {
		fn(a, nameOnce)
	}
}

// indexBlocks rebuilds the index of Blocks.
func (r *userRecord) indexBlocks() {
	r.blocked = nil
	if len(r.Blocks) == 0 {
		return
	}
	r.blocked = make(map[string]bool, len(r.Blocks))
	for _, b := range r.Blocks {
		r.blocked[b.UID] = true
	}
}

func (r *userRecord) liveDevices() int {
	n := 0
	for _, d := range r.Devices {
		if !d.Defunct {
			n++
		}
	}
	return n
}

// nameKind says what owns an entry of the name index. Aliases and group ids
// share one namespace (SPEC §4: a gid may not equal an alias and vice versa),
// so one index holds both and one reservation claims a name for either.
type nameKind int

const (
	nameAlias   nameKind = iota // owner is a uid
	nameGroup                   // owner is the gid itself
	nameRetired                 // a retired alias of the uid owner: reserved, never resolves
	nameOnce                    // an unused single-use alias of the uid owner: resolves only as a recipient (RecipientUID)
)

// nameEntry is one claimed name. A pending entry is reserved by a write in
// progress: it blocks other claims but does not resolve until it is durable.
type nameEntry struct {
	kind    nameKind
	owner   string
	pending bool
}

// groupRecord is the stored form of a group. Like a userRecord, a published
// groupRecord is immutable: writers clone, change, write, then publish.
type groupRecord struct {
	// GID is the group id as the client gave it; the file name is only its
	// hash (groupFileStem), so the record is the one place that holds it.
	GID     string    `json:"gid"`
	Rev     uint64    `json:"rev"` // as userRecord.Rev
	Created time.Time `json:"created"`
	// Members lists every user the group knows, in the order they last
	// joined: an invitee is appended when first invited and moved to the end
	// when it joins, so the joined members, read in list order, are in join
	// order. A member appears once.
	Members []memberRecord `json:"members"`
	// Open lets a user the group does not list join it without an
	// invitation, and OpenPost (set only with Open) lets such a user post
	// to it (the "opengroup" extension). Absent, as in every record
	// written before the extension and every imported one, the group is
	// closed.
	Open     bool `json:"open,omitempty"`
	OpenPost bool `json:"openPost,omitempty"`
}

// memberRecord is one user's standing in a group.
type memberRecord struct {
	UID string `json:"uid"`
	// Alias is the alias the member is listed under: the one it was
	// invited under, or the one it chose when joining or renaming. It is
	// always one of the member's own aliases.
	Alias  string       `json:"alias"`
	Status memberStatus `json:"status"`
}

// memberStatus is a member's standing. A barred member has been dropped by
// another member: it receives nothing, may not post, and may not join again
// until someone re-invites it.
type memberStatus string

const (
	memberInvited memberStatus = "invited"
	memberJoined  memberStatus = "joined"
	memberBarred  memberStatus = "barred"
)

func (r *groupRecord) clone() *groupRecord {
	c := *r
	c.Members = slices.Clone(r.Members)
	return &c
}

// member returns the index of uid in r.Members, or -1.
func (r *groupRecord) member(uid string) int {
	return slices.IndexFunc(r.Members, func(m memberRecord) bool { return m.UID == uid })
}

// memberByAlias returns the index of the member listed under alias, or -1.
func (r *groupRecord) memberByAlias(alias string) int {
	return slices.IndexFunc(r.Members, func(m memberRecord) bool { return m.Alias == alias })
}

// joined returns the uids of the joined members, in join order.
func (r *groupRecord) joined() []string {
	var uids []string
	for _, m := range r.Members {
		if m.Status == memberJoined {
			uids = append(uids, m.UID)
		}
	}
	return uids
}

// moveToEnd moves member i to the end of the list, which keeps the joined
// members in join order when i joins.
func (r *groupRecord) moveToEnd(i int) {
	m := r.Members[i]
	r.Members = append(slices.Delete(r.Members, i, i+1), m)
}

// check validates a decoded record, so that the rest of the code can trust
// what it loaded, and builds its block list index.
func (r *userRecord) check(uid string) error {
	if !validUID(uid) || r.UID != uid {
		return fmt.Errorf("uid %q does not match file name", r.UID)
	}
	prev := -1
	for _, d := range r.Devices {
		if d.Num <= prev || d.Num >= r.NextDevice {
			return fmt.Errorf("device number %d out of order", d.Num)
		}
		prev = d.Num
		if len(d.NodeHash) != sha256.Size { // both derivations are SHA-256
			return fmt.Errorf("device %d: bad node hash", d.Num)
		}
		if checkLabel(d.Label) != nil {
			return fmt.Errorf("device %d: bad label", d.Num)
		}
	}
	seen := make(map[string]bool, len(r.Aliases)+len(r.RetiredAliases)+len(r.OnceAliases))
	var err error
	r.eachName(func(a string, _ nameKind) {
		if (checkAlias(a, 1) != nil || seen[a]) && err == nil {
			err = fmt.Errorf("bad alias %q", a)
		}
		seen[a] = true
	})
	if err != nil {
		return err
	}
	// A block list is not checked against the bounds on adding (which may
	// change): only for entries the rest of the code could not use.
	blocked := make(map[string]bool, len(r.Blocks))
	for _, b := range r.Blocks {
		if !validUID(b.UID) || b.UID == uid || blocked[b.UID] || b.By == "" || len(b.By) > tmtp.MaxStringLen {
			return fmt.Errorf("bad block list entry %q", b.UID)
		}
		blocked[b.UID] = true
	}
	r.indexBlocks()
	return nil
}

// check validates a decoded group record. Whether its members are users
// under their own aliases needs the user records; checkMembers sees to it.
func (r *groupRecord) check(stem string) error {
	if checkGid(r.GID, 1) != nil || groupFileStem(r.GID) != stem {
		return errors.New("gid does not match file name")
	}
	if r.OpenPost && !r.Open {
		return errors.New("open for posting but not open")
	}
	uids := make(map[string]bool, len(r.Members))
	aliases := make(map[string]bool, len(r.Members))
	for _, m := range r.Members {
		if !validUID(m.UID) || uids[m.UID] {
			return fmt.Errorf("bad or repeated member %q", m.UID)
		}
		// Two members under one alias would make a drop ambiguous.
		if checkAlias(m.Alias, 1) != nil || aliases[m.Alias] {
			return fmt.Errorf("bad or repeated member alias %q", m.Alias)
		}
		switch m.Status {
		case memberInvited, memberJoined, memberBarred:
		default:
			return fmt.Errorf("member %s: bad status %q", m.UID, m.Status)
		}
		uids[m.UID], aliases[m.Alias] = true, true
	}
	return nil
}

// groupFileStem is the file name of gid's record, minus its suffix: the hex
// SHA-256 of the gid. A gid is client input (any printable characters,
// "../x" included), so it is never used as a path itself; the hash has a
// fixed length and alphabet whatever the gid.
func groupFileStem(gid string) string {
	sum := sha256.Sum256([]byte(gid))
	return hex.EncodeToString(sum[:])
}

// validUID reports whether uid may name a record: bounded length and only
// characters of the base32 alphabet, letters and '=', so it can never be a
// path ("../x") or too long for a file name. Anything else is not a user.
func validUID(uid string) bool {
	if uid == "" || len(uid) > maxUIDLen {
		return false
	}
	for i := 0; i < len(uid); i++ {
		c := uid[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '%' || c == '+' || c == '=') {
			return false
		}
	}
	return true
}

// checkLabel refuses, with qlib.ErrLabelInvalid, a device label that is
// empty, longer than maxLabelBytes (the limit the error's text states) or not
// valid UTF-8 (which JSON could not store as is).
func checkLabel(label string) error {
	if label == "" || len(label) > maxLabelBytes || !utf8.ValidString(label) {
		return qlib.ErrLabelInvalid
	}
	return nil
}

// ErrAliasLong refuses an alias longer than maxAliasBytes. It wraps
// qlib.ErrAliasInvalid, so errors.Is(err, qlib.ErrAliasInvalid) holds for
// callers that only know the Directory errors; a client sees its text in an
// ack error.
var ErrAliasLong = fmt.Errorf("%w (at most %d bytes)", qlib.ErrAliasInvalid, maxAliasBytes)

// checkAlias applies the alias rules of SPEC §7 with a minimum of minChars
// characters. Aliases are compared byte for byte, so they are case-sensitive
// and not Unicode-normalised: "Alice Smith" and "alice smith" are different
// aliases.
func checkAlias(alias string, minChars int) error {
	if len(alias) > maxAliasBytes {
		return ErrAliasLong
	}
	if checkPrintable(alias, maxAliasBytes) != nil {
		return qlib.ErrAliasInvalid
	}
	if utf8.RuneCountInString(alias) < minChars {
		return qlib.ErrAliasShort
	}
	return nil
}

// checkGid applies the group id rules (SPEC §4 op 5, §7), which are the
// alias rules, with a minimum of minChars characters. A gid over maxGidBytes
// is ErrGidInvalid: qlib.Directory's contract has no separate error for it.
func checkGid(gid string, minChars int) error {
	if checkPrintable(gid, maxGidBytes) != nil {
		return qlib.ErrGidInvalid
	}
	if utf8.RuneCountInString(gid) < minChars {
		return qlib.ErrGidShort
	}
	return nil
}

// nodeHash derives what is stored for a nodeid. A single SHA-256 suffices,
// with no salt or slow KDF: a nodeid is 200 random bits, so a stolen hash
// cannot be brute-forced or looked up in a table, unlike a chosen password.
// The uid is mixed in so a hash is only good for its own user.
func nodeHash(uid string, node []byte) []byte {
	h := sha256.New()
	h.Write([]byte(nodeHashPrefix))
	h.Write([]byte(uid))
	h.Write([]byte{0})
	h.Write(node)
	return h.Sum(nil)
}

// v0Rounds is how many times the deployed (v0) server applies SHA-256 to a
// nodeid to get what it stores. Found by reading its user records against
// known nodeids (../shared/tmtp/v0-site); its README does not say.
const v0Rounds = 22389

// v0NodeHash derives what the deployed server stored for a nodeid, so that
// devices imported from it log in with their old nodeids.
func v0NodeHash(node []byte) []byte {
	h := sha256.Sum256(node)
	for range v0Rounds - 1 {
		h = sha256.Sum256(h[:])
	}
	return h[:]
}

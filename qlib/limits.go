package qlib

import (
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Limits per remote address and per member (Protocol.md, "Limits"). Each
// bounds something a stranger or a member could otherwise do without end:
// hold links, create accounts, try logins, ping or invite people, or fill a
// device's queue. The defaults below are what a site gets unless its
// operator says otherwise.
const (
	// DefaultLinksPerAddr bounds the open links from one address. Members
	// behind one NAT (an office, a campus, a carrier's CGNAT) share an
	// address and each device holds one link, so it must cover a large
	// office; 256 links cost the server a few MB (an idle link is about
	// 17 KiB), while without it one host could take every file descriptor.
	DefaultLinksPerAddr = 256

	// DefaultRegisterPerHour is the registrations one address may make per
	// hour, all of them at once if it likes (a token bucket of this size,
	// refilled at this rate). A family or a team signing up together fits;
	// an address creating accounts to get around the per-member limits
	// gets 240 a day.
	DefaultRegisterPerHour = 10

	// DefaultLoginFailuresPerAddr is the failed logins one address may make
	// before its logins are refused for a while (loginBackoffBase, doubling
	// per further failure up to addrBackoffMax). A nodeid is 200 random
	// bits, so guessing is hopeless anyway; the limit bounds the work a
	// stranger makes the server do (a device imported from the deployed
	// server costs 3 ms of CPU per check). 20 leaves room for a device
	// with a stale nodeid retrying for a while behind a shared address.
	DefaultLoginFailuresPerAddr = 20

	// DefaultLoginFailuresPerUID is the failed logins to one uid, from any
	// non-exempt addresses, before that uid's logins are refused for a
	// while (loginBackoffBase, doubling, up to uidBackoffMax) — but only
	// from addresses that have themselves failed a login lately. So a
	// guesser spreading over many addresses meets the backoff at each of
	// them after its first failure, while the member, logging in from an
	// address with a clean record, is never held back by strangers.
	DefaultLoginFailuresPerUID = 10

	// DefaultPingsPerDay is the pings (op 9) a member may send per 24
	// hours (a token bucket of this size, refilled at this rate). A ping
	// is how a member reaches a stranger, so it is the spammer's tool; a
	// person introducing itself by hand sends a few a day.
	DefaultPingsPerDay = 50

	// DefaultInvitesPerDay is the group invitations (op 5) a member may
	// send per 24 hours. An invitation also reaches a stranger, but groups
	// are set up in bursts: an organiser invites a team at once (the
	// simulation's groups have up to 100 members), so it is higher than
	// the ping limit.
	DefaultInvitesPerDay = 200

	// DefaultGroupsPerDay is the groups a member may create per 24 hours
	// (an invitation to a gid that is not a group yet creates one). Every
	// group is a record kept for good, and a new group is a way to reach
	// a stranger again under a new name; one member made 1,000 in a
	// fifth of a second, each inviting the same victim. An organiser sets
	// up a few groups at a time; 20 a day is plenty for that.
	DefaultGroupsPerDay = 20

	// DefaultInvitesPerInviteePerDay is the invitations one member may
	// send one invitee (by uid, whatever alias names it) per 24 hours.
	// The per-member invitation limit lets a member send all 200 to one
	// victim, one group after another; an invitation is a message the
	// victim must read or ack on every device. Real invitations to one
	// person are one or two (a group, a re-invite after a drop); 5 leaves
	// room for mistakes and takes one member's flood of a victim from 200
	// a day to 5.
	DefaultInvitesPerInviteePerDay = 5

	// DefaultQueueBytesPerDevice is the backlog (envelopes and data of the
	// messages queued) above which new posts, pings and invitations for a
	// device are refused. It is far above what a member away for weeks
	// collects (150,000 messages of the simulation's mean size), and keeps
	// one member flooding an abandoned device to a few GiB of disk per
	// device, which minFreeBytes then backs up.
	DefaultQueueBytesPerDevice = 1 << 30

	// DefaultDevicesPerPost bounds the devices one Post or PostNotify may
	// store a message for, after groups are expanded and repeats removed.
	// A for list of 4,096 users (tmtp.MaxRecipients) of 100 devices each
	// (the deployed cap), or a few full groups, would otherwise make one
	// frame cost hundreds of thousands of queue entries. A post to the
	// largest group the user database allows (5,000 members) whose members
	// average four devices fits, which covers any real distribution list.
	DefaultDevicesPerPost = 20_000

	// DefaultPreLoginBytes is the memory that links not yet logged in may
	// hold, all together, in buffers for long headers (64 KiB each). Anyone
	// can open such a link, and each could otherwise pin a 64 KiB buffer
	// by sending most of a long header slowly. A real client sends a long
	// header before login only to register with a long third-party token,
	// and holds it for milliseconds; 4 MiB (63 such buffers: each is a
	// few octets over 64 KiB) serve far more sign-ups at once than any
	// site sees, while capping what a flood of strangers costs.
	DefaultPreLoginBytes = 4 << 20

	// DefaultPreLoginLinks bounds the links that have not logged in, all
	// together. Each costs its TLS state and buffers (tens of KiB) whoever
	// opened it, and MaxLinks, derived from the descriptor limit, can be
	// in the hundreds of thousands; 2,048 keeps what strangers can pin
	// near 100 MiB. A real client logs in within a round trip or two of
	// its handshake, so even a site whose members all reconnect at once
	// after a restart has few links in this state at any moment. At the
	// bound the oldest such link is closed to make room, if it has had
	// preLoginEvictAge to log in; otherwise the newcomer is refused.
	DefaultPreLoginLinks = 2048
)

// DefaultExempt lists the address ranges exempt from the per-address
// limits unless the operator says otherwise: the loopback address of each
// family only, so that the simulation, the load benchmark and local tools
// work, while the rest of 127.0.0.0/8 is limited like any other address
// (tests dial from 127.0.0.2 to play a stranger).
func DefaultExempt() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")}
}

// Limits configures the limits. In Config, nil means DefaultLimits(); in a
// Limits, a zero field turns that limit off.
type Limits struct {
	// Exempt addresses are not limited by anything counted per address
	// (links, registrations, failed logins), their failed logins do not
	// count against a uid, and a uid's backoff does not hold them back:
	// loopback for local tools, trusted proxies. Per-member limits apply
	// to everyone.
	Exempt []netip.Prefix

	LinksPerAddr         int   // open links per address
	RegisterPerHour      int   // registrations per address per hour
	LoginFailuresPerAddr int   // failed logins per address before backoff
	LoginFailuresPerUID  int   // failed logins per uid before backoff
	PingsPerDay          int   // pings per member per 24 hours
	InvitesPerDay        int   // invitations per member per 24 hours
	QueueBytesPerDevice  int64 // backlog above which a device gets no new messages
	DevicesPerPost       int   // devices one post may store a message for
	PreLoginBytes        int64 // long-header buffers of links not logged in, all together
	PreLoginLinks        int   // links not logged in, all together

	// GroupsPerDay bounds the groups a member may create per 24 hours;
	// InvitesPerInviteePerDay the invitations from one member to one
	// invitee per 24 hours.
	GroupsPerDay            int
	InvitesPerInviteePerDay int

	// Now is the clock of the limits' windows; nil = time.Now. Tests
	// replace it to move through backoffs and refills without sleeping.
	Now func() time.Time
}

// DefaultLimits returns the limits a site gets unless its operator says
// otherwise.
func DefaultLimits() Limits {
	return Limits{
		Exempt:               DefaultExempt(),
		LinksPerAddr:         DefaultLinksPerAddr,
		RegisterPerHour:      DefaultRegisterPerHour,
		LoginFailuresPerAddr: DefaultLoginFailuresPerAddr,
		LoginFailuresPerUID:  DefaultLoginFailuresPerUID,
		PingsPerDay:          DefaultPingsPerDay,
		InvitesPerDay:        DefaultInvitesPerDay,
		QueueBytesPerDevice:  DefaultQueueBytesPerDevice,
		DevicesPerPost:       DefaultDevicesPerPost,
		PreLoginBytes:        DefaultPreLoginBytes,
		PreLoginLinks:        DefaultPreLoginLinks,

		GroupsPerDay:            DefaultGroupsPerDay,
		InvitesPerInviteePerDay: DefaultInvitesPerInviteePerDay,
	}
}

// Windows and backoffs of the limits.
const (
	// day is the window of the per-member limits.
	day = 24 * time.Hour

	// loginBackoffBase is the first refusal interval once failures reach
	// their limit; each further failure doubles it.
	loginBackoffBase = time.Second

	// addrBackoffMax caps an address's backoff: one address then gets a
	// dozen checks an hour, while a member sharing the address with a
	// stale device (a NAT) is not shut out for longer than this — and a
	// successful login from the address forgives its failures.
	addrBackoffMax = 5 * time.Minute

	// uidBackoffMax caps a uid's backoff, short because the member may be
	// behind an address that has failed too (a NAT shared with a stale
	// device, its own or another's).
	uidBackoffMax = time.Minute

	// failureMemory is how long failed logins are remembered after the
	// last one. It exceeds both backoff caps, so that a backoff is never
	// forgotten before it ends.
	failureMemory = time.Hour
)

// Memory bounds of the limits' state. Without them a flood from many
// addresses (an IPv6 network has billions) or of made-up uids would grow
// the tables without end. An entry costs about 120 bytes (TestTableMemory
// measures it; a member–invitee pair's key adds 65), so the tables
// together stay within about 25 MB. A table that is full forgets its least
// recently used entry, which at worst gives that address or member a fresh
// allowance: an attacker with more addresses than the table holds has
// fresh allowances anyway.
const (
	// maxTrackedAddrs bounds each per-address table (registrations, failed
	// logins): far more addresses than register or fail within an hour
	// on any real site.
	maxTrackedAddrs = 1 << 14

	// maxTrackedUIDs bounds the uids with failed logins on record.
	maxTrackedUIDs = 1 << 14

	// maxTrackedMembers bounds each per-member table (pings,
	// invitations, groups created, and member–invitee pairs): the members
	// who pinged or invited within a day.
	maxTrackedMembers = 1 << 15

	// maxLogKeys bounds the keys whose log lines are being throttled.
	maxLogKeys = 1 << 12
)

// Log throttling: a limit hit is logged once per key (an address, a uid, a
// device) per logEvery, and at most logBurst lines per logEvery in all, so
// that a flood cannot flood the log. Each line counts the hits it stands
// for.
const (
	logEvery = time.Minute
	logBurst = 100
)

// v6Prefix is how much of an IPv6 address counts as one address: a host
// gets a /64 (RFC 6177 hands sites whole /48s), so counting whole addresses
// would give one host 2^64 allowances.
const v6Prefix = 64

// remote is a link's address as the limits see it.
type remote struct {
	addr    netip.Addr // the counting key (IPv6: its /64); invalid if unknown
	limited bool       // not exempt, and known
}

// limiter holds the state of one Server's limits. All methods are safe for
// concurrent use; none blocks beyond its own short critical section.
type limiter struct {
	conf atomic.Pointer[Limits] // the limits in force, swapped whole by SetLimits (reload.go); read with cfg
	now  func() time.Time
	log  *slog.Logger
	hits *prometheus.CounterVec // by limitHit; nil in tests that make a bare limiter

	mu sync.Mutex
	// Guarded by mu:
	links     map[netip.Addr]int // open links per address; entries at zero are deleted
	registers *table[netip.Addr, bucket]
	addrFails *table[netip.Addr, backoff]
	uidFails  *table[string, backoff]
	pings     *table[string, bucket]
	invites   *table[string, bucket]
	notes     *table[string, note] // log throttling per key
	lines     bucket               // log throttling overall
	silenced  int                  // lines dropped overall since the last one written

	// Also guarded by mu: groups counts the groups created per member,
	// invitees the invitations per member and invitee (inviteeKey).
	groups   *table[string, bucket]
	invitees *table[string, bucket]
}

func newLimiter(cfg Limits, log *slog.Logger) *limiter {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	lm := &limiter{
		now:       now,
		log:       log,
		links:     make(map[netip.Addr]int),
		registers: newTable[netip.Addr, bucket](maxTrackedAddrs, time.Hour),
		addrFails: newTable[netip.Addr, backoff](maxTrackedAddrs, failureMemory),
		uidFails:  newTable[string, backoff](maxTrackedUIDs, failureMemory),
		pings:     newTable[string, bucket](maxTrackedMembers, day),
		invites:   newTable[string, bucket](maxTrackedMembers, day),
		groups:    newTable[string, bucket](maxTrackedMembers, day),
		invitees:  newTable[string, bucket](maxTrackedMembers, day),
		notes:     newTable[string, note](maxLogKeys, logEvery),
	}
	lm.conf.Store(&cfg)
	return lm
}

// remoteOf returns the counting key of a connection's peer and whether it
// is limited. An address that is not TCP/IP (an in-process pipe) cannot be
// counted and is not limited.
func (lm *limiter) remoteOf(a net.Addr) remote {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case nil:
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	ip := ap.Addr().Unmap()
	if !ip.IsValid() {
		return remote{}
	}
	limited := !slices.ContainsFunc(lm.cfg().Exempt, func(p netip.Prefix) bool { return p.Contains(ip) })
	if ip.Is6() {
		ip = netip.PrefixFrom(ip, v6Prefix).Masked().Addr()
	}
	return remote{addr: ip, limited: limited}
}

// openLink counts a new link from r; false if r is at its limit (the
// caller closes the connection at once).
func (lm *limiter) openLink(r remote) bool {
	if !r.limited || lm.cfg().LinksPerAddr <= 0 {
		return true
	}
	lm.mu.Lock()
	n := lm.links[r.addr]
	ok := n < lm.cfg().LinksPerAddr
	if ok {
		lm.links[r.addr] = n + 1
	}
	lm.mu.Unlock()
	if !ok {
		lm.hit(hitLinksPerAddr, "link refused: too many links from the address", "links "+r.addr.String(),
			"remote", r.addr.String(), "limit", lm.cfg().LinksPerAddr)
	}
	return ok
}

// closeLink uncounts a link that openLink counted.
func (lm *limiter) closeLink(r remote) {
	if !r.limited || lm.cfg().LinksPerAddr <= 0 {
		return
	}
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if n := lm.links[r.addr]; n > 1 {
		lm.links[r.addr] = n - 1
	} else {
		delete(lm.links, r.addr)
	}
}

// allowRegister takes one of r's registrations; false when none is left.
func (lm *limiter) allowRegister(r remote) bool {
	if !r.limited || lm.cfg().RegisterPerHour <= 0 {
		return true
	}
	now := lm.now()
	lm.mu.Lock()
	ok := lm.registers.get(r.addr, now).take(now, lm.cfg().RegisterPerHour, time.Hour)
	lm.mu.Unlock()
	if !ok {
		lm.hit(hitRegistrations, "register refused: too many registrations from the address", "register "+r.addr.String(),
			"remote", r.addr.String(), "limit", lm.cfg().RegisterPerHour, "per", time.Hour)
	}
	return ok
}

// allowLogin reports whether a login to uid from r may be checked at all:
// false while r, or uid for an address with failures on record, is backing
// off. The caller then refuses the login without checking the nodeid.
func (lm *limiter) allowLogin(r remote, uid string) bool {
	if !r.limited || !lm.loginLimited() {
		return true
	}
	now := lm.now()
	lm.mu.Lock()
	var addrUntil, uidUntil time.Time
	af := lm.addrFails.find(r.addr, now)
	if af != nil && lm.cfg().LoginFailuresPerAddr > 0 && af.blocked(now) {
		addrUntil = af.until
	}
	// A uid's backoff holds back only addresses that have failed lately,
	// so that strangers failing logins to a uid cannot lock its member out.
	if af != nil && af.failures > 0 && lm.cfg().LoginFailuresPerUID > 0 {
		if uf := lm.uidFails.find(uid, now); uf != nil && uf.blocked(now) {
			uidUntil = uf.until
		}
	}
	lm.mu.Unlock()
	switch {
	case !addrUntil.IsZero():
		lm.hit(hitLoginBackoff, "login refused: the address is backing off after failed logins", "login "+r.addr.String(),
			"remote", r.addr.String(), "until", addrUntil)
		return false
	case !uidUntil.IsZero():
		lm.hit(hitLoginBackoff, "login refused: the uid is backing off after failed logins", "login "+uid,
			"remote", r.addr.String(), "uid", uid, "until", uidUntil)
		return false
	}
	return true
}

// loginLimited reports whether either login limit is on.
func (lm *limiter) loginLimited() bool {
	return lm.cfg().LoginFailuresPerAddr > 0 || lm.cfg().LoginFailuresPerUID > 0
}

// loginFailed counts a failed login to uid from r.
func (lm *limiter) loginFailed(r remote, uid string) {
	if !r.limited || !lm.loginLimited() {
		return
	}
	now := lm.now()
	lm.mu.Lock()
	var addrFor, uidFor time.Duration
	// The address's record is kept even when its own limit is off: it
	// is what subjects the address to uids' backoffs.
	af := lm.addrFails.get(r.addr, now)
	if n := lm.cfg().LoginFailuresPerAddr; n > 0 {
		addrFor = af.fail(now, n, addrBackoffMax)
	} else {
		af.failures++
	}
	if n := lm.cfg().LoginFailuresPerUID; n > 0 {
		uidFor = lm.uidFails.get(uid, now).fail(now, n, uidBackoffMax)
	}
	lm.mu.Unlock()
	// One line per backoff begun: failures past the limit are one per
	// backoff interval at most.
	if addrFor > 0 {
		lm.log.Warn("login backoff: failed logins from the address", "remote", r.addr.String(),
			"limit", lm.cfg().LoginFailuresPerAddr, "for", addrFor)
	}
	if uidFor > 0 {
		lm.log.Warn("login backoff: failed logins to the uid", "uid", uid, "remote", r.addr.String(),
			"limit", lm.cfg().LoginFailuresPerUID, "for", uidFor)
	}
}

// loginSucceeded forgives uid's failures, and those of r: an address from
// which a member logs in is one whose failures were a stale device's, not
// a stranger's, and members behind one NAT must not pay for each other's.
func (lm *limiter) loginSucceeded(r remote, uid string) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	lm.uidFails.remove(uid)
	if r.limited {
		lm.addrFails.remove(r.addr)
	}
}

// Ack errors of allowPing and allowInvite; the client sees the limit after
// them: "ping limit reached: 50 per 24 hours".
var (
	errPingLimit   = errors.New("ping limit reached")
	errInviteLimit = errors.New("invitation limit reached")
)

// allowPing takes one of uid's pings; the error is the ack error.
func (lm *limiter) allowPing(uid string) error {
	return lm.allowDaily(hitPings, lm.pings, uid, lm.cfg().PingsPerDay, errPingLimit, "ping refused: limit reached")
}

// allowInvite takes one of uid's invitations; the error is the ack error.
func (lm *limiter) allowInvite(uid string) error {
	return lm.allowDaily(hitInvitations, lm.invites, uid, lm.cfg().InvitesPerDay, errInviteLimit, "invitation refused: limit reached")
}

// Ack errors of allowGroup and allowInvitee, with the limit after them as
// above: "group limit reached: 20 per 24 hours".
var (
	errGroupLimit   = errors.New("group limit reached")
	errInviteeLimit = errors.New("invitation limit for this invitee reached")
)

// allowGroup takes one of uid's group creations; the error is the ack error.
func (lm *limiter) allowGroup(uid string) error {
	return lm.allowDaily(hitGroups, lm.groups, uid, lm.cfg().GroupsPerDay, errGroupLimit, "group refused: limit reached")
}

// allowInvitee takes one of uid's invitations of invitee; the error is the
// ack error.
func (lm *limiter) allowInvitee(uid, invitee string) error {
	return lm.allowDaily(hitInvitee, lm.invitees, inviteeKey(uid, invitee), lm.cfg().InvitesPerInviteePerDay, errInviteeLimit,
		"invitation refused: limit for the invitee reached")
}

// inviteeKey is the invitees table's key for uid inviting invitee. uids
// hold no space, so the pair has one spelling.
func inviteeKey(uid, invitee string) string { return uid + " " + invitee }

func (lm *limiter) allowDaily(kind limitHit, t *table[string, bucket], uid string, limit int, limitErr error, msg string) error {
	if limit <= 0 {
		return nil
	}
	now := lm.now()
	lm.mu.Lock()
	ok := t.get(uid, now).take(now, limit, day)
	lm.mu.Unlock()
	if ok {
		return nil
	}
	lm.hit(kind, msg, msg+" "+uid, "uid", uid, "limit", limit, "per", day)
	return fmt.Errorf("%w: %d per 24 hours", limitErr, limit)
}

// errQueueFull is roomFor's ack error; the client sees the recipient's uid
// after it: "recipient queue full: <uid>".
var errQueueFull = errors.New("recipient queue full")

// roomFor returns the ack error for a message to devs when one of them is
// a device whose queue holds QueueBytesPerDevice or more; owner gives a
// device's uid, which the error names. The check is made before anything
// is stored, so a refused request stores nothing for anyone. It is a
// threshold, not a reservation: requests accepted while a queue is under
// it may take it over by their own size, which maxPostBytes bounds.
func (l *link) roomFor(devs []string, owner func(dev string) string) error {
	limit := l.srv.limits.cfg().QueueBytesPerDevice
	if limit <= 0 {
		return nil
	}
	for _, d := range devs {
		if n := l.srv.cfg.Store.QueueBytes(d); n >= limit {
			uid := owner(d)
			l.srv.limits.hit(hitQueueBytes, "message refused: recipient queue full", "queue "+d,
				"uid", l.uid, "recipient", uid, "device", d, "bytes", n, "limit", limit)
			return fmt.Errorf("%w: %s", errQueueFull, uid)
		}
	}
	return nil
}

// ownerIn is roomFor's owner for uid's devices devs and the sender's: a
// ping or an invitation goes to both (keepSent).
func (l *link) ownerIn(uid string, devs []string) func(string) string {
	return func(d string) string {
		if slices.Contains(devs, d) {
			return uid
		}
		return l.uid
	}
}

// note is the log throttling state of one key.
type note struct {
	logged time.Time // last line written; zero = never
	hits   int       // hits since then
}

// hit logs a limit hit, throttled per key and overall (logEvery,
// logBurst). A line stands for the hits of its key since the key's last
// line ("hits"), and reports the lines dropped overall since the last one
// written ("silenced").
func (lm *limiter) hit(kind limitHit, msg, key string, attrs ...any) {
	if lm.hits != nil {
		lm.hits.WithLabelValues(string(kind)).Inc()
	}
	now := lm.now()
	lm.mu.Lock()
	n := lm.notes.get(key, now)
	n.hits++
	write := n.logged.IsZero() || now.Sub(n.logged) >= logEvery
	if write && !lm.lines.take(now, logBurst, logEvery) {
		write = false
		lm.silenced++
	}
	var hits, silenced int
	if write {
		hits, silenced = n.hits, lm.silenced
		n.logged, n.hits, lm.silenced = now, 0, 0
	}
	lm.mu.Unlock()
	if !write {
		return
	}
	attrs = append(attrs, "hits", hits)
	if silenced > 0 {
		attrs = append(attrs, "silenced", silenced)
	}
	lm.log.Warn(msg, attrs...)
}

// bucket is a token bucket: it holds at most size tokens and gains size
// per period, continuously. A new bucket is full. Its memory is constant,
// however many requests it sees.
type bucket struct {
	tokens float64
	at     time.Time // when tokens was brought up to date; zero = new
}

// take spends a token; false when the bucket has less than one.
func (b *bucket) take(now time.Time, size int, period time.Duration) bool {
	if b.at.IsZero() {
		b.tokens = float64(size)
	} else if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = min(float64(size), b.tokens+float64(size)*elapsed.Seconds()/period.Seconds())
	}
	// A clock that steps back refills nothing and restarts the count.
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// backoff counts failures; from the limit-th on, each one refuses further
// attempts for an interval that starts at loginBackoffBase and doubles per
// failure, up to a cap. Attempts refused meanwhile are not failures and do
// not lengthen it.
type backoff struct {
	failures int
	until    time.Time // refuse before this
}

func (b *backoff) blocked(now time.Time) bool { return now.Before(b.until) }

// fail counts a failure and returns the interval it starts (0 = none).
func (b *backoff) fail(now time.Time, limit int, ceiling time.Duration) time.Duration {
	b.failures++
	if b.failures < limit {
		return 0
	}
	// Doubling 30 times from a second exceeds any cap; the bound keeps the
	// shift from overflowing however long the failures go on.
	d := min(loginBackoffBase<<min(b.failures-limit, 30), ceiling)
	b.until = now.Add(d)
	return d
}

// table is a map of per-key state bounded in memory: an entry untouched for
// ttl is forgotten (its state has returned to that of a new entry: a full
// bucket, failures forgiven), and at max entries the least recently used
// is forgotten to make room. Its entries are kept in a list by last use,
// so that both cost O(1) per call. Not safe for concurrent use (limiter.mu
// guards the tables).
type table[K comparable, V any] struct {
	max     int
	ttl     time.Duration
	m       map[K]*slot[K, V]
	newest  *slot[K, V]
	oldest  *slot[K, V]
	evicted int64 // entries forgotten at max before their ttl
}

type slot[K comparable, V any] struct {
	val          V
	key          K
	used         time.Time
	newer, older *slot[K, V]
}

func newTable[K comparable, V any](max int, ttl time.Duration) *table[K, V] {
	return &table[K, V]{max: max, ttl: ttl, m: make(map[K]*slot[K, V])}
}

func (t *table[K, V]) len() int { return len(t.m) }

// get returns key's state, a zero V if it had none, and marks it used now.
func (t *table[K, V]) get(key K, now time.Time) *V {
	t.expire(now)
	s := t.m[key]
	if s == nil {
		if len(t.m) >= t.max {
			t.unlink(t.oldest)
			t.evicted++
		}
		s = &slot[K, V]{key: key}
		t.m[key] = s
	} else {
		t.detach(s)
	}
	s.used = now
	t.pushNewest(s)
	return &s.val
}

// find returns key's state without creating it or marking it used; nil if
// it has none.
func (t *table[K, V]) find(key K, now time.Time) *V {
	s := t.m[key]
	if s == nil {
		return nil
	}
	if now.Sub(s.used) > t.ttl {
		t.unlink(s)
		return nil
	}
	return &s.val
}

// remove forgets key's state.
func (t *table[K, V]) remove(key K) {
	if s := t.m[key]; s != nil {
		t.unlink(s)
	}
}

// expire forgets the entries untouched for ttl. They are the oldest, so
// each call looks only at those it removes and one more: O(1) amortised.
func (t *table[K, V]) expire(now time.Time) {
	for t.oldest != nil && now.Sub(t.oldest.used) > t.ttl {
		t.unlink(t.oldest)
	}
}

func (t *table[K, V]) unlink(s *slot[K, V]) {
	t.detach(s)
	delete(t.m, s.key)
}

func (t *table[K, V]) detach(s *slot[K, V]) {
	if s.newer != nil {
		s.newer.older = s.older
	} else {
		t.newest = s.older
	}
	if s.older != nil {
		s.older.newer = s.newer
	} else {
		t.oldest = s.newer
	}
	s.newer, s.older = nil, nil
}

func (t *table[K, V]) pushNewest(s *slot[K, V]) {
	s.older = t.newest
	if t.newest != nil {
		t.newest.newer = s
	}
	t.newest = s
	if t.oldest == nil {
		t.oldest = s
	}
}

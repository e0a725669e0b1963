package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Presence across frontends (cluster/DESIGN.md, "Presence across
// frontends"): which frontends each user is online on, and the users'
// presence lists.
//
// # Who is online where
//
// A frontend announces on <prefix>.user.<uid> each change of its own
// online users (SetOnline: the user's first device here logged in, or its
// last one left), numbered in sequence within the Bus's instance (one life
// of the process). Every Bus keeps a view of each other live frontend: its
// instance, the last sequence number applied, and its online users. A view
// is (re)built from a snapshot the frontend serves on request
// (<prefix>.users.<frontend>, answered in pages to the reply inbox);
// announcements arriving meanwhile wait, and those numbered after the
// snapshot are applied on top. A gap in the numbers (core NATS lost one) or
// an announcement of an unknown instance that is not its first starts a
// new snapshot. At start a Bus takes a snapshot of every frontend with a
// liveness key.
//
// A frontend dies when its liveness key expires or names another
// incarnation (it fenced itself): every renewal interval each Bus checks
// the keys of the frontends it has views of, and drops the dead ones'.
//
// A user is online while it is online here or in any view. When a change
// (ours, an announcement, a dropped view) leaves it online nowhere, each
// Bus calls OnUserGone with the user's last list, for its own links of the
// users on it, and deletes the list (compare-and-set on the revision it
// knows, so that every Bus may try and a list written since stays).
//
// # The lists
//
// A user's list is the key <uid> of the KV bucket <prefix>_OHI: a JSON
// array of uids, written by compare-and-set (Edit). Every Bus watches the
// bucket and keeps the lists in memory, with the index "who names whom"
// that the login reply reads (Naming). A list written for a user online
// nowhere (a write that raced the user's going) makes OnUserGone for the
// uids it added, and is deleted by the sweep: a list whose user is seen
// online nowhere on two sweeps in a row.
//
// # Notices
//
// A notice for user V (from U, status) goes on <prefix>.ohi.<V> as
// "<status> <U>" (U base64url), only when V is online on another frontend;
// a Bus passes it to OnPresence only when V is online here.

// Limits of presence, against a hostile or broken peer on the bus.
const (
	// maxFrontends bounds the views: far above any site (a store's node
	// number has 8 bits), low enough that forged frontend names cannot
	// take much memory.
	maxFrontends = 256
	// maxUsersPerFrontend bounds one view: a frontend serves far fewer
	// (DESIGN.md: tens of thousands of active members per stream).
	maxUsersPerFrontend = 1 << 20
	// maxListLen bounds a list: what one OhiEdit init may name (the
	// wire's limit on recipients, tmtp.MaxRecipients).
	maxListLen = 4096
	// maxPending bounds the announcements that wait for a snapshot; past
	// it they are dropped and the snapshot is taken again.
	maxPending = 10000
	// snapshotPage is the uids in one page of a snapshot: well below
	// NATS's 1 MB payload with uids of a few dozen octets.
	snapshotPage = 2000
	// maxCleanups bounds the list deletes waiting for the cleanup
	// goroutine; past it they are left to the sweep.
	maxCleanups = 4096
	// startWait bounds the wait for the other frontends' snapshots at
	// start: a frontend that does not answer within it is synced in the
	// background rather than holding up this one.
	startWait = 2 * opTimeout
	// maxEditAttempts bounds an Edit's compare-and-set retries: each lost
	// one means another frontend wrote the list meanwhile.
	maxEditAttempts = 16
)

// Headers of an announcement.
const (
	instanceHeader = "Mnm-Instance"
	incHeader      = "Mnm-Inc"
	seqHeader      = "Mnm-Seq"
)

// Statuses of an announcement, as published.
const (
	statusOnline  = "1"
	statusOffline = "2"
)

// Errors of Edit.
var (
	ErrListTooLong = fmt.Errorf("bus: presence list longer than %d", maxListLen)
	ErrEditRace    = errors.New("bus: presence list changed under every edit attempt")
)

// presence is a Bus's presence state.
type presence struct {
	ohi       jetstream.KeyValue
	ohiStream jetstream.Stream
	watcher   jetstream.KeyWatcher
	instance  string // this Bus's instance: the announcements' sequence domain
	cleanups  chan cleanup
	ctx       context.Context // ends with the Bus
	wg        sync.WaitGroup  // the snapshots being taken

	// mu guards the fields below. It nests outside Bus.mu (announce reads
	// the incarnation); no callback runs under it.
	mu    sync.Mutex
	local map[string]bool  // users with a device on this frontend
	seq   uint64           // last announcement sent
	views map[string]*view // other frontends, by name
	lists map[string]*list // the lists, by uid
	// dropped holds lists deleted from the bucket while their users were
	// still online here: the frontend where a user went offline deletes
	// its list at once, and the announcement may reach this one after the
	// delete. The list is kept for this frontend's own going of the user,
	// one sweep at most.
	dropped map[string]*list
	naming  map[string]map[string]bool // uid → users whose lists name it
	ready   bool                       // the start's snapshots were taken
}

// view is what a Bus knows of another frontend's online users.
type view struct {
	instance string // "" until the first snapshot or announcement
	inc      string // its session incarnation, for the liveness check
	seq      uint64
	users    map[string]bool
	syncing  bool           // a snapshot is being taken
	pending  []announcement // arrived while syncing
	overflow bool           // pending overflowed: take the snapshot again
}

// list is a cached presence list.
type list struct {
	rev    uint64
	uids   []string
	orphan bool // its user was online nowhere at the last sweep
}

// announcement is one parsed <prefix>.user.<uid> message.
type announcement struct {
	instance, inc string
	seq           uint64
	uid           string
	online        bool
}

// cleanup is a list to delete if still at rev.
type cleanup struct {
	uid string
	rev uint64
}

// snapshot is one page of a frontend's answer to a snapshot request.
type snapshot struct {
	Instance string   `json:"instance"`
	Inc      string   `json:"inc"`
	Seq      uint64   `json:"seq"`
	Users    []string `json:"users"`
	Last     bool     `json:"last"`
}

// gone is a user now online nowhere, with its last list.
type gone struct {
	uid  string
	list []string
	rev  uint64
}

// startPresence binds the lists' bucket, subscribes, loads the lists and
// takes a snapshot of every live frontend. Goroutines end with loopCtx.
func (b *Bus) startPresence(ctx, loopCtx context.Context) error {
	p := &b.p
	p.instance = newIncarnation()
	p.ctx = loopCtx
	p.cleanups = make(chan cleanup, maxCleanups)
	p.local = make(map[string]bool)
	p.views = make(map[string]*view)
	p.lists = make(map[string]*list)
	p.dropped = make(map[string]*list)
	p.naming = make(map[string]map[string]bool)
	var err error
	if p.ohi, p.ohiStream, err = b.bucket(ctx, "OHI", 0); err != nil {
		return err
	}
	subs := []struct {
		subj string
		h    nats.MsgHandler
	}{
		{b.opts.Prefix + ".user.*", b.onAnnouncement},
		{b.opts.Prefix + ".users." + encode(b.opts.Frontend), b.onSnapshotRequest},
		{b.opts.Prefix + ".ohi.*", b.onNotice},
	}
	for _, s := range subs {
		sub, err := b.nc.Subscribe(s.subj, s.h)
		if err != nil {
			return fmt.Errorf("bus: subscribe %s: %w", s.subj, err)
		}
		b.subs = append(b.subs, sub)
	}
	if err := b.nc.FlushTimeout(opTimeout); err != nil {
		return fmt.Errorf("bus: flush subscriptions: %w", err)
	}
	if p.watcher, err = p.ohi.WatchAll(loopCtx); err != nil {
		return fmt.Errorf("bus: watch presence lists: %w", err)
	}
	loaded := make(chan struct{})
	b.loopWG.Go(func() { b.watchLists(loaded) })
	select {
	case <-loaded:
	case <-ctx.Done():
		return fmt.Errorf("bus: load presence lists: %w", ctx.Err())
	}
	names, err := b.liveFrontends(ctx)
	if err != nil {
		return err
	}
	// The snapshots are taken in parallel; one that takes longer than
	// startWait goes on in the background, its view marked syncing.
	var started sync.WaitGroup
	for _, fe := range names {
		p.mu.Lock()
		v := p.viewLocked(fe)
		if v == nil || v.syncing {
			p.mu.Unlock()
			continue
		}
		v.syncing = true
		p.mu.Unlock()
		started.Add(1)
		p.wg.Go(func() {
			defer started.Done()
			b.syncView(fe, v)
		})
	}
	synced := make(chan struct{})
	go func() { started.Wait(); close(synced) }()
	select {
	case <-synced:
	case <-time.After(startWait):
		b.log.Warn("presence snapshots of other frontends still being taken at start")
	case <-ctx.Done():
		return fmt.Errorf("bus: presence snapshots: %w", ctx.Err())
	}
	p.mu.Lock()
	p.ready = true
	p.mu.Unlock()
	b.loopWG.Go(func() { b.presenceLoop(loopCtx) })
	b.loopWG.Go(func() { b.cleanupLoop(loopCtx) })
	return nil
}

// stopWatcher stops the lists' watcher, which ends watchLists; Close calls
// it before waiting for the loops.
func (b *Bus) stopWatcher() {
	if b.p.watcher != nil {
		b.p.watcher.Stop()
	}
}

// stopPresence waits for the snapshots being taken; Close calls it after
// the loops have stopped and the subscriptions are gone.
func (b *Bus) stopPresence() { b.p.wg.Wait() }

// liveFrontends lists the frontends with a liveness key, but this one.
func (b *Bus) liveFrontends(ctx context.Context) ([]string, error) {
	lister, err := b.fe.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("bus: list frontends: %w", err)
	}
	var names []string
	for k := range lister.Keys() {
		fe, err := decode(k)
		if err != nil || fe == "" || fe == b.opts.Frontend {
			continue
		}
		names = append(names, fe)
	}
	return names, nil
}

// viewLocked returns fe's view, made if new, or nil when there are
// maxFrontends already. p.mu is held.
func (p *presence) viewLocked(fe string) *view {
	v := p.views[fe]
	if v == nil {
		if len(p.views) >= maxFrontends {
			return nil
		}
		v = &view{users: make(map[string]bool)}
		p.views[fe] = v
	}
	return v
}

// SetOnline records whether uid has a device on this frontend and, on a
// change, announces it. A user thereby online nowhere is gone: OnUserGone
// is called before SetOnline returns. Calls must be serialised per uid by
// the caller (qlib.Server does, see qlib.Presence).
func (b *Bus) SetOnline(uid string, online bool) error {
	if uid == "" {
		return ErrBadName
	}
	p := &b.p
	p.mu.Lock()
	if p.local[uid] == online {
		p.mu.Unlock()
		return nil
	}
	if online {
		p.local[uid] = true
	} else {
		delete(p.local, uid)
	}
	p.seq++
	b.mu.Lock()
	inc, closed := b.inc, b.closed
	b.mu.Unlock()
	var err error
	if !closed {
		m := nats.NewMsg(b.opts.Prefix + ".user." + encode(uid))
		m.Header.Set(frontendHeader, b.opts.Frontend)
		m.Header.Set(instanceHeader, p.instance)
		m.Header.Set(incHeader, inc)
		m.Header.Set(seqHeader, strconv.FormatUint(p.seq, 10))
		m.Data = []byte(statusOffline)
		if online {
			m.Data = []byte(statusOnline)
		}
		// Buffered by the client: no wait under p.mu. A lost one is a gap
		// the others see at our next announcement.
		err = b.nc.PublishMsg(m)
	}
	var gs []gone
	if !online {
		gs = p.goneLocked(gs, uid)
	}
	p.mu.Unlock()
	b.finishGone(gs)
	if err != nil {
		return fmt.Errorf("bus: announce: %w", err)
	}
	return nil
}

// onlineLocked reports whether uid is online on any frontend. p.mu is held.
func (p *presence) onlineLocked(uid string) bool {
	return p.local[uid] || p.elsewhereLocked(uid)
}

// elsewhereLocked reports whether uid is online on another frontend. p.mu
// is held.
func (p *presence) elsewhereLocked(uid string) bool {
	for _, v := range p.views {
		if v.users[uid] {
			return true
		}
	}
	return false
}

// goneLocked appends uid to gs if it is online nowhere, with its list.
// p.mu is held.
func (p *presence) goneLocked(gs []gone, uid string) []gone {
	if p.onlineLocked(uid) {
		return gs
	}
	g := gone{uid: uid}
	if l := p.lists[uid]; l != nil {
		g.list, g.rev = l.uids, l.rev
	} else if l := p.dropped[uid]; l != nil {
		g.list = l.uids // deleted already: no rev to delete at
	}
	delete(p.dropped, uid)
	return append(gs, g)
}

// finishGone tells OnUserGone of each user gone and queues the deletes of
// their lists. No lock is held.
func (b *Bus) finishGone(gs []gone) {
	for _, g := range gs {
		if g.rev != 0 {
			select {
			case b.p.cleanups <- cleanup{g.uid, g.rev}:
			default: // the sweep deletes it
			}
		}
		if b.opts.OnUserGone != nil && len(g.list) > 0 {
			b.opts.OnUserGone(g.uid, g.list)
		}
	}
}

// onAnnouncement applies another frontend's announcement. One that does
// not parse is logged and dropped.
func (b *Bus) onAnnouncement(m *nats.Msg) {
	fe := m.Header.Get(frontendHeader)
	if fe == b.opts.Frontend {
		return
	}
	a, err := parseAnnouncement(m)
	if err != nil || fe == "" {
		b.log.Warn("presence announcement dropped", "subject", m.Subject, "err", err)
		return
	}
	p := &b.p
	p.mu.Lock()
	v := p.viewLocked(fe)
	if v == nil {
		p.mu.Unlock()
		b.log.Warn("presence announcement of one frontend too many dropped", "limit", maxFrontends)
		return
	}
	var gs []gone
	resync := false
	switch {
	case v.syncing:
		if len(v.pending) >= maxPending {
			v.pending, v.overflow = nil, true
		} else {
			v.pending = append(v.pending, a)
		}
	case a.instance != v.instance && a.seq == 1:
		// A new instance's first word: it had no one online before.
		gs = p.replaceLocked(gs, v, a.instance, a.inc, 0, nil)
		gs = p.applyLocked(gs, v, a)
	case a.instance != v.instance || a.seq > v.seq+1:
		v.syncing, v.pending = true, append(v.pending[:0], a)
		resync = true
	case a.seq <= v.seq:
		// Already in the snapshot.
	default:
		gs = p.applyLocked(gs, v, a)
	}
	p.mu.Unlock()
	b.finishGone(gs)
	if resync {
		p.wg.Go(func() { b.syncView(fe, v) })
	}
}

// parseAnnouncement reads an announcement's uid, status and headers.
func parseAnnouncement(m *nats.Msg) (announcement, error) {
	var a announcement
	uid, err := decode(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	if err != nil || uid == "" {
		return a, errors.New("bad uid")
	}
	a.uid = uid
	switch string(m.Data) {
	case statusOnline:
		a.online = true
	case statusOffline:
	default:
		return a, errors.New("bad status")
	}
	a.instance, a.inc = m.Header.Get(instanceHeader), m.Header.Get(incHeader)
	if a.instance == "" || a.inc == "" {
		return a, errors.New("no instance")
	}
	if a.seq, err = strconv.ParseUint(m.Header.Get(seqHeader), 10, 64); err != nil || a.seq == 0 {
		return a, errors.New("bad sequence")
	}
	return a, nil
}

// applyLocked applies a to v, the next in sequence. p.mu is held.
func (p *presence) applyLocked(gs []gone, v *view, a announcement) []gone {
	v.seq, v.inc = a.seq, a.inc
	if !a.online {
		delete(v.users, a.uid)
		return p.goneLocked(gs, a.uid)
	}
	if len(v.users) >= maxUsersPerFrontend {
		return gs // counted nowhere: the frontend is broken or hostile
	}
	v.users[a.uid] = true
	return gs
}

// replaceLocked gives v a new state (a snapshot, or a new instance) and
// returns the users thereby gone. p.mu is held.
func (p *presence) replaceLocked(gs []gone, v *view, instance, inc string, seq uint64, users map[string]bool) []gone {
	old := v.users
	if users == nil {
		users = make(map[string]bool)
	}
	v.instance, v.inc, v.seq, v.users = instance, inc, seq, users
	for uid := range old {
		if !users[uid] {
			gs = p.goneLocked(gs, uid)
		}
	}
	return gs
}

// syncView takes a snapshot of fe into v (marked syncing by the caller),
// then applies the announcements that came meanwhile; it tries again while
// fe lives and v is still fe's view.
func (b *Bus) syncView(fe string, v *view) {
	p := &b.p
	ctx := p.ctx
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if sleep(ctx, b.pollEvery) != nil {
				return
			}
		}
		snap, err := b.fetchSnapshot(ctx, fe)
		if err != nil && ctx.Err() != nil {
			return
		}
		if err != nil {
			b.log.Debug("presence snapshot failed", "of", fe, "err", err)
			// A frontend without a liveness key is gone (or never
			// started): what it held, it holds no more.
			value, _, lerr := b.lastValue(ctx, b.feStream, b.fe.Bucket(), encode(fe))
			if lerr != nil || value != nil {
				continue
			}
			var gs []gone
			p.mu.Lock()
			if p.views[fe] == v {
				delete(p.views, fe)
				gs = p.replaceLocked(gs, v, "", "", 0, nil)
			}
			p.mu.Unlock()
			b.finishGone(gs)
			return
		}
		p.mu.Lock()
		if p.views[fe] != v {
			p.mu.Unlock()
			return
		}
		var gs []gone
		gs = p.replaceLocked(gs, v, snap.instance, snap.inc, snap.seq, snap.users)
		pending := v.pending
		v.pending = nil
		again := v.overflow
		v.overflow = false
		for _, a := range pending {
			if a.instance != v.instance || a.seq <= v.seq {
				continue
			}
			if a.seq != v.seq+1 {
				again = true
				break
			}
			gs = p.applyLocked(gs, v, a)
		}
		if !again {
			v.syncing = false
		}
		p.mu.Unlock()
		b.finishGone(gs)
		if !again {
			return
		}
	}
}

// fullSnapshot is a frontend's snapshot, assembled from its pages.
type fullSnapshot struct {
	instance, inc string
	seq           uint64
	users         map[string]bool
}

// fetchSnapshot asks fe for its online users and reads the pages.
func (b *Bus) fetchSnapshot(ctx context.Context, fe string) (fullSnapshot, error) {
	var s fullSnapshot
	inbox := b.nc.NewRespInbox()
	sub, err := b.nc.SubscribeSync(inbox)
	if err != nil {
		return s, err
	}
	defer sub.Unsubscribe()
	if err := b.nc.PublishRequest(b.opts.Prefix+".users."+encode(fe), inbox, nil); err != nil {
		return s, err
	}
	s.users = make(map[string]bool)
	for first := true; ; first = false {
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		m, err := sub.NextMsgWithContext(wctx)
		cancel()
		if err != nil {
			return s, err
		}
		var page snapshot
		if err := json.Unmarshal(m.Data, &page); err != nil || page.Instance == "" {
			return s, fmt.Errorf("bad snapshot page from %s", fe)
		}
		if first {
			s.instance, s.inc, s.seq = page.Instance, page.Inc, page.Seq
		} else if page.Instance != s.instance || page.Seq != s.seq {
			return s, fmt.Errorf("snapshot pages of %s disagree", fe)
		}
		for _, uid := range page.Users {
			if uid != "" && len(s.users) < maxUsersPerFrontend {
				s.users[uid] = true
			}
		}
		if page.Last {
			return s, nil
		}
	}
}

// onSnapshotRequest answers a snapshot request with our online users, in
// pages, all of one moment.
func (b *Bus) onSnapshotRequest(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	p := &b.p
	p.mu.Lock()
	users := make([]string, 0, len(p.local))
	for uid := range p.local {
		users = append(users, uid)
	}
	seq := p.seq
	b.mu.Lock()
	inc := b.inc
	b.mu.Unlock()
	p.mu.Unlock()
	for start := 0; ; start += snapshotPage {
		end := min(start+snapshotPage, len(users))
		page := snapshot{Instance: p.instance, Inc: inc, Seq: seq, Users: users[start:end], Last: end == len(users)}
		data, err := json.Marshal(page)
		if err == nil {
			err = b.nc.Publish(m.Reply, data)
		}
		if err != nil {
			b.log.Warn("presence snapshot reply failed", "err", err)
			return
		}
		if page.Last {
			return
		}
	}
}

// Notify sends a notice for user to (from's status changed) to the other
// frontends, if to is online on any. Best effort.
func (b *Bus) Notify(to, from string, status int64) error {
	if to == "" || from == "" {
		return ErrBadName
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	p := &b.p
	p.mu.Lock()
	elsewhere := p.elsewhereLocked(to)
	p.mu.Unlock()
	if !elsewhere {
		return nil
	}
	m := nats.NewMsg(b.opts.Prefix + ".ohi." + encode(to))
	m.Header.Set(frontendHeader, b.opts.Frontend)
	m.Data = fmt.Appendf(nil, "%d %s", status, encode(from))
	return b.nc.PublishMsg(m)
}

// onNotice passes a notice for one of our users to OnPresence. One that
// does not parse is logged and dropped.
func (b *Bus) onNotice(m *nats.Msg) {
	if m.Header.Get(frontendHeader) == b.opts.Frontend {
		return
	}
	to, err := decode(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	if err != nil || to == "" {
		b.log.Warn("presence notice with a bad uid dropped", "subject", m.Subject)
		return
	}
	st, enc, ok := strings.Cut(string(m.Data), " ")
	status, err := strconv.ParseInt(st, 10, 64)
	from, derr := decode(enc)
	if !ok || err != nil || derr != nil || from == "" {
		b.log.Warn("presence notice that does not parse dropped", "subject", m.Subject)
		return
	}
	p := &b.p
	p.mu.Lock()
	here := p.local[to]
	p.mu.Unlock()
	if here && b.opts.OnPresence != nil {
		b.opts.OnPresence(to, from, status)
	}
}

// Naming returns the users online anywhere whose lists name uid, sorted.
func (b *Bus) Naming(uid string) []string {
	p := &b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for u := range p.naming[uid] {
		if p.onlineLocked(u) {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// Edit applies edit to uid's list and writes it by compare-and-set over the
// revision read from the stream leader; a conflict reads and edits again.
// edit gets the list as a set and may be called more than once; the last
// call's result is written. A list would grow past maxListLen: ErrListTooLong.
func (b *Bus) Edit(ctx context.Context, uid string, edit func(map[string]bool)) error {
	if uid == "" {
		return ErrBadName
	}
	p := &b.p
	key := encode(uid)
	for range maxEditAttempts {
		value, rev, err := b.lastValue(ctx, p.ohiStream, p.ohi.Bucket(), key)
		if err != nil {
			return fmt.Errorf("bus: edit presence list: %w", err)
		}
		set := make(map[string]bool)
		uids, err := parseList(value)
		if err != nil {
			b.log.Warn("unreadable presence list overwritten", "revision", rev)
		}
		for _, v := range uids {
			set[v] = true
		}
		edit(set)
		if len(set) > maxListLen {
			return ErrListTooLong
		}
		out := make([]string, 0, len(set))
		for v, ok := range set {
			if ok && v != "" {
				out = append(out, v)
			}
		}
		slices.Sort(out)
		data, err := json.Marshal(out)
		if err != nil {
			return fmt.Errorf("bus: edit presence list: %w", err)
		}
		wctx, cancel := context.WithTimeout(ctx, opTimeout)
		_, err = p.ohi.Update(wctx, key, data, rev)
		cancel()
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bus: write presence list: %w", err)
		}
		return nil
	}
	return ErrEditRace
}

// parseList reads a list as stored: a JSON array of at most maxListLen
// uids. nil or empty is the empty list.
func parseList(value []byte) ([]string, error) {
	if len(value) == 0 {
		return nil, nil
	}
	var uids []string
	if err := json.Unmarshal(value, &uids); err != nil {
		return nil, err
	}
	if len(uids) > maxListLen {
		return nil, ErrListTooLong
	}
	return slices.DeleteFunc(uids, func(s string) bool { return s == "" }), nil
}

// watchLists installs every write of the lists' bucket in memory; it
// closes loaded once the lists present at start are in.
func (b *Bus) watchLists(loaded chan struct{}) {
	p := &b.p
	for e := range p.watcher.Updates() {
		if e == nil {
			if loaded != nil {
				close(loaded)
				loaded = nil
			}
			continue
		}
		uid, err := decode(e.Key())
		if err != nil || uid == "" {
			b.log.Warn("presence list with a bad key ignored", "key", e.Key())
			continue
		}
		var uids []string
		if e.Operation() == jetstream.KeyValuePut {
			if uids, err = parseList(e.Value()); err != nil {
				b.log.Warn("unreadable presence list ignored", "revision", e.Revision(), "err", err)
				uids = nil
			}
		}
		p.mu.Lock()
		old := p.lists[uid]
		put := e.Operation() == jetstream.KeyValuePut
		if put {
			delete(p.dropped, uid)
		} else if old != nil && p.onlineLocked(uid) {
			p.dropped[uid] = &list{uids: old.uids}
		}
		p.installLocked(uid, old, uids, e.Revision(), put)
		// A list written for a user online nowhere raced the user's going:
		// those it adds are told now, as the going would have told them.
		var late []string
		if p.ready && e.Operation() == jetstream.KeyValuePut && !p.onlineLocked(uid) {
			for _, v := range uids {
				if old == nil || !slices.Contains(old.uids, v) {
					late = append(late, v)
				}
			}
		}
		p.mu.Unlock()
		if len(late) > 0 && b.opts.OnUserGone != nil {
			b.opts.OnUserGone(uid, late)
		}
	}
}

// installLocked replaces uid's cached list old with uids at rev (put), or
// removes it, keeping the index. p.mu is held.
func (p *presence) installLocked(uid string, old *list, uids []string, rev uint64, put bool) {
	if old != nil {
		for _, v := range old.uids {
			if n := p.naming[v]; n != nil {
				delete(n, uid)
				if len(n) == 0 {
					delete(p.naming, v)
				}
			}
		}
		delete(p.lists, uid)
	}
	if !put {
		return
	}
	p.lists[uid] = &list{rev: rev, uids: uids}
	for _, v := range uids {
		n := p.naming[v]
		if n == nil {
			n = make(map[string]bool)
			p.naming[v] = n
		}
		n[uid] = true
	}
}

// presenceLoop checks, every renewal interval, the liveness of the
// frontends viewed, and sweeps the lists of users online nowhere.
func (b *Bus) presenceLoop(ctx context.Context) {
	t := time.NewTicker(b.renewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.checkViews(ctx)
		b.sweepLists()
	}
}

// checkViews drops the view of each frontend whose incarnation is dead, and
// takes a new snapshot of one that lives on under a new incarnation.
func (b *Bus) checkViews(ctx context.Context) {
	p := &b.p
	type seen struct {
		fe, inc string
		v       *view
	}
	var vs []seen
	p.mu.Lock()
	for fe, v := range p.views {
		if !v.syncing && v.inc != "" {
			vs = append(vs, seen{fe, v.inc, v})
		}
	}
	p.mu.Unlock()
	for _, s := range vs {
		value, _, err := b.lastValue(ctx, b.feStream, b.fe.Bucket(), encode(s.fe))
		if err != nil {
			if ctx.Err() == nil {
				b.log.Debug("liveness read failed", "of", s.fe, "err", err)
			}
			continue
		}
		if value != nil && string(value) == s.inc {
			continue
		}
		var gs []gone
		p.mu.Lock()
		if p.views[s.fe] != s.v || s.v.syncing {
			p.mu.Unlock()
			continue
		}
		delete(p.views, s.fe)
		for uid := range s.v.users {
			gs = p.goneLocked(gs, uid)
		}
		var nv *view
		if value != nil {
			// Fenced and renewed under a new incarnation: its devices
			// were dropped; what it holds now comes in a snapshot.
			nv = p.viewLocked(s.fe)
			nv.syncing = true
		}
		p.mu.Unlock()
		b.log.Info("frontend gone: its users are offline here", "of", s.fe, "users", len(s.v.users))
		b.finishGone(gs)
		if nv != nil {
			p.wg.Go(func() { b.syncView(s.fe, nv) })
		}
	}
}

// sweepLists queues the delete of each list whose user was online nowhere
// at this sweep and the last: a delete that failed, or a write that raced
// the user's going. Only when every view is whole.
func (b *Bus) sweepLists() {
	p := &b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, l := range p.dropped {
		// A list dropped while its user was online here, kept a sweep:
		// by now the user's going has been seen, or the user is online
		// again with a new list.
		if l.orphan {
			delete(p.dropped, uid)
		} else {
			l.orphan = true
		}
	}
	for _, v := range p.views {
		if v.syncing {
			return
		}
	}
	for uid, l := range p.lists {
		if p.onlineLocked(uid) {
			l.orphan = false
			continue
		}
		if !l.orphan {
			l.orphan = true
			continue
		}
		select {
		case p.cleanups <- cleanup{uid, l.rev}:
		default:
			return
		}
	}
}

// cleanupLoop deletes the lists queued, each if still at the revision
// known: a list written since belongs to a user back online.
func (b *Bus) cleanupLoop(ctx context.Context) {
	p := &b.p
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-p.cleanups:
			dctx, cancel := context.WithTimeout(ctx, opTimeout)
			err := p.ohi.Delete(dctx, encode(c.uid), jetstream.LastRevision(c.rev))
			cancel()
			if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && ctx.Err() == nil {
				b.log.Warn("delete presence list failed; the sweep retries", "err", err)
			}
		}
	}
}

package qlib

import (
	"fmt"
	"slices"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// Presence (SPEC §6): an online user U may hold a list of uids to be told
// that U is online. The list lives while U has a device logged in; ohi
// notices are best effort, never stored, and are queued for each recipient
// link's deliver goroutine so that a slow link cannot block the sender. A
// list is a set: naming a uid twice in an OhiEdit is naming it once, and a
// link waits for at most one notice from each sender (sendOhi).
//
// The lists live in Server.ohi, guarded by Server.mu with the links; across
// frontends they live in Config.Presence instead (presence_cluster.go).

// Presence statuses of an ohi notice.
const (
	ohiOnline  = 1
	ohiOffline = 2
)

// OhiEdit types.
const (
	ohiAdd  = "add"
	ohiDrop = "drop"
	ohiInit = "init"
)

// opOhiEdit edits the list of users told of this user's presence (op 4).
// The list in the request is bounded by the parser (tmtp.MaxRecipients); its
// repeats are dropped before anything is looked up or notified, so that one
// frame naming a uid 1,400 times costs one lookup and one notice. The echo
// stored for the sender's devices keeps the list as sent.
func (l *link) opOhiEdit(h *tmtp.Header) error {
	dir := l.srv.cfg.Directory
	uids := make([]string, 0, len(h.For))
	seen := make(map[string]bool, len(h.For))
	for _, r := range h.For {
		if seen[r.ID] {
			continue
		}
		seen[r.ID] = true
		if _, err := dir.Devices(r.ID); err != nil {
			return l.ackError(h.ID, fmt.Errorf("%w: %s", errUnknownRecipient, r.ID))
		}
		uids = append(uids, r.ID)
	}
	if h.Type != ohiInit {
		echo := make([]tmtp.Recipient, len(h.For))
		for i, r := range h.For {
			echo[i] = tmtp.Recipient{ID: r.ID}
		}
		devs, err := dir.Devices(l.uid)
		if err != nil {
			return fmt.Errorf("ohiedit: %w", err)
		}
		fields := []tmtp.Field{tmtp.OhiEditFor(echo), tmtp.String("op", "ohiedit"), tmtp.String("type", h.Type)}
		if !l.fitsFrame(fields...) {
			return l.ackError(h.ID, errHeaderTooLong)
		}
		if _, err := l.storeNotice(store.Normal, devs, fields...); err != nil {
			return fmt.Errorf("ohiedit: %w", err)
		}
	}
	if err := l.ackOK(h.ID); err != nil {
		return err
	}
	l.srv.editOhi(l.uid, h.Type, uids)
	return nil
}

// editOhi applies an OhiEdit to uid's list and sends the resulting notices.
// uids holds no repeats.
func (s *Server) editOhi(uid, typ string, uids []string) {
	if s.cfg.Presence != nil {
		s.editOhiShared(uid, typ, uids)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.users[uid]) == 0 {
		return // the user went offline meanwhile; the list would be discarded
	}
	list := s.ohi[uid]
	if list == nil {
		list = make(map[string]bool)
		s.ohi[uid] = list
	}
	applyOhiEdit(list, typ, uids, func(v string, status int64) { s.notifyLocked(v, uid, status) })
}

// applyOhiEdit edits list by an OhiEdit of type typ naming uids (no
// repeats) and calls notify for each notice the edit makes: online for each
// uid added (again or not), offline for each dropped.
func applyOhiEdit(list map[string]bool, typ string, uids []string, notify func(v string, status int64)) {
	switch typ {
	case ohiInit:
		keep := make(map[string]bool, len(uids))
		for _, v := range uids {
			keep[v] = true
		}
		for v := range list {
			if !keep[v] {
				delete(list, v)
				notify(v, ohiOffline)
			}
		}
		fallthrough
	case ohiAdd:
		for _, v := range uids {
			list[v] = true
			notify(v, ohiOnline)
		}
	case ohiDrop:
		for _, v := range uids {
			if list[v] {
				delete(list, v)
				notify(v, ohiOffline)
			}
		}
	}
}

// notifyLocked tells every online device of user to that from's status
// changed, unless to blocks from (the "block" extension): from cannot tell,
// since notices are best effort and never acknowledged. s.mu is held (and
// the directory's locks are taken under it, never the reverse).
func (s *Server) notifyLocked(to, from string, status int64) {
	if len(s.users[to]) == 0 || s.cfg.Directory.Blocked(to, from) {
		return
	}
	for _, l := range s.users[to] {
		l.sendOhi(from, status)
	}
}

// ohiFor lists the online users whose presence lists include uid, for the
// login reply, but for those uid blocks. s.mu is held.
func (s *Server) ohiForLocked(uid string) []string {
	var out []string
	for u, list := range s.ohi {
		if list[uid] && len(s.users[u]) > 0 && !s.cfg.Directory.Blocked(uid, u) {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// userOfflineLocked runs when uid's last device goes offline: everyone on its
// list is told, and the list is discarded. s.mu is held.
func (s *Server) userOfflineLocked(uid string) {
	for v := range s.ohi[uid] {
		s.notifyLocked(v, uid, ohiOffline)
	}
	delete(s.ohi, uid)
}

package qlib

import "slices"

// Presence is qlib's view of presence across a site's frontends (the
// clustered backend, cluster/DESIGN.md "Presence across frontends"). On one
// machine there is none (Config.Presence nil): the lists live in Server.ohi
// and "online" means "a device logged in here" (presence.go).
//
// With a Presence, SPEC §6 holds site-wide:
//   - a user is online while any frontend holds one of its devices; each
//     Server tells its Presence when a user's devices here go from none to
//     some and back (SetOnline), and the Presence counts the frontends;
//   - a user's list lives in the Presence while the user is online
//     anywhere, and an OhiEdit on any frontend edits it (Edit);
//   - the notices an OhiEdit makes are sent by the Server that made them,
//     blocks checked there: to its own links directly, to the other
//     frontends through Notify, which hands them to their Servers'
//     PresenceNotice;
//   - when a user's last device anywhere goes, the Presence of every
//     frontend calls its Server's UserGone with the user's last list: each
//     tells its own links (blocks checked there), and the list is dropped;
//   - the login reply lists Naming(uid): the online users whose lists name
//     uid, read from memory.
//
// Locks: the Server calls its Presence with none of its locks held, and a
// Presence calls the Server's PresenceNotice and UserGone with none of its
// own held (those take Server.mu themselves). SetOnline calls for one
// Server are serialised by the Server (Server.pmu), so a Presence sees a
// user's changes in the order they happened.
type Presence interface {
	// SetOnline records whether uid has a device logged in on this
	// frontend now, and announces a change to the other frontends. It must
	// not wait for the network (a publish may be buffered). When the user
	// is then online nowhere, the Presence calls UserGone(uid, list) itself
	// (possibly from within SetOnline).
	SetOnline(uid string, online bool)
	// Edit applies edit to uid's list (a set of uids, nil entries absent)
	// and stores the result site-wide. edit may be called more than once
	// (a compare-and-set lost to an edit on another frontend is retried
	// over the newer list); the last call's result is the one stored. It
	// waits for the network; an error means the list is unchanged.
	Edit(uid string, edit func(list map[string]bool)) error
	// Notify hands the other frontends a notice for user to: from's
	// status changed (ohiOnline or ohiOffline). Best effort, as notices
	// are: it does not wait, and a frontend that holds none of to's
	// devices drops it.
	Notify(to, from string, status int64)
	// Naming returns the users online on any frontend whose lists name
	// uid, in any order, from memory.
	Naming(uid string) []string
}

// setOnline tells the Presence whether uid has devices here now. The state
// is read under s.mu and handed over under s.pmu, so that two changes of
// one user racing (a last link ending as a new one logs in) reach the
// Presence in order, the last with the state that holds.
func (s *Server) setOnline(uid string) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	s.mu.Lock()
	online := len(s.users[uid]) > 0
	s.mu.Unlock()
	s.cfg.Presence.SetOnline(uid, online)
}

// presenceForLogin is ohiForLocked across frontends: the online users whose
// lists name uid, but for those uid blocks, sorted. No lock is held.
func (s *Server) presenceForLogin(uid string) []string {
	var out []string
	for _, u := range s.cfg.Presence.Naming(uid) {
		if !s.cfg.Directory.Blocked(uid, u) {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ohiNotice is one notice an OhiEdit makes: to is told that the editor's
// status is status.
type ohiNotice struct {
	to     string
	status int64
}

// editOhiShared is editOhi across frontends: the list is edited in the
// Presence, and the notices go to this server's links and to the other
// frontends. No lock is held.
func (s *Server) editOhiShared(uid, typ string, uids []string) {
	s.mu.Lock()
	online := len(s.users[uid]) > 0
	s.mu.Unlock()
	if !online {
		return // the user went offline meanwhile; the list would be discarded
	}
	var notices []ohiNotice
	err := s.cfg.Presence.Edit(uid, func(list map[string]bool) {
		notices = notices[:0]
		applyOhiEdit(list, typ, uids, func(v string, status int64) {
			notices = append(notices, ohiNotice{v, status})
		})
	})
	if err != nil {
		s.log.Warn("ohiedit not applied: the site's presence lists are unreachable", "uid", uid, "err", err)
		return
	}
	for _, n := range notices {
		if s.cfg.Directory.Blocked(n.to, uid) {
			continue
		}
		s.mu.Lock()
		for _, l := range s.users[n.to] {
			l.sendOhi(uid, n.status)
		}
		s.mu.Unlock()
		s.cfg.Presence.Notify(n.to, uid, n.status)
	}
}

// PresenceNotice passes a notice another frontend made for user to (from's
// status changed) to this server's links of to. Blocks were checked where
// it was made. A status other than online or offline is dropped: it came
// off the network. Called by the Presence with none of its locks held.
func (s *Server) PresenceNotice(to, from string, status int64) {
	if status != ohiOnline && status != ohiOffline || from == "" {
		s.log.Warn("presence notice with a bad status dropped", "status", status)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.users[to] {
		l.sendOhi(from, status)
	}
}

// UserGone runs when uid's last device on any frontend has gone: this
// server's links of each user on list (uid's last list) are told uid is
// offline, unless that user blocks uid. Called by the Presence with none
// of its locks held.
func (s *Server) UserGone(uid string, list []string) {
	for _, v := range list {
		if v == uid || s.cfg.Directory.Blocked(v, uid) {
			continue
		}
		s.mu.Lock()
		for _, l := range s.users[v] {
			l.sendOhi(uid, ohiOffline)
		}
		s.mu.Unlock()
	}
}

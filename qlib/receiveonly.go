package qlib

import (
	"errors"

	"mnm/qlib/tmtp"
)

// Receive-only members (the "receiveonly" extension, Protocol.md): a member
// the operator marks receives as every member does, and may post, ping and
// invite only where the site's Config.MayReach allows. Everything else it
// does (acks, user and group edits, presence) is unchanged.

// ErrReceiveOnly is the ack error of a receive-only member's Post,
// PostNotify, Ping or GroupInvite that would reach someone Config.MayReach
// does not name.
var ErrReceiveOnly = errors.New("receive-only member")

// mayPost reports whether this link's user may post to every entry of the
// lists (a Post's for, a PostNotify's for and notefor). A member that is
// not receive-only may; a receive-only one only when each entry is its own
// uid, the uid of a user who holds one of the MayReach aliases, or a group
// whose gid MayReach names. An empty list reaches only the sender's own
// devices, so it is allowed.
func (l *link) mayPost(lists ...[]tmtp.Recipient) bool {
	dir := l.srv.cfg.Directory
	if !dir.ReceiveOnly(l.uid) {
		return true
	}
	var reach map[string]bool // uids holding a MayReach alias, resolved once
	for _, list := range lists {
		for _, r := range list {
			switch {
			case r.Type != tmtp.ForUser:
				if !l.srv.mayReach()[r.ID] {
					return false
				}
			case r.ID == l.uid:
			default:
				if reach == nil {
					reach = make(map[string]bool)
					for name := range l.srv.mayReach() {
						if uid, ok := dir.AliasUID(name); ok {
							reach[uid] = true
						}
					}
				}
				if !reach[r.ID] {
					return false
				}
			}
		}
	}
	return true
}

// mayPing reports whether this link's user may ping the alias to: any
// member may, except a receive-only one, which may ping only the MayReach
// aliases.
func (l *link) mayPing(to string) bool {
	return l.srv.mayReach()[to] || !l.srv.cfg.Directory.ReceiveOnly(l.uid)
}

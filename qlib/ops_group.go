package qlib

import (
	"errors"
	"fmt"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// opGroupInvite invites the user with alias to into group gid (op 5), creating
// the group if needed. The invitee and the inviter's other devices get the
// invitation with its text; the group's joined members get a member notice.
// Both are one commit.
func (l *link) opGroupInvite(h *tmtp.Header) error {
	text, err := l.readText(h)
	if err != nil {
		return err
	}
	// Every invitation counts, refused or not, as every ping does.
	if err := l.srv.limits.allowInvite(l.uid); err != nil {
		return l.ackError(h.ID, err)
	}
	// Inviting reaches the invitee and may create a group: a receive-only
	// member does neither, whatever MayReach names.
	if l.srv.cfg.Directory.ReceiveOnly(l.uid) {
		return l.ackError(h.ID, ErrReceiveOnly)
	}
	dir := l.srv.cfg.Directory
	// A gid that is not a group yet is created by this invitation, which
	// counts against the creator's groups. Groups are never removed, so
	// one that exists now still exists below; one created meanwhile by
	// someone else costs this member a creation it did not make, which is
	// harmless.
	if _, err := dir.GroupMembers(l.uid, h.Gid); errors.Is(err, ErrNoGroup) {
		if err := l.srv.limits.allowGroup(l.uid); err != nil {
			return l.ackError(h.ID, err)
		}
	}
	// The invitee's queues, and what the inviter may still send it, are
	// checked before the group changes, so that a refused invitation
	// changes nothing. The member notices are not: they are small, and
	// one full queue among a group's members must not stop its
	// invitations.
	if invitee, _, ok := dir.RecipientUID(h.To); ok {
		// Counted by uid, so that the invitee's many aliases do not
		// multiply the allowance.
		if err := l.srv.limits.allowInvitee(l.uid, invitee); err != nil {
			return l.ackError(h.ID, err)
		}
		toDevs, err := dir.Devices(invitee)
		var devs []string
		if err == nil {
			devs, err = l.keepSent(toDevs)
		}
		if err != nil {
			return l.ackError(h.ID, l.clientError(err))
		}
		if err := l.roomFor(devs, l.ownerIn(invitee, toDevs)); err != nil {
			return l.ackError(h.ID, err)
		}
	}
	ch, err := dir.GroupInvite(l.uid, h.Gid, h.From, h.To)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	inviteeDevs, err := dir.Devices(ch.Invitee)
	var inviteTo []string
	if err == nil {
		// An invitee who blocks the inviter gets no invitation, though the
		// group lists it, as it would any other: the inviter, and the
		// members' notices, see an invitation like every other.
		to := inviteeDevs
		if dir.Blocked(ch.Invitee, l.uid) {
			to = nil
		}
		inviteTo, err = l.keepSent(to)
	}
	if err != nil {
		return fmt.Errorf("groupinvite: %w", err)
	}
	noticeTo, err := l.devicesOf(ch.Notify)
	if err != nil {
		return fmt.Errorf("groupinvite: %w", err)
	}
	invite := l.envelope(int64(len(text)), tmtp.String("alias", h.From), tmtp.String("gid", h.Gid),
		tmtp.String("op", "invite"), tmtp.String("to", h.To))
	notice := l.envelope(0, tmtp.String("act", "invite"), tmtp.String("alias", ch.Alias),
		tmtp.String("gid", h.Gid), tmtp.String("op", "member"))
	msgs := []store.Message{
		{To: inviteTo, Len: int64(len(text)), Envelope: invite},
		{To: noticeTo, Envelope: notice},
	}
	if ch.Once {
		// GroupInvite consumed the single-use alias to, after every check
		// that could refuse the invitation.
		msgs = append(msgs, l.aliasUsed(ch.Invitee, inviteeDevs, h.To, h.From))
	}
	rs, err := l.commitText(text, msgs...)
	if err != nil {
		return fmt.Errorf("groupinvite: %w", err)
	}
	return l.ackStored(h.ID, rs[0])
}

// opGroupEdit joins, renames or drops a group member, or opens or closes
// the group (op 6, and the "opengroup" extension), and tells the group.
func (l *link) opGroupEdit(h *tmtp.Header) error {
	act := GroupAct(h.Act)
	if act == GroupOpen && h.Post {
		act = GroupOpenPost
	}
	ch, err := l.srv.cfg.Directory.GroupEdit(l.uid, act, h.Gid, h.NewAlias, h.To)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	to, err := l.devicesOf(ch.Notify)
	if err != nil {
		return fmt.Errorf("groupedit: %w", err)
	}
	fields := []tmtp.Field{tmtp.String("act", h.Act), tmtp.String("alias", ch.Alias),
		tmtp.String("gid", h.Gid), tmtp.String("op", "member")}
	if ch.NewAlias != "" {
		fields = append(fields, tmtp.String("newalias", ch.NewAlias))
	}
	if act == GroupOpenPost {
		fields = append(fields, tmtp.Int("post", 1))
	}
	if _, err := l.storeNotice(store.Normal, to, fields...); err != nil {
		return fmt.Errorf("groupedit: %w", err)
	}
	return l.ackOK(h.ID)
}

// devicesOf returns the devices of every user in uids.
func (l *link) devicesOf(uids []string) ([]string, error) {
	var to []string
	for _, uid := range uids {
		devs, err := l.srv.cfg.Directory.Devices(uid)
		if err != nil {
			return nil, err
		}
		to = append(to, devs...)
	}
	return to, nil
}

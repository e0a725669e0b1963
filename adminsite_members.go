package main

// Members and queues for the admin listener (admin.Backend): what `mnm
// admin users`, `user` and `queues` show, and the changes an operator makes
// to a member while the server runs. Each change has the effect the
// member's own request (or `mnm member`) has, at once: the user database
// is what qlib asks for every login, post and delivery.

import (
	"errors"
	"fmt"
	"strconv"

	"mnm/admin"
	"mnm/qlib"
)

// Users lists the members whose uid or a regular alias contains match,
// ordered by uid, at most limit, with their live devices counted and those
// logged in now.
func (d *daemon) Users(match string, limit int) ([]admin.UserSummary, error) {
	if limit < 1 {
		return nil, fmt.Errorf("%w: limit must be positive", admin.ErrInvalid)
	}
	members := d.users.Members(match, limit)
	var devs []string
	for _, m := range members {
		for _, dv := range m.Devices {
			devs = append(devs, dv.Dev(m.UID))
		}
	}
	online := d.srv.Online(devs)
	out := make([]admin.UserSummary, 0, len(members))
	for _, m := range members {
		s := admin.UserSummary{UID: m.UID, Aliases: nonNil(m.Aliases), Devices: len(m.Devices), ReceiveOnly: m.ReceiveOnly}
		for _, dv := range m.Devices {
			if online[dv.Dev(m.UID)] {
				s.Online++
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// User reports the member named by uid or regular alias: its names, joined
// groups, block list and each live device with its queue.
func (d *daemon) User(name string) (*admin.UserDetail, error) {
	m, ok := d.users.Member(name)
	if !ok {
		return nil, fmt.Errorf("%w: no member has the uid or alias %q", admin.ErrNotFound, name)
	}
	u := &admin.UserDetail{
		UID:         m.UID,
		Aliases:     nonNil(m.Aliases),
		OnceAliases: m.OnceAliases,
		Groups:      nonNil(d.users.MemberGroups(m.UID)),
		Blocks:      m.Blocks,
		ReceiveOnly: m.ReceiveOnly,
		Devices:     make([]admin.DeviceInfo, 0, len(m.Devices)),
	}
	devs := make([]string, 0, len(m.Devices))
	for _, dv := range m.Devices {
		devs = append(devs, dv.Dev(m.UID))
	}
	online := d.srv.Online(devs)
	for _, dv := range m.Devices {
		dev := dv.Dev(m.UID)
		u.Devices = append(u.Devices, admin.DeviceInfo{
			Num:         dv.Num,
			Label:       dv.Label,
			Online:      online[dev],
			Away:        dv.Away,
			LastLogin:   dv.LastLogin,
			Queued:      d.qstore.Len(dev),
			QueuedBytes: d.qstore.QueueBytes(dev),
		})
	}
	return u, nil
}

// Queues reports the top device queues, deepest first, each named by its
// member and device. A queue of a device retired a moment ago (its drain
// still running) has no label.
func (d *daemon) Queues(top int) ([]admin.QueueInfo, error) {
	if top < 1 {
		return nil, fmt.Errorf("%w: top must be positive", admin.ErrInvalid)
	}
	if d.store == nil {
		return nil, fmt.Errorf("%w: a frontend of a cluster lists no queues: the queues are the cluster's (nats stream info)", admin.ErrInvalid)
	}
	stats := d.store.Deepest(top)
	devs := make([]string, 0, len(stats))
	for _, st := range stats {
		devs = append(devs, st.Dev)
	}
	online := d.srv.Online(devs)
	out := make([]admin.QueueInfo, 0, len(stats))
	for _, st := range stats {
		q := admin.QueueInfo{Online: online[st.Dev], Queued: st.Messages, QueuedBytes: st.Bytes, Oldest: st.Oldest}
		if uid, dv, ok := d.users.DeviceOf(st.Dev); ok {
			q.UID, q.Num, q.Label = uid, dv.Num, dv.Label
		} else if uid, num, ok := splitDevKey(st.Dev); ok {
			q.UID, q.Num = uid, num
		} else {
			q.UID = st.Dev // not a device's key: shown as it is
		}
		out = append(out, q)
	}
	return out, nil
}

// RevokeDevice retires device num of member uid, as the member's dropnode
// would (qlib.Server.RevokeDevice): any device, the member's last included,
// since the operator is called for a stolen one.
func (d *daemon) RevokeDevice(uid string, num int) error {
	if num < 0 {
		return fmt.Errorf("%w: a device number is 0 or more", admin.ErrInvalid)
	}
	if !d.users.Exists(uid) {
		return noMember(uid)
	}
	err := d.srv.RevokeDevice(uid, strconv.Itoa(num))
	if errors.Is(err, qlib.ErrNoDevice) {
		return fmt.Errorf("%w: member %s has no device %d", admin.ErrNotFound, uid, num)
	}
	return err
}

// SetReceiveOnly makes member uid receive-only or a full member. qlib asks
// the user database at every post, so it holds from the member's next
// request; its devices are not told (Protocol.md, receiveonly).
func (d *daemon) SetReceiveOnly(uid string, on bool) (bool, error) {
	changed, err := d.directory.SetReceiveOnly(uid, on)
	if errors.Is(err, qlib.ErrNoUser) {
		return false, noMember(uid)
	}
	return changed, err
}

// Block adds name (a uid or a regular alias) to member uid's block list on
// the member's behalf, its devices told as for its own UserEdit block.
func (d *daemon) Block(uid, name string) (bool, error) {
	return d.editBlocks(uid, name, d.srv.Block)
}

// Unblock removes name's entry from member uid's block list, its devices
// told as for its own UserEdit unblock.
func (d *daemon) Unblock(uid, name string) (bool, error) {
	return d.editBlocks(uid, name, d.srv.Unblock)
}

// editBlocks checks a block list change and maps the directory's refusals
// to the listener's errors.
func (d *daemon) editBlocks(uid, name string, edit func(uid, name string) (bool, error)) (bool, error) {
	if name == "" {
		return false, fmt.Errorf("%w: name is required", admin.ErrInvalid)
	}
	// Checked first: the directory's ErrNoUser may also be about name.
	if !d.users.Exists(uid) {
		return false, noMember(uid)
	}
	changed, err := edit(uid, name)
	switch {
	case errors.Is(err, qlib.ErrNoUser), errors.Is(err, qlib.ErrAliasUnknown):
		return false, fmt.Errorf("%w: no member has the uid or alias %q", admin.ErrNotFound, name)
	case errors.Is(err, qlib.ErrBlockSelf), errors.Is(err, qlib.ErrTooManyBlocks):
		return false, fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	return changed, err
}

// noMember is the error for an unknown uid.
func noMember(uid string) error {
	return fmt.Errorf("%w: no member has the uid %q", admin.ErrNotFound, uid)
}

// nonNil returns s, or an empty slice for nil, so that JSON lists it as []
// rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

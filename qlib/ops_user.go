package qlib

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// opUserEdit adds an alias or a device to the user (op 3) and tells all of the
// user's devices, ahead of everything else in their queues; with the
// extensions (Protocol.md) it also lists and withdraws single-use aliases,
// edits and lists the block list, and lists and retires devices.
//
// A new device's nodeid (its password) goes only to the requesting device,
// which passes it on to the new one; the user's other devices, the new one
// included, get the same announcement without it (Protocol.md, UserEdit).
// SPEC §4 op 3 has every device get the nodeid, which would keep it on disk,
// and in backups, until the last device acknowledged it: forever, if one was
// lost. The requester's copy is a secret message (store.Message.Secret):
// never copied to a later device's queue, and reclaimed from the disk within
// minutes of its acknowledgement.
func (l *link) opUserEdit(h *tmtp.Header) error {
	dir := l.srv.cfg.Directory
	op := tmtp.String("op", "user")
	switch {
	case h.ListOnce:
		return l.listOnce(h)
	case h.DropAlias != "":
		return l.dropAlias(h)
	case h.Block != "":
		return l.block(h)
	case h.Unblock != "":
		return l.unblock(h)
	case h.ListBlock:
		return l.listBlock(h)
	case h.ListNode:
		return l.listNodes(h)
	case h.DropNode != "":
		return l.dropNode(h)
	case h.NewAlias != "":
		fields := []tmtp.Field{tmtp.String("newalias", h.NewAlias), op}
		var err error
		if h.Once {
			err = dir.AddOnceAlias(l.uid, h.NewAlias)
			fields = append(fields, tmtp.Int("once", 1))
		} else {
			err = dir.AddAlias(l.uid, h.NewAlias)
		}
		if err != nil {
			return l.ackError(h.ID, l.clientError(err))
		}
		if err := l.announce(fields...); err != nil {
			return fmt.Errorf("useredit: %w", err)
		}
		return l.ackOK(h.ID)
	}
	nodeid, dev, err := dir.AddDevice(l.uid, h.NewNode)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	// The new device starts with what this one has yet to receive.
	if err := l.srv.cfg.Store.CopyQueue(l.dev, dev); err != nil {
		return fmt.Errorf("useredit: %w", err)
	}
	l.log.Info("device added", "newdev", dev)
	devs, err := dir.Devices(l.uid)
	if err != nil {
		return fmt.Errorf("useredit: %w", err)
	}
	others := slices.DeleteFunc(slices.Clone(devs), func(d string) bool { return d == l.dev })
	label := tmtp.String("newnode", h.NewNode)
	// One commit: the announcement reaches all of the devices or none.
	_, err = l.srv.cfg.Store.Draft().Commit(
		store.Message{Prio: store.High, To: []string{l.dev}, Secret: true,
			Envelope: l.envelope(0, label, tmtp.String("nodeid", nodeid), op)},
		store.Message{Prio: store.High, To: others, Envelope: l.envelope(0, label, op)})
	if err != nil {
		return fmt.Errorf("useredit: %w", err)
	}
	return l.ackOK(h.ID)
}

// announce stores an account change, a "user" message with fields, for
// every device of the link's user, ahead of everything else in their queues.
func (l *link) announce(fields ...tmtp.Field) error {
	devs, err := l.srv.cfg.Directory.Devices(l.uid)
	if err != nil {
		return err
	}
	_, err = l.storeNotice(store.High, devs, fields...)
	return err
}

// listOnce answers UserEdit listonce (the "aliasonce" extension) with the
// member's unused single-use aliases, in the ack: nothing is stored.
func (l *link) listOnce(h *tmtp.Header) error {
	aliases, err := l.srv.cfg.Directory.OnceAliases(l.uid)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	if aliases == nil {
		aliases = []string{} // "once":[], not null
	}
	return l.write(tmtp.AppendFrame(nil,
		tmtp.String("id", h.ID), tmtp.Strings("once", aliases), tmtp.String("op", "ack")))
}

// dropAlias withdraws one of the member's aliases (UserEdit dropalias): an
// unused single-use one (the "aliasonce" extension) or a regular one (the
// "dropalias" extension). All of the member's devices are told, then the
// joined members of every group that listed the member under it, with the
// notice of a GroupEdit alias to the member's new listing alias. Any name
// that is not the member's gets what an unknown alias gets.
func (l *link) dropAlias(h *tmtp.Header) error {
	moves, err := l.srv.cfg.Directory.DropAlias(l.uid, h.DropAlias)
	if err != nil {
		if errors.Is(err, ErrAliasUnknown) {
			return l.ackError(h.ID, unknownAlias(h.DropAlias))
		}
		return l.ackError(h.ID, l.clientError(err))
	}
	if err := l.announce(tmtp.String("dropalias", h.DropAlias), tmtp.String("op", "user")); err != nil {
		return fmt.Errorf("useredit: %w", err)
	}
	for _, m := range moves {
		to, err := l.devicesOf(m.Notify)
		if err != nil {
			return fmt.Errorf("useredit: %w", err)
		}
		if _, err := l.storeNotice(store.Normal, to, tmtp.String("act", "alias"), tmtp.String("alias", m.Alias),
			tmtp.String("gid", m.Gid), tmtp.String("op", "member"), tmtp.String("newalias", m.NewAlias)); err != nil {
			return fmt.Errorf("useredit: %w", err)
		}
	}
	return l.ackOK(h.ID)
}

// block adds a sender to the member's block list (UserEdit block, the
// "block" extension) and tells all of the member's devices when the list
// changed. A sender blocked already, under any name, is acked OK again
// with nothing stored, so that a retried request changes nothing.
func (l *link) block(h *tmtp.Header) error {
	entry, added, err := l.srv.cfg.Directory.Block(l.uid, h.Block)
	switch {
	case errors.Is(err, ErrNoUser):
		return l.ackError(h.ID, fmt.Errorf("%w: %s", errUnknownRecipient, h.Block))
	case errors.Is(err, ErrAliasUnknown):
		return l.ackError(h.ID, unknownAlias(h.Block))
	case err != nil:
		return l.ackError(h.ID, l.clientError(err))
	}
	if added {
		if err := l.announce(tmtp.String("block", entry), tmtp.String("op", "user")); err != nil {
			return fmt.Errorf("useredit: %w", err)
		}
	}
	return l.ackOK(h.ID)
}

// unblock removes a sender from the member's block list (UserEdit unblock)
// and tells all of the member's devices, naming the entry as listed. Nothing
// to remove is not an error: the request is acked OK and nothing stored.
func (l *link) unblock(h *tmtp.Header) error {
	entry, removed, err := l.srv.cfg.Directory.Unblock(l.uid, h.Unblock)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	if removed {
		if err := l.announce(tmtp.String("op", "user"), tmtp.String("unblock", entry)); err != nil {
			return fmt.Errorf("useredit: %w", err)
		}
	}
	return l.ackOK(h.ID)
}

// listBlock answers UserEdit listblock with the member's block list, in the
// ack: nothing is stored, and nobody but the member can ask for it.
func (l *link) listBlock(h *tmtp.Header) error {
	names, err := l.srv.cfg.Directory.Blocks(l.uid)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	if names == nil {
		names = []string{} // "block":[], not null
	}
	// The directory keeps the list within MaxBlockListBytes, which leaves
	// room for the longest id; the check is for a list loaded from a
	// record written under other bounds.
	frame := tmtp.AppendFrame(nil,
		tmtp.Strings("block", names), tmtp.String("id", h.ID), tmtp.String("op", "ack"))
	if len(frame) == 0 {
		return l.ackError(h.ID, errHeaderTooLong)
	}
	return l.write(frame)
}

// listNodes answers UserEdit listnode (the "revoke" extension) with the
// member's live devices, in the ack: nothing is stored. Each entry is
// {"label":..,"node":<number>}, plus "self":1 on the requesting device's.
func (l *link) listNodes(h *tmtp.Header) error {
	nodes, err := l.srv.cfg.Directory.Nodes(l.uid)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	type entry struct {
		Label string `json:"label"`
		Node  string `json:"node"`
		Self  int    `json:"self,omitempty"`
	}
	list := make([]entry, 0, len(nodes)) // "node":[], not null
	for _, n := range nodes {
		e := entry{Label: listedLabel(n.Label), Node: n.Num}
		if n.Dev == l.dev {
			e.Self = 1
		}
		list = append(list, e)
	}
	// json.Marshal writes compact JSON, keys in field order (which is
	// byte order), escaped as the frame writer escapes (HTML-safe).
	raw, err := json.Marshal(list)
	if err != nil {
		return fmt.Errorf("listnode: %w", err)
	}
	// Labels cut to MaxListedLabelBytes keep the list of 100 devices
	// within a header beside the longest id; the check is for more
	// devices than AddDevice allows (an imported site's).
	frame := tmtp.AppendFrame(nil,
		tmtp.String("id", h.ID), tmtp.Raw("node", raw), tmtp.String("op", "ack"))
	if len(frame) == 0 {
		return l.ackError(h.ID, errHeaderTooLong)
	}
	return l.write(frame)
}

// listedLabel returns label as listnode lists it: whole if JSON writes it
// in MaxListedLabelBytes octets or fewer, else cut to its longest prefix of
// whole characters that JSON writes in that many.
func listedLabel(label string) string {
	if escapedLen(label) <= MaxListedLabelBytes {
		return label
	}
	n := 0
	for i, r := range label {
		w := escapedLen(string(r))
		if n+w > MaxListedLabelBytes {
			return label[:i]
		}
		n += w
	}
	return label
}

// escapedLen is the length of s as JSON writes it, quotes left out.
func escapedLen(s string) int {
	b, _ := json.Marshal(s) // a string always marshals
	return len(b) - 2
}

// dropNode retires one of the member's other devices (UserEdit dropnode,
// the "revoke" extension): a lost phone. In this order: the device is
// retired durably in the directory, so its nodeid logs in no more; its live
// link, if any, is closed; its queue is deleted; the member's remaining
// devices are told (revoked, shared with the operator's RevokeDevice). A
// device cannot drop itself, so a member always keeps at least the one that
// asked.
func (l *link) dropNode(h *tmtp.Header) error {
	dir := l.srv.cfg.Directory
	nodes, err := dir.Nodes(l.uid)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	if slices.ContainsFunc(nodes, func(n Node) bool { return n.Dev == l.dev && n.Num == h.DropNode }) {
		return l.ackError(h.ID, ErrDropSelf)
	}
	dev, label, err := dir.DropDevice(l.uid, h.DropNode)
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	l.log.Info("device revoked", "revoked", dev)
	if err := l.srv.revoked(l.uid, dev, h.DropNode, label); err != nil {
		return fmt.Errorf("dropnode: %w", err)
	}
	return l.ackOK(h.ID)
}

// dropQueue deletes a retired device's queue by acknowledging each entry,
// so that each message is removed once no live device holds it. Nothing is
// queued for the device from now on (the directory no longer lists it), but
// a commit that read the member's devices before the retirement may still
// add an entry after the loop: the queue stays watched, and the watcher
// drains it too, for as long as the server runs (a closure per device
// dropped since the start).
func (s *Server) dropQueue(dev string) error {
	// A failed Ack means the store has failed: it stops the server.
	s.cfg.Store.Watch(dev, func() { s.drainQueue(dev) })
	return s.drainQueue(dev)
}

// drainQueue acknowledges every entry of dev's queue (dropQueue).
func (s *Server) drainQueue(dev string) error {
	st := s.cfg.Store
	for {
		id, ok := st.Head(dev)
		if !ok {
			return nil
		}
		// The device's own link, closed but perhaps still finishing
		// an Ack it had read, or the watcher, may have removed id
		// first.
		if err := st.Ack(dev, id); err != nil && !errors.Is(err, store.ErrNotQueued) {
			return err
		}
	}
}

// unknownAlias is the ack error of a Ping to an alias that resolves for
// nobody, which a used single-use alias and a withdrawn one get too.
func unknownAlias(alias string) error {
	return fmt.Errorf("%w: %s", ErrAliasUnknown, alias)
}

// storeNotice durably stores a message without data from the link's user
// for devs.
func (l *link) storeNotice(prio store.Priority, devs []string, fields ...tmtp.Field) (store.Receipt, error) {
	return l.srv.storeNotice(l.uid, prio, devs, fields...)
}

// storeNotice durably stores a message without data from uid for devs.
func (s *Server) storeNotice(uid string, prio store.Priority, devs []string, fields ...tmtp.Field) (store.Receipt, error) {
	rs, err := s.cfg.Store.Draft().Commit(store.Message{Prio: prio, To: devs, Envelope: envelopeFrom(uid, 0, fields...)})
	if err != nil {
		return store.Receipt{}, err
	}
	return rs[0], nil
}

// opPing stores a short text from one of the sender's aliases for the user
// with alias to (op 9), and for the sender's other devices.
func (l *link) opPing(h *tmtp.Header) error {
	text, err := l.readText(h)
	if err != nil {
		return err
	}
	// Every ping counts, refused or not, so the limit also bounds how
	// fast a member can probe which aliases exist.
	if err := l.srv.limits.allowPing(l.uid); err != nil {
		return l.ackError(h.ID, err)
	}
	if !l.mayPing(h.To) {
		return l.ackError(h.ID, ErrReceiveOnly)
	}
	dir := l.srv.cfg.Directory
	if uid, ok := dir.AliasUID(h.From); !ok || uid != l.uid {
		return l.ackError(h.ID, ErrFromNotSender)
	}
	to, once, ok := dir.RecipientUID(h.To)
	if !ok {
		return l.ackError(h.ID, unknownAlias(h.To))
	}
	toDevs, err := dir.Devices(to)
	var devs []string
	if err == nil {
		devs, err = l.keepSent(toDevs)
	}
	if err != nil {
		return l.ackError(h.ID, l.clientError(err))
	}
	if err := l.roomFor(devs, l.ownerIn(to, toDevs)); err != nil {
		return l.ackError(h.ID, err)
	}
	// A recipient who blocks the sender gets nothing, and the sender sees
	// what it would see otherwise: the same checks above (a full queue
	// included), the same ack, its sent copy on its other devices.
	if dir.Blocked(to, l.uid) {
		devs = devs[len(toDevs):] // keepSent appended the sender's own after toDevs
	}
	env := l.envelope(int64(len(text)),
		tmtp.String("alias", h.From), tmtp.String("op", "ping"), tmtp.String("to", h.To))
	msgs := []store.Message{{To: devs, Len: int64(len(text)), Envelope: env}}
	if once {
		// Every check that can refuse the ping is behind us: a refused
		// ping leaves the alias unused. Of two senders racing, UseAlias
		// lets one through; the other is told what an unknown alias gets.
		if _, err := dir.UseAlias(h.To); err != nil {
			if errors.Is(err, ErrAliasUnknown) {
				return l.ackError(h.ID, unknownAlias(h.To))
			}
			return l.ackError(h.ID, l.clientError(err))
		}
		msgs = append(msgs, l.aliasUsed(to, toDevs, h.To, h.From))
	}
	rs, err := l.commitText(text, msgs...)
	if err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return l.ackStored(h.ID, rs[0])
}

// aliasUsed is the notice that tells the owner's devices (owner, devs) that
// the request of the link's user, from its alias byAlias, has consumed their
// single-use alias: a "user" message, high priority, from the owner, whose
// account it changes, like every "user" message. It is stored in the commit
// of the ping or invitation that used the alias.
func (l *link) aliasUsed(owner string, devs []string, alias, byAlias string) store.Message {
	return store.Message{Prio: store.High, To: devs, Envelope: envelopeFrom(owner, 0,
		tmtp.String("aliasused", alias), tmtp.String("by", l.uid),
		tmtp.String("byalias", byAlias), tmtp.String("op", "user"))}
}

// readText reads the short text of a Ping or GroupInvite and checks it
// against SPEC §7's limits; a violation ends the link.
func (l *link) readText(h *tmtp.Header) ([]byte, error) {
	if h.Datalen > tmtp.MaxPingOctets { // the parser refuses this already
		return nil, &tmtp.ProtocolError{Reason: tmtp.QuitDataTooLong}
	}
	text := make([]byte, h.Datalen)
	if _, err := io.ReadFull(l.rd.Data(h.Datalen), text); err != nil {
		return nil, err
	}
	if err := tmtp.CheckPing(text); err != nil {
		return nil, err
	}
	return text, nil
}

// commitText stores msgs, whose data is text (a ping's or an invitation's),
// in one commit. A failed Write fails the Commit too (store.Draft); its error
// is returned at once, and the loop answers it as it would the Commit's.
func (l *link) commitText(text []byte, msgs ...store.Message) ([]store.Receipt, error) {
	d := l.srv.cfg.Store.Draft()
	if _, err := d.Write(text); err != nil {
		d.Abort()
		return nil, err
	}
	return d.Commit(msgs...)
}

package qlib

import (
	"fmt"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// What the operator does to members while the server runs (the daemon's
// admin listener): revoking a device and editing a block list on the
// member's behalf, each with the same effect as the member's own request,
// and seeing which devices are logged in.

// RevokeDevice retires device num (the decimal number Directory.Nodes
// gives) of member uid for the operator, as the revoke extension's dropnode
// does (Protocol.md): the device is retired durably in the directory, its
// live link is closed, its queue deleted, and the member's remaining
// devices are told, by the same "user" message with dropnode and label.
//
// Unlike dropnode, which no device may use on itself, the operator may
// revoke any device, the member's last included: the operator is called
// for a stolen device when the member has no other in hand, and must be
// able to shut the thief out. A member left with no device keeps its
// account, aliases and groups, and nothing is queued for it until it has a
// device again; nobody is told, there being no device to tell.
//
// The directory's errors are returned as they are (ErrNoDevice for a
// number that is not one of uid's live devices, or an unknown uid); any
// other error comes after the retirement, from the store, which has then
// failed and stops the server.
func (s *Server) RevokeDevice(uid, num string) error {
	dev, label, err := s.cfg.Directory.DropDevice(uid, num)
	if err != nil {
		return err
	}
	s.log.Info("device revoked by the operator", "revoked", dev)
	if err := s.revoked(uid, dev, num, label); err != nil {
		return fmt.Errorf("revoke %s: %w", dev, err)
	}
	return nil
}

// revoked completes the revocation of uid's device dev, numbered num and
// labelled label, which the directory has just retired (dropnode and
// RevokeDevice): its live link is closed, its queue deleted, and the
// member's remaining devices, if any, are told.
func (s *Server) revoked(uid, dev, num, label string) error {
	s.evictDevice(dev, "link of a revoked device closed")
	if err := s.dropQueue(dev); err != nil {
		return err
	}
	devs, err := s.cfg.Directory.Devices(uid)
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		return nil
	}
	_, err = s.storeNotice(uid, store.High, devs,
		tmtp.String("dropnode", num), tmtp.String("label", label), tmtp.String("op", "user"))
	return err
}

// Block adds the member name resolves to to uid's block list for the
// operator (an abuse report), as the block extension's UserEdit block does:
// when the list changed, every device of uid is told, by the same "user"
// message, so that the devices' copies of the list stay the server's. It
// returns Directory.Block's results and errors as they are.
func (s *Server) Block(uid, name string) (added bool, err error) {
	entry, added, err := s.cfg.Directory.Block(uid, name)
	if err != nil || !added {
		return false, err
	}
	s.log.Info("sender blocked by the operator", "uid", uid)
	return true, s.tell(uid, tmtp.String("block", entry), tmtp.String("op", "user"))
}

// Unblock removes an entry from uid's block list for the operator, as
// UserEdit unblock does, telling every device of uid when it removed one.
func (s *Server) Unblock(uid, name string) (removed bool, err error) {
	entry, removed, err := s.cfg.Directory.Unblock(uid, name)
	if err != nil || !removed {
		return false, err
	}
	s.log.Info("sender unblocked by the operator", "uid", uid)
	return true, s.tell(uid, tmtp.String("op", "user"), tmtp.String("unblock", entry))
}

// tell stores an account change, a "user" message with fields, for every
// live device of uid, ahead of everything else in their queues.
func (s *Server) tell(uid string, fields ...tmtp.Field) error {
	devs, err := s.cfg.Directory.Devices(uid)
	if err != nil || len(devs) == 0 {
		return err
	}
	_, err = s.storeNotice(uid, store.High, devs, fields...)
	return err
}

// Online returns those of devs (device keys) that have a logged-in link
// now: a snapshot, taken under one hold of the server's lock.
func (s *Server) Online(devs []string) map[string]bool {
	online := make(map[string]bool)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, dev := range devs {
		if s.devices[dev] != nil {
			online[dev] = true
		}
	}
	return online
}

package sim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"mnm/testclient"
	"mnm/testclient/internal/pool"
)

// Setup: accounts and groups, made through the protocol before the run.

// setup registers the members and forms the groups through the protocol.
// Each step is its own short link (register; the owner's invitations; each
// join), so that setup holds at most setupWorkers links whatever the
// number of members.
func (sim *simulation) setup(ctx context.Context) error {
	// Setup notices (invitations, member notices) are acked and otherwise
	// ignored; those still queued reach the members at their first login.
	o := sim.options()
	o.AutoAck = true
	o.OnMessage = func(*testclient.Frame) {}
	start := time.Now()
	err := pool.Run(ctx, setupWorkers, len(sim.members), func(i int) error {
		m := sim.members[i]
		return sim.setupLink(ctx, func() (*testclient.Client, error) {
			addr, o := sim.dial(m, o)
			c, reg, err := testclient.Register(addr, fmt.Sprintf("sim device %d", i), m.alias, o)
			if err != nil {
				return nil, fmt.Errorf("sim: register member %d: %w", i, err)
			}
			if reg.AliasError != "" {
				return c, fmt.Errorf("sim: register member %d: alias %q refused: %s", i, m.alias, reg.AliasError)
			}
			m.uid, m.nodeid = reg.UID, reg.NodeID
			return c, nil
		})
	})
	if err != nil {
		return err
	}
	sim.printf("sim: setup: %d members registered in %s\n", len(sim.members), time.Since(start).Round(time.Millisecond))
	start = time.Now()
	for _, m := range sim.members {
		sim.byUID[m.uid] = m
	}
	// The first member of a group creates it with its first invitation.
	err = pool.Run(ctx, setupWorkers, len(sim.groups), func(g int) error {
		grp := sim.groups[g]
		owner := sim.members[grp.lo]
		return sim.setupLink(ctx, func() (*testclient.Client, error) {
			addr, o := sim.dial(owner, o)
			c, _, err := testclient.Login(addr, owner.uid, owner.nodeid, o)
			if err != nil {
				return nil, fmt.Errorf("sim: member %d logs in to invite: %w", grp.lo, err)
			}
			for i := grp.lo + 1; i < grp.hi; i++ {
				if err := ctx.Err(); err != nil {
					return c, err
				}
				ack, err := c.GroupInvite(grp.gid, owner.alias, sim.members[i].alias, inviteText)
				if err == nil && ack.Error != "" {
					err = errors.New(ack.Error)
				}
				if err != nil {
					return c, fmt.Errorf("sim: invite member %d to %s: %w", i, grp.gid, err)
				}
			}
			return c, nil
		})
	})
	if err != nil {
		return err
	}
	err = pool.Run(ctx, setupWorkers, len(sim.members), func(i int) error {
		m := sim.members[i]
		if i == m.group.lo {
			return nil
		}
		return sim.setupLink(ctx, func() (*testclient.Client, error) {
			addr, o := sim.dial(m, o)
			c, _, err := testclient.Login(addr, m.uid, m.nodeid, o)
			if err != nil {
				return nil, fmt.Errorf("sim: member %d logs in to join: %w", i, err)
			}
			ack, err := c.GroupEdit("join", m.group.gid, "", "")
			if err == nil && ack.Error != "" {
				err = errors.New(ack.Error)
			}
			if err != nil {
				return c, fmt.Errorf("sim: member %d joins %s: %w", i, m.group.gid, err)
			}
			return c, nil
		})
	})
	if err == nil {
		sim.printf("sim: setup: %d groups formed in %s\n", len(sim.groups), time.Since(start).Round(time.Millisecond))
	}
	return err
}

// setupLink runs one setup step on a link of its own, within the online
// limit: fn opens the link and uses it; the link it returns (even with an
// error) is then logged out.
func (sim *simulation) setupLink(ctx context.Context, fn func() (*testclient.Client, error)) error {
	if !sim.acquire(ctx) {
		return ctx.Err()
	}
	defer sim.release()
	c, err := fn()
	if c != nil {
		if qerr := c.Quit(); err == nil && qerr != nil {
			err = fmt.Errorf("sim: setup logout: %w", qerr)
		}
	}
	return err
}

// acquire takes one of the MaxOnline slots for a link, waiting until ctx
// ends; it reports whether it got one. release gives it back.
func (sim *simulation) acquire(ctx context.Context) bool {
	if sim.slots == nil {
		return true
	}
	select {
	case sim.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (sim *simulation) release() {
	if sim.slots != nil {
		<-sim.slots
	}
}

// options are the Client options of every link but its TLS (dial).
func (sim *simulation) options() testclient.Options {
	return testclient.Options{Logger: sim.log, PulseInterval: pulse}
}

// dial returns the address m's device connects to, and o with the TLS
// configuration of that frontend.
func (sim *simulation) dial(m *member, o testclient.Options) (string, testclient.Options) {
	fe := sim.cfg.frontend(m.idx, 0)
	o.TLS = fe.TLS
	return fe.Addr, o
}

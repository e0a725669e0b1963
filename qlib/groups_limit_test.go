package qlib

// The group limits under attack, over real TLS: one member creating groups
// without end, and one member inviting the same victim into group after
// group. Each flood is bounded, the client gets the refusal it can show, a
// line is logged once, the victim is reached by others as usual and the
// server stays up.

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"mnm/testclient"
)

// createDir is the fake directory with groups that exist once an invitation
// has created them, so that the server can tell a creation from an
// invitation into an existing group.
type createDir struct {
	groupDir
	mu     sync.Mutex
	groups map[string]bool
}

func (d *createDir) GroupInvite(uid, gid, from, to string) (GroupChange, error) {
	ch, err := d.groupDir.GroupInvite(uid, gid, from, to)
	if err == nil {
		d.mu.Lock()
		d.groups[gid] = true
		d.mu.Unlock()
	}
	return ch, err
}

func (d *createDir) GroupMembers(uid, gid string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.groups[gid] {
		return nil, ErrNoGroup
	}
	return []string{uid}, nil
}

// withCreateDir gives a test server a createDir.
func withCreateDir(c *Config) {
	c.Directory = &createDir{groupDir: groupDir{c.Directory.(*fakeDir)}, groups: map[string]bool{}}
}

// TestLimitGroupsPerDay: a member creating groups without end (each
// invitation to a new gid creates one) gets GroupsPerDay of them, then the
// ack error "group limit reached: N per 24 hours"; invitations into a group
// it already created still go through, another member creates groups as
// usual, and the allowance comes back with time.
func TestLimitGroupsPerDay(t *testing.T) {
	const limit, flood = 3, 40
	ts, clock := limitServer(t, func(l *Limits) { l.GroupsPerDay, l.InvitesPerInviteePerDay = limit, 0 }, withCreateDir)
	spammer, _ := ts.aliasUser("spammer one")
	ts.aliasUser("target person")
	created := sendFlood(t, "invitation", flood, "group limit reached: 3 per 24 hours", func(i int) (testclient.Ack, error) {
		return spammer.GroupInvite(fmt.Sprintf("group %08d", i), "spammer one", "target person", "join")
	})
	if created != limit {
		t.Fatalf("%d groups created, want %d", created, limit)
	}
	if n := ts.countLogs("group refused: limit reached"); n != 1 {
		t.Errorf("%d log lines for %d refusals, want 1", n, flood-limit)
	}
	ts.aliasUser("second target")
	mustStore(t)(spammer.GroupInvite("group 00000000", "spammer one", "second target", "an existing group"))
	friend, _ := ts.aliasUser("friend of target")
	mustStore(t)(friend.GroupInvite("friends club", "friend of target", "target person", "hi"))
	clock.Advance(day / limit)
	mustStore(t)(spammer.GroupInvite("one more group", "spammer one", "target person", "after a while"))
	ts.victimWorks()
}

// TestLimitInvitesPerInvitee: a member inviting one victim into group after
// group gets InvitesPerInviteePerDay invitations to it stored, whatever
// alias names the victim; the rest get the ack error "invitation limit for
// this invitee reached: N per 24 hours" and store nothing for the victim.
// The member still invites others, others still invite the victim, and the
// allowance comes back with time.
func TestLimitInvitesPerInvitee(t *testing.T) {
	const flood = 40
	limit := DefaultInvitesPerInviteePerDay
	ts, clock := limitServer(t, func(l *Limits) { l.GroupsPerDay = 0 }, withCreateDir)
	spammer := ts.sentUser("spammer one", 1)
	victim := ts.sentUser("target person", 2) // dev[1] stays offline
	if err := ts.dir.AddAlias(victim.uid, "target second name"); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("invitation limit for this invitee reached: %d per 24 hours", limit)
	sent := sendFlood(t, "invitation", flood, want, func(i int) (testclient.Ack, error) {
		to := []string{"target person", "target second name"}[i%2]
		return spammer.c.GroupInvite(fmt.Sprintf("group %08d", i), "spammer one", to, "join")
	})
	if sent != limit {
		t.Fatalf("%d invitations stored, want %d", sent, limit)
	}
	ts.checkQueues(t, queueWant{"victim's offline device", victim.dev[1], limit})
	if n := ts.countLogs("invitation refused: limit for the invitee reached"); n != 1 {
		t.Errorf("%d log lines for %d refusals, want 1", n, flood-limit)
	}
	ts.aliasUser("someone else")
	mustStore(t)(spammer.c.GroupInvite("other group", "spammer one", "someone else", "hi"))
	friend, _ := ts.aliasUser("friend of target")
	mustStore(t)(friend.GroupInvite("friends club", "friend of target", "target person", "hi"))
	ts.checkQueues(t, queueWant{"victim's offline device", victim.dev[1], limit + 1})
	clock.Advance(day / time.Duration(limit)) // one invitation back
	mustStore(t)(spammer.c.GroupInvite("late group", "spammer one", "target person", "later"))
	ts.victimWorks()
}

// TestInviteeKey: the invitees table tells pairs apart, in either order.
func TestInviteeKey(t *testing.T) {
	if inviteeKey("A", "B") == inviteeKey("B", "A") || inviteeKey("AB", "C") == inviteeKey("A", "BC") {
		t.Error("two pairs share a key")
	}
}

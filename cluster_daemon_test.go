package main

// Two daemons started from configs with a "cluster" section, over an
// embedded 3-node JetStream cluster: the server as one frontend of a
// clustered site, with nothing shared in process. Members registered on one
// frontend log in on the other; posts, pings, groups and "user" messages
// cross between them; aliases and gids stay unique under concurrent
// registration on both; ids increase site-wide.

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"mnm/cluster/natstest"
	"mnm/testclient"
)

// startClusterDaemons starts n frontends of one site on c.
func startClusterDaemons(t *testing.T, c *natstest.Cluster, n int) []*daemon {
	t.Helper()
	dir := t.TempDir()
	ds := make([]*daemon, n)
	for i := range ds {
		path := writeClusterConfig(t, dir, c.URLs(), i+1)
		logger, logs := newTestLogger()
		d, err := startDaemon(path, logger.With("fe", i+1))
		if err != nil {
			t.Fatalf("frontend %d: %v\n%s", i+1, err, logs)
		}
		t.Cleanup(func() {
			if err := d.shutdown(); err != nil {
				t.Errorf("frontend %d shutdown: %v", i+1, err)
			}
			if t.Failed() {
				t.Logf("frontend %d log:\n%s", i+1, logs)
			}
		})
		ds[i] = d
	}
	return ds
}

func TestClusterDaemons(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	c := natstest.Start(t, natstest.Options{})
	ds := startClusterDaemons(t, c, 2)
	addr := func(i int) string { return ds[i].ln.Addr().String() }

	register := func(i int, alias string) (*testclient.Client, testclient.Registration) {
		t.Helper()
		cl, reg, err := testclient.Register(addr(i), "laptop", alias, testclient.Options{})
		if err != nil || reg.AliasError != "" {
			t.Fatalf("register %s on frontend %d: %v %s", alias, i+1, err, reg.AliasError)
		}
		t.Cleanup(func() { cl.Close() })
		return cl, reg
	}
	// next returns the next delivery on cl, acking it and everything
	// before it (login notices).
	next := func(cl *testclient.Client) *testclient.Frame {
		t.Helper()
		for {
			f := recv(t, cl)
			if err := cl.Ack(f.Str("id")); err != nil {
				t.Fatal(err)
			}
			if f.Op() == "delivery" {
				return f
			}
		}
	}

	alice, ra := register(0, "alice-cl")
	bob, rb := register(1, "bobby-cl")

	t.Run("login elsewhere", func(t *testing.T) {
		// Bob, registered on frontend 2, logs in on frontend 1, which
		// takes his device from frontend 2, and back.
		cl, _, err := testclient.Login(addr(0), rb.UID, rb.NodeID, testclient.Options{})
		if err != nil {
			t.Fatalf("bob on frontend 1: %v", err)
		}
		cl.Close()
		bob.Close()
		bob, _, err = testclient.Login(addr(1), rb.UID, rb.NodeID, testclient.Options{})
		if err != nil {
			t.Fatalf("bob back on frontend 2: %v", err)
		}
	})
	t.Cleanup(func() { bob.Close() })

	t.Run("post across", func(t *testing.T) {
		var ids []string
		for i := range 5 {
			from := alice
			if i%2 == 1 {
				from = bob // to himself: his device gets it too
			}
			ack, err := from.Post([]testclient.Recipient{{ID: rb.UID, Type: testclient.ToUser}}, fmt.Appendf(nil, "post %d", i))
			if err != nil || ack.Error != "" {
				t.Fatalf("post %d: %v %s", i, err, ack.Error)
			}
			ids = append(ids, ack.MsgID)
		}
		if !slices.IsSorted(ids) {
			t.Errorf("ids from alternating frontends do not increase: %v", ids)
		}
		for range ids {
			f := next(bob)
			if !slices.Contains(ids, f.Str("id")) {
				t.Errorf("unexpected delivery %s", f.Str("id"))
			}
		}
	})

	t.Run("ping by alias", func(t *testing.T) {
		if ack, err := alice.Ping("alice-cl", "bobby-cl", "hello"); err != nil || ack.Error != "" {
			t.Fatalf("ping: %v %s", err, ack.Error)
		}
		for {
			f := recv(t, bob)
			bob.Ack(f.Str("id"))
			if f.Op() == "ping" {
				break
			}
		}
	})

	t.Run("group", func(t *testing.T) {
		if ack, err := alice.GroupInvite("cl-group", "alice-cl", "bobby-cl", "join"); err != nil || ack.Error != "" {
			t.Fatalf("invite: %v %s", err, ack.Error)
		}
		if ack, err := bob.GroupEdit("join", "cl-group", "", ""); err != nil || ack.Error != "" {
			t.Fatalf("join on the other frontend: %v %s", err, ack.Error)
		}
		ack, err := alice.Post([]testclient.Recipient{{ID: "cl-group", Type: testclient.ToGroupOthers}}, []byte("to the group"))
		if err != nil || ack.Error != "" {
			t.Fatalf("group post: %v %s", err, ack.Error)
		}
		for {
			if f := next(bob); f.Str("id") == ack.MsgID {
				break
			}
		}
	})

	t.Run("presence", func(t *testing.T) {
		// Alice (frontend 1) lists bob; bob's next login, on frontend 2,
		// is told she is online, and he hears her leave.
		if ack, err := alice.OhiEdit("add", []string{rb.UID}); err != nil || ack.Error != "" {
			t.Fatalf("ohiedit: %v %s", err, ack.Error)
		}
		// The list is written after the ack, as on one machine; frontend
		// 2 has it once its watcher has.
		waitFor(t, "alice's list on frontend 2", func() bool {
			return slices.Contains(ds[1].site.bus.Naming(rb.UID), ra.UID)
		})
		bob.Close()
		var info testclient.LoginInfo
		var err error
		bob, info, err = testclient.Login(addr(1), rb.UID, rb.NodeID, testclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(info.Ohi, []string{ra.UID}) {
			t.Errorf("bob's login on frontend 2 lists %q online, want alice %s", info.Ohi, ra.UID)
		}
		alice.Close()
		select {
		case f := <-bob.Others():
			if f.Op() != "ohi" || f.Str("from") != ra.UID || f.Int("status") != 2 {
				t.Fatalf("%s from %s status %d, want alice's ohi offline", f.Op(), f.Str("from"), f.Int("status"))
			}
		case <-time.After(15 * time.Second):
			t.Fatal("bob was not told alice left")
		}
	})

	t.Run("unique aliases", func(t *testing.T) {
		// Twelve registrations, six on each frontend, all asking for one
		// alias: exactly one gets it.
		won := winners(t, 12, func(i int) (bool, error) {
			cl, reg, err := testclient.Register(addr(i%2), "laptop", "contested-cl", testclient.Options{})
			if err != nil {
				return false, err
			}
			cl.Close()
			return reg.AliasError == "", nil
		})
		if won != 1 {
			t.Errorf("%d registrations got the alias, want 1", won)
		}
	})

	t.Run("unique gids", func(t *testing.T) {
		// Six members, three on each frontend, create one group at the
		// same moment (an invitation to a gid that does not exist makes
		// it): exactly one does; the others are refused.
		var racers []*testclient.Client
		for i := range 6 {
			cl, _ := register(i%2, fmt.Sprintf("gid-racer-%d", i))
			racers = append(racers, cl)
		}
		made := winners(t, len(racers), func(i int) (bool, error) {
			ack, err := racers[i].GroupInvite("contested-gid", fmt.Sprintf("gid-racer-%d", i), "bobby-cl", "mine")
			return err == nil && ack.Error == "", err
		})
		if made != 1 {
			t.Errorf("%d members made the group, want 1", made)
		}
	})

	t.Run("admin", func(t *testing.T) {
		st := ds[1].Status()
		if !st.Ready || st.Users < 3 {
			t.Errorf("status of frontend 2: ready %v (%s), %d users", st.Ready, st.NotReady, st.Users)
		}
		if err := ds[0].Backup(nil); err == nil {
			t.Error("a frontend backed up what it does not hold")
		}
	})
}

// winners runs try(0)…try(n-1) at once and counts those that report a win;
// an error fails the test.
func winners(t *testing.T, n int, try func(i int) (won bool, err error)) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range n {
		wg.Go(func() {
			ok, err := try(i)
			if err != nil {
				t.Errorf("racer %d: %v", i, err)
			}
			if ok {
				mu.Lock()
				won++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return won
}

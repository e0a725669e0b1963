package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster/dirkv"
	"mnm/cluster/natstest"
	"mnm/qlib"
)

// TestClusterDirOverNATS: two frontends' directories over a real 3-node
// JetStream cluster (cluster/dirkv): a member registered through the one
// that is not the writer logs in on both, a contested alias goes to one of
// them, a group made on one is joined through the other, and when the
// writer's Dir closes the other takes over with every record.
func TestClusterDirOverNATS(t *testing.T) {
	c := natstest.Start(t, natstest.Options{})
	type fe struct {
		kv  *dirkv.Dir
		db  *UserDB
		dir *clusterDirectory
	}
	var fes []*fe
	for i := range 2 {
		nc := c.Connect(t)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		kv, err := dirkv.Open(ctx, dirkv.Options{Conn: nc, JS: js, Frontend: fmt.Sprintf("fe%d", i), LeaseTTL: 2 * time.Second, Logger: quietLogger(t)})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kv.Close() })
		db := openKVDB(t, kv)
		dir, err := newClusterDirectory(db, kv, quietLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		fes = append(fes, &fe{kv: kv, db: db, dir: dir})
	}
	// writer waits for one of fes to hold the lease and returns its index.
	writer := func(among ...int) int {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			for _, i := range among {
				if fes[i].kv.IsWriter() {
					return i
				}
			}
			time.Sleep(20 * time.Millisecond) // polling the lease, with a deadline
		}
		t.Fatal("no writer elected")
		return -1
	}
	wi := writer(0, 1)
	w, f := fes[wi].dir, fes[1-wi].dir

	uid, nodeid, dev, err := f.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	node, _ := decodeNodeID(nodeid)
	if got, err := f.Login(uid, node); err != nil || got != dev {
		t.Errorf("login on the registering frontend: %q %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fes[wi].kv.WaitApplied(ctx, fes[1-wi].kv.Applied()); err != nil {
		t.Fatal(err)
	}
	if got, err := w.Login(uid, node); err != nil || got != dev {
		t.Errorf("login on the writer: %q %v", got, err)
	}
	other, _, _, err := w.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}

	var errs [2]error
	var wg sync.WaitGroup
	for i, d := range []*clusterDirectory{w, f} {
		claimant := []string{other, uid}[i]
		wg.Go(func() { errs[i] = d.AddAlias(claimant, "contested name") })
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) || !errors.Is(errors.Join(errs[:]...), qlib.ErrAliasTaken) {
		t.Fatalf("contested alias: %v", errs)
	}
	winner, loser := uid, other
	if errs[0] == nil {
		winner, loser = other, uid
	}
	if err := f.AddAlias(loser, "loser alias"); err != nil {
		t.Fatal(err)
	}
	winnerAlias := "contested name"
	if _, err := f.GroupInvite(winner, "nats group", winnerAlias, "loser alias"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.GroupEdit(loser, qlib.GroupJoin, "nats group", "", ""); err != nil {
		t.Fatal(err)
	}
	if m, err := w.GroupMembers(winner, "nats group"); err != nil || len(m) != 2 {
		t.Errorf("members on the writer: %v %v", m, err)
	}

	// The writer goes; the other frontend takes over with what it holds.
	if err := fes[wi].kv.Close(); err != nil {
		t.Fatal(err)
	}
	writer(1 - wi)
	if err := f.AddAlias(uid, "after takeover"); err != nil {
		t.Fatalf("write after takeover: %v", err)
	}
	if err := f.AddAlias(winner, "loser alias"); !errors.Is(err, qlib.ErrAliasTaken) {
		t.Errorf("a name taken under the old writer: %v", err)
	}
	if m, err := f.GroupMembers(loser, "nats group"); err != nil || len(m) != 2 {
		t.Errorf("members after takeover: %v %v", m, err)
	}
}

package main

// The crash run of crashrun_test.go against a clustered site: two frontends
// (the mnm binary, config "cluster") over an embedded 3-node JetStream
// cluster, the members' devices spread over both. Each round SIGKILLs one
// frontend under the same mixed load and restarts it (the second round
// kills the NATS node leading the site's stream instead, and restarts it
// from its data), and at the end the
// same checker compares what the members received with what the frontends
// acknowledged: nothing acked lost, every device's posts in order per
// sender, unacked posts reaching all or none of their devices.
//
//	MNM_CLUSTER_CRASH_KILLS=40 go test -run TestClusterCrashRun -timeout 30m -v .

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"mnm/cluster/natstest"
)

// jsstoreStream is the site's stream: the cluster section's default prefix.
const jsstoreStream = defaultClusterPrefix

// writeClusterConfig writes, in a new directory under dir, the config of
// frontend n (1…) of a site on the NATS cluster at urls.
func writeClusterConfig(t *testing.T, dir string, urls []string, n int) string {
	t.Helper()
	fdir := filepath.Join(dir, fmt.Sprintf("fe%d", n))
	if err := os.MkdirAll(fdir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, fdir, "127.0.0.1:0")
	cfg["cluster"] = map[string]any{"frontend": n, "livenessSeconds": 5, "nats": map[string]any{"urls": urls}}
	return writeConfigFile(t, fdir, cfg)
}

func TestClusterCrashRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	kills := envKills(t, "MNM_CLUSTER_CRASH_KILLS", 4)
	c := natstest.Start(t, natstest.Options{})
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cfgs := []string{writeClusterConfig(t, dir, c.URLs(), 1), writeClusterConfig(t, dir, c.URLs(), 2)}
	r := &crashRun{t: t, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)),
		devices: map[string]*crashDevice{}, posts: map[string]*crashPost{}}

	fes := []*process{startProcess(t, bin, cfgs[0]), startProcess(t, bin, cfgs[1])}
	r.logs = func() string {
		return "frontend 1's log ends:\n" + fes[0].tail() + "\nfrontend 2's log ends:\n" + fes[1].tail()
	}
	r.setup(fes[0].addr)

	// Each round a device logs in to the frontend its nodeid and the round
	// pick, so that devices move between frontends from round to round.
	at := func(round int) func(d *crashDevice) *process {
		return func(d *crashDevice) *process {
			h := fnv.New32a()
			h.Write([]byte(d.nodeid))
			return fes[(int(h.Sum32())+round)%len(fes)]
		}
	}
	start := time.Now()
	leaderKills := 0
	for k := range kills {
		r.life = k + 1
		clients := r.connectAt(at(k))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i, m := range r.members {
			wg.Add(1)
			rng := rand.New(rand.NewPCG(r.rng.Uint64(), r.rng.Uint64()))
			addr := fes[(i+k)%len(fes)].addr // registrations and new devices on either
			go func() {
				defer wg.Done()
				r.work(addr, m, clients[m.devs[0].nodeid], rng, stop)
			}()
		}
		alive := crashMinAlive + time.Duration(r.rng.Int64N(int64(crashMaxAlive-crashMinAlive)))
		time.Sleep(alive) // the load runs for this long; the kill's timing is the point
		if k == 1 {
			// This round kills the NATS node leading the site's stream
			// instead: an election under load, the node restarted from its
			// data after.
			node := c.Leader(jsstoreStream)
			if node < 0 {
				t.Fatal("the site's stream has no leader")
			}
			c.Kill(node)
			close(stop)
			wg.Wait()
			for _, cl := range clients {
				cl.Close()
			}
			c.Restart(node)
			c.WaitStreamCurrent(jsstoreStream)
			leaderKills++
			continue
		}
		victim := k % len(fes)
		fes[victim].kill()
		close(stop)
		wg.Wait()
		for _, cl := range clients {
			cl.Close()
		}
		if len(r.failures) > 0 {
			break
		}
		fes[victim] = startProcess(t, bin, cfgs[victim])
	}
	r.life = kills + 1
	r.drainAt(at(kills), fes[1])
	for _, p := range fes {
		p.stop()
	}
	lost := r.check()
	for _, f := range r.failures {
		t.Error(f)
	}
	t.Logf("cluster crash run: %d frontend kills and %d of the stream's leader in %v; %d posts sent, %d acked, %d acked lost; "+
		"%d registrations, %d new devices, %d invitations, %d alias edits",
		kills-leaderKills, leaderKills, time.Since(start).Round(time.Second), r.sent, r.ackedN, lost,
		len(r.regs), r.newDevs, r.invites, r.renames)
}

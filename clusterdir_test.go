package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"mnm/cluster/dirkv"
	"mnm/qlib"
)

// clusterFrontend is one frontend of a clustered site over a fakeBucket.
type clusterFrontend struct {
	kv  *fakeDir
	db  *UserDB
	dir *clusterDirectory
}

// startClusterDirs starts n frontends over b, the first of them the
// writer.
func startClusterDirs(t *testing.T, b *fakeBucket, n int) []*clusterFrontend {
	t.Helper()
	var fes []*clusterFrontend
	for range n {
		kv := b.dir(t)
		db := openKVDB(t, kv)
		dir, err := newClusterDirectory(db, kv, quietLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		fes = append(fes, &clusterFrontend{kv: kv, db: db, dir: dir})
	}
	b.setWriter(t, fes[0].kv)
	return fes
}

// TestClusterDirRegisterLogin: a member registered through a frontend that
// is not the writer logs in on it at once, and on the writer; its devices
// and aliases likewise.
func TestClusterDirRegisterLogin(t *testing.T) {
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 2)
	w, f := fes[0].dir, fes[1].dir
	uid, nodeid, dev, err := f.Register("phone", map[string]any{"iss": "https://id", "sub": "1", "n": 2})
	if err != nil {
		t.Fatal(err)
	}
	node, _ := decodeNodeID(nodeid)
	for i, d := range []*clusterDirectory{f, w} {
		if got, err := d.Login(uid, node); err != nil || got != dev {
			t.Errorf("frontend %d: Login %q %v, want %q", i, got, err, dev)
		}
		if claims, err := d.Claims(uid); err != nil || claims["sub"] != "1" || len(claims) != 2 {
			t.Errorf("frontend %d: Claims %v %v", i, claims, err)
		}
	}
	if _, _, _, err := w.Register("again", map[string]any{"iss": "https://id", "sub": "1"}); !errors.Is(err, qlib.ErrIdentityUsed) {
		t.Errorf("second account of an identity: %v", err)
	}
	nodeid2, dev2, err := f.AddDevice(uid, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	node2, _ := decodeNodeID(nodeid2)
	if got, err := f.Login(uid, node2); err != nil || got != dev2 {
		t.Errorf("new device: Login %q %v", got, err)
	}
	if err := f.AddAlias(uid, "first alias"); err != nil {
		t.Fatal(err)
	}
	if got, ok := f.AliasUID("first alias"); !ok || got != uid {
		t.Errorf("alias on the calling frontend: %q %v", got, ok)
	}
	if dropped, label, err := f.DropDevice(uid, "0"); err != nil || dropped != dev || label != "phone" {
		t.Errorf("DropDevice: %q %q %v", dropped, label, err)
	}
	if _, err := f.Login(uid, node); !errors.Is(err, qlib.ErrLoginFailed) {
		t.Errorf("dropped device logs in: %v", err)
	}
	if err := f.RetireDevice(dev2); err != nil {
		t.Fatal(err)
	}
	if devs, err := f.Devices(uid); err != nil || len(devs) != 0 {
		t.Errorf("Devices after retiring both: %v %v", devs, err)
	}
	if changed, err := f.SetReceiveOnly(uid, true); err != nil || !changed || !f.ReceiveOnly(uid) {
		t.Errorf("SetReceiveOnly: %v %v", changed, err)
	}
	caughtUp(t, b, fes[0].kv)
	sameAnswers(t, fes[0].db, fes[1].db)
}

// TestClusterDirAliasRace: of two frontends claiming one name at once,
// exactly one wins; the other gets ErrAliasTaken, and both agree on the
// owner.
func TestClusterDirAliasRace(t *testing.T) {
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 2)
	const rounds = 30
	var uids [2]string
	for i, fe := range fes {
		uid, _, _, err := fe.dir.Register("phone", nil)
		if err != nil {
			t.Fatal(err)
		}
		uids[i] = uid
	}
	for round := range rounds {
		name := fmt.Sprintf("contested %d", round)
		var errs [2]error
		var newUIDs [2]string
		var wg sync.WaitGroup
		for i, fe := range fes {
			wg.Go(func() {
				if round%2 == 0 {
					errs[i] = fe.dir.AddAlias(uids[i], name)
					return
				}
				// A new member claiming the name at once.
				uid, _, _, err := fe.dir.Register("new", nil)
				if err != nil {
					errs[i] = err
					return
				}
				newUIDs[i] = uid
				errs[i] = fe.dir.AddAlias(uid, name)
			})
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner < 0:
				winner = i
			case err == nil:
				t.Fatalf("round %d: both frontends got %q", round, name)
			case !errors.Is(err, qlib.ErrAliasTaken):
				t.Fatalf("round %d: frontend %d: %v", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody got %q", round, name)
		}
		want := uids[winner]
		if round%2 == 1 {
			want = newUIDs[winner]
		}
		// The winner reads its write at once on its frontend; the
		// loser's may have been refused on a reservation still being
		// written, and sees it once its watcher has caught up.
		if got, ok := fes[winner].dir.AliasUID(name); !ok || got != want {
			t.Errorf("round %d: the winner's frontend resolves %q to %q %v, want %q", round, name, got, ok, want)
		}
		caughtUp(t, b, fes[1-winner].kv)
		if got, ok := fes[1-winner].dir.AliasUID(name); !ok || got != want {
			t.Errorf("round %d: the loser's frontend resolves %q to %q %v, want %q", round, name, got, ok, want)
		}
	}
	caughtUp(t, b, fes[1].kv)
	sameAnswers(t, fes[0].db, fes[1].db)
}

// TestClusterDirGroups: a group made on one frontend is joined, renamed,
// opened and dropped from the other, each change seen at once by the
// frontend that made it.
func TestClusterDirGroups(t *testing.T) {
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 2)
	w, f := fes[0].dir, fes[1].dir
	reg := func(d *clusterDirectory, alias string) string {
		t.Helper()
		uid, _, _, err := d.Register("phone", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.AddAlias(uid, alias); err != nil {
			t.Fatal(err)
		}
		return uid
	}
	alice, bob, carol := reg(f, "alice alias"), reg(w, "bob alias"), reg(f, "carol alias")
	const gid = "the group id"
	change, err := f.GroupInvite(alice, gid, "alice alias", "bob alias")
	if err != nil || change.Invitee != bob || change.Alias != "bob alias" || len(change.Notify) != 1 || change.Notify[0] != alice {
		t.Fatalf("GroupInvite: %+v %v", change, err)
	}
	if _, err := w.GroupEdit(bob, qlib.GroupJoin, gid, "", ""); err != nil {
		t.Fatal(err)
	}
	if m, err := w.GroupMembers(alice, gid); err != nil || len(m) != 2 {
		t.Errorf("members on the writer: %v %v", m, err)
	}
	if err := w.AddAlias(bob, "bob second"); err != nil {
		t.Fatal(err)
	}
	change, err = f.GroupEdit(bob, qlib.GroupAlias, gid, "bob second", "")
	if err != nil || change.Alias != "bob alias" || change.NewAlias != "bob second" {
		t.Fatalf("rename: %+v %v", change, err)
	}
	if _, err := f.GroupEdit(carol, qlib.GroupJoin, gid, "carol alias", ""); !errors.Is(err, qlib.ErrNotInvited) {
		t.Errorf("join uninvited: %v", err)
	}
	if _, err := w.GroupEdit(alice, qlib.GroupOpen, gid, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GroupEdit(carol, qlib.GroupJoin, gid, "", ""); !errors.Is(err, qlib.ErrJoinAlias) {
		t.Errorf("join open group without alias: %v", err)
	}
	if _, err := f.GroupEdit(carol, qlib.GroupJoin, gid, "carol alias", ""); err != nil {
		t.Fatal(err)
	}
	change, err = f.GroupEdit(carol, qlib.GroupDrop, gid, "", "bob second")
	if err != nil || change.Alias != "bob second" {
		t.Fatalf("drop: %+v %v", change, err)
	}
	for i, d := range []*clusterDirectory{f, w} {
		if m, err := d.GroupMembers(alice, gid); err != nil || strings.Join(m, ",") != alice+","+carol {
			t.Errorf("frontend %d: members %v %v", i, m, err)
		}
		if _, err := d.GroupMembers(bob, gid); !errors.Is(err, qlib.ErrNotMember) {
			t.Errorf("frontend %d: barred member posts: %v", i, err)
		}
	}
	if _, err := f.GroupInvite(alice, gid, "alice alias", "carol alias"); !errors.Is(err, qlib.ErrAlreadyMember) {
		t.Errorf("invite joined: %v", err)
	}
	if _, err := f.GroupInvite(carol, "bob alias", "carol alias", "alice alias"); !errors.Is(err, qlib.ErrGidTaken) {
		t.Errorf("gid that is an alias: %v", err)
	}
	if _, err := f.GroupEdit(alice, qlib.GroupJoin, "no such group", "", ""); !errors.Is(err, qlib.ErrNoGroup) {
		t.Errorf("unknown group: %v", err)
	}
	// Withdrawing an alias relists its owner, through the writer.
	moves, err := f.DropAlias(bob, "bob second")
	if err != nil || len(moves) != 1 || moves[0].Gid != gid || moves[0].NewAlias != "bob alias" {
		t.Errorf("DropAlias: %+v %v", moves, err)
	}
	if _, err := f.DropAlias(bob, "bob alias"); !errors.Is(err, qlib.ErrLastAlias) {
		t.Errorf("drop last alias: %v", err)
	}
	caughtUp(t, b, fes[1].kv)
	sameAnswers(t, fes[0].db, fes[1].db)
}

// TestClusterDirBlocks: a block made through one frontend holds at once
// there, and on the writer.
func TestClusterDirBlocks(t *testing.T) {
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 2)
	w, f := fes[0].dir, fes[1].dir
	alice, _, _, err := f.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	bob, _, _, err := w.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddAlias(bob, "bob the blocked"); err != nil {
		t.Fatal(err)
	}
	if entry, added, err := f.Block(alice, "bob the blocked"); err != nil || !added || entry != "bob the blocked" {
		t.Fatalf("Block: %q %v %v", entry, added, err)
	}
	for i, d := range []*clusterDirectory{f, w} {
		if !d.Blocked(alice, bob) {
			t.Errorf("frontend %d: block not in force", i)
		}
	}
	if entry, added, err := f.Block(alice, bob); err != nil || added || entry != "bob the blocked" {
		t.Errorf("Block again by uid: %q %v %v", entry, added, err)
	}
	if _, _, err := f.Block(alice, alice); !errors.Is(err, qlib.ErrBlockSelf) {
		t.Errorf("block self: %v", err)
	}
	if _, _, err := f.Block(alice, "nobody by this name"); !errors.Is(err, qlib.ErrAliasUnknown) {
		t.Errorf("block unknown: %v", err)
	}
	if blocks, err := f.Blocks(alice); err != nil || len(blocks) != 1 {
		t.Errorf("Blocks: %v %v", blocks, err)
	}
	if entry, removed, err := f.Unblock(alice, bob); err != nil || !removed || entry != "bob the blocked" {
		t.Errorf("Unblock: %q %v %v", entry, removed, err)
	}
	for i, d := range []*clusterDirectory{f, w} {
		if d.Blocked(alice, bob) {
			t.Errorf("frontend %d: unblocked still blocked", i)
		}
	}
}

// TestClusterDirOnceAliases: a single-use alias is consumed exactly once,
// whatever frontends race for it, and by UseAlias or GroupInvite alike.
func TestClusterDirOnceAliases(t *testing.T) {
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 2)
	owner, _, _, err := fes[1].dir.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	inviter, _, _, err := fes[0].dir.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fes[0].dir.AddAlias(inviter, "the inviter"); err != nil {
		t.Fatal(err)
	}
	const rounds, callers = 10, 3
	for round := range rounds {
		alias := fmt.Sprintf("once only %d", round)
		if err := fes[round%2].dir.AddOnceAlias(owner, alias); err != nil {
			t.Fatal(err)
		}
		if err := fes[round%2].dir.AddOnceAlias(owner, alias); err != nil {
			t.Errorf("adding it again: %v", err)
		}
		var mu sync.Mutex
		won := 0
		var wg sync.WaitGroup
		for i := range 2 * callers {
			d := fes[i%2].dir
			wg.Go(func() {
				var err error
				if i < callers {
					var uid string
					uid, err = d.UseAlias(alias)
					if err == nil && uid != owner {
						t.Errorf("UseAlias: %q", uid)
					}
				} else {
					var change qlib.GroupChange
					change, err = d.GroupInvite(inviter, fmt.Sprintf("invited by once %d %d", round, i), "the inviter", alias)
					if err == nil && (!change.Once || change.Invitee != owner) {
						t.Errorf("GroupInvite: %+v", change)
					}
				}
				if err != nil && !errors.Is(err, qlib.ErrAliasUnknown) {
					t.Errorf("round %d: %v", round, err)
				}
				mu.Lock()
				if err == nil {
					won++
				}
				mu.Unlock()
			})
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("round %d: %q consumed %d times", round, alias, won)
		}
		for i, fe := range fes {
			if _, _, ok := fe.dir.RecipientUID(alias); ok {
				t.Errorf("frontend %d: a used single-use alias resolves", i)
			}
		}
	}
	if err := fes[1].dir.AddOnceAlias(owner, "once only 0"); !errors.Is(err, qlib.ErrAliasTaken) {
		t.Errorf("reusing a used single-use alias: %v", err)
	}
	if err := fes[1].dir.AddOnceAlias(owner, "withdraw me"); err != nil {
		t.Fatal(err)
	}
	if err := fes[0].dir.DropOnceAlias(owner, "withdraw me"); err != nil {
		t.Fatal(err)
	}
	if once, err := fes[0].dir.OnceAliases(owner); err != nil || len(once) != 0 {
		t.Errorf("OnceAliases: %v %v", once, err)
	}
	caughtUp(t, b, fes[1].kv)
	sameAnswers(t, fes[0].db, fes[1].db)
}

// TestClusterDirErrorCodes: every error a forwarded write returns is, on
// the calling frontend, the error it was on the writer (errors.Is), with
// the writer's text.
func TestClusterDirErrorCodes(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range dirErrorCodes {
		if seen[e.code] || e.code == codeInternal || e.code == "" {
			t.Errorf("code %q repeated or reserved", e.code)
		}
		seen[e.code] = true
		// The first entry an error is, is its own: wrapping errors come
		// before those they wrap.
		if got := errorCode(e.err); got != e.code {
			t.Errorf("%v: code %q, want %q", e.err, got, e.code)
		}
	}

	// Through a writer whose handler returns each error, bare and wrapped.
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 2)
	var next error
	fake := b.dir(t)
	fake.Serve(func(ctx context.Context, method string, args []byte) ([]byte, uint64, string) {
		return []byte(next.Error()), 0, errorCode(next)
	})
	b.setWriter(t, fake)
	f := fes[1].dir
	for _, e := range dirErrorCodes {
		for _, err := range []error{e.err, fmt.Errorf("userdb: relist g: %w", e.err)} {
			next = err
			got := f.AddAlias("u", "alias")
			if !errors.Is(got, e.err) || got.Error() != err.Error() {
				t.Errorf("%q: got %v", err, got)
			}
		}
	}
	if !errors.Is(fmt.Errorf("x: %w", codeError("alias-long", ErrAliasLong.Error())), qlib.ErrAliasInvalid) {
		t.Error("ErrAliasLong is not ErrAliasInvalid across the wire")
	}
	next = errors.New("disk on fire")
	if got := f.AddAlias("u", "alias"); !errors.Is(got, errDirInternal) || got.Error() != "disk on fire" {
		t.Errorf("unknown error: %v", got)
	}
	for _, e := range dirErrorCodes {
		if errors.Is(codeError(codeInternal, "x"), e.err) {
			t.Errorf("an internal error is %v", e.err)
		}
	}
	if got := codeError("a code from a newer version", "text"); !errors.Is(got, errDirInternal) || got.Error() != "text" {
		t.Errorf("unknown code: %v", got)
	}

	// The real methods, through the writer's database.
	b.setWriter(t, fes[0].kv)
	uid, _, _, err := f.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		err  error
		call func() error
	}{
		{qlib.ErrLabelInvalid, func() error { _, _, _, err := f.Register("", nil); return err }},
		{qlib.ErrAliasShort, func() error { return f.AddAlias(uid, "short") }},
		{ErrAliasLong, func() error { return f.AddAlias(uid, strings.Repeat("x", maxAliasBytes+1)) }},
		{qlib.ErrAliasInvalid, func() error { return f.AddAlias(uid, "bad\x00alias") }},
		{qlib.ErrNoUser, func() error { return f.AddAlias("nosuchuser", "long enough") }},
		{qlib.ErrNoDevice, func() error { _, _, err := f.DropDevice(uid, "07"); return err }},
		{ErrNoDevice, func() error { return f.RetireDevice(uid + ".9") }},
		{qlib.ErrAliasUnknown, func() error { _, err := f.UseAlias("never added"); return err }},
		{qlib.ErrFromNotSender, func() error { _, err := f.GroupInvite(uid, "some group id", "not mine", "x"); return err }},
		{ErrGroupAct, func() error { _, err := f.GroupEdit(uid, "dance", "g", "", ""); return err }},
		{qlib.ErrGidInvalid, func() error { _, err := f.GroupInvite(uid, "bad\x01gid", "a", "b"); return err }},
		{errUnknownCall, func() error { _, err := f.forward("Dance", dirArgs{}); return err }},
	}
	for _, c := range checks {
		if err := c.call(); !errors.Is(err, c.err) {
			t.Errorf("want %v, got %v", c.err, err)
		}
	}
}

// TestClusterDirWriterFaults: the writer's record write refused cleanly
// changes nothing anywhere; one in doubt stops that writer, and its
// successor, holding every record, takes over.
func TestClusterDirWriterFaults(t *testing.T) {
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 2)
	w, f := fes[0].dir, fes[1].dir
	uid, _, _, err := f.Register("phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, refusal := range []error{dirkv.ErrConflict, dirkv.ErrNotWriter} {
		b.setFault(func(string) (error, bool) { return refusal, false })
		if err := f.AddAlias(uid, "refused name"); !errors.Is(err, refusal) {
			t.Errorf("refused with %v: %v", refusal, err)
		}
		b.setFault(nil)
		for i, d := range []*clusterDirectory{f, w} {
			if _, ok := d.AliasUID("refused name"); ok {
				t.Errorf("frontend %d: refused name resolves", i)
			}
		}
	}
	if err := f.AddAlias(uid, "refused name"); err != nil {
		t.Fatalf("after refusals: %v", err)
	}

	var fatal error
	fes[0].db.SetOnFatal(func(err error) { fatal = err })
	b.setFault(func(string) (error, bool) { return dirkv.ErrInDoubt, true })
	if err := f.AddAlias(uid, "doubtful name"); !errors.Is(err, dirkv.ErrInDoubt) {
		t.Errorf("in doubt: %v", err)
	}
	b.setFault(nil)
	if fatal == nil {
		t.Fatal("a write in doubt did not stop the writer")
	}
	if err := f.AddAlias(uid, "after the doubt"); !errors.Is(err, ErrFailed) {
		t.Errorf("writing through a failed writer: %v", err)
	}
	// The write happened: every frontend has it.
	caughtUp(t, b, fes[1].kv)
	if got, ok := f.AliasUID("doubtful name"); !ok || got != uid {
		t.Errorf("the write in doubt that happened: %q %v", got, ok)
	}

	// The other frontend takes over.
	b.setWriter(t, fes[1].kv)
	if err := w.AddAlias(uid, "after the doubt"); err != nil {
		t.Fatalf("through the new writer: %v", err)
	}
	if got, ok := f.AliasUID("after the doubt"); !ok || got != uid {
		t.Errorf("new writer's write: %q %v", got, ok)
	}
	b.setWriter(t, nil)
	if err := f.AddAlias(uid, "nobody writes"); !errors.Is(err, dirkv.ErrNoWriter) {
		t.Errorf("no writer: %v", err)
	}
}

// TestClusterDirWriterChange: the writer's role moves between frontends,
// each already holding every record, and writes from both go on with the
// names taken before still taken.
func TestClusterDirWriterChange(t *testing.T) {
	b := newFakeBucket()
	fes := startClusterDirs(t, b, 3)
	var uids []string
	for i := range 6 {
		writer := fes[i%3]
		b.setWriter(t, writer.kv)
		for j, fe := range fes {
			uid, _, _, err := fe.dir.Register("phone", nil)
			if err != nil {
				t.Fatalf("writer %d, frontend %d: %v", i%3, j, err)
			}
			uids = append(uids, uid)
			if err := fe.dir.AddAlias(uid, fmt.Sprintf("alias %d %d", i, j)); err != nil {
				t.Fatal(err)
			}
			// A name taken under an earlier writer stays taken.
			if i > 0 {
				if err := fe.dir.AddAlias(uid, fmt.Sprintf("alias %d %d", i-1, j)); !errors.Is(err, qlib.ErrAliasTaken) {
					t.Errorf("writer %d: name of an earlier writer's: %v", i%3, err)
				}
			}
		}
		if _, err := fes[(i+1)%3].dir.GroupInvite(uids[len(uids)-1], "group of round "+fmt.Sprint(i), fmt.Sprintf("alias %d 2", i), fmt.Sprintf("alias %d 0", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, fe := range fes {
		caughtUp(t, b, fe.kv)
	}
	sameAnswers(t, fes[0].db, fes[1].db)
	sameAnswers(t, fes[0].db, fes[2].db)
	if fes[0].db.UserCount() != 18 || fes[0].db.GroupCount() != 6 {
		t.Errorf("%d users, %d groups", fes[0].db.UserCount(), fes[0].db.GroupCount())
	}
}

// TestClusterDirNeedsKVRecords: the directory runs only over a database
// opened on the same bucket.
func TestClusterDirNeedsKVRecords(t *testing.T) {
	b := newFakeBucket()
	if _, err := newClusterDirectory(openTestUserDB(t), b.dir(t), nil); err == nil {
		t.Error("a database on disk accepted")
	}
	if _, err := newClusterDirectory(openKVDB(t, b.dir(t)), b.dir(t), nil); err == nil {
		t.Error("a database over another Dir accepted")
	}
}

package main

// mnm import-v0: take over a site of the deployed (v0) server. Run in the new
// site's folder, it reads the old folder (v0site.Read; never written to) and
// writes this server's userdb/ and qstore/ with the same members, devices,
// nodeids, aliases, groups and queued messages.
//
// Nothing is half-done after a crash. Everything is written into a staging
// folder beside the data (stageDirName), reopened and checked against what
// was read; only then is a marker written (moveMarkerName) listing the
// renames that put it in place. The server refuses to start while the marker
// exists, and running the import again finishes the renames. A staging
// folder without a marker is an import that never got that far: the next run
// removes it and starts over.

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"mnm/durable"
	"mnm/qlib/store"
	"mnm/v0site"
)

const (
	// stageDirName is the staging folder, in the data folder, so that the
	// final renames stay within one filesystem.
	stageDirName = ".import-v0"
	// moveMarkerName lists the renames still to do; see the file comment.
	moveMarkerName = "import-v0.moving"
	// v0DeviceLabel labels imported devices: the deployed server kept no
	// labels, and ours must not be empty.
	v0DeviceLabel = "device %d (imported)"
)

// ErrImportInterrupted is returned by newDaemon while an import's renames
// are unfinished.
var ErrImportInterrupted = errors.New("an import (mnm import-v0) was interrupted while moving its data into place; run it again to finish")

func runImportV0(args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("mnm import-v0", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() {
		fmt.Fprintln(stderr, "usage: mnm import-v0 [flags] OLD_SITE\n\n"+
			"Run in the new site's folder: reads the deployed server's folder OLD_SITE (never\n"+
			"changing it) and writes this server's userdb/ and qstore/, and mnm.config when\n"+
			"there is none.")
		fset.PrintDefaults()
	}
	configPath := fset.String("config", ConfigFileName, "the new site's configuration; copied from OLD_SITE if missing")
	skipBad := fset.Bool("skip-bad", false, "skip damaged records and queue files, and report them, instead of stopping")
	if err := fset.Parse(args); err != nil {
		return exitUsage
	}
	if fset.NArg() != 1 {
		fset.Usage()
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	sum, err := importV0(importOptions{Old: fset.Arg(0), Config: *configPath, SkipBad: *skipBad, Logger: logger})
	if err != nil {
		logger.Error("import failed", "err", err)
		return exitFailure
	}
	sum.print(stdout)
	return exitOK
}

type importOptions struct {
	Old     string // the deployed server's site folder
	Config  string // the new site's config file
	SkipBad bool
	Logger  *slog.Logger

	// Tests interrupt an import here: after staging, before the marker is
	// written, and after it is written, before the renames.
	beforeMarker, afterMarker func() error
}

// importSummary is what an import took in, as counted in the new site after
// it was written and reopened (and found equal to what was read).
type importSummary struct {
	Finished       bool // an interrupted import's renames were finished; nothing else was done
	Users          int
	Devices        int // live
	DefunctDevices int
	Aliases        int // live
	RetiredAliases int
	Groups         int
	Members        int
	Messages       int
	Entries        int   // queue entries: a message queued for n devices counts n
	Bytes          int64 // of the messages as stored (frame header and data), each once
	Copied         []string
	ConfigWarning  string // the copied config does not load as it is
	Problems       []v0site.Problem
	Elapsed        time.Duration
}

func (s *importSummary) print(w io.Writer) {
	if s.Finished {
		fmt.Fprintln(w, "import-v0: finished moving an interrupted import's data into place")
		return
	}
	secs := s.Elapsed.Seconds()
	fmt.Fprintf(w, "import-v0: %d users (%d devices, %d defunct), %d aliases (%d retired), %d groups (%d members)\n",
		s.Users, s.Devices, s.DefunctDevices, s.Aliases, s.RetiredAliases, s.Groups, s.Members)
	fmt.Fprintf(w, "import-v0: %d queued messages in %d queue entries, %d bytes, in %.2f s (%.0f messages/s)\n",
		s.Messages, s.Entries, s.Bytes, secs, float64(s.Messages)/max(secs, 1e-9))
	fmt.Fprintln(w, "import-v0: checked: the new userdb/ and qstore/ hold exactly what was read")
	if len(s.Copied) > 0 {
		fmt.Fprintf(w, "import-v0: copied %s\n", strings.Join(s.Copied, ", "))
	}
	if s.ConfigWarning != "" {
		fmt.Fprintf(w, "import-v0: the copied config needs editing before the server starts: %s\n", s.ConfigWarning)
	}
	for _, p := range s.Problems {
		fmt.Fprintf(w, "import-v0: left out: %s\n", p)
	}
}

// importV0 runs an import; see the file comment.
func importV0(opts importOptions) (*importSummary, error) {
	start := time.Now()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	newDir, err := filepath.Abs(filepath.Dir(opts.Config))
	if err != nil {
		return nil, err
	}
	dataDir := newDir
	copyConfig := false
	if _, err := os.Stat(opts.Config); errors.Is(err, fs.ErrNotExist) {
		copyConfig = true
	} else {
		cfg, err := LoadConfig(opts.Config)
		if err != nil {
			return nil, err
		}
		dataDir = cfg.DataDir
	}
	if finished, err := finishMoves(dataDir, opts.Logger); err != nil || finished {
		return &importSummary{Finished: finished}, err
	}
	for _, sub := range []string{"userdb", "qstore"} {
		if _, err := os.Lstat(filepath.Join(dataDir, sub)); !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("refusing to write over %s: import into a site that has no data yet", filepath.Join(dataDir, sub))
		}
	}
	old, err := filepath.Abs(opts.Old)
	if err != nil {
		return nil, err
	}
	site, err := v0site.Read(old, v0site.Options{SkipBad: opts.SkipBad, Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	opts.Logger.Info("import-v0: old site read", "dir", old, "users", len(site.Users), "messages", len(site.Msgs), "elapsed", time.Since(start))

	stage := filepath.Join(dataDir, stageDirName)
	if _, err := os.Lstat(stage); err == nil {
		opts.Logger.Warn("removing the staging folder of an import that did not finish", "dir", stage)
		if err := os.RemoveAll(stage); err != nil {
			return nil, err
		}
	}
	sum := &importSummary{Problems: site.Problems}
	got, moves, err := stageImport(site, stage, dataDir, old, newDir, copyConfig, sum, opts)
	if err != nil {
		// Nothing outside the staging folder was touched.
		if rmErr := os.RemoveAll(stage); rmErr != nil {
			opts.Logger.Warn("import-v0: could not remove the staging folder", "dir", stage, "err", rmErr)
		}
		return nil, err
	}
	if err := writeMoves(dataDir, moves); err != nil {
		return nil, err
	}
	if opts.afterMarker != nil {
		if err := opts.afterMarker(); err != nil {
			return nil, err
		}
	}
	if _, err := finishMoves(dataDir, opts.Logger); err != nil {
		return nil, err
	}
	sum.Users, sum.Devices, sum.DefunctDevices = got.users, got.devices, got.defunct
	sum.Aliases, sum.RetiredAliases, sum.Groups, sum.Members = got.aliases, got.retired, got.groups, got.members
	sum.Messages, sum.Entries, sum.Bytes = got.messages, got.entries, got.bytes
	sum.Elapsed = time.Since(start)
	opts.Logger.Info("import-v0 done", "from", old, "users", sum.Users, "messages", sum.Messages, "elapsed", sum.Elapsed)
	return sum, nil
}

// stageImport writes the import into the staging folder, reopens it and
// checks it against what was read, and returns what it holds and the renames
// that will put it in place.
func stageImport(site *v0site.Site, stage, dataDir, old, newDir string, copyConfig bool, sum *importSummary, opts importOptions) (*counts, []move, error) {
	if err := os.MkdirAll(stage, userDirPerm); err != nil {
		return nil, nil, err
	}
	im := &importer{site: site, stage: stage, log: opts.Logger, sums: make(map[store.ID][]byte)}
	t0 := time.Now()
	want, err := im.writeUserDB()
	if err != nil {
		return nil, nil, err
	}
	opts.Logger.Info("import-v0: users and groups staged", "elapsed", time.Since(t0))
	t0 = time.Now()
	if err := im.writeQStore(want); err != nil {
		return nil, nil, err
	}
	opts.Logger.Info("import-v0: messages staged", "elapsed", time.Since(t0))
	t0 = time.Now()
	got, err := im.check()
	if err != nil {
		return nil, nil, err
	}
	if *got != *want {
		return nil, nil, fmt.Errorf("import check failed: read %+v, the new site holds %+v", *want, *got)
	}
	opts.Logger.Info("import-v0: staged data checked", "elapsed", time.Since(t0))
	moves := []move{
		{filepath.Join(stage, "userdb"), filepath.Join(dataDir, "userdb")},
		{filepath.Join(stage, "qstore"), filepath.Join(dataDir, "qstore")},
	}
	if copyConfig {
		cm, copied, warning, err := stageConfig(old, stage, newDir, opts.Logger)
		if err != nil {
			return nil, nil, err
		}
		moves = append(moves, cm...) // the config last: a server started early finds no config of the new site
		sum.Copied, sum.ConfigWarning = copied, warning
	}
	if err := (durable.OSFS{}).SyncDir(stage); err != nil {
		return nil, nil, err
	}
	if opts.beforeMarker != nil {
		if err := opts.beforeMarker(); err != nil {
			return nil, nil, err
		}
	}
	return got, moves, nil
}

// counts is what an import holds, counted once from what was read and once
// from the new site.
type counts struct {
	users, devices, defunct, aliases, retired, groups, members int
	messages, entries                                          int
	bytes                                                      int64
}

type importer struct {
	site  *v0site.Site
	stage string
	log   *slog.Logger
	// sums holds the SHA-256 of each message as read, to check the store's
	// copy against.
	sums map[store.ID][]byte
}

// writeUserDB writes a record for each user and group of the site into the
// staging userdb, after checking them against this server's rules, and
// returns what it wrote.
func (im *importer) writeUserDB() (*counts, error) {
	dir := filepath.Join(im.stage, "userdb")
	userDir, groupDir := filepath.Join(dir, userSubdir), filepath.Join(dir, groupSubdir)
	for _, d := range []string{dir, userDir, groupDir} {
		if err := os.Mkdir(d, userDirPerm); err != nil {
			return nil, err
		}
	}
	now := time.Now().UTC()
	c := &counts{}
	owner := make(map[string]string) // alias → uid, live or retired
	for _, u := range im.site.Users {
		rec, err := userFromV0(u, now)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", u.File, err)
		}
		data, err := encodeRecord(rec)
		if err == nil {
			err = writeImportedRecord(filepath.Join(userDir, u.UID+recordSuffix), data)
		}
		if err != nil {
			return nil, err
		}
		c.users++
		for _, d := range rec.Devices {
			if d.Defunct {
				c.defunct++
			} else {
				c.devices++
			}
		}
		c.aliases += len(rec.Aliases)
		c.retired += len(rec.RetiredAliases)
		rec.eachName(func(a string, _ nameKind) { owner[a] = u.UID })
	}
	for _, g := range im.site.Groups {
		rec, err := groupFromV0(g, owner, now)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", g.File, err)
		}
		data, err := encodeRecord(rec)
		if err == nil {
			err = writeImportedRecord(filepath.Join(groupDir, groupFileStem(g.GID)+recordSuffix), data)
		}
		if err != nil {
			return nil, err
		}
		c.groups++
		c.members += len(rec.Members)
	}
	for _, d := range []string{userDir, groupDir, dir} {
		if err := (durable.OSFS{}).SyncDir(d); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// writeImportedRecord writes data to the new record file path and fsyncs
// it; writeUserDB syncs the directories once every record is written.
func writeImportedRecord(path string, data []byte) error {
	if err := durable.WriteFile(durable.OSFS{}, path, data, recordPerm); err != nil {
		return fmt.Errorf("userdb: %w", err)
	}
	return nil
}

// userFromV0 converts a user, keeping its uid, device numbers, node
// derivations and defunct states, and its aliases, defunct ones retired.
func userFromV0(u v0site.User, now time.Time) (*userRecord, error) {
	if !validUID(u.UID) {
		return nil, fmt.Errorf("uid %q is not valid here", u.UID)
	}
	rec := &userRecord{UID: u.UID, Rev: 1, Created: now}
	for _, d := range u.Devices {
		dr := deviceRecord{Num: d.Num, Label: fmt.Sprintf(v0DeviceLabel, d.Num), Created: now, Defunct: d.Defunct}
		if d.Derived {
			dr.NodeHash, dr.HashV0 = d.Key, true
		} else {
			dr.NodeHash = nodeHash(u.UID, d.Key)
		}
		rec.Devices = append(rec.Devices, dr)
		rec.NextDevice = d.Num + 1
	}
	for _, a := range u.Aliases {
		if err := checkAlias(a.Name, 1); err != nil {
			return nil, fmt.Errorf("alias %q: %w", a.Name, err)
		}
		if a.Defunct {
			rec.RetiredAliases = append(rec.RetiredAliases, a.Name)
		} else {
			rec.Aliases = append(rec.Aliases, a.Name)
		}
	}
	if u.Auth != nil {
		// Sign-up claims are an object; anything else is kept whole under
		// one key rather than dropped.
		if err := json.Unmarshal(u.Auth, &rec.Claims); err != nil {
			rec.Claims = map[string]any{"v0Authentication": json.RawMessage(u.Auth)}
		}
		// Of claims that name an identity only iss and sub are kept, as
		// for a sign-up here (keptClaims): an e-mail address and the like
		// are pruned now rather than carried over. Users that share an
		// identity are all imported; the accounts-per-identity bound only
		// refuses new registrations.
		rec.Claims = keptClaims(rec.Claims)
	}
	if err := rec.check(u.UID); err != nil {
		return nil, err
	}
	return rec, nil
}

// groupFromV0 converts a group. The deployed server kept no join order;
// members are listed in uid order.
func groupFromV0(g v0site.Group, owner map[string]string, now time.Time) (*groupRecord, error) {
	if err := checkGid(g.GID, 1); err != nil {
		return nil, fmt.Errorf("group id %q: %w", g.GID, err)
	}
	if o, ok := owner[g.GID]; ok {
		return nil, fmt.Errorf("group id %q is also an alias of %s", g.GID, o)
	}
	status := map[v0site.Status]memberStatus{v0site.Invited: memberInvited, v0site.Joined: memberJoined, v0site.Barred: memberBarred}
	rec := &groupRecord{GID: g.GID, Rev: 1, Created: now}
	for _, m := range g.Members {
		if owner[m.Alias] != m.UID {
			return nil, fmt.Errorf("member %s is listed under %q, which is not one of its aliases", m.UID, m.Alias)
		}
		rec.Members = append(rec.Members, memberRecord{UID: m.UID, Alias: m.Alias, Status: status[m.Status]})
	}
	if err := rec.check(groupFileStem(g.GID)); err != nil {
		return nil, err
	}
	return rec, nil
}

// writeQStore imports every queued message into the staging store, keeping
// its id, frame header and data, for the devices whose queues held it, and
// counts them into c.
func (im *importer) writeQStore(c *counts) error {
	st, err := store.Open(store.Options{Dir: filepath.Join(im.stage, "qstore"), Logger: im.log})
	if err != nil {
		return err
	}
	var failed error
	for _, m := range im.site.Msgs {
		if err := im.importMessage(st, m, func(err error) {
			if err != nil && failed == nil {
				failed = err
			}
		}); err != nil {
			st.Close()
			return fmt.Errorf("%s: %w", m.Path, err)
		}
		c.messages++
		c.entries += len(m.Queues)
		c.bytes += m.Size
	}
	err = st.Sync()
	// done runs on the store's writer goroutine; Sync has waited for it.
	return errors.Join(err, failed, st.Close())
}

func (im *importer) importMessage(st *store.Log, m v0site.Message, done func(error)) error {
	id, err := store.ParseID(m.ID)
	if err != nil {
		return err
	}
	f, err := os.Open(m.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	env, err := v0site.ReadHeader(f)
	if err != nil {
		return err
	}
	if len(env) != m.HeaderLen {
		return errors.New("changed while being imported")
	}
	h := sha256.New()
	h.Write(env)
	data := &countingReader{r: io.TeeReader(f, h)}
	prio := store.Normal
	if m.High {
		prio = store.High
	}
	devs := make([]string, len(m.Queues))
	for i, q := range m.Queues {
		devs[i] = devKey(q.UID, q.Num)
	}
	if err := st.Import(id, prio, devs, env, data, done); err != nil {
		return err
	}
	if int64(len(env))+data.n != m.Size {
		return errors.New("changed while being imported")
	}
	im.sums[id] = h.Sum(nil)
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// check reopens the staging userdb and store, as the server will, and counts
// what they hold; every queue must be what the deployed server's was, and
// every message must read back with the bytes that were read.
func (im *importer) check() (*counts, error) {
	db, err := OpenUserDB(UserDBOptions{Dir: filepath.Join(im.stage, "userdb"), Logger: im.log})
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	defer db.Close()
	st, err := store.Open(store.Options{Dir: filepath.Join(im.stage, "qstore"), Logger: im.log})
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	defer st.Close()

	c := &counts{}
	// Each device's queue in delivery order: high priority first, then by
	// id (site.Msgs is in id order).
	want := make(map[string][]store.ID)
	for _, high := range []bool{true, false} {
		for _, m := range im.site.Msgs {
			if m.High != high {
				continue
			}
			id, _ := store.ParseID(m.ID)
			for _, q := range m.Queues {
				dev := devKey(q.UID, q.Num)
				want[dev] = append(want[dev], id)
			}
		}
	}
	seen := make(map[store.ID]bool)
	for uid, u := range db.users {
		rec := u.rec.Load()
		c.users++
		c.aliases += len(rec.Aliases)
		c.retired += len(rec.RetiredAliases)
		for _, d := range rec.Devices {
			if d.Defunct {
				c.defunct++
			} else {
				c.devices++
			}
			dev := devKey(uid, d.Num)
			q := st.Queue(dev)
			if !slices.Equal(q, want[dev]) {
				return nil, fmt.Errorf("check: queue of %s holds %v, want %v", dev, q, want[dev])
			}
			delete(want, dev)
			c.entries += len(q)
			for _, id := range q {
				if seen[id] {
					continue
				}
				seen[id] = true
				h := sha256.New()
				n, err := st.WriteTo(h, id)
				if err != nil {
					return nil, fmt.Errorf("check: message %v: %w", id, err)
				}
				if !slices.Equal(h.Sum(nil), im.sums[id]) {
					return nil, fmt.Errorf("check: message %v does not read back as it was read", id)
				}
				c.messages++
				c.bytes += n
			}
		}
	}
	if len(want) > 0 {
		return nil, fmt.Errorf("check: %d queues belong to no device", len(want))
	}
	for _, g := range db.groups {
		c.groups++
		c.members += len(g.rec.Load().Members)
	}
	return c, nil
}

// stageConfig copies the old site's config, and the certificate and key it
// names by relative paths, into the staging folder, and returns the renames
// that put them in newDir. A file newDir already has is not replaced. warning
// says why the copied config would not load here, if it would not.
func stageConfig(old, stage, newDir string, logger *slog.Logger) (moves []move, copied []string, warning string, err error) {
	oldConfig := filepath.Join(old, ConfigFileName)
	names := []string{ConfigFileName}
	cfg, lerr := LoadConfig(oldConfig)
	if lerr != nil {
		warning = lerr.Error()
	} else {
		for _, p := range []string{cfg.Listen.CertPath, cfg.Listen.KeyPath} {
			rel, err := filepath.Rel(old, p)
			if err != nil || !filepath.IsLocal(rel) {
				continue // outside the old folder: the copied config still names it
			}
			names = append(names, rel)
		}
	}
	cdir := filepath.Join(stage, "config")
	// The config goes last: see importV0.
	for _, name := range slices.Backward(names) {
		dst := filepath.Join(newDir, name)
		if _, err := os.Lstat(dst); err == nil {
			logger.Warn("import-v0: not copying a file the new site has", "file", dst)
			continue
		}
		data, err := readSmallFile(filepath.Join(old, name), maxConfigFileBytes)
		if err != nil {
			return nil, nil, "", err
		}
		tmp := filepath.Join(cdir, name)
		if err := os.MkdirAll(filepath.Dir(tmp), userDirPerm); err != nil {
			return nil, nil, "", err
		}
		if err := writeFileOnce(tmp, data, recordPerm); err != nil {
			return nil, nil, "", err
		}
		moves = append(moves, move{tmp, dst})
		copied = append(copied, name)
	}
	slices.Reverse(copied)
	return moves, copied, warning, nil
}

// move is one rename that puts imported data in place.
type move struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// writeMoves writes the marker listing moves, crash-safely: once it exists,
// the import is complete in the staging folder and only the renames remain.
func writeMoves(dataDir string, moves []move) error {
	data, err := json.Marshal(moves)
	if err != nil {
		return err
	}
	return writeFileOnce(filepath.Join(dataDir, moveMarkerName), data, recordPerm)
}

// finishMoves does the renames listed by the marker in dataDir, if there is
// one, then removes the marker and the staging folder. It reports whether
// there was a marker. Renames already done are skipped, so it may be
// interrupted and run again any number of times.
func finishMoves(dataDir string, logger *slog.Logger) (bool, error) {
	marker := filepath.Join(dataDir, moveMarkerName)
	data, err := readSmallFile(marker, maxConfigFileBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var moves []move
	if err := json.Unmarshal(data, &moves); err != nil {
		return false, fmt.Errorf("%s: %w", marker, err)
	}
	for _, m := range moves {
		if _, err := os.Lstat(m.From); errors.Is(err, fs.ErrNotExist) {
			if _, err := os.Lstat(m.To); err != nil {
				return false, fmt.Errorf("%s: neither %s nor %s exists", marker, m.From, m.To)
			}
			continue // done before an interruption
		}
		if _, err := os.Lstat(m.To); err == nil {
			return false, fmt.Errorf("%s: both %s and %s exist", marker, m.From, m.To)
		}
		if err := os.Rename(m.From, m.To); err != nil {
			return false, err
		}
		if err := (durable.OSFS{}).SyncDir(filepath.Dir(m.To)); err != nil {
			return false, err
		}
	}
	if err := os.Remove(marker); err != nil {
		return false, err
	}
	if err := (durable.OSFS{}).SyncDir(dataDir); err != nil {
		return false, err
	}
	if err := os.RemoveAll(filepath.Join(dataDir, stageDirName)); err != nil {
		return false, err
	}
	logger.Info("import-v0: data moved into place", "dir", dataDir)
	return true, nil
}

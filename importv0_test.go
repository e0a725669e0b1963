package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mnm/testclient"
	"mnm/v0site"
	"mnm/v0site/v0test"
)

const site11 = "../shared/tmtp/v0-site/site-11.tar.gz"

// backlog is what a site's members are owed: the users with their
// credentials, and the posts queued for them, in posting order.
type backlog struct {
	Users []backlogUser `json:"users"`
	Posts []backlogPost `json:"posts"`
}

type backlogUser struct {
	UID     string   `json:"uid"`
	Nodeids []string `json:"nodeids"`
	Alias   string   `json:"alias"`
}

type backlogPost struct {
	From   string   `json:"from"`
	MsgID  string   `json:"msgid"`
	SHA256 string   `json:"sha256"`
	Size   int      `json:"size"`
	To     []string `json:"to"`
}

// unpackSite11 unpacks the deployed server's site fixture into a temporary
// folder and returns the site folder and its manifest. It skips the test
// without ../shared, unless MNM_REQUIRE_SHARED=1.
func unpackSite11(t *testing.T) (string, *backlog) {
	t.Helper()
	dir := t.TempDir()
	gz, err := gzip.NewReader(bytes.NewReader(readShared(t, site11)))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !filepath.IsLocal(h.Name) {
			t.Fatalf("%s: entry %q outside the folder", site11, h.Name)
		}
		path := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o700)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(path, data, 0o600)
			}
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, path)
		case tar.TypeLink:
			err = os.Link(filepath.Join(dir, h.Linkname), path)
		default:
			err = fmt.Errorf("entry %q of type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var b backlog
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err == nil {
		err = json.Unmarshal(data, &b)
	}
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "site"), &b
}

// backlogOf is what v0test built, as a backlog.
func backlogOf(s *v0test.Site) *backlog {
	b := &backlog{}
	for _, u := range s.Users {
		b.Users = append(b.Users, backlogUser{UID: u.UID, Nodeids: u.Nodeids, Alias: u.Alias})
	}
	for _, p := range s.Posts {
		b.Posts = append(b.Posts, backlogPost{From: p.From, MsgID: p.ID, SHA256: hex.EncodeToString(p.SHA256[:]), Size: len(p.Data), To: p.To})
	}
	return b
}

// snapshot lists every file under dir with its size, mode and modification
// time, to show that a folder was not changed.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var out strings.Builder
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(&out, "%s %d %v %d\n", path, fi.Size(), fi.Mode(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// importAndServe imports the site old into a new site with a loopback
// config and starts the server on it.
func importAndServe(t *testing.T, old string) (*e2eServer, *importSummary) {
	t.Helper()
	before := snapshot(t, old)
	dir := t.TempDir()
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")
	sum, err := importV0(importOptions{Old: old, Config: cfg})
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	if after := snapshot(t, old); after != before {
		t.Errorf("the import changed the old site:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Lstat(filepath.Join(dir, stageDirName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("staging folder left behind: %v", err)
	}
	return serveE2E(t, dir, cfg), sum
}

// checkBacklog logs in every device of every user with its old credentials
// and checks that each receives each post queued for its user exactly once,
// intact, in posting order, and nothing else but notices.
func checkBacklog(t *testing.T, s *e2eServer, b *backlog) {
	t.Helper()
	marker, _ := s.register("_")
	owed := map[string][]backlogPost{}
	for _, p := range b.Posts {
		for _, uid := range p.To {
			owed[uid] = append(owed[uid], p)
		}
	}
	for _, u := range b.Users {
		var devs []*testclient.Client
		for _, n := range u.Nodeids {
			devs = append(devs, s.login(u.UID, n))
		}
		// A post after the backlog: once it arrives, anything owed has.
		ack, err := marker.Post([]testclient.Recipient{{ID: u.UID, Type: testclient.ToUser}}, []byte("end of backlog"))
		if err != nil || ack.Error != "" {
			t.Fatalf("marker post to %s: %v %s", u.UID, err, ack.Error)
		}
		if last := b.Posts[len(b.Posts)-1].MsgID; ack.MsgID <= last {
			t.Errorf("id issued after the import %s, not above the imported %s", ack.MsgID, last)
		}
		for i, c := range devs {
			var got []*testclient.Frame
			for {
				f := recv(t, c)
				if err := c.Ack(f.Str("id")); err != nil {
					t.Fatal(err)
				}
				if f.Op() != "delivery" {
					continue
				}
				if f.Str("id") == ack.MsgID {
					break
				}
				got = append(got, f)
			}
			want := owed[u.UID]
			if len(got) != len(want) {
				t.Errorf("%s device %d: %d deliveries, want %d", u.UID, i+1, len(got), len(want))
				continue
			}
			for k, f := range got {
				p := want[k]
				sum := sha256.Sum256(f.Data)
				if f.Str("id") != p.MsgID || f.Str("from") != p.From || len(f.Data) != p.Size || hex.EncodeToString(sum[:]) != p.SHA256 || !f.HeadsumOK() {
					t.Errorf("%s device %d: delivery %d is %s (%d octets), want post %s from %s (%d octets)",
						u.UID, i+1, k, f.Raw, len(f.Data), p.MsgID, p.From, p.Size)
				}
			}
		}
		for _, c := range devs {
			c.Close()
		}
	}
}

// checkResolves checks that a user's alias and a group resolve after the
// import: a ping by alias arrives, and a post to the group reaches every
// device of its joined members.
func checkResolves(t *testing.T, s *e2eServer, b *backlog, site *v0site.Site) {
	t.Helper()
	creds := map[string]backlogUser{}
	for _, u := range b.Users {
		creds[u.UID] = u
	}
	from, to := b.Users[0], b.Users[1]
	a := s.login(from.UID, from.Nodeids[0])
	r := s.login(to.UID, to.Nodeids[0])
	if ack, err := a.Ping(from.Alias, to.Alias, "still there?"); err != nil || ack.Error != "" {
		t.Fatalf("ping by imported aliases: %v %s", err, ack.Error)
	}
	for f := recv(t, r); ; f = recv(t, r) {
		r.Ack(f.Str("id"))
		if f.Op() == "ping" {
			if f.Str("alias") != from.Alias || string(f.Data) != "still there?" {
				t.Errorf("ping arrived as %s %q", f.Raw, f.Data)
			}
			break
		}
	}
	a.Close()
	r.Close()

	g := site.Groups[0]
	var joined []string
	for _, m := range g.Members {
		if m.Status == v0site.Joined {
			joined = append(joined, m.UID)
		}
	}
	var clients []*testclient.Client
	for _, uid := range joined {
		for _, n := range creds[uid].Nodeids {
			clients = append(clients, s.login(uid, n))
		}
	}
	ack, err := clients[0].Post([]testclient.Recipient{{ID: g.GID, Type: testclient.ToGroup}}, []byte("to the group"))
	if err != nil || ack.Error != "" {
		t.Fatalf("post to imported group %s: %v %s", g.GID, err, ack.Error)
	}
	for _, c := range clients {
		for {
			f := recv(t, c)
			c.Ack(f.Str("id"))
			if f.Str("id") == ack.MsgID {
				break
			}
		}
		c.Close()
	}
}

// TestImportV0Site11 takes over the deployed server's real site: every
// device of every member logs in with its old nodeid and receives the whole
// backlog once, intact and in order; aliases and groups resolve.
func TestImportV0Site11(t *testing.T) {
	old, b := unpackSite11(t)
	site, err := v0site.Read(old, v0site.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, sum := importAndServe(t, old)
	devices := 0
	for _, u := range b.Users {
		devices += len(u.Nodeids)
	}
	if sum.Users != len(b.Users) || sum.Devices != devices || sum.Groups != 3 || sum.Messages < len(b.Posts) {
		t.Errorf("summary %+v; the manifest lists %d users, %d devices, %d posts", sum, len(b.Users), devices, len(b.Posts))
	}
	checkBacklog(t, s, b)
	checkResolves(t, s, b, site)
	// A wrong nodeid still fails.
	if _, _, err := testclient.Login(s.addr, b.Users[0].UID, b.Users[1].Nodeids[0], testclient.Options{}); err == nil {
		t.Error("login with another user's nodeid succeeded")
	}
}

var importSpec = v0test.Spec{
	Users: 12, SecondDeviceEvery: 3, DefunctDeviceEvery: 4, DefunctAliasEvery: 5,
	Groups: 2, GroupSize: 4, Messages: 60, MaxSize: 70 << 10, Seed: 7,
}

// TestImportV0Generated imports built sites, with node keys in both forms
// and posts larger than the store's chunk, and serves them.
func TestImportV0Generated(t *testing.T) {
	for _, clear := range []bool{false, true} {
		t.Run(fmt.Sprintf("clearKeys=%v", clear), func(t *testing.T) {
			spec := importSpec
			spec.ClearKeys = clear
			built, err := v0test.Build(filepath.Join(t.TempDir(), "site"), spec)
			if err != nil {
				t.Fatal(err)
			}
			site, err := v0site.Read(built.Dir, v0site.Options{})
			if err != nil {
				t.Fatal(err)
			}
			s, sum := importAndServe(t, built.Dir)
			if sum.Users != 12 || sum.Devices != 16 || sum.DefunctDevices != 3 || sum.Aliases != 12 || sum.RetiredAliases != 3 || sum.Messages != 60 {
				t.Errorf("summary %+v", sum)
			}
			b := backlogOf(built)
			checkBacklog(t, s, b)
			checkResolves(t, s, b, site)

			// A retired alias resolves for nobody and cannot be claimed.
			u := built.Users[0]
			c := s.login(u.UID, u.Nodeids[0])
			if ack, err := c.Ping(u.Alias, u.Retired, "hello?"); err != nil || ack.Error == "" {
				t.Errorf("ping to a retired alias: %v, ack %+v", err, ack)
			}
			other, _ := s.register("_")
			if ack, err := other.NewAlias(u.Retired); err != nil || ack.Error == "" {
				t.Errorf("claiming a retired alias: %v, ack %+v", err, ack)
			}
		})
	}
}

func TestImportV0Refusals(t *testing.T) {
	built, err := v0test.Build(filepath.Join(t.TempDir(), "site"), importSpec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")
	if err := os.Mkdir(filepath.Join(dir, "qstore"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := importV0(importOptions{Old: built.Dir, Config: cfg}); err == nil || !strings.Contains(err.Error(), "refusing to write over") {
		t.Errorf("import over existing data: %v", err)
	}
	os.Remove(filepath.Join(dir, "qstore"))

	// A damaged site stops the import, naming the file, and leaves nothing.
	bad := filepath.Join(built.Dir, "userdb/user", built.Users[2].UID)
	data, _ := os.ReadFile(bad)
	os.WriteFile(bad, bytes.Replace(data, []byte(`"Num":1`), []byte(`"Num":2`), 1), 0o600)
	if _, err := importV0(importOptions{Old: built.Dir, Config: cfg}); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("damaged record: %v, want an error naming %s", err, bad)
	}
	for _, name := range []string{"userdb", "qstore", stageDirName, moveMarkerName} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists after a failed import", name)
		}
	}
	// With -skip-bad it goes through and reports what it left out.
	sum, err := importV0(importOptions{Old: built.Dir, Config: cfg, SkipBad: true})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Users != 11 || !slices.ContainsFunc(sum.Problems, func(p v0site.Problem) bool { return p.File == bad }) {
		t.Errorf("with -skip-bad: %d users, problems %v", sum.Users, sum.Problems)
	}
}

// TestImportV0Interrupted: an import stopped after its marker leaves a site
// the server refuses to start on, until the import is run again; one stopped
// before it leaves a staging folder that the next run replaces.
func TestImportV0Interrupted(t *testing.T) {
	built, err := v0test.Build(filepath.Join(t.TempDir(), "site"), importSpec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")

	// A crash while staging: a leftover staging folder.
	if err := os.MkdirAll(filepath.Join(dir, stageDirName, "userdb", "user"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, stageDirName, "userdb", "user", "junk.json"), []byte("x"), 0o600)

	stop := errors.New("power cut")
	_, err = importV0(importOptions{Old: built.Dir, Config: cfg, afterMarker: func() error {
		// Half the renames done.
		return errors.Join(stop, os.Rename(filepath.Join(dir, stageDirName, "userdb"), filepath.Join(dir, "userdb")))
	}})
	if !errors.Is(err, stop) {
		t.Fatalf("import: %v", err)
	}
	logger := slog.New(slog.DiscardHandler)
	if _, err := startDaemon(cfg, logger); !errors.Is(err, ErrImportInterrupted) {
		t.Fatalf("server started on an interrupted import: %v", err)
	}
	sum, err := importV0(importOptions{Old: built.Dir, Config: cfg})
	if err != nil || !sum.Finished {
		t.Fatalf("second run: %+v, %v", sum, err)
	}
	checkBacklog(t, serveE2E(t, dir, cfg), backlogOf(built))
}

// BenchmarkImportV0 imports a generated site of 1,000 users and 20,000
// queued posts of up to 4 KB (each to one or two users, a quarter of them
// with two devices). It reports messages imported per second.
func BenchmarkImportV0(b *testing.B) {
	spec := v0test.Spec{Users: 1000, SecondDeviceEvery: 4, Groups: 10, GroupSize: 50, Messages: 20000, MaxSize: 4 << 10, ClearKeys: true, Seed: 3}
	built, err := v0test.Build(filepath.Join(b.TempDir(), "site"), spec)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		// No config in the new folder: the import copies the old one.
		cfg := filepath.Join(b.TempDir(), ConfigFileName)
		sum, err := importV0(importOptions{Old: built.Dir, Config: cfg})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(sum.Messages)/sum.Elapsed.Seconds(), "msgs/s")
		b.ReportMetric(float64(sum.Bytes)/sum.Elapsed.Seconds()/1e6, "MB/s")
	}
}

// TestImportV0Site11Damaged imports damaged copies of the deployed server's
// site: a damaged record or queue file stops the import with its name and
// leaves nothing behind, -skip-bad imports the rest and lists it, and a
// leftover in userdb/temp is reported without stopping anything.
func TestImportV0Site11Damaged(t *testing.T) {
	firstFile := func(t *testing.T, dir string) string {
		t.Helper()
		var found string
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if found == "" && err == nil && d.Type().IsRegular() {
				found = path
			}
			return nil
		})
		if found == "" {
			t.Fatalf("no file under %s", dir)
		}
		return found
	}
	for _, tc := range []struct {
		name  string
		do    func(t *testing.T, old string) string
		fatal bool
	}{
		{"user record", func(t *testing.T, old string) string {
			p := firstFile(t, filepath.Join(old, "userdb/user"))
			data, _ := os.ReadFile(p)
			data[len(data)/2] ^= 0x20
			os.WriteFile(p, data, 0o600)
			return p
		}, true},
		{"group record", func(t *testing.T, old string) string {
			p := firstFile(t, filepath.Join(old, "userdb/group"))
			data, _ := os.ReadFile(p)
			os.WriteFile(p, data[:len(data)-3], 0o600)
			return p
		}, true},
		{"queue file", func(t *testing.T, old string) string {
			p := firstFile(t, filepath.Join(old, "qstore"))
			data, _ := os.ReadFile(p)
			os.Remove(p) // its other hard links stay whole
			os.WriteFile(p, data[:len(data)-1], 0o600)
			return p
		}, true},
		{"leftover in temp", func(t *testing.T, old string) string {
			p := filepath.Join(old, "userdb/temp", "interrupted")
			os.WriteFile(p, []byte(`{"Nodes":`), 0o600)
			return p
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, _ := unpackSite11(t)
			file := tc.do(t, old)
			dir := t.TempDir()
			cfg := writeTestConfig(t, dir, "127.0.0.1:0")
			sum, err := importV0(importOptions{Old: old, Config: cfg})
			if tc.fatal {
				if err == nil || !strings.Contains(err.Error(), file) {
					t.Fatalf("import: %v, want an error naming %s", err, file)
				}
				if entries, _ := os.ReadDir(dir); len(entries) != 3 { // the config, cert and key
					t.Errorf("a failed import left %d entries in the new folder", len(entries))
				}
				if sum, err = importV0(importOptions{Old: old, Config: cfg, SkipBad: true}); err != nil {
					t.Fatalf("with -skip-bad: %v", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(sum.Problems, func(p v0site.Problem) bool { return p.File == file }) {
				t.Errorf("summary does not list %s: %v", file, sum.Problems)
			}
		})
	}
}

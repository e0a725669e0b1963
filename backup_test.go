package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"mnm/testclient"
)

// ackedPost is a post the server acknowledged, for checking the copy.
type ackedPost struct {
	to, id, data string
}

// TestBackupLive backs up a daemon while members post to it, starts a
// second daemon from the backup, and checks that every member logs in and
// that every post acknowledged before the backup started is delivered.
func TestBackupLive(t *testing.T) {
	preload := 300 // posts before the backup; MNM_BACKUP_PRELOAD raises it to measure speed
	if v, err := strconv.Atoi(os.Getenv("MNM_BACKUP_PRELOAD")); err == nil && v > 0 {
		preload = v
	}
	s := startE2E(t, t.TempDir())
	const senders, recipients = 3, 3
	type member struct {
		c   *testclient.Client
		reg testclient.Registration
	}
	var send, recvs []member
	for i := range senders + recipients {
		c, reg := s.register(fmt.Sprintf("member %d", i))
		if reg.AliasError != "" {
			t.Fatalf("alias refused: %s", reg.AliasError)
		}
		m := member{c, reg}
		if i < senders {
			send = append(send, m)
		} else {
			c.Close() // offline: its posts queue
			recvs = append(recvs, m)
		}
	}
	if err := s.d.users.CreateGroupFixture("backup-group", map[string]string{
		send[0].reg.UID: "member 0", recvs[0].reg.UID: fmt.Sprintf("member %d", senders),
	}, map[string]bool{send[0].reg.UID: true}); err != nil {
		t.Fatal(err)
	}

	var (
		mu    sync.Mutex
		acked []ackedPost
	)
	post := func(snd member, i int) error {
		to := recvs[i%recipients].reg.UID
		data := fmt.Sprintf("from %s #%d %s", snd.reg.UID, i, strings.Repeat("x", 100+(i*37)%8000))
		ack, err := snd.c.Post([]testclient.Recipient{{ID: to, Type: 1}}, []byte(data))
		if err != nil {
			return err
		}
		if ack.Error != "" {
			return errors.New(ack.Error)
		}
		mu.Lock()
		acked = append(acked, ackedPost{to: to, id: ack.MsgID, data: data})
		mu.Unlock()
		return nil
	}
	for i := range preload {
		if err := post(send[i%senders], i); err != nil {
			t.Fatalf("post %d: %v", i, err)
		}
	}

	// Load during the backup: every sender posts until it ends.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for k, snd := range send {
		wg.Go(func() {
			for i := preload + k; ; i += senders {
				select {
				case <-stop:
					return
				default:
				}
				if err := post(snd, i); err != nil {
					t.Errorf("post under load: %v", err)
					return
				}
			}
		})
	}
	waitFor(t, "posts under load", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) > preload+30
	})
	mu.Lock()
	before := slices.Clone(acked) // acknowledged before the backup started
	mu.Unlock()

	dest := filepath.Join(t.TempDir(), "backup")
	var out, errb bytes.Buffer
	code := run([]string{"backup", "-config", s.cfg, "-addr", s.d.adminAddr, dest}, &out, &errb)
	close(stop)
	wg.Wait()
	if code != exitOK {
		t.Fatalf("mnm backup: exit %d: %s", code, errb.String())
	}
	t.Logf("%s", strings.TrimSpace(out.String()))
	if !strings.Contains(out.String(), "files") {
		t.Errorf("no summary: %q", out.String())
	}
	if _, err := os.Stat(filepath.Join(dest, backupIncompleteName)); err == nil {
		t.Errorf("%s left in a finished backup", backupIncompleteName)
	}
	if info, err := os.ReadFile(filepath.Join(dest, backupInfoName)); err != nil || !strings.Contains(string(info), s.d.adminAddr) {
		t.Errorf("%s: %q %v", backupInfoName, info, err)
	}

	// A second server on the copy, beside the first.
	dir2 := t.TempDir()
	cfg2 := testConfig(t, dir2, "127.0.0.1:0")
	cfg2["dataDir"] = dest
	s2 := serveE2E(t, dir2, writeConfigFile(t, dir2, cfg2))
	for i, m := range append(slices.Clone(send), recvs...) {
		if uid, ok := s2.d.users.AliasUID(fmt.Sprintf("member %d", i)); !ok || uid != m.reg.UID {
			t.Errorf("alias %q: %q %v in the copy, want %s", fmt.Sprintf("member %d", i), uid, ok, m.reg.UID)
		}
	}
	// GroupMembers lists the joined members: send[0]; recvs[0] is invited.
	if members, err := s2.d.users.GroupMembers(send[0].reg.UID, "backup-group"); err != nil || len(members) != 1 || members[0] != send[0].reg.UID {
		t.Errorf("group in the copy: %v %v", members, err)
	}
	s2.login(send[0].reg.UID, send[0].reg.NodeID).Close()
	want := map[string][]ackedPost{}
	for _, p := range before {
		want[p.to] = append(want[p.to], p)
	}
	for _, m := range recvs {
		dev := m.reg.UID + ".0"
		n := s2.d.store.Len(dev)
		c := s2.login(m.reg.UID, m.reg.NodeID)
		got := map[string]string{}
		for _, f := range recvDeliveries(t, c, n) {
			got[f.Str("id")] = string(f.Data)
		}
		for _, p := range want[m.reg.UID] {
			if data, ok := got[p.id]; !ok {
				t.Errorf("%s: post %s acknowledged before the backup is not in the copy", m.reg.UID, p.id)
			} else if data != p.data {
				t.Errorf("%s: post %s has other data in the copy", m.reg.UID, p.id)
			}
		}
		t.Logf("%s: %d deliveries from the copy, %d acknowledged before the backup", m.reg.UID, n, len(want[m.reg.UID]))
		c.Close()
	}
}

// TestBackupDestNotEmpty: a backup never goes into a directory holding
// something.
func TestBackupDestNotEmpty(t *testing.T) {
	dest := t.TempDir()
	if err := os.WriteFile(filepath.Join(dest, "keep"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"backup", "-config", filepath.Join(t.TempDir(), "none.config"), dest}, &out, &errb); code != exitFailure {
		t.Fatalf("exit %d, want %d", code, exitFailure)
	}
	if !strings.Contains(errb.String(), "not empty") {
		t.Errorf("stderr: %q", errb.String())
	}
	if names, _ := os.ReadDir(dest); len(names) != 1 {
		t.Errorf("dest changed: %v", names)
	}
}

// backupTar returns a whole backup stream of the given files.
func backupTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"userdb/", "userdb/user/", "qstore/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o700}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if !yield(k) {
				return
			}
		}
	}) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: int64(len(files[name]))}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, files[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestBackupTruncatedDetected: a stream cut anywhere short of tar's end
// marker, even between entries or inside the marker, is a failed backup.
func TestBackupTruncatedDetected(t *testing.T) {
	whole := backupTar(t, map[string]string{
		"userdb/user/a.json": "{}\n",
		"qstore/seg":         strings.Repeat("s", 1500),
		"qstore/idfloor":     "1\n",
	})
	if _, err := unpackBackup(bytes.NewReader(whole), t.TempDir()); err != nil {
		t.Fatalf("whole stream: %v", err)
	}
	// Every block boundary (between entries, inside the marker) and a few
	// cuts inside blocks.
	for cut := 0; cut < len(whole); cut += tarBlock {
		for _, at := range []int{cut, cut + 100} {
			if at >= len(whole) {
				continue
			}
			_, err := unpackBackup(bytes.NewReader(whole[:at]), t.TempDir())
			if !errors.Is(err, errBackupTruncated) {
				t.Errorf("cut at %d of %d: %v, want truncated", at, len(whole), err)
			}
		}
	}
}

// TestBackupCommandTruncated: mnm backup against a listener whose stream
// stops short fails, leaves the destination marked incomplete, and a
// server refuses to start from it.
func TestBackupCommandTruncated(t *testing.T) {
	whole := backupTar(t, map[string]string{"qstore/idfloor": "1\n"})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-tar")
		w.Write(whole[:len(whole)-2*tarBlock]) // no end marker: the server "died"
	}))
	defer hs.Close()
	dir := t.TempDir()
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")
	dest := filepath.Join(t.TempDir(), "b")
	var out, errb bytes.Buffer
	code := run([]string{"backup", "-config", cfg, "-addr", strings.TrimPrefix(hs.URL, "http://"), dest}, &out, &errb)
	if code != exitFailure || !strings.Contains(errb.String(), "end marker") || !strings.Contains(errb.String(), "incomplete") {
		t.Fatalf("exit %d: %q", code, errb.String())
	}
	if _, err := os.Stat(filepath.Join(dest, backupIncompleteName)); err != nil {
		t.Fatalf("not marked incomplete: %v", err)
	}
	conf, err := LoadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conf.DataDir = dest
	logger, _ := newTestLogger()
	if _, err := newDaemon(conf, nil, nil, nil, nil, logger); !errors.Is(err, ErrBackupIncomplete) {
		t.Fatalf("server on an incomplete backup: %v, want %v", err, ErrBackupIncomplete)
	}
}

// TestBackupUnpackRefuses: entries that would write outside userdb/ and
// qstore/ of the destination, or anything but files and directories, are
// refused, and nothing is written outside the destination.
func TestBackupUnpackRefuses(t *testing.T) {
	cases := []tar.Header{
		{Typeflag: tar.TypeReg, Name: "../evil"},
		{Typeflag: tar.TypeReg, Name: "/tmp/evil"},
		{Typeflag: tar.TypeReg, Name: "userdb/../../evil"},
		{Typeflag: tar.TypeReg, Name: "userdb/./x"},
		{Typeflag: tar.TypeReg, Name: "other/file"},
		{Typeflag: tar.TypeReg, Name: "evil"},
		{Typeflag: tar.TypeReg, Name: "userdb"},
		{Typeflag: tar.TypeSymlink, Name: "userdb/link", Linkname: "/etc"},
		{Typeflag: tar.TypeLink, Name: "qstore/hard", Linkname: "/etc/passwd"},
		{Typeflag: tar.TypeDir, Name: "../up/"},
		{Typeflag: tar.TypeChar, Name: "qstore/dev"},
		{Typeflag: tar.TypeReg, Name: `qstore\..\..\evil`},
	}
	for _, h := range cases {
		parent := t.TempDir()
		dest := filepath.Join(parent, "dest")
		if err := os.Mkdir(dest, 0o700); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		h.Mode = 0o600
		if h.Typeflag == tar.TypeReg {
			h.Size = 4
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			io.WriteString(tw, "evil")
		}
		tw.Close()
		_, err := unpackBackup(&buf, dest)
		if !errors.Is(err, errBackupEntry) {
			t.Errorf("%q (type %c): %v, want refused", h.Name, h.Typeflag, err)
		}
		if names, _ := os.ReadDir(parent); len(names) != 1 {
			t.Errorf("%q: written beside dest: %v", h.Name, names)
		}
		if names, _ := os.ReadDir(dest); len(names) != 0 {
			t.Errorf("%q: written into dest: %v", h.Name, names)
		}
	}
	// A file given twice is not overwritten (O_EXCL), nor written through.
	whole := backupTar(t, map[string]string{"qstore/a": "1"})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for range 2 {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "qstore/a", Mode: 0o600, Size: 1})
		io.WriteString(tw, "2")
	}
	tw.Close()
	dest := t.TempDir()
	if _, err := unpackBackup(bytes.NewReader(whole), dest); err != nil {
		t.Fatal(err)
	}
	if _, err := unpackBackup(&buf, t.TempDir()); err == nil {
		t.Error("a file given twice was accepted")
	}
}

// FuzzUnpackBackup: whatever a server (or something posing as one) sends,
// the unpacker never panics and never writes anything but regular files and
// directories inside DEST's userdb/ and qstore/.
func FuzzUnpackBackup(f *testing.F) {
	whole := fuzzTar(f, map[string]string{"userdb/user/U.json": "{}\n", "qstore/00000001.seg": "log"})
	f.Add(whole)                                                   // a whole backup
	f.Add(whole[:len(whole)-512])                                  // its end marker cut short
	f.Add(whole[:700])                                             // cut inside an entry
	f.Add(fuzzTar(f, map[string]string{"userdb/../../evil": "x"})) // climbing out
	f.Add(fuzzTar(f, map[string]string{"elsewhere/file": "x"}))    // outside the two folders
	f.Add([]byte("not a tar stream at all"))
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		dest := filepath.Join(root, "dest")
		if err := os.Mkdir(dest, 0o700); err != nil {
			t.Fatal(err)
		}
		unpackBackup(bytes.NewReader(data), dest) // any error is fine; what it wrote is checked
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == root || p == dest {
				return err
			}
			rel, _ := filepath.Rel(dest, p)
			top, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
			if top != backupUserDB && top != backupQStore {
				t.Fatalf("wrote %s, outside %s/ and %s/", p, backupUserDB, backupQStore)
			}
			if !d.Type().IsRegular() && !d.IsDir() {
				t.Fatalf("wrote %s of type %v", p, d.Type())
			}
			return nil
		})
	})
}

// fuzzTar is backupTar for a fuzz target's seeds.
func fuzzTar(f *testing.F, files map[string]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: int64(len(files[name]))}); err != nil {
			f.Fatal(err)
		}
		if _, err := io.WriteString(tw, files[name]); err != nil {
			f.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes()
}

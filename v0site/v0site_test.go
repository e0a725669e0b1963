package v0site_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mnm/v0site"
	"mnm/v0site/v0test"
)

var smallSpec = v0test.Spec{
	Users: 6, SecondDeviceEvery: 3, DefunctDeviceEvery: 4, DefunctAliasEvery: 5,
	Groups: 2, GroupSize: 3, Messages: 20, MaxSize: 3000, Seed: 1,
}

func build(t *testing.T, spec v0test.Spec) *v0test.Site {
	t.Helper()
	s, err := v0test.Build(filepath.Join(t.TempDir(), "site"), spec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReadBuiltSite(t *testing.T) {
	for _, clear := range []bool{false, true} {
		spec := smallSpec
		spec.ClearKeys = clear
		b := build(t, spec)
		s, err := v0site.Read(b.Dir, v0site.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Problems) != 0 {
			t.Errorf("problems: %v", s.Problems)
		}
		if len(s.Users) != len(b.Users) || len(s.Groups) != len(b.Groups) || len(s.Msgs) != len(b.Posts) {
			t.Fatalf("read %d users, %d groups, %d messages; built %d, %d, %d",
				len(s.Users), len(s.Groups), len(s.Msgs), len(b.Users), len(b.Groups), len(b.Posts))
		}
		devs := map[string]int{}
		for _, u := range s.Users {
			i := slices.IndexFunc(b.Users, func(bu v0test.User) bool { return bu.UID == u.UID })
			if i < 0 {
				t.Fatalf("read user %s that was not built", u.UID)
			}
			bu := b.Users[i]
			live := 0
			for _, d := range u.Devices {
				if d.Derived == clear {
					t.Errorf("%s device %d: Derived %v with ClearKeys %v", u.UID, d.Num, d.Derived, clear)
				}
				if !d.Defunct {
					live++
				}
			}
			devs[u.UID] = live
			if live != len(bu.Nodeids) {
				t.Errorf("%s: %d live devices, built %d", u.UID, live, len(bu.Nodeids))
			}
			wantAliases := []v0site.Alias{{Name: bu.Alias}}
			if bu.Retired != "" {
				wantAliases = append(wantAliases, v0site.Alias{Name: bu.Retired, Defunct: true})
			}
			if !slices.Equal(u.Aliases, wantAliases) {
				t.Errorf("%s: aliases %v, want %v", u.UID, u.Aliases, wantAliases)
			}
		}
		for i, m := range s.Msgs {
			p := b.Posts[i]
			if m.ID != p.ID || m.High {
				t.Errorf("message %d: id %s high %v, want %s", i, m.ID, m.High, p.ID)
			}
			want := 0
			for _, uid := range p.To {
				want += devs[uid]
			}
			if len(m.Queues) != want {
				t.Errorf("message %s in %d queues, want %d", m.ID, len(m.Queues), want)
			}
			if m.Size != int64(m.HeaderLen+len(p.Data)) {
				t.Errorf("message %s: size %d, header %d + data %d", m.ID, m.Size, m.HeaderLen, len(p.Data))
			}
		}
	}
}

// damage is one way to damage a built site; it returns the file it damaged.
type damage struct {
	name string
	do   func(t *testing.T, b *v0test.Site) string
	// skips says what SkipBad leaves out: "user", "group", "message" or
	// "" (a problem that stops the read even with SkipBad).
	skips string
}

func userFile(b *v0test.Site, i int) string {
	return filepath.Join(b.Dir, "userdb/user", b.Users[i].UID)
}

func firstQueued(t *testing.T, b *v0test.Site) string {
	t.Helper()
	p := b.Posts[0]
	dir := v0test.QueueDir(b.Dir, p.To[0], 1)
	return filepath.Join(dir, "M"+p.ID)
}

func rewrite(t *testing.T, path string, fn func([]byte) []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Break any hard link first, so that only this queue entry changes.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func editRecord(t *testing.T, path string, fn func(map[string]any)) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	fn(rec)
	if err := v0test.Resum(path, rec); err != nil {
		t.Fatal(err)
	}
}

var damages = []damage{
	{"user record bit flip", func(t *testing.T, b *v0test.Site) string {
		p := userFile(b, 1)
		rewrite(t, p, func(d []byte) []byte { d[10] ^= 1; return d })
		return p
	}, "user"},
	{"user record not JSON", func(t *testing.T, b *v0test.Site) string {
		p := userFile(b, 1)
		rewrite(t, p, func(d []byte) []byte { return d[:len(d)/2] })
		return p
	}, "user"},
	{"user record no checksum", func(t *testing.T, b *v0test.Site) string {
		p := userFile(b, 1)
		rewrite(t, p, func([]byte) []byte { return []byte(`{"Nodes":{}}`) })
		return p
	}, "user"},
	{"node key of the wrong length", func(t *testing.T, b *v0test.Site) string {
		p := userFile(b, 1)
		editRecord(t, p, func(r map[string]any) {
			r["Nodes"] = map[string]any{"ABC": map[string]any{"Defunct": false, "Num": 1}}
		})
		return p
	}, "user"},
	{"device number out of range", func(t *testing.T, b *v0test.Site) string {
		p := userFile(b, 1)
		editRecord(t, p, func(r map[string]any) {
			for _, n := range r["Nodes"].(map[string]any) {
				n.(map[string]any)["Num"] = 300
			}
		})
		return p
	}, "user"},
	{"live device count wrong", func(t *testing.T, b *v0test.Site) string {
		p := userFile(b, 1)
		editRecord(t, p, func(r map[string]any) { r["NonDefunctNodesCount"] = 7 })
		return p
	}, "user"},
	{"group record bit flip", func(t *testing.T, b *v0test.Site) string {
		p := filepath.Join(b.Dir, "userdb/group", b.Groups[0])
		rewrite(t, p, func(d []byte) []byte { d[5] ^= 4; return d })
		return p
	}, "group"},
	{"group member status", func(t *testing.T, b *v0test.Site) string {
		p := filepath.Join(b.Dir, "userdb/group", b.Groups[0])
		editRecord(t, p, func(r map[string]any) {
			for _, m := range r["Uid"].(map[string]any) {
				m.(map[string]any)["Status"] = 9
			}
		})
		return p
	}, "group"},
	{"queue file cut short", func(t *testing.T, b *v0test.Site) string {
		p := firstQueued(t, b)
		rewrite(t, p, func(d []byte) []byte { return d[:len(d)-1] })
		return p
	}, "message"},
	{"queue file header garbage", func(t *testing.T, b *v0test.Site) string {
		p := firstQueued(t, b)
		rewrite(t, p, func(d []byte) []byte { return []byte("zzzz{}") })
		return p
	}, "message"},
	{"queue file headsum wrong", func(t *testing.T, b *v0test.Site) string {
		p := firstQueued(t, b)
		rewrite(t, p, func(d []byte) []byte {
			return []byte(strings.Replace(string(d), `"op":"delivery"`, `"op":"deliverx"`, 1))
		})
		return p
	}, "message"},
	{"queue file id differs from name", func(t *testing.T, b *v0test.Site) string {
		p := firstQueued(t, b)
		// Another last digit: one that is not already there, or the
		// rename would change nothing (a 1-in-10 flake before).
		last := "0"
		if strings.HasSuffix(p, "0") {
			last = "1"
		}
		os.Rename(p, p[:len(p)-1]+last)
		return p[:len(p)-1] + last
	}, "message"},
	{"queue file unreadable", func(t *testing.T, b *v0test.Site) string {
		p := firstQueued(t, b)
		os.Remove(p)
		os.Symlink("nowhere", p) // a dangling link: open fails even for root
		return p
	}, "message"},
	{"queue entry name", func(t *testing.T, b *v0test.Site) string {
		p := filepath.Join(filepath.Dir(firstQueued(t, b)), "X123")
		os.WriteFile(p, nil, 0o600)
		return p
	}, "message"},
	{"queue folder of no device", func(t *testing.T, b *v0test.Site) string {
		p := v0test.QueueDir(b.Dir, b.Users[0].UID, 0x42)
		os.MkdirAll(p, 0o700)
		return p
	}, "message"},
}

func TestReadDamaged(t *testing.T) {
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			b := build(t, smallSpec)
			file := d.do(t, b)
			_, err := v0site.Read(b.Dir, v0site.Options{})
			if err == nil {
				t.Fatal("damaged site read without error")
			}
			if !strings.Contains(err.Error(), file) {
				t.Errorf("error does not name %s: %v", file, err)
			}

			s, err := v0site.Read(b.Dir, v0site.Options{SkipBad: true})
			if err != nil {
				t.Fatalf("with SkipBad: %v", err)
			}
			if !slices.ContainsFunc(s.Problems, func(p v0site.Problem) bool { return p.File == file }) {
				t.Errorf("with SkipBad, problems do not list %s: %v", file, s.Problems)
			}
			switch d.skips {
			case "user":
				if len(s.Users) != len(b.Users)-1 {
					t.Errorf("with SkipBad, %d users read, want %d", len(s.Users), len(b.Users)-1)
				}
			case "group":
				if len(s.Groups) != len(b.Groups)-1 {
					t.Errorf("with SkipBad, %d groups read, want %d", len(s.Groups), len(b.Groups)-1)
				}
			}
		})
	}
}

func TestReadReportsTempAndStrayLinks(t *testing.T) {
	b := build(t, smallSpec)
	temp := filepath.Join(b.Dir, "userdb/temp", "half-written")
	if err := os.WriteFile(temp, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(b.Dir, "userdb/alias", "nobody-has-this")
	if err := os.Symlink(b.Users[0].UID, stray); err != nil {
		t.Fatal(err)
	}
	s, err := v0site.Read(b.Dir, v0site.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, p := range s.Problems {
		files = append(files, p.File)
	}
	slices.Sort(files)
	if want := []string{stray, temp}; !slices.Equal(files, want) {
		t.Errorf("problems name %v, want %v", files, want)
	}
}

func TestReadContradictions(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(t *testing.T, b *v0test.Site) string
	}{
		{"alias link to another user", func(t *testing.T, b *v0test.Site) string {
			p := filepath.Join(b.Dir, "userdb/alias", b.Users[0].Alias)
			os.Remove(p)
			os.Symlink(b.Users[1].UID, p)
			return p
		}},
		{"alias in two records", func(t *testing.T, b *v0test.Site) string {
			p := userFile(b, 1)
			editRecord(t, p, func(r map[string]any) {
				r["Aliases"] = []any{map[string]any{"Nat": b.Users[0].Alias}}
			})
			return p
		}},
		{"group member who is no user", func(t *testing.T, b *v0test.Site) string {
			p := filepath.Join(b.Dir, "userdb/group", b.Groups[0])
			editRecord(t, p, func(r map[string]any) {
				r["Uid"].(map[string]any)["NOSUCHUSER"] = map[string]any{"Alias": "x", "Status": 2}
			})
			return p
		}},
		{"message queued as E and M", func(t *testing.T, b *v0test.Site) string {
			p := b.Posts[0]
			var paths []string
			for _, uid := range p.To {
				paths = append(paths, filepath.Join(v0test.QueueDir(b.Dir, uid, 1), "M"+p.ID))
			}
			if len(paths) < 2 {
				paths = append(paths, filepath.Join(v0test.QueueDir(b.Dir, b.Users[0].UID, 1), "M"+p.ID))
				os.MkdirAll(filepath.Dir(paths[1]), 0o700)
				os.Link(paths[0], paths[1])
			}
			last := paths[len(paths)-1]
			e := filepath.Join(filepath.Dir(last), "E"+p.ID)
			os.Rename(last, e)
			return e
		}},
		{"message differs between queues", func(t *testing.T, b *v0test.Site) string {
			p := b.Posts[0]
			a := filepath.Join(v0test.QueueDir(b.Dir, p.To[0], 1), "M"+p.ID)
			c := filepath.Join(v0test.QueueDir(b.Dir, b.Users[len(b.Users)-1].UID, 1), "M"+p.ID)
			if slices.Contains(p.To, b.Users[len(b.Users)-1].UID) {
				t.Skip("seed put the first post in the last user's queue")
			}
			data, _ := os.ReadFile(a)
			data[len(data)-1] ^= 1
			os.MkdirAll(filepath.Dir(c), 0o700)
			os.WriteFile(c, data, 0o600)
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := build(t, smallSpec)
			file := tc.do(t, b)
			_, err := v0site.Read(b.Dir, v0site.Options{})
			if err == nil || !errors.Is(err, v0site.ErrDamaged) {
				t.Fatalf("Read: %v, want a damage error", err)
			}
			if !strings.Contains(err.Error(), filepath.Base(file)) && !strings.Contains(err.Error(), filepath.Base(filepath.Dir(file))) {
				t.Errorf("error does not name %s: %v", file, err)
			}
		})
	}
}

func TestReadNotASite(t *testing.T) {
	if _, err := v0site.Read(t.TempDir(), v0site.Options{}); err == nil || !strings.Contains(err.Error(), "not a deployed server's site") {
		t.Errorf("empty folder: %v", err)
	}
}

package main

// The user database's reads for the admin listener (userdb_admin.go), on a
// database of fixtures; mnm admin against a live server is admincmd_test.go.

import (
	"slices"
	"testing"
)

func TestUserDBAdminReads(t *testing.T) {
	db, err := OpenUserDB(UserDBOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for uid, aliases := range map[string][]string{
		"u3": {"carol c"},
		"u1": {"alice a", "ally"},
		"u2": {"bob b"},
	} {
		if _, err := db.CreateFixture(uid, []string{"laptop", "phone"}, aliases); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.AddOnceAlias("u2", "secret handout"); err != nil {
		t.Fatal(err)
	}
	if err := db.RetireDevice("u3.0"); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateGroupFixture("g-joined", map[string]string{"u1": "alice a", "u2": "bob b"}, map[string]bool{"u1": true}); err != nil {
		t.Fatal(err)
	}

	uidsOf := func(ms []memberInfo) []string {
		var uids []string
		for _, m := range ms {
			uids = append(uids, m.UID)
		}
		return uids
	}
	for _, tc := range []struct {
		match string
		limit int
		want  []string
	}{
		{"", 100, []string{"u1", "u2", "u3"}},
		{"", 2, []string{"u1", "u2"}},
		{"u", 1, []string{"u1"}},
		{"3", 100, []string{"u3"}},
		{"ally", 100, []string{"u1"}},
		{" b", 100, []string{"u2"}},
		{"secret", 100, nil}, // single-use aliases are not searched
		{"nobody", 100, nil},
	} {
		if got := uidsOf(db.Members(tc.match, tc.limit)); !slices.Equal(got, tc.want) {
			t.Errorf("Members(%q, %d) = %q, want %q", tc.match, tc.limit, got, tc.want)
		}
	}

	for _, name := range []string{"u2", "bob b"} {
		m, ok := db.Member(name)
		if !ok || m.UID != "u2" || !slices.Equal(m.Aliases, []string{"bob b"}) || !slices.Equal(m.OnceAliases, []string{"secret handout"}) {
			t.Fatalf("Member(%q) = %+v, %t", name, m, ok)
		}
	}
	for _, name := range []string{"secret handout", "g-joined", "u9", "", "../u1"} {
		if m, ok := db.Member(name); ok {
			t.Fatalf("Member(%q) = %+v", name, m)
		}
	}
	m, _ := db.Member("u3")
	if len(m.Devices) != 1 || m.Devices[0].Num != 1 || m.Devices[0].Label != "phone" || m.Devices[0].Dev("u3") != "u3.1" {
		t.Fatalf("u3's live devices %+v", m.Devices)
	}

	if got := db.MemberGroups("u1"); !slices.Equal(got, []string{"g-joined"}) {
		t.Fatalf("u1's groups %q", got)
	}
	if got := db.MemberGroups("u2"); len(got) != 0 { // invited, not joined
		t.Fatalf("u2's groups %q", got)
	}

	if uid, d, ok := db.DeviceOf("u1.1"); !ok || uid != "u1" || d.Num != 1 || d.Label != "phone" {
		t.Fatalf("DeviceOf(u1.1) = %s %+v %t", uid, d, ok)
	}
	for _, dev := range []string{"u3.0", "u1.2", "u9.0", "u1", "u1.", "u1.01", "u1.+1", "u1.-1", ".0", "u1.1.1", ""} {
		if uid, d, ok := db.DeviceOf(dev); ok {
			t.Errorf("DeviceOf(%q) = %s %+v", dev, uid, d)
		}
	}
}

package main

// The user database's side of the "revoke" extension (Protocol.md,
// Extensions): Nodes and DropDevice.

import (
	"slices"
	"testing"

	"mnm/qlib"
)

func TestUserDBDropDevice(t *testing.T) {
	dir := t.TempDir()
	db, _ := udbOpen(t, dir)
	uid, _, _ := udbRegister(t, db, "laptop")
	phoneNode, phone, err := db.AddDevice(uid, "phone")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.AddDevice(uid, "tablet"); err != nil {
		t.Fatal(err)
	}
	want := []qlib.Node{{Dev: uid + ".0", Num: "0", Label: "laptop"}, {Dev: phone, Num: "1", Label: "phone"},
		{Dev: uid + ".2", Num: "2", Label: "tablet"}}
	if got, err := db.Nodes(uid); err != nil || !slices.Equal(got, want) {
		t.Fatalf("Nodes = %+v, %v", got, err)
	}
	if _, err := db.Nodes("nobody"); err != qlib.ErrNoUser {
		t.Errorf("Nodes of nobody: %v", err)
	}

	// Only a live device's number as Nodes writes it.
	for _, bad := range []string{"", "3", "01", "+1", "-1", " 1", "1 ", "1.0", "0x1", "99999999999999999999"} {
		if _, _, err := db.DropDevice(uid, bad); err != qlib.ErrNoDevice {
			t.Errorf("DropDevice(%q) = %v, want ErrNoDevice", bad, err)
		}
	}
	if _, _, err := db.DropDevice("nobody", "0"); err != qlib.ErrNoDevice {
		t.Errorf("DropDevice of nobody: %v", err)
	}
	dev, label, err := db.DropDevice(uid, "1")
	if err != nil || dev != phone || label != "phone" {
		t.Fatalf("DropDevice = %q, %q, %v", dev, label, err)
	}
	if _, _, err := db.DropDevice(uid, "1"); err != qlib.ErrNoDevice {
		t.Errorf("dropping twice: %v, want ErrNoDevice", err)
	}
	// Gone from the record, its number kept from reuse by NextDevice.
	if _, rec := db.lookup(uid); len(rec.Devices) != 2 || rec.NextDevice != 3 {
		t.Errorf("record keeps %d devices, next %d", len(rec.Devices), rec.NextDevice)
	}
	if _, err := db.Login(uid, udbDecodeNode(t, phoneNode)); err != qlib.ErrLoginFailed {
		t.Errorf("dropped device logs in: %v", err)
	}
	want = slices.Delete(want, 1, 2)
	if got, _ := db.Nodes(uid); !slices.Equal(got, want) {
		t.Fatalf("Nodes after the drop = %+v", got)
	}
	db.Close()

	db2, _ := udbOpen(t, dir)
	if got, _ := db2.Nodes(uid); !slices.Equal(got, want) {
		t.Fatalf("Nodes after reopen = %+v", got)
	}
	if _, err := db2.Login(uid, udbDecodeNode(t, phoneNode)); err != qlib.ErrLoginFailed {
		t.Errorf("dropped device logs in after reopen: %v", err)
	}
	if _, _, err := db2.DropDevice(uid, "1"); err != qlib.ErrNoDevice {
		t.Errorf("dropping after reopen: %v", err)
	}
	if _, dev, err := db2.AddDevice(uid, "new phone"); err != nil || dev != uid+".3" {
		t.Errorf("AddDevice after a drop = %q, %v; want number 3", dev, err)
	}
	// A device retired otherwise (imported defunct) is no such device too.
	if err := db2.RetireDevice(uid + ".2"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db2.DropDevice(uid, "2"); err != qlib.ErrNoDevice {
		t.Errorf("dropping a defunct device: %v", err)
	}
}

// TestUserDBPowerLossDropDevice: a device retired. The database drops a
// member's only device if asked (keeping one is qlib's rule: a device
// cannot drop itself).
func TestUserDBPowerLossDropDevice(t *testing.T) {
	udbCrashEveryCut(t, func(db *UserDB) error {
		_, _, err := db.DropDevice("u100001", "0")
		return err
	}, func(t *testing.T, db *UserDB) bool {
		nodes, err := db.Nodes("u100001")
		switch {
		case err != nil:
			t.Errorf("the user is gone: %v", err)
		case len(nodes) == 1 && nodes[0].Label == "laptop":
			return false
		case len(nodes) == 0:
			if devs, _ := db.Devices("u100001"); len(devs) != 0 {
				t.Errorf("retired, but Devices lists %q", devs)
			}
			return true
		default:
			t.Errorf("nodes %+v: neither the old record nor the new", nodes)
		}
		return false
	})
}

package v0site

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecodeUser: any record bytes give a user or an error, never a panic,
// and a user only when the CheckSum holds.
func FuzzDecodeUser(f *testing.F) {
	for _, seed := range []string{
		// A record of the deployed server's own site, checksum and all.
		`{"Nodes":{"Z%LZVP+7137835Z5BKQ1YWC4738HWVQ5DK7FRS32Z5J6+2Z%Q9NH":{"Defunct":false,"Num":1}},"NonDefunctNodesCount":1,"Aliases":[{"En":"","Nat":"loaduser00000-v0s11","EnDefunct":false,"NatDefunct":false,"EnTouched":false,"NatTouched":true}],"CheckSum":581917220}` + "\n",
		`{"Nodes":{},"CheckSum":0}`,              // wrong checksum
		`{"CheckSum":99999999999}`,               // checksum out of range
		`{"Nodes":{"x":{"Num":1}},"CheckSum":1}`, // key of no known form
		`{"Aliases":[{"Nat":"\xff"}]}`,           // invalid UTF-8
		`[`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := decodeUser(data, "UID")
		if err != nil {
			return
		}
		if checkSum(data) != nil {
			t.Fatalf("user decoded from a record whose CheckSum fails: %+v", u)
		}
		for _, d := range u.Devices {
			if d.Num < 1 || d.Num > maxDeviceNum || len(d.Key) != nodeidBytes && len(d.Key) != derivedBytes {
				t.Fatalf("device out of bounds: %+v", d)
			}
		}
	})
}

// FuzzReadHeader: any bytes give a frame header of the length its prefix
// states, or an error.
func FuzzReadHeader(f *testing.F) {
	for _, seed := range []string{"0008{\"op\":1}", "zzzz", "0001{", "ffff{", "", "0002{}rest"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		head, err := ReadHeader(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("error not marked damaged: %v", err)
			}
			return
		}
		if !bytes.HasPrefix(data, head) || len(head) < 6 {
			t.Fatalf("header %q not a prefix of %q", head, data)
		}
	})
}

// TestDecodeUserDeployedRecord decodes a record written by the deployed
// server itself (../shared/tmtp/v0-site), checksum included.
func TestDecodeUserDeployedRecord(t *testing.T) {
	const rec = `{"Nodes":{"Z%LZVP+7137835Z5BKQ1YWC4738HWVQ5DK7FRS32Z5J6+2Z%Q9NH":{"Defunct":false,"Num":1}},"NonDefunctNodesCount":1,"Aliases":[{"En":"","Nat":"loaduser00000-v0s11","EnDefunct":false,"NatDefunct":false,"EnTouched":false,"NatTouched":true}],"CheckSum":581917220}` + "\n"
	u, err := decodeUser([]byte(rec), "L8778YV5KQD5D4P1QLG565ZYV7LJDK9Q")
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Devices) != 1 || u.Devices[0].Num != 1 || !u.Devices[0].Derived || len(u.Devices[0].Key) != derivedBytes {
		t.Errorf("devices %+v", u.Devices)
	}
	if len(u.Aliases) != 1 || u.Aliases[0] != (Alias{Name: "loaduser00000-v0s11"}) {
		t.Errorf("aliases %+v", u.Aliases)
	}
	// One bit off anywhere in the record is caught.
	for i := range len(rec) - 1 {
		bad := []byte(rec)
		bad[i] ^= 1
		if _, err := decodeUser(bad, "UID"); err == nil {
			t.Fatalf("flipped bit at %d not detected", i)
		}
	}
}

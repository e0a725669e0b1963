package qlib

import (
	"errors"
	"slices"
	"testing"

	"mnm/testclient"
)

// retiringDir is fakeDir with one device retired between a Login's check
// of the directory and its claim of the device: Login still finds the
// device, Devices no longer lists it.
type retiringDir struct {
	*fakeDir
	gone string
}

func (d *retiringDir) Devices(uid string) ([]string, error) {
	devs, err := d.fakeDir.Devices(uid)
	return slices.DeleteFunc(devs, func(dev string) bool { return dev == d.gone }), err
}

// TestLoginOfRetiredDeviceRefused: a device retired (UserEdit dropnode)
// while its Login was under way is refused "login failed" after claiming
// it, not left logged in: the retiring link evicts only the links it finds
// after the retirement.
func TestLoginOfRetiredDeviceRefused(t *testing.T) {
	var rd *retiringDir
	ts := startServer(t, func(c *Config) {
		rd = &retiringDir{fakeDir: c.Directory.(*fakeDir)}
		c.Directory = rd
	})
	_, reg := ts.register()
	nodeid, dev := ts.dir.device(reg.UID)
	rd.gone = dev
	c, _, err := testclient.Login(ts.addr, reg.UID, nodeid, testclient.Options{})
	if err == nil {
		c.Close()
		t.Fatal("a retired device logged in")
	}
	var q *testclient.QuitError
	if !errors.As(err, &q) || q.Reason != "login failed" {
		t.Fatalf("login: %v, want quit login failed", err)
	}
	waitFor(t, "the device forgotten", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		return ts.srv.devices[dev] == nil
	})
	// The member's other device still logs in.
	ts.login(reg.UID, reg.NodeID)
}

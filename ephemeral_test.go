package main

import (
	"os"
	"testing"

	"mnm/testclient"
)

func TestEphemeralServer(t *testing.T) {
	e, err := startEphemeral(nil)
	if err != nil {
		t.Fatal(err)
	}
	c, reg, err := testclient.Register(e.Addr, "sim", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ack, err := c.Post([]testclient.Recipient{{ID: reg.UID, Type: 1}}, []byte("hi"))
	if err != nil || ack.Error != "" {
		t.Fatalf("post: %v %s", err, ack.Error)
	}
	c.Close()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.dir); !os.IsNotExist(err) {
		t.Fatalf("data directory left behind: %v", err)
	}
}

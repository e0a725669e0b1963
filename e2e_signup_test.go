package main

// Attacks through sign-up and aliases against the whole server (TLS, qlib,
// the OpenID Connect verifier and the user database): one identity signing
// up many accounts, a stale token, and a member adding aliases without end.

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mnm/testclient"
)

// e2eOptions are client options that ack and drop every stored message, so
// that a flood of requests never stalls on a full message buffer.
var e2eOptions = testclient.Options{AutoAck: true, OnMessage: func(*testclient.Frame) {}}

// TestE2EOneAccountPerIdentity: the same valid token registering 20 times
// creates one account; every other attempt gets the quit "register failure"
// and creates nothing. The account logs in, another identity signs up, and a
// token issued longer ago than tokenMaxAgeSeconds is refused even though its
// exp has not passed.
func TestE2EOneAccountPerIdentity(t *testing.T) {
	s := startReferenceServer(t)
	token := s.token(t, "one-person")
	const attempts = 20
	var first testclient.Registration
	for i := range attempts {
		o := e2eOptions
		o.Token = token
		c, reg, err := testclient.Register(s.addr, "laptop", "_", o)
		if i == 0 {
			if err != nil {
				t.Fatalf("first registration: %v", err)
			}
			first = reg
			c.Close()
			continue
		}
		var q *testclient.QuitError
		if !errors.As(err, &q) || q.Reason != "register failure" {
			t.Fatalf("registration %d: %v, want quit %q", i+1, err, "register failure")
		}
	}
	if n := strings.Count(s.logs.String(), "register refused"); n != attempts-1 {
		t.Errorf("%d refusals logged, want %d", n, attempts-1)
	}
	if c, _, err := testclient.Login(s.addr, first.UID, first.NodeID, e2eOptions); err != nil {
		t.Errorf("the identity's account cannot log in: %v", err)
	} else {
		c.Close()
	}

	o := e2eOptions
	o.Token = s.token(t, "another-person")
	c, _, err := testclient.Register(s.addr, "phone", "_", o)
	if err != nil {
		t.Fatalf("another identity: %v", err)
	}
	c.Close()

	now := time.Now()
	o.Token = oidcSign(t, s.key, oidcHeader(refKeyID), map[string]any{
		"iss": refIssuer, "aud": refAudience, "sub": "stockpiled",
		"iat": now.Add(-DefaultTokenMaxAgeSeconds*time.Second - 2*time.Minute).Unix(),
		"exp": now.Add(refTokenLife).Unix(),
	})
	_, _, err = testclient.Register(s.addr, "laptop", "_", o)
	var q *testclient.QuitError
	if !errors.As(err, &q) || q.Reason != "authentication required" {
		t.Errorf("stale token: %v, want quit %q", err, "authentication required")
	}
}

// TestE2EAliasFlood: a member adding long aliases without end gets
// maxAliases of them; the rest get the ack error "too many aliases" with the
// link open. Another member adds aliases and is reached as usual.
func TestE2EAliasFlood(t *testing.T) {
	s := startE2E(t, t.TempDir())
	attacker, _, err := testclient.Register(s.addr, "laptop", "_", e2eOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	const flood = maxAliases + 20
	refused := 0
	for i := range flood {
		a := fmt.Sprintf("flood %06d ", i)
		a += strings.Repeat("y", maxAliasBytes-len(a))
		ack, err := attacker.Do(map[string]any{"Op": 3, "NewAlias": a}, nil)
		if err != nil {
			t.Fatalf("alias %d: %v", i+1, err)
		}
		switch {
		case ack.Error == "" && i < maxAliases:
		case ack.Error == "too many aliases" && i >= maxAliases:
			refused++
		default:
			t.Fatalf("alias %d: %s", i+1, ack.Frame.Raw)
		}
	}
	if refused != flood-maxAliases {
		t.Errorf("%d refused, want %d", refused, flood-maxAliases)
	}
	victim := s.member("victim person")
	sender := s.member("sender person")
	ack, err := sender.c.Ping("sender person", "victim person", "still here")
	if err != nil || ack.Error != "" {
		t.Fatalf("ping to the victim: %v %+v", err, ack)
	}
	if f := next(t, victim.c, "ping"); f.Str("id") != ack.MsgID {
		t.Errorf("victim got %s, want the ping %s", f.Raw, ack.MsgID)
	}
}

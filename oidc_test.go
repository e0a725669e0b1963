package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Test keys, generated once per test binary because RSA key generation is
// slow under the race detector. They are never modified.
var oidcTestKeys = sync.OnceValues(func() (map[string]*rsa.PrivateKey, error) {
	keys := map[string]*rsa.PrivateKey{}
	for name, bits := range map[string]int{"a": 2048, "b": 2048, "attacker": 2048, "small": 1024} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			return nil, err
		}
		keys[name] = k
	}
	return keys, nil
})

func oidcKey(t testing.TB, name string) *rsa.PrivateKey {
	t.Helper()
	keys, err := oidcTestKeys()
	if err != nil {
		t.Fatal(err)
	}
	return keys[name]
}

func oidcB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func oidcB64JSON(t testing.TB, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return oidcB64(data)
}

// oidcJWK is the published form of pub under kid.
func oidcJWK(kid string, pub *rsa.PublicKey) map[string]any {
	return map[string]any{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
		"n": oidcB64(pub.N.Bytes()), "e": oidcB64(big.NewInt(int64(pub.E)).Bytes()),
	}
}

func oidcJWKS(t testing.TB, keys ...map[string]any) []byte {
	t.Helper()
	data, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// signToken makes a compact JWS of header and claims signed RS256 with key.
func oidcSign(t testing.TB, key *rsa.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	input := oidcB64JSON(t, header) + "." + oidcB64JSON(t, claims)
	digest := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + oidcB64(sig)
}

// jwksServer serves a key set on loopback and counts the requests it gets.
type jwksServer struct {
	*httptest.Server
	requests atomic.Int64

	// mu guards the fields below.
	mu   sync.Mutex
	body []byte
	// down makes the server drop each connection without a reply, as an
	// unreachable provider would.
	down bool
	// hold, when set, makes a request announce itself on entered and wait
	// for release to be closed.
	hold *jwksHold
}

type jwksHold struct {
	entered chan struct{}
	release chan struct{}
}

func newJWKSServer(t testing.TB, body []byte) *jwksServer {
	t.Helper()
	s := &jwksServer{body: body}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	// One connection per request: otherwise the client retries a request
	// that a "down" server drops on a reused connection, and the request
	// counts the tests assert would depend on connection reuse.
	s.Config.SetKeepAlivesEnabled(false)
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	s.mu.Lock()
	body, down, hold := s.body, s.down, s.hold
	s.mu.Unlock()
	if hold != nil {
		hold.entered <- struct{}{}
		<-hold.release
	}
	if down {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

func (s *jwksServer) set(body []byte, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.down = body, down
}

// oidcClock is an injectable clock that moves only when told to.
type oidcClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *oidcClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *oidcClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const (
	oidcTestIssuer   = "https://issuer.example"
	oidcTestAudience = "mnm-test-client"
	// oidcTestMaxAge is the fixture's OIDCOptions.MaxTokenAge, the
	// configuration's default.
	oidcTestMaxAge = DefaultTokenMaxAgeSeconds * time.Second
)

// oidcFixture is a verifier with one provider served by srv.
type oidcFixture struct {
	srv   *jwksServer
	clock *oidcClock
	logs  *lockedBuffer
	v     *OIDCVerifier
}

// newOIDCFixture serves body as the provider's key set (or nothing, when
// down) and builds a verifier for it, with the "auth optional" marker first
// as a real configuration would have it.
func newOIDCFixture(t testing.TB, body []byte, down bool) *oidcFixture {
	t.Helper()
	f := &oidcFixture{
		srv:   newJWKSServer(t, body),
		clock: &oidcClock{t: time.Date(2026, 11, 30, 1, 45, 24, 0, time.UTC)},
		logs:  newLockedBuffer(),
	}
	f.srv.set(body, down)
	providers := []AuthProvider{
		{},
		{
			Label: "Test",
			Login: []string{"https://issuer.example/auth", "scope=openid"},
			Token: []string{"https://issuer.example/token"},
			Std:   Params{"client_id=" + oidcTestAudience},
			Keys:  f.srv.URL + "/jwks",
			Iss:   oidcTestIssuer,
			Aud:   oidcTestAudience,
		},
	}
	logger := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	v, err := NewOIDCVerifier(context.Background(), providers, OIDCOptions{
		MaxTokenAge: oidcTestMaxAge, Client: f.srv.Client(), Logger: logger, Now: f.clock.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.v = v
	return f
}

// claims returns valid claims for the fixture's provider at the current time.
func (f *oidcFixture) claims() map[string]any {
	now := f.clock.now().Unix()
	return map[string]any{
		"iss":   oidcTestIssuer,
		"aud":   oidcTestAudience,
		"sub":   "248289761001",
		"email": "jane@example.com",
		"iat":   now,
		"exp":   now + 600,
	}
}

func oidcHeader(kid string) map[string]any {
	return map[string]any{"alg": "RS256", "typ": "JWT", "kid": kid}
}

func TestOIDCVerifyValid(t *testing.T) {
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", &oidcKey(t, "a").PublicKey)), false)
	token := oidcSign(t, oidcKey(t, "a"), oidcHeader("a"), f.claims())
	claims, err := f.v.Verify(context.Background(), token)
	if err != nil {
		t.Fatal(err)
	}
	if claims["sub"] != "248289761001" || claims["email"] != "jane@example.com" || claims["iss"] != oidcTestIssuer {
		t.Errorf("claims = %v", claims)
	}
	if !strings.Contains(f.logs.String(), "oidc keys fetched") {
		t.Errorf("no fetch logged:\n%s", f.logs)
	}
	if n := f.srv.requests.Load(); n != 1 {
		t.Errorf("%d key set requests, want 1 (at start)", n)
	}
}

// TestOIDCVerifyAccepts covers the valid variations: each must verify.
func TestOIDCVerifyAccepts(t *testing.T) {
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", &oidcKey(t, "a").PublicKey)), false)
	now := f.clock.now().Unix()
	tests := []struct {
		name   string
		header map[string]any
		edit   func(c map[string]any)
	}{
		{"expired within skew", oidcHeader("a"), func(c map[string]any) { c["exp"] = now - 30 }},
		{"nbf within skew", oidcHeader("a"), func(c map[string]any) { c["nbf"] = now + 30 }},
		{"iat within skew", oidcHeader("a"), func(c map[string]any) { c["iat"] = now + 30 }},
		{"fractional times", oidcHeader("a"), func(c map[string]any) { c["exp"] = float64(now) + 0.5; c["iat"] = float64(now) - 0.5 }},
		{"iat as old as allowed", oidcHeader("a"), func(c map[string]any) { c["iat"] = now - int64(oidcTestMaxAge.Seconds()) - 30 }},
		{"aud list of one without azp", oidcHeader("a"), func(c map[string]any) { c["aud"] = []any{oidcTestAudience} }},
		{"aud list with azp ours", oidcHeader("a"), func(c map[string]any) {
			c["aud"], c["azp"] = []any{"other", oidcTestAudience}, oidcTestAudience
		}},
		{"single aud, azp another client", oidcHeader("a"), func(c map[string]any) { c["azp"] = "android-app-client" }},
		{"no kid, single key", map[string]any{"alg": "RS256"}, func(c map[string]any) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.claims()
			tt.edit(c)
			if _, err := f.v.Verify(context.Background(), oidcSign(t, oidcKey(t, "a"), tt.header, c)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// hmacToken signs header and claims with HMAC-SHA256 under secret.
func oidcHMACToken(t *testing.T, secret []byte, header, claims map[string]any) string {
	input := oidcB64JSON(t, header) + "." + oidcB64JSON(t, claims)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + oidcB64(mac.Sum(nil))
}

func TestOIDCVerifyRejects(t *testing.T) {
	keyA := oidcKey(t, "a")
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)), false)
	now := f.clock.now().Unix()
	valid := oidcSign(t, keyA, oidcHeader("a"), f.claims())
	parts := strings.Split(valid, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}

	der, err := x509.MarshalPKIXPublicKey(&keyA.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})

	withClaims := func(edit func(c map[string]any)) string {
		c := f.claims()
		edit(c)
		return oidcSign(t, keyA, oidcHeader("a"), c)
	}
	tampered := f.claims()
	tampered["sub"] = "someone-else"

	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"wrong signing key", oidcSign(t, oidcKey(t, "attacker"), oidcHeader("a"), f.claims()), errTokenSignature},
		{"tampered payload", parts[0] + "." + oidcB64JSON(t, tampered) + "." + parts[2], errTokenSignature},
		{"truncated signature", parts[0] + "." + parts[1] + "." + oidcB64(sig[:len(sig)-1]), errTokenSignature},
		{"signature plus n", parts[0] + "." + parts[1] + "." + oidcB64(new(big.Int).Add(new(big.Int).SetBytes(sig), keyA.N).Bytes()), errTokenSignature},
		{"signature of another token", parts[0] + "." + parts[1] + "." + strings.Split(withClaims(func(c map[string]any) { c["sub"] = "x" }), ".")[2], errTokenSignature},
		// alg "none" carries no signature; the second form keeps a valid
		// RS256 signature in case a verifier only looks at the header.
		{"alg none", oidcB64JSON(t, map[string]any{"alg": "none"}) + "." + parts[1] + ".", errTokenAlg},
		{"alg none with signature", oidcB64JSON(t, map[string]any{"alg": "none", "kid": "a"}) + "." + parts[1] + "." + parts[2], errTokenAlg},
		// The confusion attack: HMAC keyed with the provider's public key,
		// which the attacker knows, in the forms a verifier might use.
		{"HS256 keyed with PEM public key", oidcHMACToken(t, pemKey, map[string]any{"alg": "HS256", "kid": "a"}, f.claims()), errTokenAlg},
		{"HS256 keyed with DER public key", oidcHMACToken(t, der, map[string]any{"alg": "HS256", "kid": "a"}, f.claims()), errTokenAlg},
		{"HS256 keyed with modulus", oidcHMACToken(t, keyA.N.Bytes(), map[string]any{"alg": "HS256", "kid": "a"}, f.claims()), errTokenAlg},
		{"alg RS512", oidcSign(t, keyA, map[string]any{"alg": "RS512", "kid": "a"}, f.claims()), errTokenAlg},
		{"alg lower case", oidcSign(t, keyA, map[string]any{"alg": "rs256", "kid": "a"}, f.claims()), errTokenAlg},
		{"alg missing", oidcSign(t, keyA, map[string]any{"kid": "a"}, f.claims()), errTokenAlg},
		{"alg not a string", oidcSign(t, keyA, map[string]any{"alg": 256, "kid": "a"}, f.claims()), errTokenAlg},
		{"crit header", oidcSign(t, keyA, map[string]any{"alg": "RS256", "kid": "a", "crit": []string{"exp"}}, f.claims()), errTokenMalformed},
		{"kid not a string", oidcSign(t, keyA, map[string]any{"alg": "RS256", "kid": 1}, f.claims()), errTokenMalformed},
		{"unknown kid", oidcSign(t, keyA, oidcHeader("zz"), f.claims()), errTokenUnknownKey},
		{"expired", withClaims(func(c map[string]any) { c["exp"] = now - 61 }), errTokenExpired},
		{"expired long ago", withClaims(func(c map[string]any) { c["exp"] = 1 }), errTokenExpired},
		{"exp missing", withClaims(func(c map[string]any) { delete(c, "exp") }), errTokenClaims},
		{"exp a string", withClaims(func(c map[string]any) { c["exp"] = "tomorrow" }), errTokenClaims},
		{"nbf in the future", withClaims(func(c map[string]any) { c["nbf"] = now + 120 }), errTokenNotYetValid},
		{"iat in the future", withClaims(func(c map[string]any) { c["iat"] = now + 120 }), errTokenNotYetValid},
		// A token kept (stolen or stockpiled) past the age limit, though
		// its exp says it is still good.
		{"iat too old", withClaims(func(c map[string]any) {
			c["iat"], c["exp"] = now-int64(oidcTestMaxAge.Seconds())-61, now+86400
		}), errTokenTooOld},
		{"iat missing", withClaims(func(c map[string]any) { delete(c, "iat") }), errTokenClaims},
		{"iat a string", withClaims(func(c map[string]any) { c["iat"] = "yesterday" }), errTokenClaims},
		// OIDC Core §3.1.3.7: several audiences need azp, and it must be us.
		{"aud list without azp", withClaims(func(c map[string]any) { c["aud"] = []any{"other", oidcTestAudience} }), errTokenAZP},
		{"aud list, azp another", withClaims(func(c map[string]any) {
			c["aud"], c["azp"] = []any{"other", oidcTestAudience}, "other"
		}), errTokenAZP},
		{"aud list, azp not a string", withClaims(func(c map[string]any) {
			c["aud"], c["azp"] = []any{"other", oidcTestAudience}, []any{oidcTestAudience}
		}), errTokenAZP},
		{"nbf a string", withClaims(func(c map[string]any) { c["nbf"] = "now" }), errTokenClaims},
		{"wrong iss", withClaims(func(c map[string]any) { c["iss"] = "https://evil.example" }), errTokenIssuer},
		{"iss with trailing slash", withClaims(func(c map[string]any) { c["iss"] = oidcTestIssuer + "/" }), errTokenIssuer},
		{"iss missing", withClaims(func(c map[string]any) { delete(c, "iss") }), errTokenIssuer},
		{"iss a list", withClaims(func(c map[string]any) { c["iss"] = []string{oidcTestIssuer} }), errTokenIssuer},
		{"wrong aud", withClaims(func(c map[string]any) { c["aud"] = "another-site" }), errTokenAudience},
		{"aud list without ours", withClaims(func(c map[string]any) { c["aud"] = []any{"x", "y"} }), errTokenAudience},
		{"aud list of non-strings", withClaims(func(c map[string]any) { c["aud"] = []any{1, nil} }), errTokenAudience},
		{"aud missing", withClaims(func(c map[string]any) { delete(c, "aud") }), errTokenAudience},
		{"aud prefix of ours", withClaims(func(c map[string]any) { c["aud"] = oidcTestAudience[:4] }), errTokenAudience},
		{"sub missing", withClaims(func(c map[string]any) { delete(c, "sub") }), errTokenClaims},
		{"sub empty", withClaims(func(c map[string]any) { c["sub"] = "" }), errTokenClaims},
		{"sub a number", withClaims(func(c map[string]any) { c["sub"] = 42 }), errTokenClaims},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims, err := f.v.Verify(context.Background(), tt.token)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if claims != nil {
				t.Errorf("claims returned with error: %v", claims)
			}
		})
	}
	// The unknown kid must not have caused a fetch: the start-up fetch is
	// less than jwksRefetchInterval ago.
	if n := f.srv.requests.Load(); n != 1 {
		t.Errorf("%d key set requests, want 1", n)
	}
}

// TestOIDCVerifyMalformed feeds tokens of every broken shape.
func TestOIDCVerifyMalformed(t *testing.T) {
	keyA := oidcKey(t, "a")
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)), false)
	valid := oidcSign(t, keyA, oidcHeader("a"), f.claims())
	p := strings.Split(valid, ".")
	raw := func(s string) string { return oidcB64([]byte(s)) }
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"empty", "", errTokenMalformed},
		{"one part", p[0], errTokenMalformed},
		{"two parts", p[0] + "." + p[1], errTokenMalformed},
		{"four parts", valid + "." + p[2], errTokenMalformed},
		{"only dots", "..", errTokenMalformed},
		{"empty signature", p[0] + "." + p[1] + ".", errTokenMalformed},
		{"signature not base64", p[0] + "." + p[1] + ".***", errTokenMalformed},
		{"signature padded", p[0] + "." + p[1] + "." + base64.URLEncoding.EncodeToString([]byte{1, 2, 3, 4}), errTokenMalformed},
		{"signature std base64", p[0] + "." + p[1] + "." + base64.RawStdEncoding.EncodeToString([]byte{0xfb, 0xff, 0xfe}), errTokenMalformed},
		{"header not base64", "*." + p[1] + "." + p[2], errTokenMalformed},
		{"header padded", base64.URLEncoding.EncodeToString([]byte(`{"alg":"RS256","kid":"a"}`)) + "." + p[1] + "." + p[2], errTokenMalformed},
		{"header not JSON", raw("alg=RS256") + "." + p[1] + "." + p[2], errTokenMalformed},
		{"header null", raw("null") + "." + p[1] + "." + p[2], errTokenMalformed},
		{"header a list", raw(`["RS256"]`) + "." + p[1] + "." + p[2], errTokenMalformed},
		{"header trailing data", raw(`{"alg":"RS256"}x`) + "." + p[1] + "." + p[2], errTokenMalformed},
		{"payload empty", p[0] + ".." + p[2], errTokenMalformed},
		{"payload null", p[0] + "." + raw("null") + "." + p[2], errTokenMalformed},
		{"payload a string", p[0] + "." + raw(`"sub"`) + "." + p[2], errTokenMalformed},
		{"payload not JSON", p[0] + "." + raw("{sub:1}") + "." + p[2], errTokenMalformed},
		{"payload huge number", p[0] + "." + raw(`{"exp":1e999}`) + "." + p[2], errTokenMalformed},
		{"payload invalid UTF-8 base64", p[0] + ".\xff\xfe." + p[2], errTokenMalformed},
		{"too large", strings.Repeat("a", maxOIDCTokenBytes+1), errTokenTooLarge},
		{"too large but otherwise valid", p[0] + "." + p[1] + strings.Repeat("A", maxOIDCTokenBytes) + "." + p[2], errTokenTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := f.v.Verify(context.Background(), tt.token); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestOIDCKeyRotation: a token signed with a key published after start is
// accepted once the key set is fetched again, which an unknown kid triggers
// at most once per jwksRefetchInterval.
func TestOIDCKeyRotation(t *testing.T) {
	pubA, pubB := &oidcKey(t, "a").PublicKey, &oidcKey(t, "b").PublicKey
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", pubA)), false)
	tokenB := oidcSign(t, oidcKey(t, "b"), oidcHeader("b"), f.claims())

	f.srv.set(oidcJWKS(t, oidcJWK("a", pubA), oidcJWK("b", pubB)), false)
	// Right after start the rate limit holds: no fetch, the kid is unknown.
	if _, err := f.v.Verify(context.Background(), tokenB); !errors.Is(err, errTokenUnknownKey) {
		t.Fatalf("err = %v, want %v", err, errTokenUnknownKey)
	}
	if n := f.srv.requests.Load(); n != 1 {
		t.Fatalf("%d requests within the rate limit window, want 1", n)
	}

	f.clock.advance(jwksRefetchInterval)
	if _, err := f.v.Verify(context.Background(), tokenB); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if n := f.srv.requests.Load(); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
	// The new key is now held: no further fetch.
	if _, err := f.v.Verify(context.Background(), tokenB); err != nil {
		t.Fatal(err)
	}
	if n := f.srv.requests.Load(); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
}

// TestOIDCRefetchRateLimit: a flood of tokens with made-up kids causes at
// most one fetch per jwksRefetchInterval.
func TestOIDCRefetchRateLimit(t *testing.T) {
	keyA := oidcKey(t, "a")
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)), false)
	// Tokens validly signed, but naming kids the provider never published;
	// they stay unexpired for the whole test.
	var bogus []string
	for i := range 50 {
		bogus = append(bogus, oidcSign(t, keyA, oidcHeader(fmt.Sprintf("bogus-%d", i)), f.claims()))
	}
	flood := func() {
		for _, token := range bogus {
			if _, err := f.v.Verify(context.Background(), token); !errors.Is(err, errTokenUnknownKey) {
				t.Fatalf("err = %v, want %v", err, errTokenUnknownKey)
			}
		}
	}
	flood()
	if n := f.srv.requests.Load(); n != 1 {
		t.Fatalf("%d requests after a flood at start, want 1", n)
	}
	f.clock.advance(jwksRefetchInterval - time.Second)
	flood()
	if n := f.srv.requests.Load(); n != 1 {
		t.Fatalf("%d requests before the window ended, want 1", n)
	}
	f.clock.advance(time.Second)
	flood()
	if n := f.srv.requests.Load(); n != 2 {
		t.Fatalf("%d requests after one window, want 2", n)
	}
	f.clock.advance(jwksRefetchInterval)
	flood()
	if n := f.srv.requests.Load(); n != 3 {
		t.Fatalf("%d requests after two windows, want 3", n)
	}
	// A known kid never fetches.
	if _, err := f.v.Verify(context.Background(), oidcSign(t, keyA, oidcHeader("a"), f.claims())); err != nil {
		t.Fatal(err)
	}
	if n := f.srv.requests.Load(); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
}

// TestOIDCConcurrentRefetch: sign-ups arriving together after a rotation
// share one fetch and all succeed.
func TestOIDCConcurrentRefetch(t *testing.T) {
	pubA, pubB := &oidcKey(t, "a").PublicKey, &oidcKey(t, "b").PublicKey
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", pubA)), false)
	tokenB := oidcSign(t, oidcKey(t, "b"), oidcHeader("b"), f.claims())
	f.srv.set(oidcJWKS(t, oidcJWK("b", pubB)), false)
	f.clock.advance(jwksRefetchInterval)

	const callers = 16
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			_, err := f.v.Verify(context.Background(), tokenB)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := f.srv.requests.Load(); n != 2 {
		t.Errorf("%d requests, want 2 (start and one re-fetch)", n)
	}
}

// TestOIDCWaitHonoursContext: a caller waiting for another caller's fetch
// gives up when its context ends, and the fetch still completes for the
// first.
func TestOIDCWaitHonoursContext(t *testing.T) {
	pubA, pubB := &oidcKey(t, "a").PublicKey, &oidcKey(t, "b").PublicKey
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", pubA)), false)
	tokenB := oidcSign(t, oidcKey(t, "b"), oidcHeader("b"), f.claims())
	hold := &jwksHold{entered: make(chan struct{}, 1), release: make(chan struct{})}
	f.srv.mu.Lock()
	f.srv.body, f.srv.hold = oidcJWKS(t, oidcJWK("b", pubB)), hold
	f.srv.mu.Unlock()
	f.clock.advance(jwksRefetchInterval)

	first := make(chan error, 1)
	go func() {
		_, err := f.v.Verify(context.Background(), tokenB)
		first <- err
	}()
	<-hold.entered // the first caller's fetch is now in flight

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.v.Verify(ctx, tokenB); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want %v", err, context.Canceled)
	}
	close(hold.release)
	if err := <-first; err != nil {
		t.Errorf("first caller: %v", err)
	}
}

// TestOIDCProviderUnreachableAtStart: start succeeds with a warning, tokens
// are refused, and once the provider is back and the rate-limit window has
// passed they are accepted.
func TestOIDCProviderUnreachableAtStart(t *testing.T) {
	keyA := oidcKey(t, "a")
	jwks := oidcJWKS(t, oidcJWK("a", &keyA.PublicKey))
	f := newOIDCFixture(t, jwks, true)
	logs := f.logs.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "oidc keys fetch failed") || !strings.Contains(logs, "provider=Test") {
		t.Fatalf("no warning logged:\n%s", logs)
	}
	token := oidcSign(t, keyA, oidcHeader("a"), f.claims())
	if _, err := f.v.Verify(context.Background(), token); !errors.Is(err, errTokenNoKeys) {
		t.Fatalf("err = %v, want %v", err, errTokenNoKeys)
	}

	f.srv.set(jwks, false)
	if _, err := f.v.Verify(context.Background(), token); !errors.Is(err, errTokenNoKeys) {
		t.Fatalf("within the window: err = %v, want %v", err, errTokenNoKeys)
	}
	if n := f.srv.requests.Load(); n != 1 {
		t.Fatalf("%d requests within the window, want 1", n)
	}
	f.clock.advance(jwksRefetchInterval)
	if _, err := f.v.Verify(context.Background(), token); err != nil {
		t.Fatalf("after the provider came up: %v", err)
	}
	if strings.Contains(f.logs.String(), token) {
		t.Error("the token was logged")
	}
}

// TestOIDCProviderRefused: nothing listening at the keys URL is a warning,
// not an error.
func TestOIDCProviderRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logs := newLockedBuffer()
	v, err := NewOIDCVerifier(context.Background(), []AuthProvider{{Label: "Gone", Keys: "http://" + addr + "/jwks", Iss: oidcTestIssuer, Aud: oidcTestAudience}},
		OIDCOptions{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "oidc keys fetch failed") {
		t.Errorf("no warning logged:\n%s", logs)
	}
	token := oidcSign(t, oidcKey(t, "a"), oidcHeader("a"), map[string]any{"iss": oidcTestIssuer, "aud": oidcTestAudience, "sub": "x", "exp": time.Now().Unix() + 600})
	if _, err := v.Verify(context.Background(), token); !errors.Is(err, errTokenNoKeys) {
		t.Errorf("err = %v, want %v", err, errTokenNoKeys)
	}
}

// TestOIDCKeySetErrors: responses that are not a usable key set leave the
// provider without keys, with a warning.
func TestOIDCKeySetErrors(t *testing.T) {
	jwks := oidcJWKS(t, oidcJWK("a", &oidcKey(t, "a").PublicKey))
	// oversized is a valid key set padded to one byte over the limit.
	pad := maxJWKSBytes + 1 - len(jwks) - len(`,"pad":""`)
	oversized := append(bytes.TrimSuffix(jwks, []byte("}")), []byte(`,"pad":"`+strings.Repeat("x", pad)+`"}`)...)
	if len(oversized) != maxJWKSBytes+1 {
		t.Fatalf("oversized is %d bytes", len(oversized))
	}
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"oversized", oversized, "larger than"},
		{"not JSON", []byte("<html>"), "not a JSON key set"},
		{"no keys", []byte(`{"keys":[]}`), "no usable RS256 signing key"},
		{"only a small key", oidcJWKS(t, oidcJWK("s", &oidcKey(t, "small").PublicKey)), "no usable RS256 signing key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newOIDCFixture(t, tt.body, false)
			if logs := f.logs.String(); !strings.Contains(logs, "oidc keys fetch failed") || !strings.Contains(logs, tt.want) {
				t.Errorf("want a warning containing %q:\n%s", tt.want, logs)
			}
			token := oidcSign(t, oidcKey(t, "a"), oidcHeader("a"), f.claims())
			if _, err := f.v.Verify(context.Background(), token); !errors.Is(err, errTokenNoKeys) {
				t.Errorf("err = %v, want %v", err, errTokenNoKeys)
			}
		})
	}

	t.Run("status 404", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		t.Cleanup(srv.Close)
		logs := newLockedBuffer()
		if _, err := NewOIDCVerifier(context.Background(), []AuthProvider{{Label: "X", Keys: srv.URL, Iss: oidcTestIssuer, Aud: oidcTestAudience}},
			OIDCOptions{Client: srv.Client(), Logger: slog.New(slog.NewTextHandler(logs, nil))}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "404") {
			t.Errorf("status not logged:\n%s", logs)
		}
	})

	t.Run("exactly the limit", func(t *testing.T) {
		atLimit := oversized[:len(oversized)-3]
		atLimit = append(atLimit[:len(atLimit):len(atLimit)], '"', '}')
		if len(atLimit) != maxJWKSBytes {
			t.Fatalf("atLimit is %d bytes", len(atLimit))
		}
		f := newOIDCFixture(t, atLimit, false)
		if _, err := f.v.Verify(context.Background(), oidcSign(t, oidcKey(t, "a"), oidcHeader("a"), f.claims())); err != nil {
			t.Fatal(err)
		}
	})
}

// TestOIDCKeysMaxAge: after jwksMaxAge the key set is fetched again, so a
// withdrawn key stops working; if that fetch fails the old keys stay usable.
func TestOIDCKeysMaxAge(t *testing.T) {
	keyA, keyB := oidcKey(t, "a"), oidcKey(t, "b")
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)), false)

	f.clock.advance(jwksMaxAge)
	f.srv.set(nil, true)
	if _, err := f.v.Verify(context.Background(), oidcSign(t, keyA, oidcHeader("a"), f.claims())); err != nil {
		t.Fatalf("stale keys with the provider down: %v", err)
	}
	if n := f.srv.requests.Load(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}

	f.clock.advance(jwksRefetchInterval)
	f.srv.set(oidcJWKS(t, oidcJWK("b", &keyB.PublicKey)), false)
	if _, err := f.v.Verify(context.Background(), oidcSign(t, keyA, oidcHeader("a"), f.claims())); !errors.Is(err, errTokenUnknownKey) {
		t.Fatalf("withdrawn key: err = %v, want %v", err, errTokenUnknownKey)
	}
	if _, err := f.v.Verify(context.Background(), oidcSign(t, keyB, oidcHeader("b"), f.claims())); err != nil {
		t.Fatal(err)
	}
	if n := f.srv.requests.Load(); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestParseJWKS(t *testing.T) {
	pubA, pubB := &oidcKey(t, "a").PublicKey, &oidcKey(t, "b").PublicKey
	with := func(k map[string]any, field string, v any) map[string]any {
		c := map[string]any{}
		for name, x := range k {
			c[name] = x
		}
		if v == nil {
			delete(c, field)
		} else {
			c[field] = v
		}
		return c
	}
	good := oidcJWK("good", pubA)
	data := oidcJWKS(t,
		good,
		// Ignored silently: other types, uses and algorithms.
		map[string]any{"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
		with(oidcJWK("enc", pubB), "use", "enc"),
		with(oidcJWK("rs512", pubB), "alg", "RS512"),
		// Reported: unusable RSA signing keys.
		oidcJWK("small", &oidcKey(t, "small").PublicKey),
		with(oidcJWK("bad-n", pubB), "n", "***"),
		with(oidcJWK("bad-e", pubB), "e", "***"),
		with(oidcJWK("even-e", pubB), "e", oidcB64([]byte{1, 0, 0})),
		with(oidcJWK("one-e", pubB), "e", oidcB64([]byte{1})),
		with(oidcJWK("big-e", pubB), "e", oidcB64([]byte{1, 0, 0, 0, 1})),
		with(oidcJWK("empty-e", pubB), "e", ""),
		with(oidcJWK("n-number", pubB), "n", 12345),
		oidcJWK("good", pubB), // duplicate kid
	)
	keys, skipped, err := parseJWKS(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys["good"] == nil || !keys["good"].Equal(pubA) {
		t.Errorf("keys = %v, want only good (the first one)", keys)
	}
	if len(skipped) != 9 {
		t.Errorf("%d skipped, want 9: %v", len(skipped), skipped)
	}

	// A key without use or alg, with a leading zero byte in e, is usable.
	noUse := with(with(oidcJWK("plain", pubA), "use", nil), "alg", nil)
	noUse["e"] = oidcB64(append([]byte{0}, big.NewInt(int64(pubA.E)).Bytes()...))
	if keys, _, err := parseJWKS(oidcJWKS(t, noUse)); err != nil || keys["plain"] == nil {
		t.Errorf("plain key: %v, %v", keys, err)
	}

	for _, bad := range []string{``, `null`, `[]`, `{"keys":{}}`, `{"keys":[1,"x"]}`, `{}`} {
		if _, _, err := parseJWKS([]byte(bad)); err == nil {
			t.Errorf("parseJWKS(%q) accepted", bad)
		}
	}
}

func TestNewOIDCVerifierConfigErrors(t *testing.T) {
	good := AuthProvider{Label: "A", Std: Params{"client_id=x"}, Keys: "http://127.0.0.1:1/jwks", Iss: "https://a.example", Aud: "x"}
	edit := func(f func(p *AuthProvider)) AuthProvider {
		p := good
		f(&p)
		return p
	}
	tests := []struct {
		name      string
		providers []AuthProvider
		want      []string
	}{
		{"index after marker", []AuthProvider{{}, edit(func(p *AuthProvider) { p.Aud = "" })}, []string{"authby[1].aud: must not be empty"}},
		{"iss empty", []AuthProvider{edit(func(p *AuthProvider) { p.Iss = "" })}, []string{"authby[0].iss: must not be empty"}},
		{"aud empty", []AuthProvider{edit(func(p *AuthProvider) { p.Aud = "" })}, []string{"authby[0].aud: must not be empty"}},
		{"keys not https", []AuthProvider{edit(func(p *AuthProvider) { p.Keys = "http://keys.example/jwks" })}, []string{"authby[0].keys:", "use https"}},
		{"keys not a URL", []AuthProvider{edit(func(p *AuthProvider) { p.Keys = "jwks.json" })}, []string{"authby[0].keys:"}},
		{"duplicate issuer", []AuthProvider{good, edit(func(p *AuthProvider) { p.Label = "B" })}, []string{`authby[1].iss: "https://a.example" is also the issuer of authby[0]`}},
		{"all at once", []AuthProvider{edit(func(p *AuthProvider) { p.Iss, p.Aud = "", "" })}, []string{"authby[0].iss", "authby[0].aud"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewOIDCVerifier(context.Background(), tt.providers, OIDCOptions{})
			if err == nil {
				t.Fatalf("accepted, verifier %v", v)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestNewOIDCVerifierSkips: the "auth optional" marker and providers without
// keys are not fetched; the latter are warned about.
func TestNewOIDCVerifierSkips(t *testing.T) {
	logs := newLockedBuffer()
	v, err := NewOIDCVerifier(context.Background(), []AuthProvider{{}, {Label: "NoKeys", Iss: oidcTestIssuer}},
		OIDCOptions{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.byIssuer) != 0 {
		t.Errorf("%d providers, want 0", len(v.byIssuer))
	}
	if !strings.Contains(logs.String(), "provider=NoKeys") {
		t.Errorf("no warning for the provider without keys:\n%s", logs)
	}
	token := oidcSign(t, oidcKey(t, "a"), oidcHeader("a"), map[string]any{"iss": oidcTestIssuer, "aud": oidcTestAudience, "sub": "x", "exp": time.Now().Unix() + 600})
	if _, err := v.Verify(context.Background(), token); !errors.Is(err, errTokenIssuer) {
		t.Errorf("err = %v, want %v", err, errTokenIssuer)
	}
}

// TestNewOIDCVerifierCancelled: a start interrupted before the fetches end is
// an error.
func TestNewOIDCVerifierCancelled(t *testing.T) {
	srv := newJWKSServer(t, oidcJWKS(t, oidcJWK("a", &oidcKey(t, "a").PublicKey)))
	hold := &jwksHold{entered: make(chan struct{}, 1), release: make(chan struct{})}
	srv.mu.Lock()
	srv.hold = hold
	srv.mu.Unlock()
	defer close(hold.release)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-hold.entered
		cancel()
	}()
	_, err := NewOIDCVerifier(ctx, []AuthProvider{{Label: "A", Keys: srv.URL, Iss: oidcTestIssuer, Aud: oidcTestAudience}}, OIDCOptions{Client: srv.Client()})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want %v", err, context.Canceled)
	}
}

// FuzzVerify: no input panics, and nothing but the one validly signed token
// verifies (the fuzzer cannot forge an RSA signature, so any other success
// would mean a token was accepted on something other than its signature).
func FuzzVerify(f *testing.F) {
	keyA := oidcKey(f, "a")
	fx := newOIDCFixture(f, oidcJWKS(f, oidcJWK("a", &keyA.PublicKey)), false)
	valid := oidcSign(f, keyA, oidcHeader("a"), fx.claims())
	p := strings.Split(valid, ".")
	// Seeds: the valid token, so mutations explore near it.
	f.Add(valid)
	// Algorithm confusion: none and HS256.
	f.Add(oidcB64JSON(f, map[string]any{"alg": "none"}) + "." + p[1] + ".")
	f.Add(oidcB64JSON(f, map[string]any{"alg": "HS256", "kid": "a"}) + "." + p[1] + "." + p[2])
	// Wrong part counts and empty parts.
	f.Add("")
	f.Add("..")
	f.Add(p[0] + "." + p[1])
	f.Add(valid + ".x")
	// Unknown kid (a fetch attempt, rate-limited) and a kid of odd type.
	f.Add(oidcSign(f, keyA, oidcHeader("zz"), fx.claims()))
	f.Add(oidcB64JSON(f, map[string]any{"alg": "RS256", "kid": []int{1}}) + "." + p[1] + "." + p[2])
	// Payloads of the wrong JSON type.
	f.Add(p[0] + "." + oidcB64([]byte("[]")) + "." + p[2])
	f.Add(p[0] + "." + oidcB64([]byte(`{"iss":"`+oidcTestIssuer+`","exp":"x"}`)) + "." + p[2])
	f.Fuzz(func(t *testing.T, token string) {
		claims, err := fx.v.Verify(context.Background(), token)
		if err != nil {
			if claims != nil {
				t.Errorf("claims with error %v", err)
			}
			return
		}
		if token != valid {
			t.Errorf("accepted a token other than the signed one: %q", token)
		}
	})
}

// FuzzParseJWKS: no key set panics, and every key returned is within the
// limits.
func FuzzParseJWKS(f *testing.F) {
	pub := &oidcKey(f, "a").PublicKey
	// A valid set, an empty one, and keys with broken fields.
	f.Add(oidcJWKS(f, oidcJWK("a", pub)))
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":5,"e":null}, {"kty":"EC"}]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, _, err := parseJWKS(data)
		if err != nil {
			return
		}
		if len(keys) == 0 {
			t.Error("no keys and no error")
		}
		for kid, k := range keys {
			if bits := k.N.BitLen(); bits < minRSAKeyBits || bits > maxRSAKeyBits || k.E < 3 || k.E%2 == 0 {
				t.Errorf("key %q: %d bits, e %d", kid, bits, k.E)
			}
		}
	})
}

// TestOIDCTokenAgeOff: with no age limit a token without iat, or an old
// one, is checked against exp only, as before the limit existed.
func TestOIDCTokenAgeOff(t *testing.T) {
	keyA := oidcKey(t, "a")
	f := newOIDCFixture(t, oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)), false)
	v, err := NewOIDCVerifier(context.Background(), []AuthProvider{{Label: "Test", Keys: f.srv.URL + "/jwks", Iss: oidcTestIssuer, Aud: oidcTestAudience}},
		OIDCOptions{Client: f.srv.Client(), Now: f.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	now := f.clock.now().Unix()
	for name, edit := range map[string]func(c map[string]any){
		"no iat":  func(c map[string]any) { delete(c, "iat") },
		"old iat": func(c map[string]any) { c["iat"] = now - 10*86400 },
	} {
		c := f.claims()
		edit(c)
		if _, err := v.Verify(context.Background(), oidcSign(t, keyA, oidcHeader("a"), c)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := NewOIDCVerifier(context.Background(), nil, OIDCOptions{MaxTokenAge: -time.Second}); err == nil {
		t.Error("a negative token age was accepted")
	}
}

// oidcTLSServer starts an https server on loopback running h, and returns
// it with a pool that trusts it (every httptest TLS server has the same
// certificate, for 127.0.0.1 and example.com).
func oidcTLSServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.SetKeepAlivesEnabled(false)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, pool
}

// TestOIDCRedirectDowngradeRefused: a keys URL that redirects to http is not
// followed, so that whoever is on the path of the http request cannot hand
// us keys of their own; the http server gets no request and tokens are
// refused for want of keys. The verifier stays usable: once the provider
// serves its keys over https, they are fetched and tokens verify.
func TestOIDCRedirectDowngradeRefused(t *testing.T) {
	keyA := oidcKey(t, "a")
	plain := newJWKSServer(t, oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)))
	var redirect atomic.Bool
	redirect.Store(true)
	srv, pool := oidcTLSServer(t, func(w http.ResponseWriter, r *http.Request) {
		if redirect.Load() {
			http.Redirect(w, r, plain.URL+"/jwks", http.StatusFound)
			return
		}
		w.Write(oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)))
	})
	clock := &oidcClock{t: time.Now()}
	logs := newLockedBuffer()
	v, err := NewOIDCVerifier(context.Background(), []AuthProvider{{Label: "Test", Keys: srv.URL + "/jwks", Iss: oidcTestIssuer, Aud: oidcTestAudience}},
		OIDCOptions{Client: newJWKSClient(pool), Logger: slog.New(slog.NewTextHandler(logs, nil)), Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	if n := plain.requests.Load(); n != 0 {
		t.Errorf("the http key server got %d requests, want 0", n)
	}
	if !strings.Contains(logs.String(), "redirect refused") {
		t.Errorf("refused redirect not logged:\n%s", logs)
	}
	now := clock.now().Unix()
	token := oidcSign(t, keyA, oidcHeader("a"), map[string]any{"iss": oidcTestIssuer, "aud": oidcTestAudience, "sub": "s", "iat": now, "exp": now + 600})
	if _, err := v.Verify(context.Background(), token); !errors.Is(err, errTokenNoKeys) {
		t.Fatalf("err = %v, want %v", err, errTokenNoKeys)
	}

	redirect.Store(false)
	clock.advance(jwksRefetchInterval)
	if _, err := v.Verify(context.Background(), token); err != nil {
		t.Fatalf("after the provider fixed its keys URL: %v", err)
	}
}

// TestOIDCRedirects: https redirects are followed up to maxJWKSRedirects;
// a loop is cut there. The caller's own client is not changed.
func TestOIDCRedirects(t *testing.T) {
	keyA := oidcKey(t, "a")
	var hops atomic.Int64
	srv, pool := oidcTLSServer(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		hops.Add(1)
		if r.URL.Path == "/loop" || n < maxJWKSRedirects {
			http.Redirect(w, r, fmt.Sprintf("%s?n=%d", r.URL.Path, n+1), http.StatusFound)
			return
		}
		w.Write(oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)))
	})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, tt := range []struct {
		path     string
		hops     int64
		wantKeys bool
	}{
		{"/jwks", maxJWKSRedirects + 1, true},
		{"/loop", maxJWKSRedirects + 1, false},
	} {
		t.Run(tt.path, func(t *testing.T) {
			hops.Store(0)
			logs := newLockedBuffer()
			v, err := NewOIDCVerifier(context.Background(), []AuthProvider{{Label: "Test", Keys: srv.URL + tt.path, Iss: oidcTestIssuer, Aud: oidcTestAudience}},
				OIDCOptions{Client: client, Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			p := v.byIssuer[oidcTestIssuer]
			p.mu.Lock()
			gotKeys := p.keys != nil
			p.mu.Unlock()
			if gotKeys != tt.wantKeys || hops.Load() != tt.hops {
				t.Errorf("%s: keys %v after %d requests, want %v after %d\n%s", tt.path, gotKeys, hops.Load(), tt.wantKeys, tt.hops, logs)
			}
		})
	}
	if client.CheckRedirect != nil {
		t.Error("NewOIDCVerifier changed the caller's client")
	}
}

// TestOIDCProxyEnvironmentIgnored: with HTTPS_PROXY and HTTP_PROXY naming a
// loopback listener, the key set is still fetched directly, and the
// listener sees no connection. The provider is reached as example.com
// (the dial is pointed at a loopback server), because proxy variables are
// never applied to loopback hosts anyway.
func TestOIDCProxyEnvironmentIgnored(t *testing.T) {
	keyA := oidcKey(t, "a")
	srv, pool := oidcTLSServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write(oidcJWKS(t, oidcJWK("a", &keyA.PublicKey)))
	})
	proxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var proxied atomic.Int64
	go func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			proxied.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { proxy.Close() })
	proxyURL := "http://" + proxy.Addr().String()
	t.Setenv("HTTPS_PROXY", proxyURL)
	t.Setenv("HTTP_PROXY", proxyURL)
	t.Setenv("NO_PROXY", "")

	const keysURL = "https://example.com/jwks"
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == "example.com:443" {
			addr = srv.Listener.Addr().String()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	client := newJWKSClient(pool)
	tr := client.Transport.(*http.Transport)
	tr.DialContext = dial
	if tr.Proxy != nil {
		t.Fatal("the key set transport has a proxy")
	}

	// The control: had the transport taken its proxy from the environment,
	// as http.DefaultTransport does, the fetch would have gone to the
	// listener. The environment is read once per process, so this holds
	// only when no earlier test read it; the assertions below hold anyway.
	req, _ := http.NewRequest(http.MethodGet, keysURL, nil)
	if u, _ := http.ProxyFromEnvironment(req); u != nil {
		ctl := tr.Clone()
		ctl.Proxy = http.ProxyFromEnvironment
		resp, err := (&http.Client{Transport: ctl}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		if proxied.Load() == 0 {
			t.Fatal("control: a transport using the environment's proxy did not reach the listener")
		}
		proxied.Store(0)
	} else {
		t.Log("proxy environment already read by this process; control skipped")
	}

	v, err := NewOIDCVerifier(context.Background(), []AuthProvider{{Label: "Test", Keys: keysURL, Iss: oidcTestIssuer, Aud: oidcTestAudience}},
		OIDCOptions{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	token := oidcSign(t, keyA, oidcHeader("a"), map[string]any{"iss": oidcTestIssuer, "aud": oidcTestAudience, "sub": "s", "iat": now, "exp": now + 600})
	if _, err := v.Verify(context.Background(), token); err != nil {
		t.Fatalf("token not verified with keys fetched directly: %v", err)
	}
	if n := proxied.Load(); n != 0 {
		t.Errorf("%d connections reached the proxy, want 0", n)
	}
}

// TestOIDCDefaultClient: the client a server gets (no Client option) has no
// proxy and checks redirects.
func TestOIDCDefaultClient(t *testing.T) {
	v, err := NewOIDCVerifier(context.Background(), nil, OIDCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := v.client.Transport.(*http.Transport)
	if !ok || tr.Proxy != nil {
		t.Errorf("transport %T has a proxy function", v.client.Transport)
	}
	if tr == http.DefaultTransport {
		t.Error("the shared default transport is used")
	}
	if v.client.CheckRedirect == nil {
		t.Fatal("redirects are not checked")
	}
	http1, _ := http.NewRequest(http.MethodGet, "http://issuer.example/jwks", nil)
	if err := v.client.CheckRedirect(http1, []*http.Request{{}}); !errors.Is(err, errJWKSRedirect) {
		t.Errorf("redirect to http: err = %v, want %v", err, errJWKSRedirect)
	}
}

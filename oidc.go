package main

// Third-party sign-up tokens (SPEC §4 op 1, §8): when the site requires it, a
// client registering sends an OpenID Connect id_token from one of the
// providers in authby. The token is a JWS signed by the provider; its public
// keys are published as a JWKS at the provider's "keys" URL. Only RS256 is
// accepted, which every OpenID Connect provider must support, so no JWT
// library is needed.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"mnm/qlib"
)

// Limits of token verification.
const (
	// maxOIDCTokenBytes: the wire layer already limits a token to 16 KiB;
	// checking again keeps the verifier safe on its own (it is fuzzed
	// directly). Real id_tokens are one or two KiB.
	maxOIDCTokenBytes = 16 << 10

	// maxJWKSBytes: a provider's key set is a few KiB (a handful of keys).
	// 1 MiB leaves ample room while a keys URL that names a page or a
	// download by mistake cannot exhaust memory.
	maxJWKSBytes = 1 << 20

	// jwksFetchTimeout bounds one fetch of a key set. Start-up fetches run in
	// parallel, so this is also the longest they delay the start; a sign-up
	// waiting for a re-fetch waits at most this long.
	jwksFetchTimeout = 10 * time.Second

	// jwksRefetchInterval is the least time between two fetches of one
	// provider's keys. A token naming an unknown kid triggers a fetch, since
	// the provider may have rotated its keys; without this limit a flood of
	// tokens with made-up kids would make us hammer the provider. Providers
	// publish a new key before signing with it, so a real rotation is seen
	// at most this late.
	jwksRefetchInterval = 30 * time.Second

	// jwksMaxAge: keys fetched longer ago than this are fetched again before
	// use, so that a key the provider has withdrawn (rotated out, or
	// compromised) stops being accepted within a day even when no unknown
	// kid ever shows up. When that fetch fails the old keys stay in use: a
	// provider being briefly down should not stop sign-ups.
	jwksMaxAge = 24 * time.Hour

	// oidcClockSkew is the tolerance on exp, nbf and iat: the provider's
	// clock and ours may disagree by seconds. A minute is the usual
	// allowance and keeps an expired token's extra life short.
	oidcClockSkew = 60 * time.Second

	// minRSAKeyBits: RSA below 2048 bits is no longer considered safe (NIST
	// SP 800-131A); a provider still using such a key is refused rather
	// than trusted.
	minRSAKeyBits = 2048

	// maxRSAKeyBits: verification cost grows with the modulus; no provider
	// uses more than 4096 bits, and this stops a key set with giant keys
	// from making every verification slow.
	maxRSAKeyBits = 8192

	// maxRSAExponent is the largest public exponent crypto/rsa accepts
	// (it must fit an int on 32-bit platforms); providers use 65537.
	maxRSAExponent = 1<<31 - 1

	// maxLoggedValueBytes bounds untrusted strings (an unknown issuer, a
	// skipped kid) quoted in errors and logs.
	maxLoggedValueBytes = 64

	// maxJWKSRedirects bounds the redirects one key set fetch follows. A
	// provider may move its keys URL (one hop, perhaps two through a CDN);
	// Go's default of ten only gives a misconfigured or hostile server
	// more round trips to spend the fetch timeout on.
	maxJWKSRedirects = 3
)

// Reasons a token is refused. They are logged; the client only learns that
// authentication is required, so the text is for the operator.
var (
	errTokenTooLarge    = fmt.Errorf("oidc: token larger than %d bytes", maxOIDCTokenBytes)
	errTokenMalformed   = errors.New("oidc: malformed token")
	errTokenAlg         = errors.New("oidc: token algorithm is not RS256")
	errTokenIssuer      = errors.New("oidc: token issuer is not a configured provider")
	errTokenNoKeys      = errors.New("oidc: provider keys not fetched yet")
	errTokenUnknownKey  = errors.New("oidc: token signed with a key the provider does not publish")
	errTokenSignature   = errors.New("oidc: token signature invalid")
	errTokenAudience    = errors.New("oidc: token audience is not this site")
	errTokenExpired     = errors.New("oidc: token expired")
	errTokenNotYetValid = errors.New("oidc: token not valid yet")
	errTokenClaims      = errors.New("oidc: token claims invalid")
	errTokenTooOld      = errors.New("oidc: token issued too long ago")
	errTokenAZP         = errors.New("oidc: token authorized party is not this site")
)

// OIDCVerifier checks OpenID Connect id_tokens against the site's providers.
// It implements qlib.TokenVerifier and is safe for concurrent use. It runs no
// background work: keys are fetched at start and then only when a token
// needs them (an unknown kid, or keys older than jwksMaxAge).
type OIDCVerifier struct {
	// byIssuer is read-only after NewOIDCVerifier.
	byIssuer map[string]*oidcProvider
	client   *http.Client
	logger   *slog.Logger
	now      func() time.Time
	maxAge   time.Duration // OIDCOptions.MaxTokenAge
}

// OIDCOptions are NewOIDCVerifier's settings beyond the providers.
type OIDCOptions struct {
	// MaxTokenAge refuses tokens issued (iat) longer ago than this, and
	// tokens without iat; 0 turns the check off. The configuration's
	// default is DefaultTokenMaxAgeSeconds.
	MaxTokenAge time.Duration
	// Client fetches the key sets; nil uses newJWKSClient(nil), which is
	// what a server wants. Whatever the client, redirects are checked by
	// checkJWKSRedirect.
	Client *http.Client
	// Logger receives the fetch outcomes; nil discards.
	Logger *slog.Logger
	// Now is the clock tokens are checked against; nil uses time.Now.
	Now func() time.Time
}

// newJWKSClient returns the client that fetches key sets: a clone of
// http.DefaultTransport (its dial, TLS and idle timeouts) trusting roots
// (nil: the system's), without proxies. DefaultTransport takes its proxy
// from HTTP_PROXY, HTTPS_PROXY and NO_PROXY, so anything that can set the
// server's environment (a unit file, a shell profile, a container default)
// could route the fetch of the keys every sign-up is checked against
// through a host of its choosing. A site that must reach its providers
// through a proxy should say so in its configuration, where the operator
// sees it; no site has needed that yet, so there is no such setting.
// Redirects go through checkJWKSRedirect. Timeouts come from the request
// context (jwksFetchTimeout).
func newJWKSClient(roots *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if roots != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
	}
	return &http.Client{Transport: tr, CheckRedirect: checkJWKSRedirect}
}

// errJWKSRedirect refuses a redirect of a key set fetch.
var errJWKSRedirect = errors.New("oidc: key set redirect refused")

// checkJWKSRedirect lets a key set fetch follow at most maxJWKSRedirects
// redirects, each to https. The keys URL is https (checkAuthURL; http only
// on loopback, for tests), and a redirect to http would hand the keys that
// every sign-up is checked against to anyone on the path: they could then
// sign tokens of their own.
func checkJWKSRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxJWKSRedirects {
		return fmt.Errorf("%w: more than %d redirects", errJWKSRedirect, maxJWKSRedirects)
	}
	if req.URL.Scheme != "https" {
		return fmt.Errorf("%w: to %s, not https", errJWKSRedirect, req.URL.Scheme)
	}
	return nil
}

var _ qlib.TokenVerifier = (*OIDCVerifier)(nil)

// oidcProvider is one provider's settings and its current keys.
type oidcProvider struct {
	label   string
	keysURL string
	iss     string
	aud     string

	// mu guards the fields below.
	mu sync.Mutex
	// keys maps kid to key; nil until a fetch succeeds. A successful fetch
	// replaces it whole, so keys the provider withdrew are dropped.
	keys      map[string]*rsa.PublicKey
	fetchedAt time.Time
	// lastTry is when the last fetch started, for the rate limit.
	lastTry time.Time
	// inflight is non-nil while a fetch runs and is closed when it ends, so
	// that concurrent callers wait for one fetch instead of starting more.
	inflight chan struct{}
}

// NewOIDCVerifier builds a verifier for the providers that have a keys URL;
// the empty-label "auth optional" marker and entries without keys are
// skipped. Iss and Aud must be set. Two providers may not share an issuer,
// since the issuer is how a token finds its provider. Login, Token and Std
// are for clients (the tmtprev reply) and play no part here.
//
// It fetches every provider's keys before returning. A provider that cannot
// be reached is a logged warning, not an error: its tokens are refused until
// a later fetch succeeds.
func NewOIDCVerifier(ctx context.Context, providers []AuthProvider, opts OIDCOptions) (*OIDCVerifier, error) {
	var client *http.Client
	if opts.Client == nil {
		client = newJWKSClient(nil)
	} else {
		c := *opts.Client // a copy: the caller's client is not changed
		c.CheckRedirect = checkJWKSRedirect
		client = &c
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if opts.MaxTokenAge < 0 {
		return nil, fmt.Errorf("oidc: negative token age %v", opts.MaxTokenAge)
	}
	v := &OIDCVerifier{
		byIssuer: map[string]*oidcProvider{},
		client:   client,
		logger:   logger,
		now:      now,
		maxAge:   opts.MaxTokenAge,
	}
	var errs []error
	issuerField := map[string]string{}
	for i, ap := range providers {
		field := fmt.Sprintf("authby[%d]", i)
		if isOptionalMarker(i, ap) {
			continue
		}
		if ap.Keys == "" {
			logger.Warn("oidc provider has no keys url; its tokens are refused", "provider", ap.Label)
			continue
		}
		bad := func(sub, format string, args ...any) {
			errs = append(errs, fmt.Errorf("oidc: %s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
		}
		if err := checkAuthURL(ap.Keys); err != nil {
			bad("keys", "%v", err)
		}
		if ap.Aud == "" {
			bad("aud", "must not be empty when keys is set")
		}
		if ap.Iss == "" {
			bad("iss", "must not be empty when keys is set")
		} else if prev, dup := issuerField[ap.Iss]; dup {
			bad("iss", "%q is also the issuer of %s", ap.Iss, prev)
		}
		issuerField[ap.Iss] = field
		v.byIssuer[ap.Iss] = &oidcProvider{label: ap.Label, keysURL: ap.Keys, iss: ap.Iss, aud: ap.Aud}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	// Fetch in parallel, so that start waits for the slowest provider
	// rather than the sum of them.
	var wg sync.WaitGroup
	for _, p := range v.byIssuer {
		wg.Go(func() { _ = v.refresh(ctx, p) })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("oidc: fetching provider keys: %w", err)
	}
	return v, nil
}

// refresh fetches p's keys unless a fetch started less than
// jwksRefetchInterval ago. When a fetch is already running it waits for that
// one. The fetch runs on its own goroutine, bounded by jwksFetchTimeout, so
// that a caller whose context ends does not cancel it for the others waiting.
// refresh returns an error only when ctx ends first; the outcome of the fetch
// is in p.keys.
func (v *OIDCVerifier) refresh(ctx context.Context, p *oidcProvider) error {
	p.mu.Lock()
	done := p.inflight
	if done == nil {
		now := v.now()
		if !p.lastTry.IsZero() && now.Sub(p.lastTry) < jwksRefetchInterval {
			p.mu.Unlock()
			return nil
		}
		p.lastTry = now
		done = make(chan struct{})
		p.inflight = done
		go v.fetchInto(context.WithoutCancel(ctx), p, done)
	}
	p.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fetchInto fetches p's keys, installs them on success, logs the outcome and
// closes done.
func (v *OIDCVerifier) fetchInto(ctx context.Context, p *oidcProvider, done chan struct{}) {
	keys, skipped, err := v.fetchKeys(ctx, p.keysURL)
	for _, s := range skipped {
		v.logger.Warn("oidc key skipped", "provider", p.label, "url", p.keysURL, "reason", s)
	}
	p.mu.Lock()
	if err == nil {
		p.keys = keys
		p.fetchedAt = v.now()
	}
	held := len(p.keys)
	p.inflight = nil
	p.mu.Unlock()
	// Log before waking the waiters, so that the line is written by the
	// time NewOIDCVerifier returns.
	if err != nil {
		v.logger.Warn("oidc keys fetch failed", "provider", p.label, "url", p.keysURL, "err", err, "keysHeld", held, "retryAfter", jwksRefetchInterval)
	} else {
		v.logger.Info("oidc keys fetched", "provider", p.label, "url", p.keysURL, "keys", held)
	}
	close(done)
}

// fetchKeys GETs and parses a key set.
func (v *OIDCVerifier) fetchKeys(ctx context.Context, url string) (map[string]*rsa.PublicKey, []error, error) {
	ctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("oidc: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("oidc: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("oidc: key set: status %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("oidc: key set: %w", err)
	}
	if len(data) > maxJWKSBytes {
		return nil, nil, fmt.Errorf("oidc: key set larger than %d bytes", maxJWKSBytes)
	}
	keys, skipped, err := parseJWKS(data)
	if err != nil {
		return nil, skipped, fmt.Errorf("oidc: key set: %w", err)
	}
	return keys, skipped, nil
}

// jwk is the part of a JSON Web Key (RFC 7517, RFC 7518 §6.3) that an RS256
// verifier needs.
type jwk struct {
	Kty string `json:"kty"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	N   string `json:"n"`
	E   string `json:"e"`
}

// parseJWKS returns the RS256 signing keys of a key set by kid. Keys of other
// types or uses (EC keys, encryption keys) are ignored silently, since
// providers legitimately publish them; RSA signing keys that cannot be used
// (too small, malformed, a duplicate kid) are returned in skipped so that the
// operator hears of them. A set with no usable key is an error, so that a
// broken response never replaces working keys.
func parseJWKS(data []byte) (keys map[string]*rsa.PublicKey, skipped []error, err error) {
	var set struct {
		// Each key is decoded on its own so that one malformed entry does
		// not sink the others.
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("not a JSON key set: %w", err)
	}
	keys = map[string]*rsa.PublicKey{}
	for i, raw := range set.Keys {
		var k jwk
		if err := json.Unmarshal(raw, &k); err != nil {
			skipped = append(skipped, fmt.Errorf("key %d: %w", i, err))
			continue
		}
		if k.Kty != "RSA" || (k.Use != "" && k.Use != "sig") || (k.Alg != "" && k.Alg != "RS256") {
			continue
		}
		if _, dup := keys[k.Kid]; dup {
			// Which of the two a token means is ambiguous; keep the first.
			skipped = append(skipped, fmt.Errorf("key %d: kid %q appears twice", i, clipForLog(k.Kid)))
			continue
		}
		pub, err := rsaPublicKey(k.N, k.E)
		if err != nil {
			skipped = append(skipped, fmt.Errorf("key %d (kid %q): %w", i, clipForLog(k.Kid), err))
			continue
		}
		keys[k.Kid] = pub
	}
	if len(keys) == 0 {
		return nil, skipped, errors.New("no usable RS256 signing key")
	}
	return keys, skipped, nil
}

// rsaPublicKey decodes the base64url modulus and exponent of a JWK.
func rsaPublicKey(n64, e64 string) (*rsa.PublicKey, error) {
	nb, err := base64.RawURLEncoding.DecodeString(n64)
	if err != nil {
		return nil, fmt.Errorf("modulus: %w", err)
	}
	eb, err := base64.RawURLEncoding.DecodeString(e64)
	if err != nil {
		return nil, fmt.Errorf("exponent: %w", err)
	}
	n := new(big.Int).SetBytes(nb)
	if bits := n.BitLen(); bits < minRSAKeyBits || bits > maxRSAKeyBits {
		return nil, fmt.Errorf("modulus of %d bits, want %d…%d", bits, minRSAKeyBits, maxRSAKeyBits)
	}
	eb = bytes.TrimLeft(eb, "\x00")
	if len(eb) > 4 {
		return nil, errors.New("exponent too large")
	}
	var e int64
	for _, b := range eb {
		e = e<<8 | int64(b)
	}
	if e < 3 || e%2 == 0 || e > maxRSAExponent {
		return nil, fmt.Errorf("exponent %d is not an odd number in 3…%d", e, maxRSAExponent)
	}
	return &rsa.PublicKey{N: n, E: int(e)}, nil
}

// Verify checks a compact JWS id_token and returns its claims. The steps, in
// order: the token's shape and algorithm; its issuer, which picks the
// provider (the claims are parsed before the signature is checked, but
// nothing in them is trusted until it is); the key named by kid, fetching the
// provider's keys again when kid is unknown; the RS256 signature; then iss,
// aud, azp (for several audiences), exp, nbf, iat (and its age) and sub.
//
// Header parameters that point at keys (jku, x5u, jwk, x5c) are ignored on
// purpose: keys come only from the configured keys URL, or anyone could sign
// a token with a key of their own and point at it.
func (v *OIDCVerifier) Verify(ctx context.Context, token string) (map[string]any, error) {
	if len(token) > maxOIDCTokenBytes {
		return nil, errTokenTooLarge
	}
	headerB64, rest, _ := strings.Cut(token, ".")
	payloadB64, sigB64, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(sigB64, ".") {
		return nil, fmt.Errorf("%w: want three dot-separated parts", errTokenMalformed)
	}
	header, err := decodeJSONPart(headerB64)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", errTokenMalformed, err)
	}
	// Only RS256 is accepted, whatever the token says. Letting the token
	// choose the algorithm is the classic JWT hole: with "none" it carries
	// no signature at all, and with HS256 a verifier that hands "the key" to
	// the algorithm named in the token checks an HMAC keyed with the
	// provider's public key, which anyone can compute. The key decides the
	// algorithm, never the token.
	if alg, _ := header["alg"].(string); alg != "RS256" {
		return nil, fmt.Errorf("%w: %q", errTokenAlg, clipForLog(fmt.Sprint(header["alg"])))
	}
	// RFC 7515 §4.1.11: a verifier must refuse critical extensions it does
	// not understand, and we understand none.
	if _, ok := header["crit"]; ok {
		return nil, fmt.Errorf("%w: header has crit extensions", errTokenMalformed)
	}
	kid := ""
	if raw, ok := header["kid"]; ok {
		if kid, ok = raw.(string); !ok {
			return nil, fmt.Errorf("%w: kid is not a string", errTokenMalformed)
		}
	}
	claims, err := decodeJSONPart(payloadB64)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", errTokenMalformed, err)
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(sigB64)
	if err != nil || len(sig) == 0 {
		return nil, fmt.Errorf("%w: signature is not base64url", errTokenMalformed)
	}

	iss, _ := claims["iss"].(string)
	p := v.byIssuer[iss]
	if p == nil {
		return nil, fmt.Errorf("%w: %q", errTokenIssuer, clipForLog(iss))
	}
	pub, err := v.key(ctx, p, kid)
	if err != nil {
		return nil, fmt.Errorf("%w (provider %s)", err, p.label)
	}
	digest := sha256.Sum256([]byte(token[:len(headerB64)+1+len(payloadB64)]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
		return nil, fmt.Errorf("%w (provider %s)", errTokenSignature, p.label)
	}
	if err := p.checkClaims(claims, v.now(), v.maxAge); err != nil {
		return nil, fmt.Errorf("%w (provider %s)", err, p.label)
	}
	return claims, nil
}

// decodeJSONPart decodes one base64url part of a token into a JSON object.
// Strict decoding refuses padding and stray bits, so each token has one
// spelling.
func decodeJSONPart(part string) (map[string]any, error) {
	data, err := base64.RawURLEncoding.Strict().DecodeString(part)
	if err != nil {
		return nil, errors.New("not base64url")
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, errors.New("not a JSON object")
	}
	if m == nil { // the JSON was null
		return nil, errors.New("not a JSON object")
	}
	return m, nil
}

// key returns p's key for kid. It fetches the key set again when kid is
// unknown or the keys are older than jwksMaxAge, within the rate limit.
func (v *OIDCVerifier) key(ctx context.Context, p *oidcProvider, kid string) (*rsa.PublicKey, error) {
	p.mu.Lock()
	pub, found := p.lookup(kid)
	stale := v.now().Sub(p.fetchedAt) >= jwksMaxAge
	p.mu.Unlock()
	if found && !stale {
		return pub, nil
	}
	if err := v.refresh(ctx, p); err != nil {
		return nil, fmt.Errorf("oidc: waiting for provider keys: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if pub, found := p.lookup(kid); found {
		return pub, nil
	}
	if p.keys == nil {
		return nil, errTokenNoKeys
	}
	return nil, fmt.Errorf("%w: kid %q", errTokenUnknownKey, clipForLog(kid))
}

// lookup finds the key for kid; p.mu must be held. A token without a kid
// matches only a provider with a single key: trying each key in turn would
// cost an RSA verification per key per token.
func (p *oidcProvider) lookup(kid string) (*rsa.PublicKey, bool) {
	if pub, ok := p.keys[kid]; ok {
		return pub, true
	}
	if kid == "" && len(p.keys) == 1 {
		for _, pub := range p.keys {
			return pub, true
		}
	}
	return nil, false
}

// checkClaims checks the claims of a token whose signature p's key verified;
// maxAge is OIDCOptions.MaxTokenAge.
func (p *oidcProvider) checkClaims(claims map[string]any, now time.Time, maxAge time.Duration) error {
	// The issuer picked p; checking again keeps this function correct on
	// its own.
	if iss, _ := claims["iss"].(string); iss != p.iss {
		return errTokenIssuer
	}
	if !audienceContains(claims["aud"], p.aud) {
		return errTokenAudience
	}
	// OpenID Connect Core §3.1.3.7 items 4 and 5: a token for several
	// audiences must name in azp the party it was issued to, and that must
	// be us; otherwise another of its audiences, having been given the
	// token, could present it here as its holder's sign-up. With one
	// audience azp is not checked: some providers set it to the client
	// that asked for the token (an app) while aud is the site's id.
	if list, ok := claims["aud"].([]any); ok && len(list) > 1 {
		if azp, _ := claims["azp"].(string); azp != p.aud {
			return errTokenAZP
		}
	}
	// Times are compared as float seconds: a JSON number may be fractional
	// or far outside the range of time.Time.
	nowSec := float64(now.UnixNano()) / float64(time.Second)
	skew := oidcClockSkew.Seconds()
	exp, ok := claims["exp"].(float64)
	if !ok {
		return fmt.Errorf("%w: exp missing or not a number", errTokenClaims)
	}
	if nowSec > exp+skew {
		return errTokenExpired
	}
	for _, name := range []string{"nbf", "iat"} {
		raw, present := claims[name]
		if !present {
			continue
		}
		t, ok := raw.(float64)
		if !ok {
			return fmt.Errorf("%w: %s is not a number", errTokenClaims, name)
		}
		if t > nowSec+skew {
			return fmt.Errorf("%w: %s is in the future", errTokenNotYetValid, name)
		}
	}
	// iat is required in an id_token (OpenID Connect Core §2), and the
	// age check needs it: without it a token would be good until exp,
	// which the provider, not the site, chose.
	if maxAge > 0 {
		iat, ok := claims["iat"].(float64)
		if !ok {
			return fmt.Errorf("%w: iat missing, and tokens may be at most %v old", errTokenClaims, maxAge)
		}
		if nowSec-iat > maxAge.Seconds()+skew {
			return fmt.Errorf("%w: more than %v ago", errTokenTooOld, maxAge)
		}
	}
	if sub, _ := claims["sub"].(string); sub == "" {
		return fmt.Errorf("%w: sub missing or empty", errTokenClaims)
	}
	return nil
}

// audienceContains reports whether aud, a string or a list of strings (OIDC
// Core §2), is or contains want.
func audienceContains(aud any, want string) bool {
	switch a := aud.(type) {
	case string:
		return a == want
	case []any:
		for _, x := range a {
			if s, ok := x.(string); ok && s == want {
				return true
			}
		}
	}
	return false
}

// clip shortens an untrusted string for an error message or a log line.
func clipForLog(s string) string {
	if len(s) > maxLoggedValueBytes {
		return s[:maxLoggedValueBytes] + "…"
	}
	return s
}

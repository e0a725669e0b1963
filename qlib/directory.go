package qlib

import (
	"context"
	"errors"
)

// Directory is the member database as qlib sees it: users, their devices and
// aliases. The server's userdb implements it. All methods are safe for
// concurrent use and make their changes durable before returning.
//
// Errors whose text a client may see are the Err* values below; any other error
// is an internal failure (an I/O error, a corrupt record) that qlib logs and
// reports to the client as a generic failure.
type Directory interface {
	// Register creates a user with one device labelled label and returns the
	// new uid, the device's nodeid (its password, which the directory keeps
	// only as a one-way derivation) and the device's key.
	Register(label string) (uid, nodeid, dev string, err error)

	// Login checks the decoded nodeid of one of uid's devices, in constant
	// time, and returns that device's key. ErrLoginFailed for an unknown uid or
	// a wrong or defunct nodeid.
	Login(uid string, node []byte) (dev string, err error)

	// Devices returns the keys of uid's live devices, in creation order.
	// ErrNoUser if uid does not exist.
	Devices(uid string) ([]string, error)

	// AddAlias gives uid the alias. Adding an alias uid already has is a no-op.
	// ErrAliasShort, ErrAliasInvalid, ErrAliasTaken.
	AddAlias(uid, alias string) error
}

// Client-visible errors of a Directory; their text goes into ack errors and
// registered replies as is.
var (
	ErrLoginFailed  = errors.New("login failed")
	ErrNoUser       = errors.New("no such user")
	ErrAliasShort   = errors.New("newalias must be 8+ characters")
	ErrAliasInvalid = errors.New("newalias must be printable characters")
	ErrAliasTaken   = errors.New("newalias already taken")
)

// TokenVerifier checks a third-party sign-up token: an OpenID Connect
// id_token from one of the site's providers (SPEC §4 op 1, §8). The server's
// oidc.go implements it.
type TokenVerifier interface {
	// Verify returns the token's verified claims, or an error when the token
	// is not valid for this site (bad signature, unknown key, wrong issuer or
	// audience, expired) or no provider's keys could be fetched.
	Verify(ctx context.Context, token string) (claims map[string]any, err error)
}

// Package tmtp is the TMTP wire format: frames, client request headers, server
// headers and the quit reasons. It knows nothing of users, queues or links.
//
// A frame is 4 hex digits giving the length of a JSON header, the header, and
// then, when the header's datalen is non-zero, that many octets of data.
package tmtp

import "encoding/base32"

// Op is a request's operation code.
type Op int

const (
	OpTmtpRev Op = iota
	OpRegister
	OpLogin
	OpUserEdit
	OpOhiEdit
	OpGroupInvite
	OpGroupEdit
	OpPost
	OpPostNotify
	OpPing
	OpAck
	OpPulse
	OpQuit
	opCount
)

// Quit reasons: the exact strings a client sees in {"error":..,"op":"quit"}.
const (
	QuitHeaderLength   = "invalid header length"
	QuitHeader         = "invalid header"
	QuitRepetition     = "disallowed op repetition"
	QuitUnauthed       = "disallowed op on unauthenticated link"
	QuitConnected      = "disallowed op on connected link"
	QuitNoTmtpRev      = "tmtprev was omitted"
	QuitAuthRequired   = "authentication required"
	QuitRegister       = "register failure"
	QuitBase32         = "corrupt base32 value"
	QuitLoginFailed    = "login failed"
	QuitNodeConnected  = "node already connected"
	QuitLogout         = "logout ok"
	QuitDataTooLong    = "data too long for request type"
	QuitDataTooShort   = "data too short for request type"
	QuitNotUTF8        = "data not valid UTF8"
	QuitRecipientEmpty = "recipient list empty"
)

// Base32 is the encoding of uids and nodeids: an alphabet without vowels, so
// that no generated value spells a word.
var Base32 = base32.NewEncoding("%+123456789BCDFGHJKLMNPQRSTVWXYZ")

// ProtocolError is a violation that ends the link with a quit message whose
// error is Reason.
type ProtocolError struct {
	Reason string
	// Detail says which rule was broken, for the server's log; the client sees
	// only Reason. It never contains a value taken from the frame, so it is
	// safe to log even when the frame carried a nodeid.
	Detail string
}

func (e *ProtocolError) Error() string {
	if e.Detail == "" {
		return "tmtp: " + e.Reason
	}
	return "tmtp: " + e.Reason + ": " + e.Detail
}

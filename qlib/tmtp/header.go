package tmtp

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Limits on a client request header (SPEC §1, §7). The deployed server had
// none beyond the 4-digit length, and a single hostile frame could crash it;
// these bound what one frame can make the server hold or store.
const (
	// MinHeaderLen is the shortest legal header, {"op":1}.
	MinHeaderLen = 8
	// MaxHeaderLen is the most that 4 hex digits can express.
	MaxHeaderLen = 0xffff

	// MaxStringLen bounds every string field but oidc. Real values are far
	// shorter (a uid is 32 characters, a nodeid 40, aliases and device labels
	// are names a person types, request ids are the client's own short
	// tokens); 4 KiB leaves room for any of them while keeping a value that
	// later becomes a queue entry, a log attribute or part of a user record
	// from growing with the header.
	MaxStringLen = 4096
	// MaxTokenLen bounds oidc, a third-party id_token (a JWT). Typical tokens
	// are 1-2 KiB; providers that embed group or role claims make them larger.
	MaxTokenLen = 16 << 10
	// MaxRecipients bounds each of for and notefor. A post costs a queue
	// entry per device of every recipient (up to 100 devices a user), so the
	// list is where one frame's cost multiplies. No person composes a list
	// this long (groups exist for that), and with 32-character uids a header
	// holds fewer than 1,500 entries anyway: the limit bites only on lists of
	// short ids that cannot be uids.
	MaxRecipients = 4096

	// MaxPingOctets and MaxPingUnits are the ping / invite text limits
	// (SPEC §7): at most 140 UTF-16 code units in at most 420 octets.
	MaxPingOctets = 420
	MaxPingUnits  = 140
)

// Recipient is an element of a request's for / notefor list.
type Recipient struct {
	ID   string `json:"id"`
	Type int    `json:"type"`
}

// Recipient types in a Post's for list (SPEC §4 op 7).
const (
	ForUser          = 1 // a uid
	ForGroup         = 2 // a group, including the sender
	ForGroupExSender = 3 // a group, excluding the sender
)

// Header is a client request header, decoded. Keys match case-insensitively
// (the deployed client sends "Op", "Id", "Datalen", "For", "NewAlias" ...);
// unknown keys are ignored. A field absent from the request is its zero value,
// except For and Notefor, which are nil only when absent (or null).
type Header struct {
	Op       Op          `json:"op"`
	ID       string      `json:"id"`
	Datalen  int64       `json:"datalen"`
	Datahead int64       `json:"datahead"`
	Datasum  uint64      `json:"datasum"`
	Notelen  int64       `json:"notelen"`
	Notehead int64       `json:"notehead"`
	Notesum  uint64      `json:"notesum"`
	For      []Recipient `json:"for"`
	Notefor  []Recipient `json:"notefor"`

	Fornotself bool `json:"fornotself"`

	// Type is OhiEdit's "add"/"drop"/"init", or Ack's type, which clients send
	// as a string or a number; a number is kept as its JSON text.
	Type string `json:"type"`

	UID      string `json:"uid"`
	Node     string `json:"node"`
	NewNode  string `json:"newnode"`
	NewAlias string `json:"newalias"`
	Gid      string `json:"gid"`
	Act      string `json:"act"`
	From     string `json:"from"`
	To       string `json:"to"`
	Oidc     string `json:"oidc"` // third-party id_token on Register

	// The fields of the protocol extensions (Protocol.md, Extensions).
	// Ext asks TmtpRev for the list of extensions the site offers: any
	// value but null asks, so that a later client may send more there
	// (the extensions it knows, say) without an older server refusing it.
	Ext bool `json:"ext"`
	// Once makes UserEdit's newalias a single-use alias; ListOnce asks
	// UserEdit for the member's unused single-use aliases. Both are flags:
	// 1 or true set them, 0, false and null leave them unset, and any
	// other value is the wrong type.
	Once     bool `json:"once"`
	ListOnce bool `json:"listonce"`
	// DropAlias names an alias UserEdit withdraws.
	DropAlias string `json:"dropalias"`
	// Block and Unblock name a uid or an alias UserEdit adds to or removes
	// from the member's block list; ListBlock, a flag like ListOnce, asks
	// for the list.
	Block     string `json:"block"`
	Unblock   string `json:"unblock"`
	ListBlock bool   `json:"listblock"`
	// ListNode, a flag like ListOnce, asks UserEdit for the member's
	// devices; DropNode names, by its number in decimal, the device
	// UserEdit retires.
	ListNode bool   `json:"listnode"`
	DropNode string `json:"dropnode"`
	// Post, a flag like ListOnce, has GroupEdit act open let users the
	// group does not list post to it (the "opengroup" extension).
	Post bool `json:"post"`
}

// headerJSON is Header without its methods, embedded in wireHeader so that
// wireHeader's Type shadows Header's for decoding.
type headerJSON Header

// wireHeader is what ParseHeader decodes into: Header, with a type that
// accepts a string or a number.
type wireHeader struct {
	headerJSON
	Type      flexText `json:"type"`
	Ext       anyValue `json:"ext"`
	Once      flag     `json:"once"`
	ListOnce  flag     `json:"listonce"`
	ListBlock flag     `json:"listblock"`
	ListNode  flag     `json:"listnode"`
	Post      flag     `json:"post"`
}

// anyValue is set by any JSON value but null (Header.Ext).
type anyValue bool

func (v *anyValue) UnmarshalJSON(b []byte) error {
	if string(b) != "null" {
		*v = true
	}
	return nil
}

// flag is a JSON flag (Header.Once, Header.ListOnce, Header.ListBlock,
// Header.ListNode, Header.Post): 1 or true set it, 0 or false clear it,
// null leaves it as it is. Anything else, 2 or "1" included, is refused, so that what a
// client meant is never guessed.
type flag bool

var errFlag = errors.New("want 0, 1, false or true")

func (f *flag) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "1", "true":
		*f = true
	case "0", "false":
		*f = false
	case "null":
	default:
		return errFlag
	}
	return nil
}

// flexText is a JSON string or number, kept as text.
type flexText string

var errFlexText = errors.New("want a string or a number")

func (t *flexText) UnmarshalJSON(b []byte) error {
	if len(b) == 0 {
		return errFlexText
	}
	switch c := b[0]; {
	case c == '"':
		if s := b[1 : len(b)-1]; isPlainString(s) {
			*t = flexText(s)
			return nil
		}
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*t = flexText(s)
	case c == '-' || '0' <= c && c <= '9':
		// The decoder has already checked that b is a valid number.
		*t = flexText(b)
	case c == 'n': // null: as if absent, like every other field
	default:
		return errFlexText
	}
	return nil
}

// isPlainString reports whether the inside of a JSON string literal needs no
// unescaping (the usual case), so it can be used as is.
func isPlainString(s []byte) bool {
	ascii := true
	for _, c := range s {
		if c == '\\' {
			return false
		}
		ascii = ascii && c < utf8.RuneSelf
	}
	return ascii || utf8.Valid(s)
}

// opMissing marks an absent op: it is set before decoding and is not a valid
// op, so an explicit "op":-1 is refused the same way.
const opMissing Op = -1

// Ping / GroupInvite text violations (SPEC §2 quit reasons).
var (
	errPingTooLong = &ProtocolError{Reason: QuitDataTooLong, Detail: "ping text over limits"}
	errPingUTF8    = &ProtocolError{Reason: QuitNotUTF8, Detail: "ping text not UTF-8"}
)

// ParseHeader decodes and validates one request header (the JSON after the
// 4-digit prefix). Every violation of SPEC §4's header rules is a
// *ProtocolError with Reason QuitHeader: JSON that does not parse or is not an
// object, a wrong type for a known key, an op missing or out of range, a
// required field missing or empty, inconsistent lengths, data or a note on an
// op that takes none, a bad for/notefor element, a bad UserEdit, GroupEdit or
// OhiEdit combination, or a value over the limits above.
//
// Three quits that the header alone decides are also returned here, with their
// own reasons, so that the server never reads data it will refuse:
// QuitDataTooLong for a Ping or GroupInvite whose datalen exceeds
// MaxPingOctets, QuitDataTooShort for a PostNotify whose datalen is not above
// its notelen, and QuitRecipientEmpty for a PostNotify with fornotself and an
// empty for.
func ParseHeader(b []byte) (*Header, error) {
	if len(b) > MaxHeaderLen {
		return nil, badHeader("header over 65535 octets")
	}
	// Almost every header takes the fast path (headerscan.go); what it does
	// not handle, encoding/json decides, so both give the same result.
	h, ok := scanHeader(b)
	if !ok {
		var err error
		if h, err = decodeHeader(b); err != nil {
			return nil, err
		}
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	return h, nil
}

// decodeHeader decodes a header with encoding/json, without checking it: the
// definition of what a header means, which scanHeader must match.
func decodeHeader(b []byte) (*Header, error) {
	w := &wireHeader{headerJSON: headerJSON{Op: opMissing}}
	if err := json.Unmarshal(b, w); err != nil {
		return nil, badHeader(jsonDetail(err))
	}
	w.headerJSON.Type = string(w.Type)
	w.headerJSON.Ext = bool(w.Ext)
	w.headerJSON.Once = bool(w.Once)
	w.headerJSON.ListOnce = bool(w.ListOnce)
	w.headerJSON.ListBlock = bool(w.ListBlock)
	w.headerJSON.ListNode = bool(w.ListNode)
	w.headerJSON.Post = bool(w.Post)
	return (*Header)(&w.headerJSON), nil
}

func badHeader(detail string) error {
	return &ProtocolError{Reason: QuitHeader, Detail: detail}
}

// jsonDetail describes a decoding error without quoting the frame: a type
// error's Value holds the offending number's text, which could be anything
// the client sent.
func jsonDetail(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at offset %d", se.Offset)
	case errors.As(err, &te):
		if te.Field == "" {
			return "not a JSON object"
		}
		return "wrong type for " + te.Field
	case errors.Is(err, errFlexText):
		return "wrong type for type"
	case errors.Is(err, errFlag):
		return "wrong type for a flag"
	}
	return "malformed JSON"
}

// opTakesData reports whether op may carry data (SPEC §4).
func opTakesData(op Op) bool {
	switch op {
	case OpGroupInvite, OpPost, OpPostNotify, OpPing:
		return true
	}
	return false
}

// check applies SPEC §4's header rules and §7's limits.
func (h *Header) check() error {
	if h.Op < 0 || h.Op >= opCount {
		if h.Op == opMissing {
			return badHeader("op missing or out of range")
		}
		return badHeader("op out of range")
	}
	switch {
	case h.Datalen < 0 || h.Datahead < 0 || h.Notelen < 0 || h.Notehead < 0:
		return badHeader("negative length")
	case h.Datahead > h.Datalen:
		return badHeader("datahead over datalen")
	case h.Notehead > h.Notelen:
		return badHeader("notehead over notelen")
	case h.Datalen != 0 && !opTakesData(h.Op):
		return badHeader(fmt.Sprintf("datalen on op %d", h.Op))
	case h.Notelen != 0 && h.Op != OpPostNotify:
		return badHeader(fmt.Sprintf("notelen on op %d", h.Op))
	}
	if err := h.checkSizes(); err != nil {
		return err
	}
	if err := h.checkRequired(); err != nil {
		return err
	}
	switch h.Op {
	case OpGroupInvite, OpPing:
		if h.Datalen > MaxPingOctets {
			return errPingTooLong
		}
	case OpPostNotify:
		if h.Datalen <= h.Notelen {
			return &ProtocolError{Reason: QuitDataTooShort, Detail: "datalen not over notelen"}
		}
		if h.Fornotself && len(h.For) == 0 {
			return &ProtocolError{Reason: QuitRecipientEmpty, Detail: "fornotself with empty for"}
		}
	}
	return nil
}

// checkSizes bounds every string and list, whatever the op.
func (h *Header) checkSizes() error {
	// The table that names the strings costs more to build than the rest of
	// the check (it runs for every request), so first see if it is needed.
	longest := max(len(h.ID), len(h.Type), len(h.UID), len(h.Node), len(h.NewNode),
		len(h.NewAlias), len(h.Gid), len(h.Act), len(h.From), len(h.To), len(h.DropAlias),
		len(h.Block), len(h.Unblock), len(h.DropNode))
	if longest > MaxStringLen {
		strs := [...]struct {
			key string
			v   string
		}{
			{"id", h.ID}, {"type", h.Type}, {"uid", h.UID}, {"node", h.Node},
			{"newnode", h.NewNode}, {"newalias", h.NewAlias}, {"gid", h.Gid},
			{"act", h.Act}, {"from", h.From}, {"to", h.To},
			{"dropalias", h.DropAlias}, {"block", h.Block}, {"unblock", h.Unblock},
			{"dropnode", h.DropNode},
		}
		for _, s := range strs {
			if len(s.v) > MaxStringLen {
				return badHeader(s.key + " too long")
			}
		}
	}
	if len(h.Oidc) > MaxTokenLen {
		return badHeader("oidc too long")
	}
	if len(h.For) > MaxRecipients || len(h.Notefor) > MaxRecipients {
		return badHeader("recipient list too long")
	}
	for _, list := range [...][]Recipient{h.For, h.Notefor} {
		for _, r := range list {
			if len(r.ID) > MaxStringLen {
				return badHeader("recipient id too long")
			}
		}
	}
	return nil
}

// checkRequired applies the required-field rules of SPEC §4 (the paragraph
// after the ops table), per op.
func (h *Header) checkRequired() error {
	type field struct{ key, v string }
	var req []field
	switch h.Op {
	case OpTmtpRev, OpUserEdit, OpOhiEdit, OpPost, OpPostNotify:
		req = []field{{"id", h.ID}}
	case OpRegister:
		// The deployed server requires newalias ("_" = none) as well.
		req = []field{{"newnode", h.NewNode}, {"newalias", h.NewAlias}}
	case OpLogin:
		req = []field{{"uid", h.UID}, {"node", h.Node}}
	case OpGroupInvite:
		req = []field{{"id", h.ID}, {"gid", h.Gid}, {"from", h.From}, {"to", h.To}}
	case OpGroupEdit:
		req = []field{{"id", h.ID}, {"act", h.Act}, {"gid", h.Gid}}
	case OpPing:
		req = []field{{"id", h.ID}, {"from", h.From}, {"to", h.To}}
	case OpAck:
		req = []field{{"id", h.ID}, {"type", h.Type}}
	}
	for _, f := range req {
		if f.v == "" {
			return badHeader(fmt.Sprintf("op %d needs %s", h.Op, f.key))
		}
	}
	need := func(key, v string) error {
		if v == "" {
			return badHeader(fmt.Sprintf("op %d act %s needs %s", h.Op, h.Act, key))
		}
		return nil
	}
	switch h.Op {
	case OpUserEdit:
		// A deployed client sends newnode or newalias; the extensions
		// add dropalias and listonce ("aliasonce"), block, unblock and
		// listblock ("block"), listnode and dropnode ("revoke"):
		// Protocol.md, Extensions.
		n := 0
		for _, set := range [...]bool{h.NewNode != "", h.NewAlias != "", h.DropAlias != "", h.ListOnce,
			h.Block != "", h.Unblock != "", h.ListBlock, h.ListNode, h.DropNode != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			return badHeader("op 3 needs exactly one of newnode, newalias, dropalias, listonce, block, unblock, listblock, listnode, dropnode")
		}
		if h.Once && h.NewAlias == "" {
			return badHeader("op 3 once without newalias")
		}
	case OpOhiEdit:
		if len(h.For) == 0 {
			return badHeader("op 4 needs a non-empty for")
		}
		switch h.Type {
		case "add", "drop", "init":
		default:
			return badHeader("op 4 type not add, drop or init")
		}
		return checkRecipients(h.For, false)
	case OpGroupEdit:
		// The "opengroup" extension adds the acts open (with the post
		// flag, which no other act takes) and close: Protocol.md,
		// Extensions.
		if h.Post && h.Act != "open" {
			return badHeader("op 6 post without act open")
		}
		switch h.Act {
		case "join", "open", "close":
		case "alias":
			return need("newalias", h.NewAlias)
		case "drop":
			return need("to", h.To)
		default:
			return badHeader("op 6 act not join, alias, drop, open or close")
		}
	case OpPost, OpPostNotify:
		if h.For == nil {
			return badHeader(fmt.Sprintf("op %d needs for", h.Op))
		}
		if h.Datalen == 0 {
			return badHeader(fmt.Sprintf("op %d needs datalen", h.Op))
		}
		if h.Op == OpPostNotify && h.Notelen == 0 {
			return badHeader("op 8 needs notelen")
		}
		if err := checkRecipients(h.For, true); err != nil {
			return err
		}
		if h.Op == OpPostNotify {
			return checkRecipients(h.Notefor, true)
		}
	}
	return nil
}

// checkRecipients refuses an element with an empty id, or, when typed, a type
// other than ForUser..ForGroupExSender (OhiEdit elements carry only an id).
func checkRecipients(rs []Recipient, typed bool) error {
	for _, r := range rs {
		if r.ID == "" {
			return badHeader("recipient with empty id")
		}
		if typed && (r.Type < ForUser || r.Type > ForGroupExSender) {
			return badHeader("recipient type not 1..3")
		}
	}
	return nil
}

// CheckPing checks the text of a Ping or GroupInvite (SPEC §4 op 9, §7):
// valid UTF-8 of at most MaxPingOctets octets and MaxPingUnits UTF-16 code
// units. It returns a *ProtocolError with QuitDataTooLong or QuitNotUTF8.
func CheckPing(data []byte) error {
	if len(data) > MaxPingOctets {
		return errPingTooLong
	}
	units := 0
	for len(data) > 0 {
		r, size := utf8.DecodeRune(data)
		if r == utf8.RuneError && size == 1 {
			return errPingUTF8
		}
		units++
		if r > 0xffff {
			units++ // a surrogate pair
		}
		data = data[size:]
	}
	if units > MaxPingUnits {
		return errPingTooLong
	}
	return nil
}

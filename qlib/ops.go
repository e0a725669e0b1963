package qlib

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// Ack errors a client may see in {"error":..,"id":..,"op":"ack"}; the link
// stays open.
var errInternal = errors.New("internal error")

// handle runs one request. A *tmtp.ProtocolError return ends the link with that
// quit reason; errQuit ends it after a reply already sent; any other error ends
// it silently (the transport failed).
func (l *link) handle(h *tmtp.Header) error {
	switch h.Op {
	case tmtp.OpTmtpRev:
		return l.opTmtpRev(h)
	case tmtp.OpRegister:
		return l.opRegister(h)
	case tmtp.OpLogin:
		return l.opLogin(h)
	case tmtp.OpUserEdit:
		return l.opUserEdit(h)
	case tmtp.OpOhiEdit:
		return l.opOhiEdit(h)
	case tmtp.OpGroupInvite:
		return l.opGroupInvite(h)
	case tmtp.OpGroupEdit:
		return l.opGroupEdit(h)
	case tmtp.OpPost:
		return l.opPost(h)
	case tmtp.OpPostNotify:
		return l.opPostNotify(h)
	case tmtp.OpPing:
		return l.opPing(h)
	case tmtp.OpAck:
		return l.onAck(h.ID)
	case tmtp.OpPulse:
		return nil // reading the frame reset the idle deadline
	default: // tmtp.OpQuit; the parser admits no other op
		l.drainAcks() // "logout ok" comes after every ack of an accepted post
		l.write(tmtp.Quit(tmtp.QuitLogout))
		return errQuit
	}
}

// tmtpVersion is the only protocol version; any requested version is answered
// with it (SPEC §4 op 0).
const tmtpVersion = "1"

func (l *link) opTmtpRev(h *tmtp.Header) error {
	f := []tmtp.Field{
		tmtp.String("id", tmtpVersion),
		tmtp.String("name", l.srv.cfg.Name),
		tmtp.String("op", "tmtprev"),
	}
	if l.srv.cfg.Auth > 0 {
		f = append(f, tmtp.Int("auth", int64(l.srv.cfg.Auth)), tmtp.Raw("authby", l.srv.cfg.AuthBy))
	}
	// Only a client that asks learns of the extensions: the deployed
	// client does not ask, and its reply must not change (the conformance
	// transcript refuses unknown keys).
	if h.Ext {
		f = append(f, tmtp.Strings("ext", extensions()))
	}
	return l.write(tmtp.AppendFrame(nil, f...))
}

// Extension names, as the tmtprev reply lists them (Protocol.md,
// Extensions).
const (
	// extAliasOnce: single-use aliases (UserEdit once, listonce and
	// dropalias; Ping and GroupInvite consume them).
	extAliasOnce = "aliasonce"
	// extBlock: block lists (UserEdit block, unblock and listblock; posts,
	// pings, invitations and presence from a blocked member reach none of
	// the blocker's devices).
	extBlock = "block"
	// extRevoke: revoking a device (UserEdit listnode and dropnode: the
	// device's nodeid stops working, its link is closed and its queue
	// deleted).
	extRevoke = "revoke"
	// extOpenGroup: groups by subscription (GroupEdit open and close; a
	// stranger joins an open group without an invitation, and may post to
	// one whose members opened it for posting).
	extOpenGroup = "opengroup"
	// extReceiveOnly: receive-only members (a member the operator marks
	// posts, pings and invites only to the aliases and groups the site
	// names; anything else is the ack error "receive-only member").
	extReceiveOnly = "receiveonly"
	// extDropAlias: withdrawing a regular alias (UserEdit dropalias of one:
	// it stops resolving, stays reserved, and the member's groups list it
	// under its oldest remaining alias).
	extDropAlias = "dropalias"
	// extAway: away devices (under the operator's policy, a device not
	// logged in for long loses its queue; it gets a "user" resync notice
	// and the member's other devices an away one).
	extAway = "away"
)

// extensions returns the protocol extensions this server offers, in the
// order they were added: the one list a new extension joins.
func extensions() []string {
	return []string{extAliasOnce, extBlock, extRevoke, extOpenGroup, extReceiveOnly, extDropAlias, extAway}
}

func (l *link) opRegister(h *tmtp.Header) error {
	// Counted before the token check, which may cost a key fetch.
	if !l.srv.limits.allowRegister(l.srv.remote(l)) {
		return &tmtp.ProtocolError{Reason: tmtp.QuitRegister}
	}
	var claims map[string]any
	if l.srv.cfg.Auth > 0 {
		var err error
		if claims, err = l.verifyToken(h.Oidc); err != nil {
			return err
		}
	}
	dir := l.srv.cfg.Directory
	uid, nodeid, dev, err := dir.Register(h.NewNode, claims)
	if err != nil {
		// A bad label, or a sign-up identity that has its accounts, is
		// the client's doing; anything else is ours.
		switch {
		case errors.Is(err, ErrIdentityUsed):
			l.log.Info("register refused", "err", err)
		case !errors.Is(err, ErrLabelInvalid):
			l.log.Error("register failed", "err", err)
		}
		return &tmtp.ProtocolError{Reason: tmtp.QuitRegister}
	}
	f := []tmtp.Field{
		tmtp.String("nodeid", nodeid),
		tmtp.String("op", "registered"),
		tmtp.String("uid", uid),
	}
	if h.NewAlias != "" && h.NewAlias != noAlias {
		if err := dir.AddAlias(uid, h.NewAlias); err != nil {
			f = append(f, tmtp.String("error", l.clientError(err).Error()))
		}
	}
	l.log.Info("register", "uid", uid, "dev", dev)
	l.srv.metrics.registrations.Inc()
	if err := l.write(tmtp.AppendFrame(nil, f...)); err != nil {
		return err
	}
	return l.startSession(uid, dev, false)
}

// noAlias is the Register newalias meaning "none" (the deployed client always
// sends the field).
const noAlias = "_"

func (l *link) opLogin(h *tmtp.Header) error {
	// While the address or the uid backs off after failed logins, the
	// nodeid is not even checked: refusing costs nothing, and a right
	// one is refused too, so that backing off cannot be told apart from
	// a wrong guess.
	rem := l.srv.remote(l)
	m := l.srv.metrics
	if !l.srv.limits.allowLogin(rem, h.UID) {
		m.loginFailed(failBackoff)
		return &tmtp.ProtocolError{Reason: tmtp.QuitLoginFailed}
	}
	node, err := tmtp.Base32.DecodeString(h.Node)
	if err != nil {
		m.loginFailed(failMalformed)
		return &tmtp.ProtocolError{Reason: tmtp.QuitBase32}
	}
	dir := l.srv.cfg.Directory
	dev, err := dir.Login(h.UID, node)
	if err != nil {
		if errors.Is(err, ErrLoginFailed) {
			m.loginFailed(failCredentials)
			l.srv.limits.loginFailed(rem, h.UID)
		} else {
			m.loginFailed(failError)
			l.log.Error("login lookup failed", "err", err)
		}
		return &tmtp.ProtocolError{Reason: tmtp.QuitLoginFailed}
	}
	if l.srv.cfg.Auth >= authLogin {
		// The token must name the account the user signed up with.
		claims, err := l.verifyToken(h.Oidc)
		if err != nil {
			m.loginFailed(failToken)
			return err
		}
		kept, err := dir.Claims(h.UID)
		if err != nil {
			m.loginFailed(failError)
			return &tmtp.ProtocolError{Reason: tmtp.QuitLoginFailed}
		}
		if kept != nil && !sameSubject(claims, kept) {
			m.loginFailed(failToken)
			l.log.Info("login token names another account")
			return &tmtp.ProtocolError{Reason: tmtp.QuitAuthRequired}
		}
	}
	l.srv.limits.loginSucceeded(rem, h.UID)
	if err := l.startSession(h.UID, dev, true); err != nil {
		var pe *tmtp.ProtocolError
		if errors.As(err, &pe) {
			m.loginFailed(failTakenOver)
		}
		return err
	}
	m.logins.Inc()
	return nil
}

// Auth levels (Config.Auth).
const (
	authRegister = 1
	authLogin    = 2
)

// verifyTimeout bounds a token check, which may fetch a provider's keys.
const verifyTimeout = 10 * time.Second

// verifyToken checks a third-party token. Without one it passes only where
// the site makes third-party auth optional (then the claims are nil).
func (l *link) verifyToken(token string) (map[string]any, error) {
	if token == "" {
		if l.srv.cfg.AuthOptional {
			return nil, nil
		}
		l.log.Info("auth refused", "err", "no token")
		return nil, &tmtp.ProtocolError{Reason: tmtp.QuitAuthRequired}
	}
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	defer cancel()
	claims, err := l.srv.cfg.Verifier.Verify(ctx, token)
	if err != nil {
		l.log.Info("auth refused", "err", err)
		return nil, &tmtp.ProtocolError{Reason: tmtp.QuitAuthRequired}
	}
	return claims, nil
}

// sameSubject reports whether two claim sets name the same account: the same
// subject at the same issuer (OpenID Connect Core §2).
func sameSubject(a, b map[string]any) bool {
	return a["iss"] == b["iss"] && a["sub"] == b["sub"] && a["sub"] != nil
}

// startSession makes l the live link of dev, replies info, stores the login
// notice (for Login, not Register) and starts delivery.
func (l *link) startSession(uid, dev string, notice bool) error {
	if err := l.srv.claimSession(l, dev); err != nil {
		return &tmtp.ProtocolError{Reason: tmtp.QuitNodeConnected}
	}
	l.uid, l.dev = uid, dev
	l.inflight = make(chan struct{}, maxInflight)
	ohi, ok := l.srv.claimDevice(l)
	if !ok {
		l.uid, l.dev = "", ""
		return &tmtp.ProtocolError{Reason: tmtp.QuitNodeConnected}
	}
	// A device retired (UserEdit dropnode) after its Login passed the
	// directory and before claimDevice would stay logged in: the retiring
	// link evicts the devices it finds claimed only after the retirement
	// is published. Looking again now closes that gap; the link ends, and
	// dropLink forgets the device.
	devs, err := l.srv.cfg.Directory.Devices(uid)
	if err != nil || !slices.Contains(devs, dev) {
		return &tmtp.ProtocolError{Reason: tmtp.QuitLoginFailed}
	}
	l.log = l.log.With("uid", uid, "dev", dev)
	l.log.Info("login")
	f := []tmtp.Field{tmtp.String("info", "login ok"), tmtp.String("op", "info")}
	if len(ohi) > 0 {
		f = append(f, tmtp.Strings("ohi", ohi))
	}
	if err := l.write(tmtp.AppendFrame(nil, f...)); err != nil {
		return err
	}
	if notice {
		_, err = l.storeNotice(store.Normal, devs, tmtp.String("node", "tbd"), tmtp.String("op", "login"))
		if errors.Is(err, store.ErrFull) {
			// Logins go on while the disk is nearly full: they let
			// devices ack, which frees space. The notice is only news.
			l.log.Warn("login notice not stored: storage full")
		} else if err != nil {
			return fmt.Errorf("login notice: %w", err)
		}
	}
	l.srv.cfg.Store.Watch(dev, l.wake)
	l.wake()
	return nil
}

// std returns the standard fields of a stored message (SPEC §4 "(std)") plus
// extra; headsum is added by tmtp.AppendStored.
func std(from string, id store.ID, posted time.Time, datalen int64, extra ...tmtp.Field) []tmtp.Field {
	return append(extra,
		tmtp.String("from", from),
		tmtp.String("id", id.String()),
		tmtp.String("posted", formatPosted(posted)),
		tmtp.Int("datalen", datalen),
	)
}

// keepSent returns to plus the sender's devices other than the sending one,
// for a ping, an invitation or a notification: the member's client keeps what
// the member sent on every device and later matches replies against it (the
// deployed client misbehaves without these copies; SPEC §4 ops 5, 8, 9). The
// sending device has what it sent, so it gets a copy only as a recipient in
// to (a ping to one's own alias). A device both in to and among the sender's
// others is listed twice; the store references the message once from it
// (store.Message.To ignores duplicates).
func (l *link) keepSent(to []string) ([]string, error) {
	own, err := l.srv.cfg.Directory.Devices(l.uid)
	if err != nil {
		return nil, err
	}
	out := slices.Clip(to) // never append into the caller's array
	for _, d := range own {
		if d != l.dev {
			out = append(out, d)
		}
	}
	return out, nil
}

// postedLayout is SPEC §3's acceptance time format.
const postedLayout = "2006-01-02T15:04:05.000Z07:00"

func formatPosted(t time.Time) string { return t.UTC().Format(postedLayout) }

// ackStored answers a request that stored a message.
func (l *link) ackStored(reqID string, r store.Receipt) error {
	l.srv.metrics.posted(l.reqStart)
	return l.write(ackFrame(reqID, r))
}

// ackFrame is the ack of a request that stored the message r.
func ackFrame(reqID string, r store.Receipt) []byte {
	return tmtp.AppendFrame(nil,
		tmtp.String("id", reqID),
		tmtp.String("msgid", r.ID.String()),
		tmtp.String("op", "ack"),
		tmtp.String("posted", formatPosted(r.Posted)),
	)
}

// ackOK answers a request that stored nothing for the sender to refer to.
func (l *link) ackOK(reqID string) error {
	return l.write(tmtp.AppendFrame(nil, tmtp.String("id", reqID), tmtp.String("op", "ack")))
}

// ackError refuses a request; the link stays open.
func (l *link) ackError(reqID string, err error) error {
	return l.write(tmtp.AppendFrame(nil,
		tmtp.String("error", err.Error()),
		tmtp.String("id", reqID),
		tmtp.String("op", "ack"),
	))
}

// clientError maps a Directory error to what the client may see: its own
// text for the documented errors, a generic one (logged here) for the rest.
func (l *link) clientError(err error) error {
	for _, e := range clientErrors {
		if errors.Is(err, e) {
			return e
		}
	}
	l.log.Error("directory error", "err", err)
	return errInternal
}

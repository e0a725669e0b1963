package qlib

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// Ack errors a client may see in {"error":..,"id":..,"op":"ack"}; the link
// stays open.
var (
	errUnknownRecipient = errors.New("recipient not found")
	errGroupsTodo       = errors.New("group recipients not supported")
	errOpTodo           = errors.New("operation not supported")
	errInternal         = errors.New("internal error")
)

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
	case tmtp.OpPost:
		return l.opPost(h)
	case tmtp.OpAck:
		return l.onAck(h.ID)
	case tmtp.OpPulse:
		return nil // reading the frame reset the idle deadline
	case tmtp.OpQuit:
		l.write(tmtp.Quit(tmtp.QuitLogout))
		return errQuit
	default:
		if err := l.rd.Discard(h.Datalen); err != nil {
			return err
		}
		return l.ackError(h.ID, errOpTodo)
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
	return l.write(tmtp.AppendFrame(nil, f...))
}

func (l *link) opRegister(h *tmtp.Header) error {
	if l.srv.cfg.Auth > 0 {
		// Third-party sign-up is not wired up yet: a site that requires it
		// refuses every registration rather than admit unverified members.
		return &tmtp.ProtocolError{Reason: tmtp.QuitAuthRequired}
	}
	dir := l.srv.cfg.Directory
	uid, nodeid, dev, err := dir.Register(h.NewNode)
	if err != nil {
		l.log.Error("register failed", "err", err)
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
	if err := l.write(tmtp.AppendFrame(nil, f...)); err != nil {
		return err
	}
	return l.startSession(uid, dev, false)
}

// noAlias is the Register newalias meaning "none" (the deployed client always
// sends the field).
const noAlias = "_"

func (l *link) opLogin(h *tmtp.Header) error {
	node, err := tmtp.Base32.DecodeString(h.Node)
	if err != nil {
		return &tmtp.ProtocolError{Reason: tmtp.QuitBase32}
	}
	dev, err := l.srv.cfg.Directory.Login(h.UID, node)
	if err != nil {
		if !errors.Is(err, ErrLoginFailed) {
			l.log.Error("login lookup failed", "err", err)
		}
		return &tmtp.ProtocolError{Reason: tmtp.QuitLoginFailed}
	}
	return l.startSession(h.UID, dev, true)
}

// startSession makes l the live link of dev, replies info, stores the login
// notice (for Login, not Register) and starts delivery.
func (l *link) startSession(uid, dev string, notice bool) error {
	l.uid, l.dev = uid, dev
	if !l.srv.claimDevice(l) {
		l.uid, l.dev = "", ""
		return &tmtp.ProtocolError{Reason: tmtp.QuitNodeConnected}
	}
	l.log = l.log.With("uid", uid, "dev", dev)
	l.log.Info("login")
	info := tmtp.AppendFrame(nil, tmtp.String("info", "login ok"), tmtp.String("op", "info"))
	if err := l.write(info); err != nil {
		return err
	}
	if notice {
		devs, err := l.srv.cfg.Directory.Devices(uid)
		if err != nil {
			return fmt.Errorf("login notice: %w", err)
		}
		env := func(id store.ID, posted time.Time, _ []store.ID) []byte {
			return tmtp.AppendStored(nil, std(uid, id, posted, 0,
				tmtp.String("node", "tbd"), tmtp.String("op", "login"))...)
		}
		d := l.srv.cfg.Store.Draft()
		if _, err := d.Commit(store.Message{To: devs, Envelope: env}); err != nil {
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

// postedLayout is SPEC §3's acceptance time format.
const postedLayout = "2006-01-02T15:04:05.000Z07:00"

func formatPosted(t time.Time) string { return t.UTC().Format(postedLayout) }

func (l *link) opPost(h *tmtp.Header) error {
	if h.Datalen > l.srv.cfg.MaxPostBytes {
		return &tmtp.ProtocolError{Reason: tmtp.QuitDataTooLong}
	}
	to, err := l.recipients(h.For)
	if err != nil {
		if err := l.rd.Discard(h.Datalen); err != nil {
			return err
		}
		return l.ackError(h.ID, err)
	}
	d := l.srv.cfg.Store.Draft()
	if err := l.readData(d, h.Datalen); err != nil {
		d.Abort()
		return err
	}
	uid, n := l.uid, h.Datalen
	var extra []tmtp.Field
	if h.Datahead != 0 {
		extra = append(extra, tmtp.Int("datahead", h.Datahead))
	}
	if h.Datasum != 0 {
		extra = append(extra, tmtp.Uint("datasum", h.Datasum))
	}
	env := func(id store.ID, posted time.Time, _ []store.ID) []byte {
		return tmtp.AppendStored(nil, std(uid, id, posted, n,
			append(extra, tmtp.String("op", "delivery"))...)...)
	}
	rs, err := d.Commit(store.Message{To: to, Len: n, Envelope: env})
	if err != nil {
		return fmt.Errorf("post: %w", err)
	}
	return l.ackStored(h.ID, rs[0])
}

// readData streams n octets of the current frame's data into w, extending the
// read deadline as data keeps arriving so that a large post over a slow link
// is not cut off by the idle timeout.
func (l *link) readData(w io.Writer, n int64) error {
	r := &deadlineReader{r: l.rd.Data(n), l: l}
	_, err := io.CopyN(w, r, n)
	return err
}

type deadlineReader struct {
	r    io.Reader
	l    *link
	last time.Time
}

// deadlineStep limits how often a streaming read pushes the deadline out:
// setting it costs a timer update, so not on every read.
const deadlineStep = time.Second

func (d *deadlineReader) Read(p []byte) (int, error) {
	if now := time.Now(); now.Sub(d.last) > deadlineStep {
		d.last = now
		d.l.conn.SetReadDeadline(now.Add(d.l.srv.cfg.IdleTimeout))
	}
	return d.r.Read(p)
}

// recipients expands a post's for list to device keys: every device of every
// listed user, plus the sender's other devices; the sending device only when
// the sender listed itself (SPEC §5).
func (l *link) recipients(list []tmtp.Recipient) ([]string, error) {
	dir := l.srv.cfg.Directory
	seen := make(map[string]bool)
	var to []string
	add := func(devs []string) {
		for _, d := range devs {
			if !seen[d] {
				seen[d] = true
				to = append(to, d)
			}
		}
	}
	for _, r := range list {
		if r.Type != 1 {
			return nil, errGroupsTodo
		}
		devs, err := dir.Devices(r.ID)
		if errors.Is(err, ErrNoUser) {
			return nil, fmt.Errorf("%w: %s", errUnknownRecipient, r.ID)
		}
		if err != nil {
			l.log.Error("recipient lookup failed", "err", err)
			return nil, errInternal
		}
		add(devs)
	}
	own, err := dir.Devices(l.uid)
	if err != nil {
		l.log.Error("sender lookup failed", "err", err)
		return nil, errInternal
	}
	selfListed := seen[l.dev]
	add(own)
	if !selfListed {
		to = slices.DeleteFunc(to, func(d string) bool { return d == l.dev })
	}
	return to, nil
}

// ackStored answers a request that stored a message.
func (l *link) ackStored(reqID string, r store.Receipt) error {
	return l.write(tmtp.AppendFrame(nil,
		tmtp.String("id", reqID),
		tmtp.String("msgid", r.ID.String()),
		tmtp.String("op", "ack"),
		tmtp.String("posted", formatPosted(r.Posted)),
	))
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
	for _, e := range []error{ErrAliasShort, ErrAliasInvalid, ErrAliasTaken, ErrNoUser, ErrLoginFailed} {
		if errors.Is(err, e) {
			return e
		}
	}
	l.log.Error("directory error", "err", err)
	return errInternal
}

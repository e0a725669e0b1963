package qlib

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"mnm/qlib/store"
	"mnm/qlib/tmtp"
)

// Ack errors of Post and PostNotify.
var (
	errUnknownRecipient = errors.New("recipient not found")
	errHeaderTooLong    = errors.New("message header too long")
)

// opPost stores a post (op 7) for its recipients (SPEC §4, §5).
func (l *link) opPost(h *tmtp.Header) error {
	if h.Datalen > l.srv.maxPostBytes() {
		return &tmtp.ProtocolError{Reason: tmtp.QuitDataTooLong}
	}
	if !l.mayPost(h.For) {
		return l.refuse(h, ErrReceiveOnly)
	}
	to, err := l.recipients(h.For, nil, true)
	if err != nil {
		return l.refuse(h, err)
	}
	var extra []tmtp.Field
	if h.Datahead != 0 {
		extra = append(extra, tmtp.Int("datahead", h.Datahead))
	}
	if h.Datasum != 0 {
		extra = append(extra, tmtp.Uint("datasum", h.Datasum))
	}
	extra = append(extra, tmtp.String("op", "delivery"))
	env := l.envelope(h.Datalen, extra...)
	d := l.srv.cfg.Store.Draft()
	if err := l.readData(d, h.Datalen); err != nil {
		d.Abort()
		return err
	}
	return l.commitPost(d, h.ID, store.Message{To: to, Len: h.Datalen, Envelope: env})
}

// maxInflight bounds the posts of one link whose commits are in flight. The
// link reads its next request while earlier posts wait for their fsync, so
// that a client with a window of posts gets them into one group commit; the
// bound keeps one client from holding an unbounded number of commits.
const maxInflight = 32

// commitPost hands a post's messages to the store without waiting for the
// fsync; the ack is queued for the link when the commit is durable. Commits
// of one link complete in order, so its acks go out in request order.
func (l *link) commitPost(d store.Draft, reqID string, msgs ...store.Message) error {
	start := l.reqStart
	l.inflight <- struct{}{}
	err := d.CommitAsync(func(rs []store.Receipt, err error) {
		defer func() { <-l.inflight }()
		if err != nil {
			// Not acked: the client will send it again elsewhere.
			l.log.Error("post not stored", "err", err)
			if errors.Is(err, store.ErrFailed) {
				l.srv.fatal(err)
			}
			l.closeHard() // this is the store's writer goroutine: never block it
			return
		}
		l.queueAck(ackFrame(reqID, rs[0]))
		l.srv.metrics.posted(start)
	}, msgs...)
	if err != nil {
		<-l.inflight
		return fmt.Errorf("post: %w", err)
	}
	return nil
}

// drainAcks returns once every post the link has handed to the store is
// answered on the wire, or the link can no longer be written: the posts'
// commits complete, and deliver, the one writer of their acks, writes them.
// The link's end and its "logout ok" wait for it, so that a client that
// pipelines posts and then Quit gets every ack of a stored post and does not
// send it again.
func (l *link) drainAcks() {
	if l.inflight == nil {
		return
	}
	for range maxInflight {
		l.inflight <- struct{}{}
	}
	for range maxInflight {
		<-l.inflight
	}
	l.dmu.Lock()
	for l.acksWritten < l.acksQueued && !l.ackFailed {
		l.ackCond.Wait()
	}
	l.dmu.Unlock()
}

// opPostNotify stores a post and a notification of it (op 8): the first
// notelen octets of the data are the notification, the rest the post. Both
// messages are committed together: a crash keeps both or neither.
//
// fornotself keeps only the post from the sender's devices: the notification
// always goes to the sender's other devices too, which keep what the member
// sent, as they keep its pings and invitations (SPEC §4 op 8; keepSent).
func (l *link) opPostNotify(h *tmtp.Header) error {
	if h.Datalen > l.srv.maxPostBytes() {
		return &tmtp.ProtocolError{Reason: tmtp.QuitDataTooLong}
	}
	if !l.mayPost(h.For, h.Notefor) {
		return l.refuse(h, ErrReceiveOnly)
	}
	postToSender := !h.Fornotself
	postTo, err := l.recipients(h.For, nil, postToSender)
	if err != nil {
		return l.refuse(h, err)
	}
	noteTo, err := l.recipients(h.Notefor, h.For, true)
	if err != nil {
		return l.refuse(h, err)
	}
	// The notified parties as the deployed server counts them: the sender
	// only when it gets the post (SPEC §4 op 8).
	notify := int64(len(h.For) + len(h.Notefor))
	if postToSender {
		notify++
	}
	postLen := h.Datalen - h.Notelen
	var post, note []tmtp.Field
	if h.Datahead != 0 {
		post = append(post, tmtp.Int("datahead", h.Datahead))
	}
	if h.Datasum != 0 {
		post = append(post, tmtp.Uint("datasum", h.Datasum))
	}
	post = append(post, tmtp.Int("notify", notify), tmtp.String("op", "delivery"))
	if h.Notehead != 0 {
		note = append(note, tmtp.Int("datahead", h.Notehead))
	}
	if h.Notesum != 0 {
		note = append(note, tmtp.Uint("datasum", h.Notesum))
	}
	note = append(note, tmtp.String("op", "notify"))
	postEnv := l.envelope(postLen, post...)
	// The notification names its post, whose id is the first of the batch.
	uid, notelen := l.uid, h.Notelen
	noteEnv := func(id store.ID, posted time.Time, batch []store.ID) []byte {
		f := append(slices.Clip(note), tmtp.String("postid", batch[0].String()))
		return tmtp.AppendStored(nil, std(uid, id, posted, notelen, f...)...)
	}

	d := l.srv.cfg.Store.Draft()
	if err := l.readData(d, h.Datalen); err != nil {
		d.Abort()
		return err
	}
	return l.commitPost(d, h.ID,
		store.Message{To: postTo, Off: h.Notelen, Len: postLen, Envelope: postEnv},
		store.Message{To: noteTo, Off: 0, Len: h.Notelen, Envelope: noteEnv},
	)
}

// refuse answers a request with an ack error after skipping its data, so the
// link stays in step.
func (l *link) refuse(h *tmtp.Header, err error) error {
	if err := l.rd.Discard(h.Datalen); err != nil {
		return err
	}
	return l.ackError(h.ID, err)
}

// envelope returns the Envelope of a message from this link's user with the
// given data length and fields besides (std). Request strings are bounded
// (tmtp.MaxStringLen), so the stored header of every message fits a frame;
// the one exception, OhiEdit's echo of its list, is checked by fitsFrame.
func (l *link) envelope(datalen int64, fields ...tmtp.Field) store.Envelope {
	return envelopeFrom(l.uid, datalen, fields...)
}

// envelopeFrom is envelope for a message from uid, whoever sends it.
func envelopeFrom(uid string, datalen int64, fields ...tmtp.Field) store.Envelope {
	fields = slices.Clip(fields)
	return func(id store.ID, posted time.Time, _ []store.ID) []byte {
		return tmtp.AppendStored(nil, std(uid, id, posted, datalen, fields...)...)
	}
}

// Sizes fitsFrame counts with.
const (
	// framePrefixLen is the 4 hex digits of a frame's header length that
	// come before the header (SPEC §1); a trial frame includes them.
	framePrefixLen = 4
	// maxHeadsumDigits is the widest headsum in decimal: a CRC-32, so at
	// most math.MaxUint32, 4294967295.
	maxHeadsumDigits = len("4294967295")
)

// fitsFrame reports whether a message from this link's user with fields
// fits a frame even with the widest id and headsum it could get, so that a
// request whose echo is too long is refused rather than stored unreadable.
// The trial has the widest id, and a headsum of its own that is counted
// too, so a trial that passes leaves at least a digit to spare.
func (l *link) fitsFrame(fields ...tmtp.Field) bool {
	trial := tmtp.AppendStored(nil, std(l.uid, store.ID(math.MaxUint64), time.Now(), 0, fields...)...)
	return len(trial) > 0 && len(trial) <= framePrefixLen+tmtp.MaxHeaderLen-maxHeadsumDigits
}

// readData streams n octets of the current frame's data into w, extending the
// read deadline as data keeps arriving so that a large post over a slow link
// is not cut off by the idle timeout.
func (l *link) readData(w io.Writer, n int64) error {
	r := &deadlineReader{r: l.rd.Data(n), l: l}
	fw := &fullWriter{w: w}
	if _, err := io.CopyN(fw, r, n); err != nil {
		return err
	}
	return fw.err
}

// fullWriter passes writes to w until w reports store.ErrFull; from then on
// it discards them, so that a post refused for want of space is still read
// to its end and the link stays in step with the client.
type fullWriter struct {
	w   io.Writer
	err error // the store.ErrFull that stopped the writes
}

func (f *fullWriter) Write(p []byte) (int, error) {
	if f.err != nil {
		return len(p), nil
	}
	n, err := f.w.Write(p)
	if errors.Is(err, store.ErrFull) {
		f.err = err
		return len(p), nil
	}
	return n, err
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
		d.l.in.extend(d.l.srv.cfg.IdleTimeout)
	}
	return d.r.Read(p)
}

// errTooManyRecipients refuses a post whose recipients have more devices
// than Limits.DevicesPerPost; the client sees the limit after it: "too many
// recipients: over 20000 devices". Nothing is stored for anyone.
var errTooManyRecipients = errors.New("too many recipients")

// recipients expands for lists (list, then also) to device keys: every device
// of every listed user or joined group member (type 3 leaves the sender out).
// With withSender, the sender's other devices are added, and the sending
// device too when the sender listed itself (type 1) or a group including it
// (type 2) (SPEC §5); without, no device of the sender is added by that rule.
// A device whose queue is full refuses the whole list (roomFor), and so do
// more devices than Limits.DevicesPerPost.
//
// Each user and group is expanded once however often the lists name it (see
// distinct), and expansion stops as soon as the devices are over the limit:
// the work of one request is bounded by the limit, not by how many times a
// 64 KiB frame can repeat the name of a large group.
func (l *link) recipients(list, also []tmtp.Recipient, withSender bool) ([]string, error) {
	dir := l.srv.cfg.Directory
	limit := l.srv.limits.cfg().DevicesPerPost
	// A device key names one device of one user, so the devices of users
	// expanded once each are distinct: to needs no check of its own.
	expanded := make(map[string]bool) // users whose devices are in to
	var to, whose []string            // devices, and the user of each
	// Users who block the sender: their devices count towards the limit
	// and the room check like any others, so that the sender sees what it
	// would see if it were not blocked, and are then left out.
	var blockers map[string]bool
	selfListed := false
	// The sending device is added last, and only when the sender listed
	// itself; devLive says that it is one of the sender's live devices.
	devLive := false
	addUser := func(uid string) error {
		if uid == l.uid {
			selfListed = true
		}
		if expanded[uid] {
			return nil
		}
		devs, err := dir.Devices(uid)
		if err != nil {
			return err
		}
		expanded[uid] = true
		if uid != l.uid && dir.Blocked(uid, l.uid) {
			if blockers == nil {
				blockers = make(map[string]bool)
			}
			blockers[uid] = true
		}
		for _, d := range devs {
			if d == l.dev {
				devLive = true
				continue
			}
			to = append(to, d)
			whose = append(whose, uid)
		}
		return nil
	}
	over := func() bool { return limit > 0 && len(to) > limit }
	for _, r := range distinct(slices.Concat(list, also)) {
		switch r.Type {
		case tmtp.ForUser:
			if err := addUser(r.ID); errors.Is(err, ErrNoUser) {
				return nil, fmt.Errorf("%w: %s", errUnknownRecipient, r.ID)
			} else if err != nil {
				return nil, l.clientError(err)
			}
		default: // ForGroup, ForGroupExSender: the parser allows no other
			members, err := dir.GroupMembers(l.uid, r.ID)
			if errors.Is(err, ErrNoGroup) || errors.Is(err, ErrNotMember) {
				return nil, fmt.Errorf("%w: %s", l.clientError(err), r.ID)
			} else if err != nil {
				return nil, l.clientError(err)
			}
			for _, m := range members {
				if m == l.uid && r.Type == tmtp.ForGroupExSender {
					continue
				}
				if err := addUser(m); err != nil {
					return nil, l.clientError(err)
				}
				if over() {
					return nil, l.tooManyRecipients(limit)
				}
			}
		}
		if over() {
			return nil, l.tooManyRecipients(limit)
		}
	}
	listed := selfListed
	if withSender {
		if err := addUser(l.uid); err != nil {
			return nil, l.clientError(err)
		}
	}
	if listed && devLive {
		to = append(to, l.dev)
		whose = append(whose, l.uid)
	}
	if over() {
		return nil, l.tooManyRecipients(limit)
	}
	// A post is stored for all of its recipients or for none. roomFor
	// asks for a device's owner only to name it in a refusal.
	owner := func(d string) string { return whose[slices.Index(to, d)] }
	if err := l.roomFor(to, owner); err != nil {
		return nil, err
	}
	if blockers != nil {
		n := 0
		for i, d := range to {
			if !blockers[whose[i]] {
				to[n] = d
				n++
			}
		}
		to = to[:n]
	}
	return to, nil
}

// distinct returns rs without repeats, in the order each first appears, so
// that an error names the same recipient as it would for the whole list. A
// group named both with and without the sender (types 2 and 3) is kept once,
// as type 2: that reaches everyone type 3 does, and the sender, as the two
// entries together would.
func distinct(rs []tmtp.Recipient) []tmtp.Recipient {
	out := make([]tmtp.Recipient, 0, len(rs))
	at := make(map[tmtp.Recipient]int, len(rs)) // the group key has type ForGroup
	for _, r := range rs {
		key := r
		if key.Type == tmtp.ForGroupExSender {
			key.Type = tmtp.ForGroup
		}
		if i, seen := at[key]; seen {
			if r.Type == tmtp.ForGroup {
				out[i].Type = tmtp.ForGroup
			}
			continue
		}
		at[key] = len(out)
		out = append(out, r)
	}
	return out
}

// tooManyRecipients logs a post refused for DevicesPerPost and returns its
// ack error.
func (l *link) tooManyRecipients(limit int) error {
	l.srv.limits.hit(hitDevicesPerPost, "post refused: too many recipient devices", "recipients "+l.uid,
		"uid", l.uid, "limit", limit)
	return fmt.Errorf("%w: over %d devices", errTooManyRecipients, limit)
}

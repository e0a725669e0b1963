package dirkv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// The wire format of a forwarded call: JSON, one request and one reply.
// Byte fields travel as base64 (encoding/json's []byte).
type (
	callRequest struct {
		ID     string `json:"id"`
		Method string `json:"method"`
		Args   []byte `json:"args,omitempty"`
	}
	callReply struct {
		// Status is "" when the handler ran (Reply, Rev and Code are
		// its), else one of the statuses below.
		Status string `json:"status,omitempty"`
		Reply  []byte `json:"reply,omitempty"`
		Rev    uint64 `json:"rev,omitempty"`
		Code   string `json:"code,omitempty"`
	}
)

// Statuses of a reply whose handler did not run.
const (
	// statusNotWriter: the Dir that got the request is no longer the
	// writer (its subscription outlived its lease for a moment); the
	// caller sends it again, to the next writer.
	statusNotWriter = "notwriter"
	// statusBad: the request did not parse; sending it again is useless.
	statusBad = "bad"
)

// Call retry pacing: a request that found no writer is sent again after a
// pause that starts short (a handover takes milliseconds) and grows to
// callRetryMax (an election after a crash takes up to the TTL).
const (
	callRetryMin = 10 * time.Millisecond
	callRetryMax = 250 * time.Millisecond
)

// callAttempt bounds one request of a Call: a handler's writes take
// milliseconds, and one whose writer died must be sent again while the
// caller still waits. A handler slower than that is asked again and the
// writer answers the repeat with the first's answer.
const callAttempt = 2 * time.Second

// errBadCall is a call the writer could not parse.
var errBadCall = errors.New("dirkv: the writer could not parse the call")

// Call runs method on the writer (in process when this Dir is the writer)
// and returns the handler's reply, rev and code. err is ErrNoWriter when no
// writer answered within ctx (none elected yet, or one dying: the call may
// have run), or ErrClosed. Options.CallTimeout bounds a ctx without
// deadline. Call does not wait for rev: the caller does (WaitApplied).
func (d *Dir) Call(ctx context.Context, method string, args []byte) (reply []byte, rev uint64, code string, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.opts.CallTimeout)
		defer cancel()
	}
	req, err := json.Marshal(callRequest{ID: d.callID.next(), Method: method, Args: args})
	if err != nil {
		return nil, 0, "", fmt.Errorf("dirkv: call %s: %w", method, err)
	}
	pause := callRetryMin
	for {
		d.mu.Lock()
		closed, writer, h, term := d.closed, d.writerLocked(), d.handler, d.termCtx
		d.mu.Unlock()
		if closed {
			return nil, 0, "", ErrClosed
		}
		if writer {
			hctx, cancel := mergeCancel(ctx, term)
			reply, rev, code = h(hctx, method, args)
			cancel()
			return reply, rev, code, nil
		}
		r, err := d.request(ctx, req)
		switch {
		case err == nil && r.Status == "":
			return r.Reply, r.Rev, r.Code, nil
		case err == nil && r.Status == statusBad:
			return nil, 0, "", fmt.Errorf("%w: %s", errBadCall, method)
		case err != nil && !errors.Is(err, nats.ErrNoResponders) &&
			!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout):
			d.log.Warn("dirkv call", "method", method, "err", err)
		}
		// No writer, a deposed one, no answer, or a transient error:
		// again while ctx lasts.
		select {
		case <-ctx.Done():
			return nil, 0, "", fmt.Errorf("%w: %s: %w", ErrNoWriter, method, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, callRetryMax)
	}
}

// request sends one forwarded call and parses its reply.
func (d *Dir) request(ctx context.Context, req []byte) (callReply, error) {
	ctx, cancel := context.WithTimeout(ctx, callAttempt)
	defer cancel()
	m, err := d.nc.RequestWithContext(ctx, d.callSubj, req)
	if err != nil {
		return callReply{}, err
	}
	var r callReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return callReply{}, fmt.Errorf("reply does not parse: %w", err)
	}
	switch r.Status {
	case "", statusNotWriter, statusBad:
		return r, nil
	}
	return callReply{}, fmt.Errorf("reply of unknown status %q", r.Status)
}

// mergeCancel returns a child of ctx also cancelled when other ends.
func mergeCancel(ctx, other context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(other, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// onCall answers a forwarded call on the writer. It runs the handler on
// its own goroutine: a slow call must not hold up the others.
func (d *Dir) onCall(m *nats.Msg) {
	var req callRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || req.ID == "" || req.Method == "" {
		d.log.Warn("dirkv bad call", "bytes", len(m.Data), "err", err)
		d.respond(m, callReply{Status: statusBad})
		return
	}
	d.mu.Lock()
	writer, h, term, closed := d.writerLocked(), d.handler, d.termCtx, d.closed
	if writer && !closed {
		d.calls.Add(1)
	}
	d.mu.Unlock()
	if !writer || closed {
		d.respond(m, callReply{Status: statusNotWriter})
		return
	}
	go func() {
		defer d.calls.Done()
		res, first := d.dedupe.start(req.ID)
		if first {
			ctx, cancel := context.WithTimeout(term, d.opts.CallTimeout)
			res.r.Reply, res.r.Rev, res.r.Code = h(ctx, req.Method, req.Args)
			cancel()
			close(res.done)
		} else {
			select {
			case <-res.done:
			case <-term.Done():
				d.respond(m, callReply{Status: statusNotWriter})
				return
			}
		}
		d.respond(m, res.r)
	}()
}

func (d *Dir) respond(m *nats.Msg, r callReply) {
	b, err := json.Marshal(r)
	if err == nil {
		err = m.Respond(b)
	}
	if err != nil {
		d.log.Warn("dirkv call reply", "err", err)
	}
}

// callIDs names this Dir's calls: a random prefix (unique across Dirs and
// restarts) and a counter.
type callIDs struct {
	prefix string
	n      atomic.Uint64
}

func newCallIDs() callIDs {
	var b [9]byte
	rand.Read(b[:])
	return callIDs{prefix: hex.EncodeToString(b[:]) + "."}
}

func (c *callIDs) next() string {
	return c.prefix + strconv.FormatUint(c.n.Add(1), 10)
}

// The writer remembers the answers of recent calls, so that a call sent
// again (its answer lost or late) is answered, not run again.
const (
	// dedupeWindow is how long an answer is kept: longer than a caller
	// keeps retrying one call (Options.CallTimeout by default).
	dedupeWindow = 2 * time.Minute
	// maxRemembered bounds the answers kept, whatever the call rate.
	maxRemembered = 10000
)

// dedupe is the writer's memory of recent calls.
type dedupe struct {
	mu    sync.Mutex // guards the fields below
	calls map[string]*callResult
	order []*callResult // in arrival order, for expiry
}

// callResult is one call's answer, valid once done is closed.
type callResult struct {
	id   string
	at   time.Time
	done chan struct{}
	r    callReply
}

// start returns the call id's result, and whether this is its first
// arrival (the caller runs the handler and closes done).
func (c *dedupe) start(id string) (*callResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.calls[id]; ok {
		return r, false
	}
	now := time.Now()
	for len(c.order) > 0 && (len(c.order) >= maxRemembered || now.Sub(c.order[0].at) > dedupeWindow) {
		delete(c.calls, c.order[0].id)
		c.order[0] = nil
		c.order = c.order[1:]
	}
	r := &callResult{id: id, at: now, done: make(chan struct{})}
	c.calls[id] = r
	c.order = append(c.order, r)
	return r, true
}

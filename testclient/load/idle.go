package load

// The idle-links measurement: how much server memory a logged-in link costs
// while it does nothing, the state most of a site's devices are in.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"mnm/testclient"
	"mnm/testclient/proc"
)

// Defaults of IdleConfig.
const (
	// DefaultIdleSettle is how long Idle waits after the links are set up
	// before reading the server's RSS: long enough for the short-lived
	// goroutines and buffers of the logins to be gone.
	DefaultIdleSettle = 2 * time.Second
	// idlePulse keeps the measured links alive: below the server's 2-minute
	// idle deadline (SPEC §2), and rare enough to cost nothing.
	idlePulse = time.Minute
)

// IdleConfig describes an idle-links measurement.
type IdleConfig struct {
	// Frontends are the site's addresses; link i is registered and
	// logged in on frontend i mod n.
	Frontends []Frontend
	// Links is how many accounts are registered and then logged in, one link each.
	Links int
	// ServerPIDs are the server's processes (at most one per frontend),
	// whose RSS is read from /proc and summed. At least one is required.
	// For a server in this process, os.Getpid(): the figures then include
	// this process's own end of the links.
	ServerPIDs []int
	// Settle is the wait before each RSS reading; 0 means DefaultIdleSettle.
	Settle time.Duration
	// Hold, if set, keeps the links up and idle this much longer after the
	// reading with all links logged in, then reads the RSS once more: long
	// enough (over 2 minutes) and the server has collected garbage at least
	// once without a burst of logins behind it, which is what a site's idle
	// links cost it for most of their lives.
	Hold time.Duration
	// Timeout bounds the whole measurement, Hold excepted; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Measured, if set, is called right after the last RSS reading, while
	// every link is still up: the place to take a heap profile of them.
	Measured func()
	Logger   *slog.Logger // nil discards
}

// IdleResult is what Idle measured. RSS figures are octets.
type IdleResult struct {
	Links      int
	Frontends  int   // addresses the links were spread over
	ServerPIDs []int // the processes whose RSS the figures sum
	// RSSStart is the server's RSS before anything was done; RSSBefore after
	// the accounts were registered (their links closed again); RSSAfter with
	// every account logged in on an idle link; RSSHeld after IdleConfig.Hold
	// more (0 without Hold).
	RSSStart, RSSBefore, RSSAfter, RSSHeld int64
	PerLink                                float64       // (RSSAfter − RSSBefore) / Links
	PerLinkHeld                            float64       // (RSSHeld − RSSBefore) / Links
	Register, Login                        time.Duration // time to register, then to log in, all accounts
}

// MarshalJSON writes the result with units in the keys, as `mnm load -idle` prints it.
// Against several frontends it adds "frontends" and "server_sum_of_pids",
// as Result does.
func (r IdleResult) MarshalJSON() ([]byte, error) {
	frontends, summed := siteKeys(r.Frontends, r.ServerPIDs)
	return json.Marshal(struct {
		Frontends     int     `json:"frontends,omitempty"`
		SummedPIDs    []int   `json:"server_sum_of_pids,omitempty"`
		Links         int     `json:"links"`
		RSSStart      int64   `json:"server_rss_start_bytes"`
		RSSBefore     int64   `json:"server_rss_before_bytes"`
		RSSAfter      int64   `json:"server_rss_after_bytes"`
		RSSHeld       int64   `json:"server_rss_held_bytes,omitempty"`
		PerLinkKiB    float64 `json:"per_link_kib"`
		PerLinkHeld   float64 `json:"per_link_held_kib,omitempty"`
		PerAccountKiB float64 `json:"per_account_kib"`
		RegisterS     float64 `json:"register_s"`
		LoginS        float64 `json:"login_s"`
	}{
		frontends, summed,
		r.Links, r.RSSStart, r.RSSBefore, r.RSSAfter, r.RSSHeld,
		round(r.PerLink / 1024), round(r.PerLinkHeld / 1024),
		round(float64(r.RSSBefore-r.RSSStart) / float64(max(r.Links, 1)) / 1024),
		r.Register.Seconds(), r.Login.Seconds(),
	})
}

// Idle registers cfg.Links accounts (closing each link at once, so that
// the "before" figure holds the accounts but not their links), reads the
// server's RSS, logs every account in and waits until each link has received
// and acked its login notice, then reads the RSS again with all links idle.
// The difference per link is what an idle logged-in link costs the server.
func Idle(ctx context.Context, cfg IdleConfig) (IdleResult, error) {
	if err := checkSite(cfg.Frontends, cfg.ServerPIDs); err != nil {
		return IdleResult{}, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if cfg.Links < 1 || len(cfg.ServerPIDs) == 0 {
		return IdleResult{}, fmt.Errorf("%w: idle needs links ≥ 1 and the server's pid", ErrConfig)
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultIdleSettle
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout+cfg.Hold)
	defer cancel()
	res := IdleResult{Links: cfg.Links, Frontends: len(cfg.Frontends), ServerPIDs: cfg.ServerPIDs}
	rss := func() (int64, error) {
		ps, err := proc.ReadSum(cfg.ServerPIDs)
		return ps.RSS, err
	}
	var err error
	if res.RSSStart, err = rss(); err != nil {
		return res, err
	}

	t0 := time.Now()
	regs := make([]testclient.Registration, cfg.Links)
	o := testclient.Options{Lax: true, Logger: log, OnOther: func(*testclient.Frame) {}}
	err = setup(ctx, cfg.Links, func(i int) error {
		fe := frontend(cfg.Frontends, i)
		ro := o
		ro.TLS = fe.TLS
		c, reg, err := testclient.Register(fe.Addr, "idle", "_", ro)
		if err != nil {
			return fmt.Errorf("load: register account %d: %w", i, err)
		}
		regs[i] = reg
		return c.Close()
	})
	if err != nil {
		return res, err
	}
	res.Register = time.Since(t0)
	log.Info("idle: accounts registered", "links", cfg.Links, "took", res.Register)
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return res, err
	}
	if res.RSSBefore, err = rss(); err != nil {
		return res, err
	}

	t0 = time.Now()
	clients := make([]*testclient.Client, cfg.Links)
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			if c != nil {
				wg.Go(func() { c.Close() })
			}
		}
		wg.Wait()
	}()
	var notices sync.WaitGroup // one per link: its login notice arrived
	notices.Add(cfg.Links)
	err = setup(ctx, cfg.Links, func(i int) error {
		fe := frontend(cfg.Frontends, i)
		lo := o
		lo.TLS, lo.AutoAck, lo.PulseInterval = fe.TLS, true, idlePulse
		var once sync.Once
		lo.OnMessage = func(f *testclient.Frame) {
			if f.Op() == "login" {
				once.Do(notices.Done)
			}
		}
		c, _, err := testclient.LoginRetry(ctx, fe.Addr, regs[i].UID, regs[i].NodeID, lo)
		if err != nil {
			return fmt.Errorf("load: log in account %d: %w", i, err)
		}
		clients[i] = c
		return nil
	})
	if err != nil {
		return res, err
	}
	noticed := make(chan struct{})
	go func() {
		notices.Wait()
		close(noticed)
	}()
	select {
	case <-noticed:
	case <-ctx.Done():
		return res, fmt.Errorf("load: idle: waiting for login notices: %w", ctx.Err())
	}
	res.Login = time.Since(t0)
	log.Info("idle: links logged in", "links", cfg.Links, "took", res.Login)
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return res, err
	}
	if res.RSSAfter, err = rss(); err != nil {
		return res, err
	}
	res.PerLink = float64(res.RSSAfter-res.RSSBefore) / float64(cfg.Links)
	if cfg.Hold > 0 {
		log.Info("idle: holding the links", "for", cfg.Hold)
		if err := sleepCtx(ctx, cfg.Hold); err != nil {
			return res, err
		}
		if res.RSSHeld, err = rss(); err != nil {
			return res, err
		}
		res.PerLinkHeld = float64(res.RSSHeld-res.RSSBefore) / float64(cfg.Links)
	}
	if cfg.Measured != nil {
		cfg.Measured()
	}
	return res, nil
}

// sleepCtx waits d, or until ctx ends. It is a measurement's settling time,
// not synchronisation: nothing is waited for but the clock.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("load: idle: %w", ctx.Err())
	}
}

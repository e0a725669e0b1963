package main

// The daemon's side of the admin listener (package admin): it starts the
// listener, and the daemon is its admin.Backend. Members and queues
// (adminsite_members.go) and backups (backup.go) have files of their own.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"mnm/admin"
	"mnm/durable"
	"mnm/qlib/store"
)

// adminListen opens the admin listener's socket of cfg, or returns nil
// when it is off. It is opened before anything else starts, like the TMTP
// listener, so that a port in use fails the start at once with a clear
// error.
func adminListen(cfg *Config) (net.Listener, error) {
	if cfg.Admin.Laddr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Admin.Laddr)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w (set admin.laddr to another address, or to \"\" to turn it off)", err)
	}
	return ln, nil
}

// recentWarnings is how many warnings and errors the status page lists:
// a screenful; the log has them all.
const recentWarnings = 50

// startAdmin serves the admin listener on ln for d.
func (d *daemon) startAdmin(ln net.Listener, tokens []admin.Token) {
	d.admin = admin.New(admin.Options{
		Backend:     d,
		Gatherer:    d.registry,
		Tokens:      tokens,
		Logger:      d.log.With("listener", "admin"),
		Recent:      d.recent,
		SampleEvery: d.statusEvery,
	})
	d.adminHTTP = d.admin.HTTPServer()
	d.adminAddr = ln.Addr().String()
	d.adminDone = make(chan struct{})
	go func() {
		defer close(d.adminDone)
		if err := d.adminHTTP.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin listener stopped", "err", err)
		}
	}()
	d.log.Info("admin listener", "addr", ln.Addr().String(), "tokens", len(tokens), "tls", d.cfg.Admin.TLS)
}

// stopAdmin closes the admin listener, letting requests in flight finish
// within ctx.
func (d *daemon) stopAdmin(ctx context.Context) error {
	if d.adminHTTP == nil {
		return nil
	}
	err := d.adminHTTP.Shutdown(ctx)
	if err != nil {
		d.adminHTTP.Close() // a backup still streaming
	}
	<-d.adminDone
	d.admin.Close()
	return err
}

// Status is admin.Backend's summary of the daemon.
func (d *daemon) Status() admin.Status {
	qs := d.srv.Stats()
	var bl store.Backlog // a frontend of a cluster holds no queues of its own
	if d.store != nil {
		bl = d.store.Backlog()
	}
	st := admin.Status{
		Version:        version,
		Site:           d.cfg.Name,
		Listen:         d.ln.Addr().String(),
		Started:        d.started,
		Now:            d.now(),
		DataDir:        d.cfg.DataDir,
		LinksOpen:      qs.Links,
		LinksLoggedIn:  qs.Devices,
		LinksParked:    int(qs.Parked),
		UsersOnline:    qs.Users,
		Users:          d.users.UserCount(),
		Groups:         d.users.GroupCount(),
		Queued:         bl.Messages,
		QueuedBytes:    bl.Bytes,
		BackloggedDevs: bl.Devices,
		OldestQueued:   bl.Oldest,
		StoreBytes:     bl.StoreBytes,
		FreeBytes:      -1,
	}
	if free, err := (durable.OSFS{}).Free(d.cfg.DataDir); err == nil {
		st.FreeBytes = free
	}
	if err := d.Ready(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	if d.certs != nil {
		st.CertNames, st.CertUntil = d.certs.Names(), d.certs.NotAfter()
	}
	if d.ntpOffset != nil {
		st.NTPOffset = d.ntpOffset().Seconds()
	}
	if d.clock != nil {
		st.NTPSynced = d.clock.Synced()
	}
	return st
}

// Ready is admin.Backend's readiness: the store and user database take
// writes and the TMTP listener accepts.
func (d *daemon) Ready() error {
	select {
	case <-d.stopping:
		return errors.New("shutting down")
	default:
	}
	if d.site != nil {
		if err := d.site.Writable(); err != nil {
			return err
		}
	} else if err := d.store.Writable(); err != nil {
		return err
	}
	if err := d.users.writable(); err != nil {
		return err
	}
	return nil
}

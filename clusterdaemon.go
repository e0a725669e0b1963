package main

// The server as one frontend of a clustered site (config "cluster",
// cluster/DESIGN.md): its store, device sessions, presence and directory
// live on the site's NATS JetStream cluster instead of the data directory.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"mnm/cluster"
	"mnm/cluster/bus"
	"mnm/cluster/dirkv"
	"mnm/cluster/jsstore"
	"mnm/qlib"
	"mnm/qlib/store"
)

// clusterConnectTimeout bounds the start's wait for the NATS cluster: the
// connection, and the streams and buckets bound or created. A frontend that
// cannot reach its cluster in that time fails to start, loudly, rather than
// serve members it cannot store anything for.
const clusterConnectTimeout = 30 * time.Second

// clusterSite is this frontend's handle on the site's cluster.
type clusterSite struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	store    *jsstore.Store
	bus      *bus.Bus
	presence *cluster.Presence // qlib's Presence over bus
	dir      *dirkv.Dir        // the directory's records and writer; nil until opened
	log      *slog.Logger
}

// frontendName is how the bus and the directory name frontend n.
func frontendName(n int) string { return fmt.Sprintf("fe%d", n) }

// openCluster connects to the cluster cc names and opens the store and the
// bus on it. onEvict is the bus's OnEvict: the server's EvictDevice, once
// there is a server; the presence's callbacks reach the server once it is
// attached (site.presence.Attach).
func openCluster(cc *ClusterConfig, now func() time.Time, logger *slog.Logger, onEvict func(dev string)) (_ *clusterSite, err error) {
	log := logger // the bus and the directory name the frontend in their lines
	nc, err := connectNATS(cc, log)
	if err != nil {
		return nil, err
	}
	site := &clusterSite{nc: nc, log: log}
	defer func() {
		if err != nil {
			site.Close()
		}
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	site.js = js
	ctx, cancel := context.WithTimeout(context.Background(), clusterConnectTimeout)
	defer cancel()
	site.store, err = jsstore.Open(ctx, jsstore.Options{
		JS:       js,
		Conn:     nc,
		Stream:   cc.Prefix,
		Prefix:   strings.ToLower(cc.Prefix),
		Replicas: cc.Replicas,
		Node:     uint8(cc.Frontend),
		MaxBatch: cc.MaxBatch,
		Now:      now,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: the store: %w", err)
	}
	site.presence = &cluster.Presence{Log: log}
	site.bus, err = bus.New(ctx, bus.Options{
		Conn:        nc,
		JS:          js,
		Prefix:      cc.Prefix,
		Frontend:    frontendName(cc.Frontend),
		Replicas:    cc.Replicas,
		LivenessTTL: time.Duration(cc.LivenessSeconds) * time.Second,
		Logger:      log,
		OnEvict:     onEvict,
		OnPresence:  site.presence.OnPresence,
		OnUserGone:  site.presence.OnUserGone,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: the session bus: %w", err)
	}
	site.presence.Bus = site.bus
	log.Info("cluster joined", "frontend", cc.Frontend, "nats", nc.ConnectedUrlRedacted(), "prefix", cc.Prefix, "replicas", cc.Replicas)
	return site, nil
}

// connectNATS dials the cluster. It reconnects for ever: a frontend rides
// out a node's restart or a network blip, its liveness lease (the bus)
// fencing it meanwhile if the blip outlasts the lease.
func connectNATS(cc *ClusterConfig, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("mnm " + frontendName(cc.Frontend)),
		nats.Timeout(5 * time.Second),
		nats.RetryOnFailedConnect(false),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "nats", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("nats error", "subject", subject, "err", err)
		}),
	}
	if cc.NATS.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cc.NATS.CredsFile))
	}
	if cc.NATS.CAFile != "" {
		opts = append(opts, nats.RootCAs(cc.NATS.CAFile))
	}
	if cc.NATS.CertFile != "" {
		opts = append(opts, nats.ClientCert(cc.NATS.CertFile, cc.NATS.KeyFile))
	}
	nc, err := nats.Connect(strings.Join(cc.NATS.URLs, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to NATS at %s: %w", strings.Join(cc.NATS.URLs, ", "), err)
	}
	return nc, nil
}

// sessions is the qlib.Sessions of this frontend.
func (c *clusterSite) sessions() *cluster.Sessions { return &cluster.Sessions{Bus: c.bus, Log: c.log} }

// Writable is the readiness of the cluster: connected.
func (c *clusterSite) Writable() error {
	if !c.nc.IsConnected() {
		return errors.New("cluster: not connected to NATS")
	}
	return nil
}

// Close leaves the cluster: the bus first (its sessions released, its
// liveness withdrawn), then the store, then the connection, after which
// everything acknowledged is on the cluster's quorum already.
func (c *clusterSite) Close() error {
	var err error
	if c.dir != nil {
		err = errors.Join(err, c.dir.Close()) // the writer's lease handed on at once
	}
	if c.bus != nil {
		c.bus.Close()
	}
	if c.store != nil {
		err = errors.Join(err, c.store.Close())
	}
	if c.nc != nil {
		c.nc.Close()
	}
	return err
}

// siteDirectory is the directory as the daemon uses it: qlib's view, and
// the operator's change that qlib does not make. *UserDB is one, and so is
// a frontend's *clusterDirectory, which forwards it to the site's writer.
type siteDirectory interface {
	qlib.Directory
	SetReceiveOnly(uid string, on bool) (changed bool, err error)
}

// openLocalData opens the data directory's user database and store: a
// single machine's data.
func (d *daemon) openLocalData(perIdentity int) error {
	cfg := d.cfg
	users, err := OpenUserDB(UserDBOptions{Dir: cfg.UserDBDir(), Now: d.now, Logger: d.log, AccountsPerIdentity: perIdentity,
		ReceiveOnly: cfg.ReceiveOnly.NewMembers, AwayAfter: time.Duration(cfg.AwayAfterDays) * 24 * time.Hour})
	if err != nil {
		return err
	}
	commits := commitHistogram()
	st, err := store.Open(store.Options{Dir: cfg.QStoreDir(), Now: d.now, Logger: d.log, MinFree: cfg.MinFreeBytes,
		CommitSeconds: commits})
	if err != nil {
		users.Close()
		return err
	}
	d.registry.MustRegister(commits)
	d.users, d.directory, d.store, d.qstore = users, users, st, st
	return nil
}

// openClusterData joins the cluster: its store, its session bus, and the
// site's directory.
func (d *daemon) openClusterData(perIdentity int) error {
	site, err := openCluster(d.cfg.Cluster, d.now, d.log, func(dev string) {
		if srv := d.evictTo.Load(); srv != nil {
			srv.EvictDevice(dev)
		}
	})
	if err != nil {
		return err
	}
	users, directory, err := openClusterDirectory(d.cfg, site, d.now, d.log, perIdentity)
	if err != nil {
		site.Close()
		return err
	}
	d.site, d.users, d.directory, d.qstore = site, users, directory, site.store
	return nil
}

// closeData closes the store and the user database (and leaves the
// cluster), so that everything acknowledged is durable.
func (d *daemon) closeData() error {
	var err error
	if d.store != nil {
		err = errors.Join(err, d.store.Close())
	}
	if d.users != nil {
		err = errors.Join(err, d.users.Close())
	}
	if d.site != nil {
		err = errors.Join(err, d.site.Close())
	}
	return err
}

// openClusterDirectory opens the site's directory on the cluster: this
// frontend's replica of the user database, loaded from the directory's
// bucket and kept current by its watcher, and the directory qlib asks,
// which forwards writes to the site's one writer (a frontend elected
// among all: perhaps this one).
func openClusterDirectory(cfg *Config, site *clusterSite, now func() time.Time, logger *slog.Logger, perIdentity int) (*UserDB, *clusterDirectory, error) {
	cc := cfg.Cluster
	ctx, cancel := context.WithTimeout(context.Background(), clusterConnectTimeout)
	defer cancel()
	dir, err := dirkv.Open(ctx, dirkv.Options{
		Conn:     site.nc,
		JS:       site.js,
		Prefix:   cc.Prefix,
		Frontend: frontendName(cc.Frontend),
		Replicas: cc.Replicas,
		LeaseTTL: time.Duration(cc.LivenessSeconds) * time.Second,
		Logger:   site.log,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: the directory: %w", err)
	}
	site.dir = dir
	users, err := OpenUserDB(UserDBOptions{Records: newKVRecords(dir), Now: now, Logger: logger,
		AccountsPerIdentity: perIdentity, ReceiveOnly: cfg.ReceiveOnly.NewMembers})
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: the directory: %w", err)
	}
	directory, err := newClusterDirectory(users, dir, logger)
	if err != nil {
		users.Close()
		return nil, nil, fmt.Errorf("cluster: the directory: %w", err)
	}
	return users, directory, nil
}

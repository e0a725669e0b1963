package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
)

// ephemeral is a server for the simulation and the load benchmark: on a
// loopback port, with a throwaway self-signed certificate and data folders
// in a temporary directory that Close removes. It uses the local clock: a
// simulation must start anywhere, without network.
type ephemeral struct {
	*daemon
	Addr string // "127.0.0.1:port"
	dir  string
}

// startEphemeral starts an ephemeral server; logger receives its log.
func startEphemeral(logger *slog.Logger) (*ephemeral, error) {
	dir, err := os.MkdirTemp("", "mnm-sim-")
	if err != nil {
		return nil, err
	}
	e, err := startEphemeralIn(dir, logger)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return e, nil
}

func startEphemeralIn(dir string, logger *slog.Logger) (*ephemeral, error) {
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := CreateSelfSigned(cert, key, []string{"localhost"}); err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	cfg := DefaultConfig()
	cfg.Name = "mnm-sim"
	cfg.DataDir = dir
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	d, err := newDaemon(cfg, LocalClock().Now, tlsConf, ln, nil, logger)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &ephemeral{daemon: d, Addr: ln.Addr().String(), dir: dir}, nil
}

// Close shuts the server down and removes its data.
func (e *ephemeral) Close() error {
	err := e.shutdown()
	if rerr := os.RemoveAll(e.dir); err == nil {
		err = rerr
	}
	return err
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"mnm/qlib"
)

// runMember is "mnm member [-config F] promote UID | demote UID | list": the
// operator's command for receive-only members (the "receiveonly" extension,
// Protocol.md). promote makes a receive-only member a full one, demote
// makes a member receive-only, list prints the receive-only members' uids,
// one a line. It works on the data directory of the config, under the
// directory's lock: while the server runs it refuses (exit 1) and changes
// nothing, since the server keeps the user database in memory. The change
// is one record write, durable when the command exits; the member's
// devices are not told, and the server reads it at its next start.
func runMember(args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("mnm member", flag.ContinueOnError)
	fset.SetOutput(stderr)
	configPath := fset.String("config", "mnm.config", "configuration file of the site")
	if err := fset.Parse(args); err != nil {
		return exitUsage
	}
	var on bool
	switch cmd := fset.Arg(0); {
	case cmd == "list" && fset.NArg() == 1:
	case (cmd == "promote" || cmd == "demote") && fset.NArg() == 2:
		on = cmd == "demote"
	default:
		fmt.Fprintln(stderr, "usage: mnm member [-config F] promote UID | demote UID | list")
		return exitUsage
	}
	cfg, err := LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "mnm member: %v\n", err)
		return exitFailure
	}
	err = withMembers(cfg, func(db *UserDB) error {
		if fset.Arg(0) == "list" {
			for _, uid := range db.ReceiveOnlyUIDs() {
				fmt.Fprintln(stdout, uid)
			}
			return nil
		}
		uid := fset.Arg(1)
		changed, err := db.SetReceiveOnly(uid, on)
		if errors.Is(err, qlib.ErrNoUser) {
			return fmt.Errorf("%s: %w", uid, err)
		}
		if err != nil {
			return err
		}
		state := "a full member"
		if on {
			state = "receive-only"
		}
		if !changed {
			fmt.Fprintf(stdout, "%s was %s already\n", uid, state)
		} else {
			fmt.Fprintf(stdout, "%s is %s now\n", uid, state)
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "mnm member: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// withMembers runs fn on the user database of cfg while holding the data
// directory's lock, which a running server holds: ErrDataDirInUse then.
func withMembers(cfg *Config, fn func(db *UserDB) error) error {
	if cfg.Cluster != nil {
		return errors.New("this is a frontend of a cluster, whose members are the cluster's: use \"mnm admin receive-only\" against a running frontend")
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	if lock != nil {
		defer lock.Close()
	}
	db, err := OpenUserDB(UserDBOptions{Dir: cfg.UserDBDir()})
	if err != nil {
		return err
	}
	return errors.Join(fn(db), db.Close())
}

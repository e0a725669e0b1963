package main

// Online backups (mnm backup): the server's side. GET /api/backup on the
// admin listener streams a tar of a data directory, userdb/ and qstore/ as
// a server would find them; backupcmd.go unpacks it.
//
// Consistency. Each half is a crash-consistent cut of its own: the user
// database's record files at an instant with no write in progress
// (UserDB.Snapshot), the store's log as a crash at an instant would leave
// it with every written byte kept (store.Log.Snapshot). Both are taken
// after the backup starts, so every post acknowledged to its sender before
// then is in the copy, in the queue of every recipient device that had not
// acknowledged it yet.
//
// The two cuts are not at the same instant, so the order matters; the user
// database is cut first, then the store:
//
//   - A member registered, or a device added, between the two cuts is
//     missing from the copy while the store may hold its queue: the restored
//     server keeps that queue for a device nobody can log in as. It holds
//     posts of the last moments only, and harms nothing.
//   - A device retired between the cuts is in the copy with its queue
//     already dropped: it logs in to an empty queue, as it could have just
//     before the backup.
//   - Every device in the copy existed before the store's cut, so its queue
//     holds everything posted to it before the backup: nothing acknowledged
//     is lost for anyone who can log in.
//
// The reverse order would lose exactly that: a device added between the
// cuts would be in the copy without the backlog CopyQueue gave it, and
// posts to a member registered then would be missing from its queue.

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"time"
)

// The top-level directories of a backup, as in a data directory
// (Config.UserDBDir, Config.QStoreDir).
const (
	backupUserDB = "userdb"
	backupQStore = "qstore"
)

// errClusterBackup refuses a backup of a frontend of a cluster, which holds
// nothing of the site's: its data is the JetStream cluster's.
var errClusterBackup = errors.New("backup: a frontend of a cluster keeps no data of its own; back up the NATS cluster's streams and buckets (nats stream backup, README \"Running on several machines\")")

// Backup is admin.Backend's online backup: a tar stream of userdb/ and
// qstore/, ended by tar's end marker only if everything was written, so
// that a reader can tell a complete backup from one cut short.
func (d *daemon) Backup(w io.Writer) error {
	if d.site != nil {
		return errClusterBackup
	}
	start := time.Now()
	users, err := d.users.Snapshot()
	if err != nil {
		return err
	}
	snap, err := d.store.Snapshot()
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer snap.Release()
	cut := time.Since(start)

	now := d.now()
	tw := tar.NewWriter(w)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o700, ModTime: now})
	}
	file := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: size, ModTime: now}); err != nil {
			return err
		}
		n, err := io.Copy(tw, r)
		if err == nil && n != size {
			err = fmt.Errorf("%s: %d bytes of %d", name, n, size)
		}
		return err
	}
	for _, name := range []string{backupUserDB, backupUserDB + "/" + userSubdir, backupUserDB + "/" + groupSubdir} {
		if err := dir(name); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
	}
	var userBytes int64
	for _, f := range users {
		userBytes += int64(len(f.Data))
		if err := file(path.Join(backupUserDB, f.Name), int64(len(f.Data)), bytes.NewReader(f.Data)); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
	}
	if err := dir(backupQStore); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	for _, f := range snap.Files() {
		if err := file(path.Join(backupQStore, f.Name), f.Size, f.Open()); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
	}
	if err := tw.Close(); err != nil { // the end marker: the backup is whole
		return fmt.Errorf("backup: %w", err)
	}
	d.log.Info("backup written", "records", len(users), "recordBytes", userBytes,
		"storeFiles", len(snap.Files()), "storeBytes", snap.Bytes(), "cut", cut, "elapsed", time.Since(start))
	return nil
}

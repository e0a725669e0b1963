package main

// mnm backup [-config F] [-addr A] [-token NAME] DEST: the client side of
// online backups (backup.go). It fetches the running server's backup from
// its admin listener and unpacks it into DEST, a new data directory that a
// server can start from (dataDir: DEST).
//
// DEST is marked incomplete (backupIncompleteName) before anything is
// written into it, and the mark is removed only once every file is
// unpacked and fsynced and tar's end marker was read: a server refuses to
// start from a data directory so marked (newDaemon), so a backup cut short
// (the server died, the network failed) is never mistaken for a good one.

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"mnm/durable"
)

const (
	// backupIncompleteName marks a backup directory whose backup has not
	// finished (or failed).
	backupIncompleteName = "BACKUP-INCOMPLETE"
	// backupInfoName says when and from where a finished backup was made.
	backupInfoName = "BACKUP.txt"
)

// ErrBackupIncomplete refuses to start a server from an unfinished backup.
var ErrBackupIncomplete = errors.New("the data directory is an unfinished backup (" + backupIncompleteName + " is present); make the backup again")

// tarBlock is tar's block size: entries are padded to it, and the end
// marker is two zero blocks.
const tarBlock = 512

func runBackup(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mnm backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "mnm.config", "the running server's configuration (for its admin listener and token)")
	addr := fs.String("addr", "", "the admin listener's address; default: the config's admin.laddr")
	token := fs.String("token", "", "the token to use (its name in admin.tokenFile); default: the first")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mnm backup [-config F] [-addr A] [-token NAME] DEST")
		fmt.Fprintln(stderr, "Copies the running server's user database and store into DEST, a new data directory.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	dest := fs.Arg(0)
	if err := prepareBackupDest(dest); err != nil {
		fmt.Fprintf(stderr, "mnm backup: %v\n", err)
		return exitFailure
	}
	client, err := newAdminClient(*configPath, *addr, *token)
	if err != nil {
		fmt.Fprintf(stderr, "mnm backup: %v\n", err)
		return exitFailure
	}
	start := time.Now()
	body, err := client.Stream(context.Background(), "/api/backup")
	if err != nil {
		fmt.Fprintf(stderr, "mnm backup: %v\n", err)
		return exitFailure
	}
	sum, err := unpackBackup(body, dest)
	body.Close()
	if err != nil {
		fmt.Fprintf(stderr, "mnm backup: %v; %s is incomplete (%s)\n", err, dest, backupIncompleteName)
		return exitFailure
	}
	elapsed := time.Since(start)
	from := *addr
	if from == "" {
		from = "the admin listener of " + *configPath
	}
	info := fmt.Sprintf("mnm backup of %s\nmade %s by mnm %s\n%d files, %d bytes, %.1f s\n"+
		"Start a server from it with dataDir set to this directory.\n",
		from, start.UTC().Format(time.RFC3339), version, sum.files, sum.bytes, elapsed.Seconds())
	if err := finishBackup(dest, info); err != nil {
		fmt.Fprintf(stderr, "mnm backup: %v; %s is incomplete (%s)\n", err, dest, backupIncompleteName)
		return exitFailure
	}
	mbps := float64(sum.bytes) / (1 << 20) / max(elapsed.Seconds(), 1e-6)
	fmt.Fprintf(stdout, "backup: %d files, %d bytes in %.2f s (%.1f MB/s) into %s\n", sum.files, sum.bytes, elapsed.Seconds(), mbps, dest)
	return exitOK
}

// prepareBackupDest makes dest (which must not exist, or be an empty
// directory) and marks it incomplete, durably.
func prepareBackupDest(dest string) error {
	entries, err := os.ReadDir(dest)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dest, 0o700); err != nil {
			return err
		}
		if err := (durable.OSFS{}).SyncDir(filepath.Dir(filepath.Clean(dest))); err != nil {
			return err
		}
	case err != nil:
		return err
	case len(entries) > 0:
		return fmt.Errorf("%s is not empty: a backup goes into a new (or empty) directory", dest)
	}
	return durable.WriteFile(durable.OSFS{}, filepath.Join(dest, backupIncompleteName),
		[]byte("This backup did not finish: do not start a server from it.\n"), 0o600)
}

// finishBackup writes the backup's description and removes the incomplete
// mark, in that order, each durably.
func finishBackup(dest, info string) error {
	fsys := durable.OSFS{}
	if err := durable.WriteFile(fsys, filepath.Join(dest, backupInfoName), []byte(info), 0o600); err != nil {
		return err
	}
	if err := fsys.SyncDir(dest); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dest, backupIncompleteName)); err != nil {
		return err
	}
	return fsys.SyncDir(dest)
}

// backupSummary counts what unpackBackup wrote.
type backupSummary struct {
	files int
	bytes int64
}

// Errors of unpackBackup for a stream it refuses.
var (
	errBackupTruncated = errors.New("the backup stream ended before tar's end marker: the server stopped or the connection failed mid-way")
	errBackupEntry     = errors.New("refused tar entry")
)

// unpackBackup unpacks the tar stream r into dest, refusing anything but
// directories and regular files under userdb/ and qstore/ (no absolute
// paths, no "..", no links), creating each file anew (never through an
// existing name), and fsyncing every file and directory. It fails unless
// the stream ends with tar's end marker.
func unpackBackup(r io.Reader, dest string) (backupSummary, error) {
	var sum backupSummary
	cr := &tarCounter{r: r}
	tr := tar.NewReader(cr)
	dirs := map[string]bool{dest: true}
	var entryEnd int64 // stream offset where the last entry's data ended, padded
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// tar.Reader says EOF both at the end marker and when the
			// stream just stops between entries: only the marker, two
			// zero blocks right after the last entry, is a whole backup.
			if cr.n-entryEnd != 2*tarBlock || !cr.tailZero() {
				return sum, errBackupTruncated
			}
			break
		}
		if err != nil {
			return sum, fmt.Errorf("%w: %v", errBackupTruncated, err)
		}
		rel, err := backupEntryPath(h)
		if err != nil {
			return sum, err
		}
		target := filepath.Join(dest, filepath.FromSlash(rel))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(target, 0o700); err != nil {
				return sum, err
			}
			markDirs(dirs, dest, target)
			entryEnd = cr.n
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
			return sum, err
		}
		markDirs(dirs, dest, filepath.Dir(target))
		n, err := writeNewFile(target, tr)
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return sum, fmt.Errorf("%w: %s cut short", errBackupTruncated, rel)
			}
			return sum, err
		}
		sum.files++
		sum.bytes += n
		entryEnd = cr.n + (tarBlock-n%tarBlock)%tarBlock
	}
	for dir := range dirs {
		if err := (durable.OSFS{}).SyncDir(dir); err != nil {
			return sum, err
		}
	}
	return sum, nil
}

// backupEntryPath checks a tar entry and returns its slash-separated
// relative path.
func backupEntryPath(h *tar.Header) (string, error) {
	name := h.Name
	if h.Typeflag == tar.TypeDir {
		name = strings.TrimSuffix(name, "/")
	}
	switch {
	case h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir:
		return "", fmt.Errorf("%w %q: type %q is neither a file nor a directory", errBackupEntry, h.Name, h.Typeflag)
	case name == "" || path.IsAbs(name) || strings.Contains(name, `\`) || filepath.IsAbs(name):
		return "", fmt.Errorf("%w %q: not a relative path", errBackupEntry, h.Name)
	case path.Clean(name) != name || name == ".." || strings.HasPrefix(name, "../") || strings.Contains(name, "/../"):
		return "", fmt.Errorf("%w %q: not a clean path", errBackupEntry, h.Name)
	case h.Size < 0:
		return "", fmt.Errorf("%w %q: negative size", errBackupEntry, h.Name)
	}
	top, _, _ := strings.Cut(name, "/")
	if top != backupUserDB && top != backupQStore {
		return "", fmt.Errorf("%w %q: outside %s/ and %s/", errBackupEntry, h.Name, backupUserDB, backupQStore)
	}
	if h.Typeflag == tar.TypeReg && name == top {
		return "", fmt.Errorf("%w %q: a file where a directory belongs", errBackupEntry, h.Name)
	}
	return name, nil
}

// markDirs records dir and its parents up to dest as directories to fsync.
func markDirs(dirs map[string]bool, dest, dir string) {
	for d := dir; !dirs[d] && strings.HasPrefix(d, dest); d = filepath.Dir(d) {
		dirs[d] = true
	}
}

// writeNewFile creates path, which must not exist (O_EXCL: never through a
// name already there, symbolic link or not), writes r to it and fsyncs it.
func writeNewFile(path string, r io.Reader) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// tarCounter counts the bytes tar.Reader takes from the stream and keeps
// the last two blocks of them (oldest first), to check the end marker.
type tarCounter struct {
	r    io.Reader
	n    int64
	tail [2 * tarBlock]byte // the last bytes read
}

func (c *tarCounter) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += int64(k)
	if t := len(c.tail); k >= t {
		copy(c.tail[:], p[k-t:k])
	} else {
		copy(c.tail[:], c.tail[k:])
		copy(c.tail[t-k:], p[:k])
	}
	return k, err
}

// tailZero reports whether the last two blocks read were all zero.
func (c *tarCounter) tailZero() bool {
	return c.n >= int64(len(c.tail)) && bytes.Count(c.tail[:], []byte{0}) == len(c.tail)
}

// Package v0site reads the site folder of the deployed (v0) mnm server: its
// user database and its message queues, so that `mnm import-v0` can take the
// site over. It only reads: every file is opened read-only, and nothing in the
// folder is created, changed or removed.
//
// The format, as the deployed server writes it (../shared/tmtp/v0-site):
//
//	userdb/user/<uid>     JSON {"Nodes":{<key>:{"Defunct","Num"}},"NonDefunctNodesCount",
//	                      "Aliases":[{"En","Nat","EnDefunct","NatDefunct",…}],
//	                      "Authentication"?,"CheckSum"}
//	userdb/alias/<alias>  a symbolic link whose target is the uid
//	userdb/group/<gid>    JSON {"Uid":{<uid>:{"Alias","Status"}},"CheckSum"}
//	userdb/temp/          writes in progress; a leftover is an interrupted write
//	qstore/<first 4 of dir>/<lower-case uid>.<Num, 2 hex digits>/<E|M><msgid>
//	                      one device's queue; each file is a message exactly as
//	                      sent (4 hex digits, the JSON header, the data), E for
//	                      "user" messages (delivered first), M for the rest; one
//	                      message queued for several devices is one file
//	                      hard-linked into each queue
//
// CheckSum is the CRC-32C of the record as written with CheckSum 0. A node's
// key is what the server stored for the device's nodeid: SHA-256 applied
// 22,389 times to the decoded nodeid, in base32 without padding (the nodeid
// itself, 40 characters, is accepted too).
package v0site

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
)

// Site is what Read found in a deployed server's folder.
type Site struct {
	Dir    string
	Users  []User    // in uid order
	Groups []Group   // in gid order
	Msgs   []Message // in id order
	// Problems lists what was noticed and left out or only reported: an
	// interrupted write in userdb/temp, an alias link that no record
	// confirms, and, with Options.SkipBad, every file skipped as damaged.
	Problems []Problem
}

// User is one member.
type User struct {
	UID     string
	File    string   // the record's path, for messages
	Devices []Device // in Num order
	Aliases []Alias
	// Auth is the record's "Authentication" (the claims of a third-party
	// sign-up), raw, or nil.
	Auth []byte
}

// Device is one of a user's devices.
type Device struct {
	Num     int
	Defunct bool
	// Key is what the record keys the device by, decoded: the 32-octet
	// derivation (Derived), or the 25-octet nodeid itself.
	Key     []byte
	Derived bool
}

// Alias is one of a user's aliases; a defunct one no longer reaches the user
// but stays reserved.
type Alias struct {
	Name    string
	Defunct bool
}

// Group is a distribution group.
type Group struct {
	GID     string
	File    string
	Members []Member // in uid order
}

// Member is a user's standing in a group.
type Member struct {
	UID    string
	Alias  string // the alias the member is listed under
	Status Status
}

// Status is a member's standing, as the deployed server numbers it.
type Status int

const (
	Invited Status = 1
	Joined  Status = 2
	Barred  Status = 3
)

// Message is one queued message, stored once however many queues hold it.
type Message struct {
	ID   string // 16 lower-case hex digits
	High bool   // queued as E: delivered before every M message
	// Queues are the devices whose queues hold it, in (uid, num) order.
	Queues []DeviceRef
	Path   string // one of its files
	Size   int64  // file size: HeaderLen octets of frame header, then the data
	// HeaderLen is the length of the frame header: the 4 hex digits and the
	// JSON header.
	HeaderLen int
}

// DeviceRef names one device of one user.
type DeviceRef struct {
	UID string
	Num int
}

// Problem is something Read noticed and did not take in, or took in with a
// caveat; Err says what.
type Problem struct {
	File string
	Err  error
}

func (p Problem) String() string { return p.File + ": " + p.Err.Error() }

// Options tune Read.
type Options struct {
	// SkipBad skips a damaged record or queue file (and what depends on it:
	// a skipped user's queues and group memberships) and reports it in
	// Site.Problems, instead of stopping with an error.
	SkipBad bool
	// Logger receives one line per file skipped or problem noticed; nil
	// discards them.
	Logger *slog.Logger
}

// ErrDamaged is wrapped by every error about a file whose content is not what
// the deployed server writes (bad checksum, bad JSON, impossible values).
var ErrDamaged = errors.New("damaged")

// Read reads the site in dir. A damaged or unreadable file stops it with an
// error naming the file, unless opts.SkipBad.
func Read(dir string, opts Options) (*Site, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	for _, sub := range []string{"userdb/user", "qstore"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("v0site: %s is not a deployed server's site: no %s folder", dir, sub)
		}
	}
	r := &reader{site: &Site{Dir: dir}, opts: opts}
	if err := r.readUserDB(); err != nil {
		return nil, err
	}
	if err := r.readQStore(); err != nil {
		return nil, err
	}
	return r.site, nil
}

// reader holds the state of one Read.
type reader struct {
	site  *Site
	opts  Options
	users map[string]*User // by uid
}

// bad handles a damaged or unreadable file: an error that stops Read, or,
// with SkipBad, a problem reported and nil so that the caller skips it.
func (r *reader) bad(file string, err error) error {
	if !r.opts.SkipBad {
		return fmt.Errorf("v0site: %s: %w", file, err)
	}
	r.note(file, err)
	return nil
}

// note reports a problem that does not stop Read.
func (r *reader) note(file string, err error) {
	r.site.Problems = append(r.site.Problems, Problem{File: file, Err: err})
	r.opts.Logger.Warn("v0 site: left out", "file", file, "err", err.Error())
}

func damaged(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrDamaged, fmt.Sprintf(format, args...))
}

package admin

import (
	"errors"
	"io"
	"time"
)

// Backend is the admin listener's view of the running server: what it
// reports and the changes it may make. The daemon implements it (package
// main, adminsite.go); tests may implement it with a fake.
//
// Every method may be called from many HTTP handlers at once and must be
// safe for concurrent use. The listener checks who may call the methods that
// change something, and logs each change with the admin who made it.
type Backend interface {
	// Status is the server's summary: what it is and how it is doing now.
	Status() Status
	// Ready reports nil when the server can serve members: its store and
	// user database are open and writable and it is accepting links.
	Ready() error

	// Users lists the members whose uid or one of whose aliases contains
	// match (all when match is empty), ordered by uid, at most limit.
	Users(match string, limit int) ([]UserSummary, error)
	// User reports one member, named by uid or alias, or ErrNotFound.
	User(name string) (*UserDetail, error)
	// Queues reports the top device queues, deepest first.
	Queues(top int) ([]QueueInfo, error)

	// RevokeDevice retires device num of member uid: it can no longer log
	// in, its link (if any) is closed, its queue is dropped, and the
	// member's other devices are told as for the revoke extension.
	RevokeDevice(uid string, num int) error
	// SetReceiveOnly makes member uid receive-only (on) or regular.
	// changed is false when it already was.
	SetReceiveOnly(uid string, on bool) (changed bool, err error)
	// Block adds name (a uid or an alias) to member uid's block list, on
	// the member's behalf (an abuse report); Unblock removes it. changed
	// is false when there was nothing to do.
	Block(uid, name string) (changed bool, err error)
	Unblock(uid, name string) (changed bool, err error)

	// Backup writes a consistent copy of the data (user database and
	// store) to w as a tar stream that a server can start from once
	// unpacked (mnm backup).
	Backup(w io.Writer) error
}

// Errors a Backend returns that the listener maps to HTTP statuses.
var (
	// ErrNotFound: no such member, device or name (404).
	ErrNotFound = errors.New("not found")
	// ErrInvalid wraps a request the backend refuses as malformed or
	// impossible (400); the message says why.
	ErrInvalid = errors.New("invalid request")
)

// LocalAdmin is the name changes are logged with when they come from the
// loopback address without a token.
const LocalAdmin = "local"

// Status is the server's summary for `mnm admin status` and the status page.
type Status struct {
	Version   string    `json:"version"`
	Site      string    `json:"site"`   // the site name (tmtprev)
	Listen    string    `json:"listen"` // the TMTP listener's address
	Started   time.Time `json:"started"`
	Now       time.Time `json:"now"`
	DataDir   string    `json:"dataDir"`
	Ready     bool      `json:"ready"`
	NotReady  string    `json:"notReady,omitempty"` // why, when not ready
	CertNames []string  `json:"certNames,omitempty"`
	CertUntil time.Time `json:"certUntil,omitzero"`
	CertACME  bool      `json:"certACME,omitempty"`
	NTPOffset float64   `json:"ntpOffsetSeconds"`   // the clock's offset from NTP at the last check
	NTPSynced time.Time `json:"ntpSynced,omitzero"` // when NTP last answered; zero: never, the local clock is used

	LinksOpen     int `json:"linksOpen"`
	LinksLoggedIn int `json:"linksLoggedIn"`
	LinksParked   int `json:"linksParked"`
	UsersOnline   int `json:"usersOnline"`

	Users  int `json:"users"`
	Groups int `json:"groups"`

	Queued         int64     `json:"queuedMessages"`
	QueuedBytes    int64     `json:"queuedBytes"`
	BackloggedDevs int       `json:"backloggedDevices"`
	OldestQueued   time.Time `json:"oldestQueued,omitzero"` // the oldest message still queued for a device
	StoreBytes     int64     `json:"storeBytes"`            // the store's files on disk
	FreeBytes      int64     `json:"freeBytes"`             // free space on the data's disk; -1 unknown
}

// UserSummary is one line of `mnm admin users`.
type UserSummary struct {
	UID         string   `json:"uid"`
	Aliases     []string `json:"aliases"`
	Devices     int      `json:"devices"`
	Online      int      `json:"online"` // devices logged in now
	ReceiveOnly bool     `json:"receiveOnly,omitempty"`
}

// UserDetail is `mnm admin user`.
type UserDetail struct {
	UID         string       `json:"uid"`
	Aliases     []string     `json:"aliases"`
	OnceAliases []string     `json:"onceAliases,omitempty"`
	Groups      []string     `json:"groups"`
	Blocks      []string     `json:"blocks,omitempty"`
	ReceiveOnly bool         `json:"receiveOnly,omitempty"`
	Devices     []DeviceInfo `json:"devices"`
}

// DeviceInfo is one device of a member.
type DeviceInfo struct {
	Num         int       `json:"num"`
	Label       string    `json:"label"`
	Online      bool      `json:"online"`
	Away        bool      `json:"away,omitempty"`
	LastLogin   time.Time `json:"lastLogin,omitzero"`
	Queued      int       `json:"queued"`
	QueuedBytes int64     `json:"queuedBytes"`
}

// QueueInfo is one device's backlog in `mnm admin queues`.
type QueueInfo struct {
	UID         string    `json:"uid"`
	Num         int       `json:"num"`
	Label       string    `json:"label"`
	Online      bool      `json:"online"`
	Queued      int       `json:"queued"`
	QueuedBytes int64     `json:"queuedBytes"`
	Oldest      time.Time `json:"oldest,omitzero"`
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mnm/admin"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"mnm/qlib"
	"mnm/qlib/tmtp"
)

// ConfigFileName is the file mnm reads its configuration from, in the working
// directory (SPEC §8). mnm.conf beside it is the commented example to copy.
const ConfigFileName = "mnm.config"

// Names of the default self-signed pair that EnsureConfig creates beside a new
// configuration.
const (
	DefaultCertFile = "mnm-cert.pem"
	DefaultKeyFile  = "mnm-key.pem"
)

// DefaultListenAddr is a high port so that a first start works without root
// privileges; 443 needs them (or a capability) on most systems.
const DefaultListenAddr = "0.0.0.0:5443"

// DefaultTokenMaxAgeSeconds is how old (by its iat) a third-party token may
// be. A client gets the token from the provider just before it signs up
// and sends it at once, so a token an hour old is one that was kept: a
// token stolen or stockpiled to register accounts later. An hour is the
// life of the common providers' id_tokens (Google's, Microsoft's), so for
// them it refuses nothing that exp would not; it bounds the providers that
// issue tokens for a day or more.
const DefaultTokenMaxAgeSeconds = 3600

// DefaultMinFreeBytes is the free-space watermark when the configuration does
// not say. It must exceed what can be appended between two looks at the free
// space (a MiB, store.Options.MinFree) with a wide margin, and leave room for
// the user database, logs and compaction's copies; on the smallest VPS disk
// it is still a sliver.
const DefaultMinFreeBytes = 64 << 20

// Limits on the configuration itself. The file is written by an operator, but
// parts of it (name, authby) are sent to every client, so every value is
// bounded and a typo fails at start rather than at the first client.
const (
	// maxConfigFileBytes: a real configuration is a few KB; a path naming a
	// log file or a disk image by mistake fails at once instead of being read
	// whole.
	maxConfigFileBytes = 1 << 20

	// maxSiteNameBytes: the name is shown in client UIs and sent in every
	// tmtprev reply; a sentence is plenty.
	maxSiteNameBytes = 128

	// maxNTPHosts bounds the queries sent at start (to every host at
	// once); maxNTPRetries the start-up delay when no host answers:
	// retries × the query timeout.
	maxNTPHosts   = 16
	maxNTPRetries = 10
	// maxNTPMaxOffsetSeconds (a year) bounds ntp.maxOffsetSeconds: a bound
	// wider than that accepts any answer, which the default exists to stop.
	maxNTPMaxOffsetSeconds = 365 * 24 * 3600
	// maxNTPCheckEveryMinutes (a week) bounds ntp.checkEveryMinutes: a
	// server's oscillator drifts by up to a second or so a week, so rarer
	// checks are as good as none, which 0 says plainly.
	maxNTPCheckEveryMinutes = 7 * 24 * 60
	// defaultNTPCheckEveryMinutes is ntp.checkEveryMinutes when absent
	// (DefaultNTPCheckEvery).
	defaultNTPCheckEveryMinutes = 60

	// maxAuthProviders is the deployed limit (SPEC §7, §8): clients label
	// the providers a…z. The empty first entry is not a provider and does
	// not count.
	maxAuthProviders = 26

	// maxAuthLabelBytes: a provider label is a button caption in the client.
	maxAuthLabelBytes = 64

	// maxURLBytes is the length of URL that browsers and proxies reliably
	// accept.
	maxURLBytes = 2048

	// maxAuthFieldBytes bounds the other provider strings (each param,
	// keys, iss, aud) and the params of login or token once joined: OIDC
	// values are short, this is a guard against a pasted document.
	maxAuthFieldBytes = 4096

	// maxAuthParams bounds each list of params (login's, token's, std):
	// OpenID Connect defines fifteen authorization request params (Core
	// §3.1.2.1) and a provider adds a few of its own, so a longer list is a
	// paste gone wrong rather than a request a provider understands.
	maxAuthParams = 32

	// maxClientAuthByBytes bounds the provider list as the tmtprev reply
	// carries it: the reply's header must fit the 4 hex digits of its
	// length prefix (tmtp.MaxHeaderLen), and the rest of it (the site name,
	// at most 128 bytes and 768 once escaped, and the fixed fields) takes
	// well under 1 KiB.
	maxClientAuthByBytes = tmtp.MaxHeaderLen - 1024

	// minFreeBytesLeast is the smallest watermark that works: the store
	// looks at the free space once per MiB appended, so a smaller one
	// could be overrun before it is seen.
	minFreeBytesLeast = 4 << 20

	// maxPostBytesLimit guards maxPostBytes against a typo (an extra digit
	// or two): each post is held on disk until every recipient device acks
	// it, and anything larger belongs in a file-sharing service.
	maxPostBytesLimit = 64 << 30

	// maxExemptRanges bounds limits.exempt: every connection is checked
	// against the list, and an operator's trusted proxies are a handful of
	// ranges.
	maxExemptRanges = 256

	// maxLimitCount bounds the counted limits (links, registrations,
	// failures, pings, invitations, devices per post): a million of
	// anything per address, per member or per post is no limit at all, so
	// a larger value is a typo; 0 is the way to turn a limit off.
	maxLimitCount = 1_000_000

	// maxAccountsPerIdentity bounds accountsPerIdentity (or 0, no bound):
	// a person with more accounts than this on one site is no longer a
	// person, so a larger value is a typo for 0.
	maxAccountsPerIdentity = 1000

	// maxAwayAfterDays bounds awayAfterDays (or 0, off): ten years, past
	// which no device comes back and a larger value is a typo for 0.
	maxAwayAfterDays = 3650

	// tokenMaxAgeLeast and tokenMaxAgeMost bound tokenMaxAgeSeconds (or
	// 0, off): below the clock skew allowed (a minute) a provider whose
	// clock is slightly behind ours would have its fresh tokens refused;
	// above a day a token is no longer a fresh proof of anything.
	tokenMaxAgeLeast = 60
	tokenMaxAgeMost  = 24 * 3600

	// queueBytesLeast and queueBytesMost bound limits.queueBytesPerDevice
	// (or 0, off): below a MiB a device would be refused after a few
	// photos, which is a unit mistaken rather than a policy; above a TiB
	// it guards nothing.
	queueBytesLeast = 1 << 20
	queueBytesMost  = 1 << 40

	// maxLinksLimit guards maxLinks against a typo: each link is a file
	// descriptor and tens of KiB of memory, and no single server holds
	// more than a few million.
	maxLinksLimit = 1 << 24

	// preLoginBytesLeast and preLoginBytesMost bound
	// limits.preLoginBytes (or 0, off): below a MiB (15 long headers) a
	// few strangers would stop sign-ups with long tokens, which is a unit
	// mistaken rather than a policy; above 16 GiB it guards nothing.
	preLoginBytesLeast = 1 << 20
	preLoginBytesMost  = 1 << 34
)

// Config is the server configuration, read from the JSON file mnm.config.
//
// LoadConfig returns it validated, with relative paths resolved against the
// file's directory and defaults filled in; DefaultConfig returns the values a
// first start writes, with paths still relative.
type Config struct {
	// Name is the site name sent in the tmtprev reply.
	Name string `json:"name"`
	// NTP says where the clock that stamps message ids comes from.
	NTP NTPConfig `json:"ntp"`
	// Listen says where links arrive and which certificate they see.
	Listen ListenConfig `json:"listen"`
	// Auth is the third-party authentication level: 0 none, 1 a token is
	// required to register, 2 to register and to log in.
	Auth int `json:"auth"`
	// AuthBy lists the OpenID Connect providers offered to clients, at most
	// maxAuthProviders. A first entry with no label (empty, or holding only
	// "#" comments) makes third-party auth optional; it is not a provider.
	// It is ignored when Auth is 0.
	AuthBy []AuthProvider `json:"authby"`
	// AccountsPerIdentity bounds the accounts that one third-party
	// identity (a token's issuer and subject) may register. Default
	// DefaultAccountsPerIdentity; 0 removes the bound.
	AccountsPerIdentity int `json:"accountsPerIdentity"`
	// TokenMaxAgeSeconds refuses third-party tokens issued (iat) longer
	// ago than this, and tokens without iat. Default
	// DefaultTokenMaxAgeSeconds; 0 turns the check off (exp still holds).
	TokenMaxAgeSeconds int `json:"tokenMaxAgeSeconds"`
	// AwayAfterDays is the away policy (the "away" extension): a device
	// not logged in for this many days has its queue dropped and must
	// resync from the member's other devices. 0, the default, is off.
	AwayAfterDays int `json:"awayAfterDays"`
	// DataDir holds userdb/ and qstore/. Default: the config file's
	// directory.
	DataDir string `json:"dataDir,omitempty"`
	// MaxPostBytes is the largest datalen accepted on a post. Default
	// qlib.DefaultMaxPostBytes.
	MaxPostBytes int64 `json:"maxPostBytes,omitempty"`
	// MinFreeBytes is the free space on the data's disk below which new
	// messages are refused ("server storage full") while logins, acks and
	// everything that frees space go on. Default DefaultMinFreeBytes; 0
	// turns the watermark off.
	MinFreeBytes int64 `json:"minFreeBytes"`
	// Limits bound what one remote address or one member may do.
	Limits LimitsConfig `json:"limits"`
	// MaxLinks bounds the open links, logged in or not, so that a flood of
	// connections cannot take the file descriptors that the store and the
	// user database need. 0 (the default) derives it from the process's
	// descriptor limit, keeping a reserve (linkCap).
	MaxLinks int `json:"maxLinks,omitempty"`
	// ReceiveOnly configures receive-only members (the "receiveonly"
	// extension, Protocol.md). Off by default: nobody is receive-only.
	ReceiveOnly ReceiveOnlyConfig `json:"receiveOnly"`
	// Admin is the admin listener (config_admin.go); on loopback by
	// default.
	Admin AdminConfig `json:"admin"`
	// Cluster runs the server as one frontend of a site over a NATS
	// JetStream cluster (config_cluster.go); absent, a single machine.
	Cluster *ClusterConfig `json:"cluster,omitempty"`
}

// ReceiveOnlyConfig says who is receive-only when they sign up, and what a
// receive-only member may still reach.
type ReceiveOnlyConfig struct {
	// NewMembers makes every member who registers from now on
	// receive-only, until the operator promotes it (mnm member promote).
	NewMembers bool `json:"newMembers"`
	// MayReach lists the aliases (a helpdesk's) and group ids a
	// receive-only member may still ping, post to or post to the holder
	// of; at most maxMayReach entries.
	MayReach []string `json:"mayReach"`
}

// maxMayReach bounds receiveOnly.mayReach. Each alias in it is resolved for
// every post of a receive-only member; a site names a helpdesk or a few
// support groups, so 64 is generous and keeps that cost small.
const maxMayReach = 64

// MayReachSet returns mayReach as the set qlib.Config.MayReach takes (nil
// when it is empty).
func (rc *ReceiveOnlyConfig) MayReachSet() map[string]bool {
	if len(rc.MayReach) == 0 {
		return nil
	}
	set := make(map[string]bool, len(rc.MayReach))
	for _, n := range rc.MayReach {
		set[n] = true
	}
	return set
}

// validate checks mayReach: each entry a name an alias or a gid could be
// (printable, at most qlib.MaxLabelBytes octets, as every alias), once.
func (rc *ReceiveOnlyConfig) validate(bad func(field, format string, args ...any)) {
	if len(rc.MayReach) > maxMayReach {
		bad("receiveOnly.mayReach", "%d entries, at most %d", len(rc.MayReach), maxMayReach)
	}
	seen := make(map[string]bool, len(rc.MayReach))
	for i, n := range rc.MayReach {
		field := fmt.Sprintf("receiveOnly.mayReach[%d]", i)
		switch {
		case n == "":
			bad(field, "must not be empty")
		case seen[n]:
			bad(field, "%q is listed twice", n)
		default:
			if err := checkAlias(n, 1); err != nil {
				bad(field, "%v", err)
			}
		}
		seen[n] = true
	}
}

// LimitsConfig bounds what one remote address or one member may do
// (qlib.Limits, which documents each default and why; Protocol.md,
// "Limits"). A field left out takes its default; 0 turns that limit off.
type LimitsConfig struct {
	// Exempt lists the address ranges (CIDR, or a single address) that the
	// per-address limits leave alone: local tools, trusted proxies.
	// Default: 127.0.0.1/32 and ::1/128 only; [] exempts nothing.
	Exempt []string `json:"exempt"`
	// LinksPerAddress bounds the open links from one address (an IPv6
	// address counts as its /64).
	LinksPerAddress int `json:"linksPerAddress"`
	// RegistrationsPerHour bounds the accounts one address may create per
	// hour.
	RegistrationsPerHour int `json:"registrationsPerHour"`
	// LoginFailuresPerAddress and LoginFailuresPerUID are the failed logins
	// after which logins from that address, or to that uid, back off.
	LoginFailuresPerAddress int `json:"loginFailuresPerAddress"`
	LoginFailuresPerUID     int `json:"loginFailuresPerUID"`
	// PingsPerDay and InvitationsPerDay bound what one member may send per
	// 24 hours.
	PingsPerDay       int `json:"pingsPerDay"`
	InvitationsPerDay int `json:"invitationsPerDay"`
	// GroupsPerDay bounds the groups one member may create per 24 hours;
	// InvitationsPerInviteePerDay the invitations one member may send one
	// invitee per 24 hours.
	GroupsPerDay                int `json:"groupsPerDay"`
	InvitationsPerInviteePerDay int `json:"invitationsPerInviteePerDay"`
	// DevicesPerPost bounds the devices one post may store a message for,
	// after its groups are expanded; a post over it is refused with the ack
	// error "too many recipients: over N devices".
	DevicesPerPost int `json:"devicesPerPost"`
	// QueueBytesPerDevice is the backlog above which new messages for a
	// device are refused, with an ack error naming its user.
	QueueBytesPerDevice int64 `json:"queueBytesPerDevice"`
	// PreLoginBytes is the memory that links not logged in may hold, all
	// together, in buffers for headers longer than 512 bytes (64 KiB
	// each); a link that would take more is closed.
	PreLoginBytes int64 `json:"preLoginBytes"`
	// PreLoginLinks bounds the links not logged in, all together; at the
	// bound the oldest is closed to make room, or the newcomer refused.
	PreLoginLinks int `json:"preLoginLinks"`
}

// DefaultLimitsConfig is qlib.DefaultLimits in the configuration's terms.
func DefaultLimitsConfig() LimitsConfig {
	d := qlib.DefaultLimits()
	exempt := make([]string, len(d.Exempt))
	for i, p := range d.Exempt {
		exempt[i] = p.String()
	}
	return LimitsConfig{
		Exempt:                  exempt,
		LinksPerAddress:         d.LinksPerAddr,
		RegistrationsPerHour:    d.RegisterPerHour,
		LoginFailuresPerAddress: d.LoginFailuresPerAddr,
		LoginFailuresPerUID:     d.LoginFailuresPerUID,
		PingsPerDay:             d.PingsPerDay,
		InvitationsPerDay:       d.InvitesPerDay,
		DevicesPerPost:          d.DevicesPerPost,
		QueueBytesPerDevice:     d.QueueBytesPerDevice,
		PreLoginBytes:           d.PreLoginBytes,
		PreLoginLinks:           d.PreLoginLinks,

		GroupsPerDay:                d.GroupsPerDay,
		InvitationsPerInviteePerDay: d.InvitesPerInviteePerDay,
	}
}

// limitField is one counted limit of a LimitsConfig and its JSON name.
type limitField struct {
	name string
	v    *int
}

// counts lists the counted limits, for validation and defaults.
func (lc *LimitsConfig) counts() []limitField {
	return []limitField{
		{"linksPerAddress", &lc.LinksPerAddress},
		{"registrationsPerHour", &lc.RegistrationsPerHour},
		{"loginFailuresPerAddress", &lc.LoginFailuresPerAddress},
		{"loginFailuresPerUID", &lc.LoginFailuresPerUID},
		{"pingsPerDay", &lc.PingsPerDay},
		{"invitationsPerDay", &lc.InvitationsPerDay},
		{"groupsPerDay", &lc.GroupsPerDay},
		{"invitationsPerInviteePerDay", &lc.InvitationsPerInviteePerDay},
		{"devicesPerPost", &lc.DevicesPerPost},
		{"preLoginLinks", &lc.PreLoginLinks},
	}
}

// validate checks the limits; bad reports a fault by field path.
func (lc *LimitsConfig) validate(bad func(field, format string, args ...any)) {
	if len(lc.Exempt) > maxExemptRanges {
		bad("limits.exempt", "%d ranges, at most %d", len(lc.Exempt), maxExemptRanges)
	}
	for i, s := range lc.Exempt {
		if _, err := parseExempt(s); err != nil {
			bad(fmt.Sprintf("limits.exempt[%d]", i), "%v", err)
		}
	}
	for _, c := range lc.counts() {
		if *c.v < 0 || *c.v > maxLimitCount {
			bad("limits."+c.name, "%d is outside 0…%d (0 turns the limit off)", *c.v, maxLimitCount)
		}
	}
	if q := lc.QueueBytesPerDevice; q != 0 && (q < queueBytesLeast || q > queueBytesMost) {
		bad("limits.queueBytesPerDevice", "%d is outside %d…%d (or 0 for no limit)", q, int64(queueBytesLeast), int64(queueBytesMost))
	}
	if p := lc.PreLoginBytes; p != 0 && (p < preLoginBytesLeast || p > preLoginBytesMost) {
		bad("limits.preLoginBytes", "%d is outside %d…%d (or 0 for no limit)", p, int64(preLoginBytesLeast), int64(preLoginBytesMost))
	}
}

// fillDefaults gives every limit left out of the file its default; present
// holds the paths of the values the file sets (checkShape).
func (lc *LimitsConfig) fillDefaults(present map[string]bool) {
	def := DefaultLimitsConfig()
	if !present["limits.exempt"] {
		lc.Exempt = def.Exempt
	}
	defCounts := def.counts()
	for i, c := range lc.counts() {
		if !present["limits."+c.name] {
			*c.v = *defCounts[i].v
		}
	}
	if !present["limits.queueBytesPerDevice"] {
		lc.QueueBytesPerDevice = def.QueueBytesPerDevice
	}
	if !present["limits.preLoginBytes"] {
		lc.PreLoginBytes = def.PreLoginBytes
	}
}

// parseExempt reads one exempt range: a CIDR prefix, or a single address.
// A prefix with bits set past its length is refused: "10.1.2.3/8" is more
// likely a mistake for 10.1.2.3/32 than a way to write 10.0.0.0/8.
func parseExempt(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is neither an address range (CIDR) nor an address", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address range (CIDR): %v", s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q: write IPv4 ranges in IPv4 form", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("%q has address bits set past /%d: write %s, or %s/%d for the one address",
			s, p.Bits(), p.Masked(), p.Addr(), p.Addr().BitLen())
	}
	return p, nil
}

// Qlib returns the limits as qlib takes them. The configuration has been
// validated.
func (lc *LimitsConfig) Qlib() *qlib.Limits {
	exempt := make([]netip.Prefix, 0, len(lc.Exempt))
	for _, s := range lc.Exempt {
		if p, err := parseExempt(s); err == nil {
			exempt = append(exempt, p)
		}
	}
	return &qlib.Limits{
		Exempt:               exempt,
		LinksPerAddr:         lc.LinksPerAddress,
		RegisterPerHour:      lc.RegistrationsPerHour,
		LoginFailuresPerAddr: lc.LoginFailuresPerAddress,
		LoginFailuresPerUID:  lc.LoginFailuresPerUID,
		PingsPerDay:          lc.PingsPerDay,
		InvitesPerDay:        lc.InvitationsPerDay,
		DevicesPerPost:       lc.DevicesPerPost,
		QueueBytesPerDevice:  lc.QueueBytesPerDevice,
		PreLoginBytes:        lc.PreLoginBytes,
		PreLoginLinks:        lc.PreLoginLinks,

		GroupsPerDay:            lc.GroupsPerDay,
		InvitesPerInviteePerDay: lc.InvitationsPerInviteePerDay,
	}
}

// NTPConfig lists the NTP servers queried at start (see SyncClock).
type NTPConfig struct {
	// Hosts are "host", "host:port", "[ipv6]:port" or a bare IPv6 address,
	// queried in order; the default port is 123.
	Hosts []string `json:"hosts"`
	// Retries is how many times each host is tried before the next; 0 is
	// read as 1, so every listed host is always asked at least once.
	Retries int `json:"retries"`
	// Required refuses to start when no host answers, rather than falling
	// back to the local clock.
	Required bool `json:"required"`
	// MaxOffsetSeconds bounds the offset accepted from a host: NTP is
	// unauthenticated, and a spoofed answer would move message ids forward
	// for good. 0 or absent: DefaultNTPMaxOffset (SyncClock).
	MaxOffsetSeconds int `json:"maxOffsetSeconds,omitempty"`
	// CheckEveryMinutes is how often the offset is measured again while
	// the server runs (Clock.RunChecks), by the same rules as at start; 0
	// turns the re-checks off. Absent: DefaultNTPCheckEvery.
	CheckEveryMinutes int `json:"checkEveryMinutes"`
}

// ListenConfig is the TLS listener.
type ListenConfig struct {
	// Net is "tcp", "tcp4" or "tcp6", as for net.Listen.
	Net string `json:"net"`
	// Laddr is "host:port"; an empty host listens on all addresses. Port 0
	// picks a free port, which only tests want.
	Laddr string `json:"laddr"`
	// CertPath and KeyPath are PEM files: the certificate chain and its
	// private key.
	CertPath string `json:"certPath"`
	KeyPath  string `json:"keyPath"`
	// ACME, when set, gets the certificate from an ACME CA (Let's Encrypt
	// by default) and renews it (acme.go); certPath and keyPath are then
	// not read.
	ACME *ACMEConfig `json:"acme,omitempty"`
}

// AuthProvider is one third-party (OpenID Connect) identity provider, in the
// deployed server's shape (SPEC §8). Label, Login, Token and Std make what
// clients see in the tmtprev reply (see clientAuthBy); Keys, Iss and Aud are
// what the server needs to check a token, and stay on the server.
type AuthProvider struct {
	// Label is the provider's name on the client's sign-up button.
	Label string `json:"label"`
	// Login and Token are [url, param, param…]: where the client sends the
	// user to log in, and where it exchanges the result for a token, each
	// followed by the query params of that request, one "key=value" per
	// string.
	Login []string `json:"login"`
	Token []string `json:"token"`
	// Std holds the params that both requests carry (client_id,
	// redirect_uri), sent after each one's own.
	Std Params `json:"std"`
	// Keys is the URL of the provider's key set (JWKS); Iss and Aud are
	// the issuer and audience its tokens must name.
	Keys string `json:"keys"`
	Iss  string `json:"iss"`
	Aud  string `json:"aud"`
}

// Params is a list of query params, one "key=value" (or a bare "key") per
// string. It has a type of its own so that checkShape can explain the string
// form of std that mnm's first configurations had (errStdString).
type Params []string

// errStdString answers a std written as a string ("std": "oidc"), the form
// mnm's first configurations used before the deployed server's shape was
// adopted. It says what to write instead, since a bare type error would not.
var errStdString = errors.New(`a string is no longer accepted here ("std": "oidc" was an earlier form of mnm's): ` +
	`std is the list of params sent with both login and token, e.g. ` +
	`"std": ["client_id=ID", "redirect_uri=http://localhost:8123/u"], or [] for none`)

// UserDBDir is where the user database lives.
func (c *Config) UserDBDir() string { return filepath.Join(c.DataDir, "userdb") }

// QStoreDir is where the message queues live.
func (c *Config) QStoreDir() string { return filepath.Join(c.DataDir, "qstore") }

// DefaultConfig returns the configuration a first start writes: the site is
// named after the host, listens on DefaultListenAddr with the default
// self-signed pair, and uses the public NTP pool without requiring it (a
// server behind a firewall still starts, with a warning).
func DefaultConfig() *Config {
	return &Config{
		Name: defaultSiteName(),
		NTP: NTPConfig{
			Hosts:             []string{"0.pool.ntp.org", "1.pool.ntp.org", "2.pool.ntp.org", "3.pool.ntp.org"},
			Retries:           3,
			CheckEveryMinutes: defaultNTPCheckEveryMinutes,
		},
		Listen: ListenConfig{
			Net:      "tcp",
			Laddr:    DefaultListenAddr,
			CertPath: DefaultCertFile,
			KeyPath:  DefaultKeyFile,
		},
		AuthBy:       []AuthProvider{},
		MaxPostBytes: qlib.DefaultMaxPostBytes,
		MinFreeBytes: DefaultMinFreeBytes,
		Limits:       DefaultLimitsConfig(),

		AccountsPerIdentity: DefaultAccountsPerIdentity,
		TokenMaxAgeSeconds:  DefaultTokenMaxAgeSeconds,
		Admin:               AdminConfig{Laddr: admin.DefaultAddr},
	}
}

// defaultSiteName is the host name when it makes a valid site name, else
// "mnm".
func defaultSiteName() string {
	h, err := os.Hostname()
	if err != nil || checkPrintable(h, maxSiteNameBytes) != nil || h == "" {
		return "mnm"
	}
	return h
}

// LoadConfig reads, checks and resolves the configuration file at path. Every
// error names the file and the field at fault, so an operator can fix it
// without reading code. The certificate and key must be readable; when they
// are not, the error says how to make a pair. (With listen.acme they are not
// read; its directoryCA, if given, must be a PEM file.)
func LoadConfig(path string) (*Config, error) {
	data, err := readSmallFile(path, maxConfigFileBytes)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	cfg, err := parseConfig(data, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := cfg.Listen.checkFiles(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// readSmallFile reads a whole file of at most limit bytes.
func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// parseConfig decodes data, checks every value and resolves relative paths
// against dir. It touches no files, so it can be fuzzed.
func parseConfig(data []byte, dir string) (*Config, error) {
	data = stripComments(data)
	present, err := checkShape(data, reflect.TypeFor[Config]())
	if err != nil {
		return nil, err
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		// checkShape accepts only what Unmarshal accepts; this is a backstop.
		return nil, err
	}
	if err := cfg.validate(present); err != nil {
		return nil, err
	}
	if !present["minFreeBytes"] {
		cfg.MinFreeBytes = DefaultMinFreeBytes // 0 is a setting: no watermark
	}
	if !present["ntp.checkEveryMinutes"] {
		cfg.NTP.CheckEveryMinutes = defaultNTPCheckEveryMinutes // 0 is a setting: off
	}
	cfg.Limits.fillDefaults(present) // 0 is a setting: no limit
	cfg.Admin.fillDefaults(present)  // "" is a setting: off
	if cfg.Cluster != nil {
		cfg.Cluster.fillDefaults()
	}
	if !present["accountsPerIdentity"] {
		cfg.AccountsPerIdentity = DefaultAccountsPerIdentity // 0 is a setting: no bound
	}
	if !present["tokenMaxAgeSeconds"] {
		cfg.TokenMaxAgeSeconds = DefaultTokenMaxAgeSeconds // 0 is a setting: no check
	}
	cfg.resolve(dir)
	return &cfg, nil
}

// stripComments blanks out "//" comments that run to the end of a line
// outside JSON strings, so that the example configuration can explain itself.
// It replaces them with spaces rather than removing them, so that the
// decoder's error offsets still point at the right line and column.
func stripComments(data []byte) []byte {
	out := bytes.Clone(data)
	inString, escaped := false, false
	for i := 0; i < len(out); i++ {
		c := out[i]
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '/' && i+1 < len(out) && out[i+1] == '/':
			for ; i < len(out) && out[i] != '\n'; i++ {
				out[i] = ' '
			}
		}
	}
	return out
}

// checkShape walks the JSON document against the shape of t, because
// encoding/json reports neither the path of an unknown field nor duplicate
// keys, and an operator needs both to find a typo. It returns the paths of the
// values present and not null ("ntp.retries"), so that validation can tell a
// field set to zero from one left out.
//
// A key that starts with "#" is a comment, in any object at any depth, and
// its value (whatever it is) is skipped: the deployed server's example
// configuration explains itself with "#" keys and keeps disabled settings
// under "#authby", and operators' files copy it (SPEC §8). encoding/json
// ignores such keys too, since no field is named so.
//
// Keys match struct tags case-insensitively, as encoding/json matches them, so
// that configurations written with Go's default capitalised names still load;
// two keys that match the same field are an error rather than last-one-wins.
func checkShape(data []byte, t reflect.Type) (map[string]bool, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	w := shapeWalker{dec: dec, data: data, present: map[string]bool{}}
	if err := w.value(t, ""); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s: unexpected data after the configuration object", w.where())
	}
	return w.present, nil
}

// shapeWalker holds the state of one checkShape walk.
type shapeWalker struct {
	dec     *json.Decoder
	data    []byte
	present map[string]bool
}

// where locates the decoder in the file for an error message.
func (w *shapeWalker) where() string {
	off := min(int(w.dec.InputOffset()), len(w.data))
	return "line " + strconv.Itoa(1+bytes.Count(w.data[:off], []byte{'\n'}))
}

// token reads the next token, turning a syntax error into one that says where.
func (w *shapeWalker) token() (json.Token, error) {
	tok, err := w.dec.Token()
	if err == io.EOF {
		return nil, fmt.Errorf("%s: unexpected end of file", w.where())
	}
	if err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			off := min(int(se.Offset), len(w.data))
			return nil, fmt.Errorf("line %d: %w", 1+bytes.Count(w.data[:off], []byte{'\n'}), err)
		}
		return nil, fmt.Errorf("%s: %w", w.where(), err)
	}
	return tok, nil
}

// value checks the next JSON value against t; path names it in errors.
func (w *shapeWalker) value(t reflect.Type, path string) error {
	tok, err := w.token()
	if err != nil {
		return err
	}
	if tok == nil {
		// null leaves the field as if absent, as encoding/json does; the
		// encoder writes null for empty lists, so this keeps a written
		// configuration readable.
		return nil
	}
	w.present[path] = true
	if t.Kind() == reflect.Pointer {
		t = t.Elem() // an optional object (listen.acme)
	}
	switch t.Kind() {
	case reflect.Struct:
		if tok != json.Delim('{') {
			return jsonTypeError(path, "an object", tok)
		}
		return w.object(t, path)
	case reflect.Slice:
		if tok != json.Delim('[') {
			if _, isString := tok.(string); isString && t == reflect.TypeFor[Params]() {
				return fmt.Errorf("field %q: %w", path, errStdString)
			}
			return jsonTypeError(path, "a list", tok)
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.value(t.Elem(), path+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
		_, err := w.token() // ']'
		return err
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return jsonTypeError(path, "a string", tok)
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return jsonTypeError(path, "true or false", tok)
		}
	case reflect.Int, reflect.Int64:
		n, ok := tok.(json.Number)
		if !ok {
			return jsonTypeError(path, "an integer", tok)
		}
		if _, err := strconv.ParseInt(string(n), 10, t.Bits()); err != nil {
			return fmt.Errorf("field %q: want an integer of %d bits, got %s", path, t.Bits(), n)
		}
	default:
		// Only the kinds above occur in Config; a new field of another kind
		// must be added here, and this error makes that obvious in tests.
		return fmt.Errorf("field %q: unsupported kind %s", path, t.Kind())
	}
	return nil
}

// object checks the members of an object whose '{' was just read.
func (w *shapeWalker) object(t reflect.Type, path string) error {
	seen := map[string]bool{}
	for w.dec.More() {
		tok, err := w.token()
		if err != nil {
			return err
		}
		key, _ := tok.(string) // object keys are always strings
		if isCommentKey(key) {
			if err := w.skip(); err != nil {
				return err
			}
			continue
		}
		f, ok := fieldByJSONName(t, key)
		if !ok {
			return fmt.Errorf("unknown field %q", fieldPath(path, key))
		}
		name := jsonName(f)
		fpath := fieldPath(path, name)
		if seen[name] {
			return fmt.Errorf("duplicate field %q", fpath)
		}
		seen[name] = true
		if err := w.value(f.Type, fpath); err != nil {
			return err
		}
	}
	_, err := w.token() // '}'
	return err
}

// isCommentKey reports whether an object key is a comment (see checkShape).
func isCommentKey(key string) bool { return strings.HasPrefix(key, "#") }

// skip reads past the next value, whatever it is: a comment's value may be a
// list or an object with keys of its own. It counts nesting rather than
// recursing, so a deeply nested comment cannot exhaust the stack.
func (w *shapeWalker) skip() error {
	depth := 0
	for {
		tok, err := w.token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// fieldByJSONName finds the field of struct t that encoding/json would decode
// key into.
func fieldByJSONName(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if f.IsExported() && strings.EqualFold(jsonName(f), key) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// jsonName is the key of f in JSON: its tag name, else its Go name.
func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

func fieldPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonTypeError describes a value of the wrong JSON type.
func jsonTypeError(path, want string, got json.Token) error {
	var kind string
	switch v := got.(type) {
	case json.Delim:
		kind = map[json.Delim]string{'{': "an object", '[': "a list"}[v]
	case string:
		kind = "a string"
	case json.Number:
		kind = "a number"
	case bool:
		kind = "a boolean"
	case nil:
		kind = "null"
	}
	if path == "" {
		return fmt.Errorf("want %s at the top level, got %s", want, kind)
	}
	return fmt.Errorf("field %q: want %s, got %s", path, want, kind)
}

// validate checks every value, naming the field at fault, and reports all
// faults at once so that an operator fixes the file in one pass.
func (c *Config) validate(present map[string]bool) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}

	if c.Name == "" {
		bad("name", "must not be empty")
	} else if err := checkPrintable(c.Name, maxSiteNameBytes); err != nil {
		bad("name", "%v", err)
	}

	if len(c.NTP.Hosts) > maxNTPHosts {
		bad("ntp.hosts", "%d hosts, at most %d", len(c.NTP.Hosts), maxNTPHosts)
	}
	for i, h := range c.NTP.Hosts {
		if _, err := ntpAddress(h); err != nil {
			bad(fmt.Sprintf("ntp.hosts[%d]", i), "%v", err)
		}
	}
	if c.NTP.Required && len(c.NTP.Hosts) == 0 {
		bad("ntp.hosts", "empty, but ntp.required is true")
	}
	if c.NTP.MaxOffsetSeconds < 0 || c.NTP.MaxOffsetSeconds > maxNTPMaxOffsetSeconds {
		bad("ntp.maxOffsetSeconds", "%d is outside 0…%d (0 for the default, %d)", c.NTP.MaxOffsetSeconds, maxNTPMaxOffsetSeconds, int(DefaultNTPMaxOffset.Seconds()))
	}
	if c.NTP.Retries < 0 || c.NTP.Retries > maxNTPRetries {
		bad("ntp.retries", "%d is outside 0…%d", c.NTP.Retries, maxNTPRetries)
	}
	if c.NTP.CheckEveryMinutes < 0 || c.NTP.CheckEveryMinutes > maxNTPCheckEveryMinutes {
		bad("ntp.checkEveryMinutes", "%d is outside 0…%d (0 turns the re-checks off)", c.NTP.CheckEveryMinutes, maxNTPCheckEveryMinutes)
	}

	switch c.Listen.Net {
	case "tcp", "tcp4", "tcp6":
	default:
		bad("listen.net", "%q is not one of tcp, tcp4, tcp6", c.Listen.Net)
	}
	if err := checkListenAddr(c.Listen.Laddr); err != nil {
		bad("listen.laddr", "%v", err)
	}
	if c.Listen.ACME != nil {
		c.Listen.ACME.validate(bad, present)
	} else {
		if c.Listen.CertPath == "" {
			bad("listen.certPath", "must not be empty")
		}
		if c.Listen.KeyPath == "" {
			bad("listen.keyPath", "must not be empty")
		}
	}

	if c.Auth < 0 || c.Auth > 2 {
		bad("auth", "%d is not 0 (none), 1 (registration) or 2 (registration and login)", c.Auth)
	}
	providers := 0
	labels := map[string]bool{}
	for i, p := range c.AuthBy {
		field := fmt.Sprintf("authby[%d]", i)
		if isOptionalMarker(i, p) {
			// It carries nothing else; a comment-only entry
			// ({"#": "authentication optional"}) is one.
			if len(p.Login)+len(p.Token)+len(p.Std) > 0 || p.Keys+p.Iss+p.Aud != "" {
				bad(field, "an entry with an empty label (auth optional) must have no other fields")
			}
			continue
		}
		providers++
		errs = append(errs, p.validate(field, labels)...)
	}
	if providers > maxAuthProviders {
		bad("authby", "%d providers, at most %d (an empty first entry does not count)", providers, maxAuthProviders)
	}
	if c.Auth > 0 && providers == 0 {
		bad("authby", "auth is %d but no provider is listed", c.Auth)
	}
	if n := c.AccountsPerIdentity; n < 0 || n > maxAccountsPerIdentity {
		bad("accountsPerIdentity", "%d is outside 0…%d (0 for no bound)", n, maxAccountsPerIdentity)
	}
	if n := c.AwayAfterDays; n < 0 || n > maxAwayAfterDays {
		bad("awayAfterDays", "%d is outside 0…%d (0 for off)", n, maxAwayAfterDays)
	}
	if n := c.TokenMaxAgeSeconds; n != 0 && (n < tokenMaxAgeLeast || n > tokenMaxAgeMost) {
		bad("tokenMaxAgeSeconds", "%d is outside %d…%d (or 0 for no check)", n, tokenMaxAgeLeast, tokenMaxAgeMost)
	}
	if list, _, err := clientAuthBy(c.AuthBy); err != nil {
		bad("authby", "%v", err)
	} else if len(list) > maxClientAuthByBytes {
		bad("authby", "the providers take %d bytes in the tmtprev reply, at most %d: shorten labels, URLs or params, or list fewer providers",
			len(list), maxClientAuthByBytes)
	}

	if present["maxPostBytes"] && (c.MaxPostBytes <= 0 || c.MaxPostBytes > maxPostBytesLimit) {
		bad("maxPostBytes", "%d is outside 1…%d", c.MaxPostBytes, int64(maxPostBytesLimit))
	}
	if c.MinFreeBytes != 0 && (c.MinFreeBytes < minFreeBytesLeast || c.MinFreeBytes > maxPostBytesLimit) {
		bad("minFreeBytes", "%d is outside %d…%d (or 0 for no watermark)", c.MinFreeBytes, int64(minFreeBytesLeast), int64(maxPostBytesLimit))
	}
	if c.MaxLinks < 0 || c.MaxLinks > maxLinksLimit {
		bad("maxLinks", "%d is outside 0…%d (0 derives it from the file descriptor limit)", c.MaxLinks, maxLinksLimit)
	}
	if present["dataDir"] && c.DataDir == "" {
		bad("dataDir", "must not be empty when given (leave it out for the config file's directory)")
	}
	c.Limits.validate(bad)
	c.ReceiveOnly.validate(bad)
	c.Admin.validate(bad)
	if c.Cluster != nil {
		c.Cluster.validate(c, present, bad)
	}
	return errors.Join(errs...)
}

// validate checks one provider entry; labels collects the labels seen so far,
// because a client tells providers apart by label.
func (p *AuthProvider) validate(field string, labels map[string]bool) []error {
	var errs []error
	bad := func(sub, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	if p.Label == "" {
		bad("label", "must not be empty (only the first entry may have an empty label)")
	} else if err := checkPrintable(p.Label, maxAuthLabelBytes); err != nil {
		bad("label", "%v", err)
	} else if labels[p.Label] {
		bad("label", "%q appears twice", p.Label)
	}
	labels[p.Label] = true
	for _, ep := range []struct {
		name, example string
		v             []string
	}{
		{"login", `["https://id.example.com/authorize", "response_type=code", "scope=openid"]`, p.Login},
		{"token", `["https://id.example.com/token", "grant_type=authorization_code"]`, p.Token},
	} {
		if len(ep.v) == 0 {
			bad(ep.name, "want [url, param…], got nothing, e.g. %s", ep.example)
			continue
		}
		if err := checkAuthURL(ep.v[0]); err != nil {
			bad(ep.name+"[0]", "%v", err)
		}
		errs = append(errs, checkParams(field+"."+ep.name, ep.v[1:], 1)...)
		if n := len(p.clientEndpoint(ep.v)[1]); n > maxAuthFieldBytes {
			bad(ep.name, "its params and std's take %d bytes joined, at most %d", n, maxAuthFieldBytes)
		}
	}
	errs = append(errs, checkParams(field+".std", p.Std, 0)...)
	for _, f := range []struct{ name, v string }{{"keys", p.Keys}, {"iss", p.Iss}, {"aud", p.Aud}} {
		if err := checkPrintable(f.v, maxAuthFieldBytes); err != nil {
			bad(f.name, "%v", err)
		}
	}
	return errs
}

// isOptionalMarker reports whether entry i of authby is the empty first
// entry, which only makes third-party sign-up optional (SPEC §8): it is not
// a provider, is not counted and is not sent to clients.
func isOptionalMarker(i int, p AuthProvider) bool { return i == 0 && p.Label == "" }

// checkParams checks a list of query params; field names the list and first
// the index of its first param in it (login's params follow the URL).
func checkParams(field string, params []string, first int) []error {
	if len(params) > maxAuthParams {
		return []error{fmt.Errorf("%s: %d params, at most %d", field, len(params), maxAuthParams)}
	}
	var errs []error
	for i, s := range params {
		if err := checkParam(s); err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", field, first+i, err))
		}
	}
	return errs
}

// checkParam accepts one query param: "key=value", "key=" or a bare "key"
// (all are valid in a query, and are sent as written). Clients get the
// params joined with "&", so a param holding "&" would be several (each
// belongs in a string of its own) and one holding "#" would end the query.
func checkParam(s string) error {
	if s == "" {
		return errors.New(`empty param: leave it out ([url] alone sends no params)`)
	}
	if err := checkPrintable(s, maxAuthFieldBytes); err != nil {
		return err
	}
	if strings.HasPrefix(s, "=") {
		return fmt.Errorf("%q has no key before \"=\"", s)
	}
	if strings.Contains(s, "&") {
		return fmt.Errorf("%q holds \"&\": give each param a string of its own", s)
	}
	if strings.Contains(s, "#") {
		return fmt.Errorf("%q holds \"#\", which would end the query; write it as %%23", s)
	}
	return nil
}

// clientEndpoint is login or token (v) as the tmtprev reply carries it
// (SPEC §4 op 0): the URL and the params joined with "&", v's own first and
// then std's. A provider without params sends [url, ""]: clients expect
// exactly two strings. v is never empty once validated; an empty one gives
// two empty strings rather than a panic.
func (p *AuthProvider) clientEndpoint(v []string) [2]string {
	if len(v) == 0 {
		return [2]string{}
	}
	params := make([]string, 0, len(v)-1+len(p.Std))
	params = append(append(params, v[1:]...), p.Std...)
	return [2]string{v[0], strings.Join(params, "&")}
}

// checkPrintable accepts printable text of at most limit bytes: valid UTF-8
// with no control or format characters, which could hide or reorder text
// where these values end up, in logs and client UIs. It is the one check of
// printable text: the config's names and labels, and the user database's
// aliases and gids (checkAlias, checkGid).
func checkPrintable(s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%d bytes, at most %d", len(s), limit)
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("contains the unprintable character %U", r)
		}
	}
	return nil
}

// checkAuthURL accepts an absolute https URL, or http to a loopback host (a
// provider under test). Credentials and fragments are refused because the URL
// is sent to every client.
func checkAuthURL(s string) error {
	if len(s) > maxURLBytes {
		return fmt.Errorf("URL of %d bytes, at most %d", len(s), maxURLBytes)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %v", err)
	}
	if u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%q is not an absolute URL", s)
	}
	if u.User != nil {
		return errors.New("URL must not contain credentials (clients see it)")
	}
	if u.Fragment != "" {
		return errors.New("URL must not contain a fragment")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopbackHost(u.Hostname()) {
			return fmt.Errorf("%q: http is allowed only for loopback hosts; use https", s)
		}
	default:
		return fmt.Errorf("%q: scheme must be https", s)
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// checkListenAddr accepts "host:port" with a numeric port; an empty host
// listens on all addresses. Service names ("https") are refused: they depend
// on /etc/services and a number is clearer.
func checkListenAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", s, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number in 0…65535", s, port)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !isHostName(host) {
		return fmt.Errorf("%q: %q is neither an IP address nor a host name", s, host)
	}
	return nil
}

// isHostName reports whether s is a plausible DNS name: letters, digits,
// hyphens, underscores and dots, within DNS length limits.
func isHostName(s string) bool {
	const maxDNSName, maxDNSLabel = 253, 63
	if s == "" || len(s) > maxDNSName {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > maxDNSLabel {
			return false
		}
		for _, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}

// resolve fills in defaults and makes relative paths relative to dir, the
// config file's directory, so that mnm behaves the same whatever directory it
// is started from.
func (c *Config) resolve(dir string) {
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(dir, p)
	}
	if c.Listen.CertPath != "" || c.Listen.ACME == nil { // unused with acme, and may be left out
		c.Listen.CertPath = abs(c.Listen.CertPath)
	}
	if c.Listen.KeyPath != "" || c.Listen.ACME == nil {
		c.Listen.KeyPath = abs(c.Listen.KeyPath)
	}
	if c.DataDir == "" {
		c.DataDir = dir
	} else {
		c.DataDir = abs(c.DataDir)
	}
	if c.Listen.ACME != nil {
		c.Listen.ACME.resolve(abs, c.DataDir)
	}
	if c.Cluster != nil {
		c.Cluster.resolve(abs)
	}
	if c.MaxPostBytes == 0 {
		c.MaxPostBytes = qlib.DefaultMaxPostBytes
	}
	if c.AuthBy == nil {
		c.AuthBy = []AuthProvider{}
	}
	c.Admin.resolve(dir)
}

// checkReadable opens the certificate and key to catch a missing or unreadable
// file at configuration time, with advice on making a pair. NewCertReloader
// parses them.
func checkReadable(certPath, keyPath string) error {
	for _, f := range []struct{ field, path string }{{"listen.certPath", certPath}, {"listen.keyPath", keyPath}} {
		fh, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("%s: %w; %s", f.field, err, certHint(certPath, keyPath))
		}
		fh.Close()
	}
	return nil
}

// EnsureConfig prepares a first start in dir: when dir has no mnm.config it
// writes DefaultConfig there and, when the default certificate and key are
// both missing, a self-signed pair for the host name. It logs one line per
// file created and never overwrites a file. It returns the config path and
// whether the config was created.
//
// A lone certificate or key (left by a crash between the two writes, or by an
// operator) is an error: its partner cannot be recreated, and replacing it
// silently could change the identity clients have pinned.
func EnsureConfig(dir string, logger *slog.Logger) (path string, created bool, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	path = filepath.Join(dir, ConfigFileName)
	if _, err := os.Lstat(path); err == nil {
		return path, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return path, false, fmt.Errorf("config: %w", err)
	}

	cfg := DefaultConfig()
	certPath := filepath.Join(dir, cfg.Listen.CertPath)
	keyPath := filepath.Join(dir, cfg.Listen.KeyPath)
	certFound, err := pathExists(certPath)
	if err != nil {
		return path, false, fmt.Errorf("config: %w", err)
	}
	keyFound, err := pathExists(keyPath)
	if err != nil {
		return path, false, fmt.Errorf("config: %w", err)
	}
	switch {
	case certFound && keyFound:
		logger.Info("using existing tls certificate", "cert", certPath, "key", keyPath)
	case certFound || keyFound:
		return path, false, fmt.Errorf("config: found only one of %s and %s; remove it or supply its partner", certPath, keyPath)
	default:
		hosts := []string{cfg.Name}
		if err := CreateSelfSigned(certPath, keyPath, hosts); err != nil {
			return path, false, fmt.Errorf("config: %w", err)
		}
		logger.Info("created tls key", "path", keyPath)
		logger.Info("created self-signed tls certificate", "path", certPath, "hosts", hosts, "years", selfSignedYears,
			"advice", "a test site may keep it; any other site should use a certificate from a CA (README, Security)")
	}

	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return path, false, fmt.Errorf("config: %w", err)
	}
	data = append(data, '\n')
	// The config is written last: if mnm stops before this, the next start
	// runs this again and finds the pair already made.
	if err := writeFileOnce(path, data, 0o644); err != nil {
		return path, false, fmt.Errorf("config: %w", err)
	}
	logger.Info("created config", "path", path, "name", cfg.Name, "laddr", cfg.Listen.Laddr)
	return path, true, nil
}

// pathExists reports whether path names anything at all (Lstat: a dangling
// symlink counts, since writing through it would surprise).
func pathExists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

package main

// mnm admin: the operator's command for a running server, through its admin
// listener's JSON API (package admin, api.go).
//
//	mnm admin [-config F] [-addr HOST:PORT] [-token NAME] [-json] COMMAND
//
//	status                      the server's summary
//	users [-match S] [-limit N] members whose uid or an alias contains S
//	user UID|ALIAS              one member: names, groups, blocks, devices
//	queues [-top N]             the deepest device queues
//	revoke-device UID N         retire device N of member UID (a stolen one)
//	receive-only UID on|off     make member UID receive-only, or a full member
//	block UID NAME              block NAME (a uid or alias) for member UID
//	unblock UID NAME            remove NAME from member UID's block list
//
// The listener is found in the site's config (admin.laddr), and so is the
// token file (admin.tokenFile), whose first entry's secret is sent unless
// -token names another. Output is for a person (aligned tables, sizes and
// ages as a person reads them) unless -json asks for the API's own JSON.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"mnm/admin"
)

// adminUsage is printed on a usage error.
const adminUsage = `usage: mnm admin [-config F] [-addr HOST:PORT] [-token NAME] [-json] COMMAND
commands:
  status
  users [-match S] [-limit N]
  user UID|ALIAS
  queues [-top N]
  revoke-device UID N
  receive-only UID on|off
  block UID NAME
  unblock UID NAME`

// adminFlags are the flags every command takes.
type adminFlags struct {
	config, addr, token string
	json                bool
}

// register defines the flags on fs, defaulting to their values now, so that
// a command's own flag set accepts them after the command too without
// resetting what was given before it.
func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", f.config, "configuration file of the site, for admin.laddr and admin.tokenFile")
	fs.StringVar(&f.addr, "addr", f.addr, "the admin listener's address, instead of the config's admin.laddr")
	fs.StringVar(&f.token, "token", f.token, "the name of the token file's entry to send (default: the first)")
	fs.BoolVar(&f.json, "json", f.json, "print the API's JSON")
}

// adminCmd is one run of mnm admin.
type adminCmd struct {
	flags  adminFlags
	client *admin.Client
	out    io.Writer
	now    time.Time // for ages
}

// runAdmin is "mnm admin": exit 0, 1 when the server or the listener
// refuses or fails (its message printed), 2 on a usage error.
func runAdmin(args []string, stdout, stderr io.Writer) int {
	c := &adminCmd{flags: adminFlags{config: "mnm.config"}, out: stdout, now: time.Now()}
	fs := flag.NewFlagSet("mnm admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, adminUsage) }
	c.flags.register(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, adminUsage)
		return exitUsage
	}
	call, err := c.parse(fs.Arg(0), fs.Args()[1:], stderr)
	if err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintf(stderr, "mnm admin: %v\n", err)
		}
		fmt.Fprintln(stderr, adminUsage)
		return exitUsage
	}
	c.client, err = newAdminClient(c.flags.config, c.flags.addr, c.flags.token)
	if err == nil {
		err = call()
	}
	if err != nil {
		var se *admin.StatusError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "mnm admin: %s (%d %s)\n", se.Message, se.Code, strings.ToLower(http.StatusText(se.Code)))
		} else {
			fmt.Fprintf(stderr, "mnm admin: %v\n", err)
		}
		return exitFailure
	}
	return exitOK
}

// errUsage is a usage error already reported by the flag package.
var errUsage = errors.New("usage")

// parse reads command cmd's arguments and returns the call that runs it,
// or a usage error.
func (c *adminCmd) parse(cmd string, args []string, stderr io.Writer) (func() error, error) {
	fs := flag.NewFlagSet("mnm admin "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	c.flags.register(fs)
	var match string
	var limit, top int
	nargs := 0
	switch cmd {
	case "status":
	case "users":
		fs.StringVar(&match, "match", "", "list the members whose uid or an alias contains this")
		fs.IntVar(&limit, "limit", 0, "list at most this many (default: the listener's, 100)")
	case "user":
		nargs = 1
	case "queues":
		fs.IntVar(&top, "top", 0, "list this many queues (default: the listener's, 100)")
	case "revoke-device", "receive-only", "block", "unblock":
		nargs = 2
	default:
		return nil, fmt.Errorf("unknown command %q", cmd)
	}
	if err := fs.Parse(args); err != nil {
		return nil, errUsage
	}
	if fs.NArg() != nargs {
		return nil, fmt.Errorf("%s takes %d arguments, not %d", cmd, nargs, fs.NArg())
	}
	a := fs.Args()
	switch cmd {
	case "status":
		return c.status, nil
	case "users":
		q := url.Values{}
		if match != "" {
			q.Set("match", match)
		}
		if limit != 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		return func() error { return c.users(q, limit) }, nil
	case "user":
		return func() error { return c.user(a[0]) }, nil
	case "queues":
		q := url.Values{}
		if top != 0 {
			q.Set("top", strconv.Itoa(top))
		}
		return func() error { return c.queues(q) }, nil
	case "revoke-device":
		num, err := strconv.Atoi(a[1])
		if err != nil || num < 0 {
			return nil, fmt.Errorf("device number %q: want a number from 0", a[1])
		}
		return func() error { return c.revoke(a[0], num) }, nil
	case "receive-only":
		if a[1] != "on" && a[1] != "off" {
			return nil, fmt.Errorf("receive-only %s: want on or off, not %q", a[0], a[1])
		}
		return func() error { return c.receiveOnly(a[0], a[1] == "on") }, nil
	default: // block, unblock
		return func() error { return c.block(cmd, a[0], a[1]) }, nil
	}
}

// get fetches path into v, or prints its JSON as it came with -json; done
// is true when it printed.
func (c *adminCmd) get(path string, v any) (done bool, err error) {
	var raw json.RawMessage
	if err := c.client.Get(context.Background(), path, &raw); err != nil {
		return false, err
	}
	if c.flags.json {
		_, err := fmt.Fprintf(c.out, "%s\n", raw)
		return true, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("%s: reply: %w", path, err)
	}
	return false, nil
}

// post sends a change and returns whether it changed anything (for the
// changes that say), printing the reply as it came with -json.
func (c *adminCmd) post(path string, body any) (changed, done bool, err error) {
	var raw json.RawMessage
	if err := c.client.Post(context.Background(), path, body, &raw); err != nil {
		return false, false, err
	}
	if c.flags.json {
		_, err := fmt.Fprintf(c.out, "%s\n", raw)
		return false, true, err
	}
	var reply struct {
		Changed bool `json:"changed"`
	}
	if err := json.Unmarshal(raw, &reply); err != nil {
		return false, false, fmt.Errorf("%s: reply: %w", path, err)
	}
	return reply.Changed, false, nil
}

func (c *adminCmd) status() error {
	var st admin.Status
	if done, err := c.get("/api/status", &st); done || err != nil {
		return err
	}
	tw := newTable(c.out)
	fmt.Fprintf(tw, "site\t%s (mnm %s)\n", st.Site, st.Version)
	fmt.Fprintf(tw, "listen\t%s\n", st.Listen)
	fmt.Fprintf(tw, "up\t%s, since %s\n", roundAge(st.Now.Sub(st.Started)), st.Started.Local().Format(time.DateTime))
	if st.Ready {
		fmt.Fprintf(tw, "ready\tyes\n")
	} else {
		fmt.Fprintf(tw, "ready\tno: %s\n", st.NotReady)
	}
	free := "unknown"
	if st.FreeBytes >= 0 {
		free = byteSize(st.FreeBytes)
	}
	fmt.Fprintf(tw, "data\t%s: store %s, %s free\n", st.DataDir, byteSize(st.StoreBytes), free)
	if len(st.CertNames) > 0 {
		how := ""
		if st.CertACME {
			how = ", by ACME"
		}
		fmt.Fprintf(tw, "certificate\t%s, until %s (%s)%s\n", strings.Join(st.CertNames, ", "),
			st.CertUntil.Local().Format(time.DateOnly), untilAge(st.CertUntil.Sub(st.Now)), how)
	}
	if st.NTPSynced.IsZero() {
		fmt.Fprintf(tw, "clock\tthe local clock: NTP has not answered\n")
	} else {
		fmt.Fprintf(tw, "clock\t%+.3fs from NTP, checked %s\n", st.NTPOffset, ago(c.now, st.NTPSynced))
	}
	fmt.Fprintf(tw, "links\t%d open, %d logged in, %d parked\n", st.LinksOpen, st.LinksLoggedIn, st.LinksParked)
	fmt.Fprintf(tw, "members\t%d, %d online; %d groups\n", st.Users, st.UsersOnline, st.Groups)
	fmt.Fprintf(tw, "queued\t%d messages, %s, for %d devices", st.Queued, byteSize(st.QueuedBytes), st.BackloggedDevs)
	if !st.OldestQueued.IsZero() {
		fmt.Fprintf(tw, "; oldest %s", ago(st.Now, st.OldestQueued))
	}
	fmt.Fprintln(tw)
	return tw.Flush()
}

func (c *adminCmd) users(q url.Values, limit int) error {
	var us []admin.UserSummary
	if done, err := c.get("/api/users?"+q.Encode(), &us); done || err != nil {
		return err
	}
	tw := newTable(c.out)
	fmt.Fprintln(tw, "UID\tDEVICES\tONLINE\tRECEIVE-ONLY\tALIASES")
	for _, u := range us {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", u.UID, u.Devices, u.Online, yes(u.ReceiveOnly), list(u.Aliases))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if limit == 0 {
		limit = 100 // the listener's default (admin.defaultListLimit)
	}
	if len(us) == limit {
		_, err := fmt.Fprintf(c.out, "(the limit, %d, reached: -limit or -match for more)\n", limit)
		return err
	}
	return nil
}

func (c *adminCmd) user(name string) error {
	var u admin.UserDetail
	if done, err := c.get("/api/user/"+url.PathEscape(name), &u); done || err != nil {
		return err
	}
	tw := newTable(c.out)
	fmt.Fprintf(tw, "uid\t%s\n", u.UID)
	fmt.Fprintf(tw, "aliases\t%s\n", list(u.Aliases))
	if len(u.OnceAliases) > 0 {
		fmt.Fprintf(tw, "single-use\t%s\n", list(u.OnceAliases))
	}
	fmt.Fprintf(tw, "groups\t%s\n", list(u.Groups))
	fmt.Fprintf(tw, "blocks\t%s\n", list(u.Blocks))
	fmt.Fprintf(tw, "receive-only\t%s\n", map[bool]string{true: "yes", false: "no"}[u.ReceiveOnly])
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.out)
	tw = newTable(c.out)
	fmt.Fprintln(tw, "DEVICE\tLABEL\tSTATE\tLAST LOGIN\tQUEUED\tBYTES")
	for _, d := range u.Devices {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", d.Num, d.Label, state(d.Online, d.Away), ago(c.now, d.LastLogin), d.Queued, byteSize(d.QueuedBytes))
	}
	return tw.Flush()
}

func (c *adminCmd) queues(q url.Values) error {
	var qs []admin.QueueInfo
	if done, err := c.get("/api/queues?"+q.Encode(), &qs); done || err != nil {
		return err
	}
	if len(qs) == 0 {
		_, err := fmt.Fprintln(c.out, "no messages queued")
		return err
	}
	tw := newTable(c.out)
	fmt.Fprintln(tw, "UID\tDEVICE\tLABEL\tSTATE\tQUEUED\tBYTES\tOLDEST")
	for _, x := range qs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%s\n", x.UID, x.Num, orDash(x.Label), state(x.Online, false), x.Queued, byteSize(x.QueuedBytes), ago(c.now, x.Oldest))
	}
	return tw.Flush()
}

func (c *adminCmd) revoke(uid string, num int) error {
	_, done, err := c.post("/api/revoke-device", map[string]any{"uid": uid, "num": num})
	if done || err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.out, "device %d of %s revoked\n", num, uid)
	return err
}

func (c *adminCmd) receiveOnly(uid string, on bool) error {
	changed, done, err := c.post("/api/receive-only", map[string]any{"uid": uid, "on": on})
	if done || err != nil {
		return err
	}
	what := "a full member"
	if on {
		what = "receive-only"
	}
	if changed {
		_, err = fmt.Fprintf(c.out, "%s is %s now\n", uid, what)
	} else {
		_, err = fmt.Fprintf(c.out, "%s was %s already\n", uid, what)
	}
	return err
}

// block runs block or unblock.
func (c *adminCmd) block(cmd, uid, name string) error {
	changed, done, err := c.post("/api/"+cmd, map[string]any{"uid": uid, "name": name})
	if done || err != nil {
		return err
	}
	switch {
	case cmd == "block" && changed:
		_, err = fmt.Fprintf(c.out, "%s blocks %q now\n", uid, name)
	case cmd == "block":
		_, err = fmt.Fprintf(c.out, "%s blocked %q already\n", uid, name)
	case changed:
		_, err = fmt.Fprintf(c.out, "%s no longer blocks %q\n", uid, name)
	default:
		_, err = fmt.Fprintf(c.out, "%s did not block %q\n", uid, name)
	}
	return err
}

// newTable returns a writer aligning tab-separated columns.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// list joins names for a table cell; "-" for none.
func list(names []string) string {
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "-"
}

// state is a device's state as a table shows it.
func state(online, away bool) string {
	switch {
	case online:
		return "online"
	case away:
		return "away"
	}
	return "offline"
}

// ago is how long before now t was, as "3m ago"; "-" for a zero time.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return roundAge(now.Sub(t)) + " ago"
}

// untilAge is a time to come, as "in 30d", or "expired".
func untilAge(d time.Duration) string {
	if d < 0 {
		return "expired " + roundAge(-d) + " ago"
	}
	return "in " + roundAge(d)
}

// roundAge writes d in its largest whole unit: 42s, 3m, 5h, 12d. Under two
// of a unit, the next smaller one is kept (90m, not 1h), which is closer.
func roundAge(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

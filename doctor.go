package main

// `mnm check ADDRESS`: a doctor for any TMTP server, ours or another. It
// walks the path a member's client takes (name lookup, TCP, TLS, the
// certificate, the tmtprev reply) and reports each step as a finding in
// the style of the local check, with its time. With -register it also makes
// a real round trip through the server's queues, which leaves an account
// behind. The TMTP side uses testclient, the same client the end-to-end
// tests use; only the steps below TMTP (lookup, connect, handshake) are done
// here, so that each can be timed and reported on its own.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"syscall"
	"time"

	"mnm/testclient"
)

// doctorTimeout is the default bound on each network step: ample for a
// loaded server to fsync a post, short enough that an operator does not
// give up on a server that will never answer before the doctor does.
const doctorTimeout = 10 * time.Second

// doctorLabel is the device label of the account -register makes, so that an
// operator who finds it among the site's users knows where it came from.
const doctorLabel = "mnm check"

// maxCAFileBytes bounds the -ca file: a bundle of every public root is
// about 200 KB.
const maxCAFileBytes = 4 << 20

// doctorFlags are the flags of `mnm check` that apply to an ADDRESS. They are
// defined on runCheck's flag set so that `mnm check -json =host:port` parses
// like `mnm check =host:port -json`.
type doctorFlags struct {
	register *bool
	timeout  *time.Duration
	ca       *string
	json     *bool
}

func addDoctorFlags(fset *flag.FlagSet) doctorFlags {
	return doctorFlags{
		register: fset.Bool("register", false, "with ADDRESS: also register a throwaway account and post to it (the account stays on the server)"),
		timeout:  fset.Duration("timeout", doctorTimeout, "with ADDRESS: limit on each network step"),
		ca:       fset.String("ca", "", "with ADDRESS: PEM file of extra root certificates to trust (a private CA)"),
		json:     fset.Bool("json", false, "with ADDRESS: print the findings as a JSON list"),
	}
}

// wantsDoctor reports whether runCheck was asked to diagnose a server: an
// argument, or a flag that only the doctor takes (runDoctor then says that
// it needs an ADDRESS).
func wantsDoctor(fset *flag.FlagSet) bool {
	set := fset.NArg() > 0
	fset.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "register", "timeout", "ca", "json":
			set = true
		}
	})
	return set
}

// runDoctor is `mnm check [flags] ADDRESS [flags]`, after runCheck parsed the
// flags before ADDRESS. It exits 1 when any finding is a failure.
func runDoctor(fset *flag.FlagSet, df doctorFlags, stdout, stderr io.Writer) int {
	if fset.NArg() == 0 {
		fmt.Fprintln(stderr, "mnm check: -register, -timeout, -ca and -json need an ADDRESS (=host:port or +host:port)")
		return exitUsage
	}
	site := fset.Arg(0)
	if err := fset.Parse(fset.Args()[1:]); err != nil {
		return exitUsage
	}
	if fset.NArg() > 0 {
		fmt.Fprintf(stderr, "mnm check: unexpected argument %q\n", fset.Arg(0))
		return exitUsage
	}
	configSet := false
	fset.Visit(func(f *flag.Flag) { configSet = configSet || f.Name == "config" })
	if configSet {
		fmt.Fprintln(stderr, "mnm check: -config checks a local site, ADDRESS a server over the network: give one of them")
		return exitUsage
	}
	target, err := parseDoctorTarget(site)
	if err != nil {
		fmt.Fprintf(stderr, "mnm check: %v\n", err)
		return exitUsage
	}
	if *df.timeout <= 0 {
		fmt.Fprintln(stderr, "mnm check: -timeout must be positive")
		return exitUsage
	}
	roots, err := doctorRoots(*df.ca)
	if err != nil {
		fmt.Fprintf(stderr, "mnm check: %v\n", err)
		return exitUsage
	}
	r := &doctorReport{found: []finding{}}
	if !*df.json {
		r.human = &checkReport{w: stdout}
	}
	d := &doctor{target: target, timeout: *df.timeout, roots: roots, caPath: *df.ca,
		register: *df.register, now: time.Now, r: r}
	d.run()
	if *df.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r.found); err != nil {
			fmt.Fprintf(stderr, "mnm check: %v\n", err)
			return exitFailure
		}
	}
	if r.failed {
		return exitFailure
	}
	return exitOK
}

// doctorTarget is a site address as members are given it (SPEC §8).
type doctorTarget struct {
	site   string // as given, for the report
	addr   string // host:port
	host   string
	port   string
	verify bool // "+": members' clients verify the certificate
}

// parseDoctorTarget reads "=host:port" (self-signed: clients skip
// verification), "+host:port" (verified against the system roots) or a bare
// "host:port", which is taken as "+": the stricter reading, so that a
// doctor's "ok" never hides what a verifying client would refuse.
func parseDoctorTarget(site string) (doctorTarget, error) {
	t := doctorTarget{site: site, addr: site, verify: true}
	switch {
	case strings.HasPrefix(site, "="):
		t.addr, t.verify = site[1:], false
	case strings.HasPrefix(site, "+"):
		t.addr = site[1:]
	}
	host, port, err := net.SplitHostPort(t.addr)
	if err != nil || host == "" || port == "" {
		return doctorTarget{}, fmt.Errorf("address %q is not =host:port, +host:port or host:port", site)
	}
	t.host, t.port = host, port
	return t, nil
}

// doctorRoots returns the system roots plus the certificates in caPath, if
// given. A -ca file that holds no certificate is an error: the operator
// meant to trust something.
func doctorRoots(caPath string) (*x509.CertPool, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool() // a system without a root store trusts only -ca
	}
	if caPath == "" {
		return roots, nil
	}
	pem, err := readSmallFile(caPath, maxCAFileBytes)
	if err != nil {
		return nil, fmt.Errorf("-ca: %w", err)
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-ca: %s holds no PEM certificate", caPath)
	}
	return roots, nil
}

// finding is one line of the report. The numeric fields are set where they
// mean something, for -json; the text says the same for a person.
type finding struct {
	Level  checkLevel `json:"level"`
	Topic  string     `json:"topic"`
	Text   string     `json:"text"`
	MS     *float64   `json:"ms,omitempty"`     // how long the step took
	Days   *int       `json:"days,omitempty"`   // until the certificate expires; negative once it has
	Certs  *int       `json:"certs,omitempty"`  // certificates the server sent
	Auth   *int64     `json:"auth,omitempty"`   // the site's auth mode
	SHA256 string     `json:"sha256,omitempty"` // the certificate's fingerprint
}

// doctorReport collects findings; without -json it also prints each as it
// comes, in the local check's format.
type doctorReport struct {
	human  *checkReport // nil with -json
	found  []finding
	failed bool
}

func (r *doctorReport) emit(f finding) {
	if f.Level == checkFail {
		r.failed = true
	}
	r.found = append(r.found, f)
	if r.human != nil {
		r.human.add(f.Level, f.Topic, "%s", f.Text)
	}
}

func (r *doctorReport) add(level checkLevel, topic, format string, args ...any) {
	r.emit(finding{Level: level, Topic: topic, Text: fmt.Sprintf(format, args...)})
}

// timed adds a finding about a step that took d.
func (r *doctorReport) timed(level checkLevel, topic string, d time.Duration, format string, args ...any) {
	ms := math.Round(float64(d.Microseconds())/10) / 100
	r.emit(finding{Level: level, Topic: topic, Text: fmt.Sprintf(format, args...), MS: &ms})
}

// fmtMS formats a step's time for a person.
func fmtMS(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}

// doctor diagnoses one server.
type doctor struct {
	target   doctorTarget
	timeout  time.Duration
	roots    *x509.CertPool // the system roots plus -ca
	caPath   string
	register bool
	now      func() time.Time // the certificate's expiry is judged against it
	r        *doctorReport
}

// run walks the steps in the order a client takes them, stopping at the first
// that leaves nothing further to look at.
func (d *doctor) run() {
	if d.target.verify {
		d.r.add(checkInfo, "address", "%s: the certificate must verify, as members' clients require for +host:port", d.target.site)
	} else {
		d.r.add(checkInfo, "address", "%s: the certificate is not verified, as members' clients skip it for =host:port", d.target.site)
	}
	nc := d.connect()
	if nc == nil {
		return
	}
	tc := d.handshake(nc)
	if tc == nil {
		return
	}
	trusted := d.certificate(tc.ConnectionState())
	rev := d.tmtprev(tc)
	if rev == nil {
		return
	}
	d.site(rev)
	switch {
	case !d.register:
		d.r.add(checkInfo, "round trip", "not tried: -register makes one, leaving a throwaway account on the server")
	case !trusted:
		d.r.add(checkWarn, "round trip", "skipped: members' clients would refuse this certificate (above)")
	default:
		d.roundTrip()
	}
}

// connect looks the host up and opens TCP to the first address that answers,
// as net.Dial does, but reporting each step.
func (d *doctor) connect() net.Conn {
	ips := []string{d.target.host}
	if net.ParseIP(d.target.host) == nil {
		ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
		start := time.Now()
		addrs, err := net.DefaultResolver.LookupHost(ctx, d.target.host)
		took := time.Since(start)
		cancel()
		if err != nil {
			d.r.timed(checkFail, "dns", took, "%s: %v", d.target.host, err)
			return nil
		}
		d.r.timed(checkOK, "dns", took, "%s is %s, looked up in %s", d.target.host, strings.Join(addrs, ", "), fmtMS(took))
		ips = addrs
	}
	for i, ip := range ips {
		addr := net.JoinHostPort(ip, d.target.port)
		ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
		start := time.Now()
		var dialer net.Dialer
		nc, err := dialer.DialContext(ctx, "tcp", addr)
		took := time.Since(start)
		cancel()
		if err == nil {
			d.r.timed(checkOK, "tcp", took, "connected to %s in %s", addr, fmtMS(took))
			return nc
		}
		level := checkFail
		if i < len(ips)-1 {
			level = checkWarn // the next address may answer
		}
		hint := ""
		if errors.Is(err, syscall.ECONNREFUSED) {
			hint = ": nothing listens there; is the server running, on this port?"
		} else if errors.Is(err, context.DeadlineExceeded) {
			hint = fmt.Sprintf(": no answer within %s; a firewall dropping packets?", d.timeout)
		}
		d.r.timed(level, "tcp", took, "%s: %v%s", addr, err, hint)
	}
	return nil
}

// handshake runs TLS on nc. Verification is left to certificate, so that a
// certificate a client would refuse is still described.
func (d *doctor) handshake(nc net.Conn) *tls.Conn {
	tc := tls.Client(nc, &tls.Config{ServerName: d.target.host, InsecureSkipVerify: true})
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	start := time.Now()
	err := tc.HandshakeContext(ctx)
	took := time.Since(start)
	if err != nil {
		nc.Close()
		hint := ""
		var rec tls.RecordHeaderError
		if errors.As(err, &rec) {
			hint = ": the server does not speak TLS; is this the TMTP port?"
		} else if errors.Is(err, context.DeadlineExceeded) {
			hint = fmt.Sprintf(": no handshake within %s; the server accepted the connection but does not answer", d.timeout)
		}
		d.r.timed(checkFail, "tls", took, "handshake failed after %s: %v%s", fmtMS(took), err, hint)
		return nil
	}
	st := tc.ConnectionState()
	d.r.timed(checkOK, "tls", took, "%s, %s, handshake in %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), fmtMS(took))
	return tc
}

// certificate describes the certificate the server sent: names, issuer,
// expiry, whether it verifies, fingerprint. It reports whether members'
// clients would accept it.
func (d *doctor) certificate(st tls.ConnectionState) bool {
	certs := st.PeerCertificates
	if len(certs) == 0 {
		d.r.add(checkFail, "certificate", "the server sent none")
		return false
	}
	leaf, now := certs[0], d.now()

	covered := leaf.VerifyHostname(d.target.host) == nil
	names := fmt.Sprintf("subject %q, names %s", leaf.Subject.String(), certNames(leaf))
	switch {
	case covered:
		d.r.add(checkOK, "names", "%s: covers %s", names, d.target.host)
	case d.target.verify:
		d.r.add(checkFail, "names", "%s: does not cover %s, so members' clients refuse it", names, d.target.host)
	default:
		d.r.add(checkInfo, "names", "%s: does not cover %s, which =host:port does not check", names, d.target.host)
	}

	n := len(certs)
	issuer := fmt.Sprintf("issued by %q", leaf.Issuer.String())
	selfSigned := isSelfSigned(leaf)
	if selfSigned {
		issuer = "self-signed"
	}
	d.r.emit(finding{Level: checkInfo, Topic: "issuer", Certs: &n,
		Text: fmt.Sprintf("%s; the server sent %d certificate(s)", issuer, n)})

	left := leaf.NotAfter.Sub(now)
	days := int(left.Hours() / 24) // whole days, toward zero: as the local check counts
	expiry := finding{Topic: "expiry", Days: &days}
	date := leaf.NotAfter.UTC().Format(time.DateOnly)
	switch {
	case now.Before(leaf.NotBefore):
		expiry.Level, expiry.Text = checkFail, fmt.Sprintf("not valid before %s: the server's clock, or this one, is wrong", leaf.NotBefore.UTC().Format(time.RFC3339))
	case left <= 0:
		expiry.Level, expiry.Text = checkFail, fmt.Sprintf("expired on %s: renew it (SIGHUP reloads it on an mnm server)", date)
	case left < certRenewSoon:
		expiry.Level, expiry.Text = checkWarn, fmt.Sprintf("expires on %s, in %d days: renew it", date, days)
	default:
		expiry.Level, expiry.Text = checkOK, fmt.Sprintf("expires on %s, in %d days", date, days)
	}
	d.r.emit(expiry)

	rootsName := "the system roots"
	if d.caPath != "" {
		rootsName += " and " + d.caPath
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, verr := leaf.Verify(x509.VerifyOptions{Roots: d.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	switch {
	case verr == nil && d.target.verify:
		d.r.add(checkOK, "verify", "chain verified against %s", rootsName)
	case verr == nil:
		d.r.add(checkInfo, "verify", "not needed for =host:port, but the chain verifies against %s: members could add the site as +%s", rootsName, d.target.addr)
	case d.target.verify && selfSigned:
		d.r.add(checkFail, "verify", "%v: a self-signed certificate; members add such a site as =%s, or pass its certificate with -ca", verr, d.target.addr)
	case d.target.verify:
		d.r.add(checkFail, "verify", "%v (against %s): members' clients refuse it", verr, rootsName)
	default:
		d.r.add(checkInfo, "verify", "not verified, as for any =host:port site: members compare the fingerprint below with the one the server logs (against %s: %v)", rootsName, verr)
	}
	fp := certFingerprint(leaf)
	d.r.emit(finding{Level: checkInfo, Topic: "fingerprint", Text: "sha256 " + fp, SHA256: fp})
	return !d.target.verify || (verr == nil && covered)
}

// certNames lists the DNS names and IP addresses a certificate is for.
func certNames(c *x509.Certificate) string {
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// tmtprevVersion is the protocol version this doctor asks for and expects
// back (SPEC §4 op 0).
const tmtprevVersion = "1"

// tmtprev sends TmtpRev, asking for the extensions, reads the reply and
// closes the link: the site's reply is all it is for. A link that does not
// go on to Register or Login within the server's 5 s is closed by the server
// anyway.
func (d *doctor) tmtprev(tc *tls.Conn) *testclient.Frame {
	conn := testclient.NewConn(tc)
	defer conn.Close()
	conn.SetReadTimeout(d.timeout)
	conn.SetWriteTimeout(d.timeout)
	start := time.Now()
	err := conn.WriteFrame(map[string]any{"Op": 0, "Id": tmtprevVersion, "Ext": 1}, nil)
	var f *testclient.Frame
	if err == nil {
		f, err = conn.ReadFrame()
	}
	took := time.Since(start)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		d.r.timed(checkFail, "tmtprev", took, "no reply within %s: not a TMTP server, or one that hangs", d.timeout)
		return nil
	case errors.Is(err, testclient.ErrHeaderLength) || errors.Is(err, testclient.ErrHeader):
		d.r.timed(checkFail, "tmtprev", took, "the reply is not a TMTP frame, so this is not a TMTP server (%v)", err)
		return nil
	case errors.Is(err, io.EOF):
		d.r.timed(checkFail, "tmtprev", took, "the server closed the link without a reply")
		return nil
	case err != nil:
		d.r.timed(checkFail, "tmtprev", took, "%v", err)
		return nil
	case f.Op() == "quit":
		d.r.timed(checkFail, "tmtprev", took, "the server quit: %q", f.Str("error"))
		return nil
	case f.Op() != "tmtprev":
		d.r.timed(checkFail, "tmtprev", took, "the reply is %s, not tmtprev", f)
		return nil
	}
	if err := testclient.CheckFrame(f); err != nil {
		d.r.add(checkWarn, "tmtprev", "the reply breaks the wire format (SPEC §1): %v", err)
	}
	if v := f.Str("id"); v != tmtprevVersion {
		d.r.timed(checkWarn, "tmtprev", took, "protocol version %q, not %q, in %s", v, tmtprevVersion, fmtMS(took))
	} else {
		d.r.timed(checkOK, "tmtprev", took, "protocol version %s, reply in %s", v, fmtMS(took))
	}
	return f
}

// site describes the tmtprev reply: name, auth mode, providers, extensions.
func (d *doctor) site(f *testclient.Frame) {
	if name := f.Str("name"); name == "" {
		d.r.add(checkWarn, "site", "no site name in the reply: members' clients show an empty name")
	} else {
		d.r.add(checkInfo, "site", "name %q", name)
	}

	auth := f.Int("auth")
	meaning := map[int64]string{
		0: "anyone may register; no third-party token",
		1: "registering needs a token from a provider below (unless the site makes it optional, which the reply does not tell); login is by device as usual",
		2: "registering and logging in need a token from a provider below",
	}
	level, text := checkInfo, meaning[auth]
	if text == "" {
		level, text = checkWarn, "unknown mode: the deployed client knows 0, 1 and 2"
	}
	d.r.emit(finding{Level: level, Topic: "auth", Auth: &auth, Text: fmt.Sprintf("%d: %s", auth, text)})

	var providers []string
	list, _ := f.Head["authby"].([]any)
	for _, p := range list {
		m, _ := p.(map[string]any)
		label, _ := m["label"].(string)
		providers = append(providers, fmt.Sprintf("%q", label))
	}
	switch {
	case auth > 0 && len(providers) == 0:
		d.r.add(checkWarn, "providers", "none, though auth is %d: members cannot get a token", auth)
	case len(providers) > maxAuthProviders:
		d.r.add(checkWarn, "providers", "%d, over the %d of SPEC §7 that the deployed client expects: %s", len(providers), maxAuthProviders, strings.Join(providers, ", "))
	case len(providers) > 0:
		d.r.add(checkInfo, "providers", "%s", strings.Join(providers, ", "))
	}

	if !f.Has("ext") {
		d.r.add(checkInfo, "extensions", "none listed: the server offers none, or predates the list (as the deployed server does)")
	} else if ext := f.Strings("ext"); len(ext) == 0 {
		d.r.add(checkInfo, "extensions", "none")
	} else {
		d.r.add(checkInfo, "extensions", "%s", strings.Join(ext, ", "))
	}
}

// reasonAuthRequired is the quit a site that needs a token gives a Register
// without one (SPEC §2).
const reasonAuthRequired = "authentication required"

// roundTrip registers a throwaway account, posts to its own uid and waits
// for the ack and for the delivery back to the same device, then acks the
// delivery and quits. A post listing the sender's own uid (type 1) is
// delivered to the posting device itself (SPEC §5), so one device makes a
// complete round trip through the server's durable queue.
func (d *doctor) roundTrip() {
	d.r.add(checkInfo, "round trip", "registers a throwaway account (device %q) that stays on the server: nothing here can delete it", doctorLabel)
	var o testclient.Options // nil TLS: not verified, as for =host:port
	if d.target.verify {
		o.TLS = &tls.Config{RootCAs: d.roots}
	}
	o.Timeout = d.timeout
	start := time.Now()
	c, reg, err := testclient.Register(d.target.addr, doctorLabel, "_", o)
	took := time.Since(start)
	var quit *testclient.QuitError
	switch {
	case errors.As(err, &quit) && quit.Reason == reasonAuthRequired:
		d.r.timed(checkWarn, "register", took, "refused with %q: the site needs a third-party token to register, so no round trip", quit.Reason)
		return
	case err != nil:
		d.r.timed(checkFail, "register", took, "%v", err)
		return
	}
	defer c.Close()
	d.r.timed(checkOK, "register", took, "account %s registered in %s (connect, TLS, tmtprev, register); it stays on the server", reg.UID, fmtMS(took))

	data := fmt.Appendf(nil, "mnm check round trip %s", start.UTC().Format(time.RFC3339Nano))
	start = time.Now()
	acked, err := c.PostAsync([]testclient.Recipient{{ID: reg.UID, Type: testclient.ToUser}}, data)
	if err != nil {
		d.r.add(checkFail, "post", "%v", err)
		return
	}
	timer := time.NewTimer(d.timeout)
	defer timer.Stop()
	var msgID, deliveredID string
	for msgID == "" || deliveredID == "" {
		select {
		case res := <-acked:
			took := time.Since(start)
			acked = nil
			switch {
			case res.Err != nil:
				d.r.timed(checkFail, "post", took, "no ack: %v", res.Err)
				return
			case res.Ack.Error != "":
				d.r.timed(checkFail, "post", took, "refused: %q", res.Ack.Error)
				return
			}
			msgID = res.Ack.MsgID
			d.r.timed(checkOK, "post", took, "post to its own uid acked (stored) in %s", fmtMS(took))
		case f, ok := <-c.Messages():
			took := time.Since(start)
			if !ok {
				d.r.timed(checkFail, "delivery", took, "the link ended: %v", c.Err())
				return
			}
			// Anything else queued for the device is acked so that the
			// next message comes; a new account has nothing, normally.
			if err := c.Ack(f.Str("id")); err != nil {
				d.r.timed(checkFail, "delivery", took, "ack: %v", err)
				return
			}
			if f.Op() != "delivery" || !bytes.Equal(f.Data, data) {
				continue
			}
			deliveredID = f.Str("id")
			d.r.timed(checkOK, "delivery", took, "delivered back to the posting device %s after the post, and acked", fmtMS(took))
		case <-timer.C:
			if msgID == "" {
				d.r.add(checkFail, "post", "no ack within %s", d.timeout)
			} else {
				d.r.add(checkFail, "delivery", "the post was acked but not delivered within %s", d.timeout)
			}
			return
		}
	}
	if msgID != deliveredID {
		d.r.add(checkWarn, "delivery", "delivered as message %s, but acked as %s", deliveredID, msgID)
	}
	start = time.Now()
	err = c.Quit()
	took = time.Since(start)
	if err != nil {
		d.r.timed(checkWarn, "quit", took, "%v", err)
		return
	}
	d.r.timed(checkOK, "quit", took, "logout ok in %s", fmtMS(took))
}

package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeBackend records what the listener asks of it and answers from its
// fields.
type fakeBackend struct {
	mu    sync.Mutex
	calls []string // "method arg,arg"
	err   error    // returned by every method that returns an error
}

func (f *fakeBackend) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeBackend) lastCall() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return ""
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakeBackend) Status() Status { return Status{Site: "fake", Users: 3} }
func (f *fakeBackend) Ready() error   { return nil }

func (f *fakeBackend) Users(match string, limit int) ([]UserSummary, error) {
	f.record("Users %s,%d", match, limit)
	return []UserSummary{{UID: "u1", Aliases: []string{"alice"}}}, f.err
}

func (f *fakeBackend) User(name string) (*UserDetail, error) {
	f.record("User %s", name)
	if f.err != nil {
		return nil, f.err
	}
	return &UserDetail{UID: "u1"}, nil
}

func (f *fakeBackend) Queues(top int) ([]QueueInfo, error) {
	f.record("Queues %d", top)
	return nil, f.err
}

func (f *fakeBackend) RevokeDevice(uid string, num int) error {
	f.record("RevokeDevice %s,%d", uid, num)
	return f.err
}

func (f *fakeBackend) SetReceiveOnly(uid string, on bool) (bool, error) {
	f.record("SetReceiveOnly %s,%t", uid, on)
	return true, f.err
}

func (f *fakeBackend) Block(uid, name string) (bool, error) {
	f.record("Block %s,%s", uid, name)
	return true, f.err
}

func (f *fakeBackend) Unblock(uid, name string) (bool, error) {
	f.record("Unblock %s,%s", uid, name)
	return false, f.err
}

func (f *fakeBackend) Backup(w io.Writer) error { return f.err }

// testSecret is a token secret long enough for ParseTokens.
const testSecret = "0123456789abcdefghijklmnop"

// newTestServer returns a listener on a fake backend, with the token
// alice/testSecret, logging to the returned buffer.
func newTestServer(t *testing.T) (*Server, *fakeBackend, *bytes.Buffer) {
	t.Helper()
	fb := &fakeBackend{}
	var logs bytes.Buffer
	s := New(Options{
		Backend:  fb,
		Gatherer: prometheus.NewRegistry(),
		Tokens:   []Token{{Name: "alice", Secret: testSecret}},
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	t.Cleanup(s.Close)
	return s, fb, &logs
}

// req is one request to the listener: from remote (RemoteAddr), naming
// host, with the bearer token when set.
type req struct {
	method, path string
	remote, host string
	token        string
	ctype        string
	body         string
}

// local is a request's origin on loopback, naming loopback.
const localRemote, localHost = "127.0.0.1:40000", "127.0.0.1:5480"

func (s *Server) do(r req) *httptest.ResponseRecorder {
	if r.method == "" {
		r.method = http.MethodGet
	}
	if r.remote == "" {
		r.remote = localRemote
	}
	if r.host == "" {
		r.host = localHost
	}
	hr := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
	hr.RemoteAddr, hr.Host = r.remote, r.host
	if r.token != "" {
		hr.Header.Set("Authorization", "Bearer "+r.token)
	}
	if r.ctype != "" {
		hr.Header.Set("Content-Type", r.ctype)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, hr)
	return w
}

// errorText decodes a reply's {"error"}.
func errorText(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error reply %q: %v", w.Body.String(), err)
	}
	return e.Error
}

func TestAdmission(t *testing.T) {
	s, _, _ := newTestServer(t)
	for _, tc := range []struct {
		name         string
		remote, host string
		auth         string // the whole Authorization header
		want         int
	}{
		{"loopback tokenless", localRemote, localHost, "", http.StatusOK},
		{"loopback named localhost", localRemote, "localhost:5480", "", http.StatusOK},
		{"IPv6 loopback", "[::1]:40000", "[::1]:5480", "", http.StatusOK},
		{"IPv4-mapped loopback", "[::ffff:127.0.0.1]:40000", localHost, "", http.StatusOK},
		{"tokenless from afar", "192.0.2.7:40000", localHost, "", http.StatusUnauthorized},
		{"tokenless, host not loopback", localRemote, "admin.example.com", "", http.StatusUnauthorized},
		{"tokenless, host a rebinding name", localRemote, "127.0.0.1.evil.example:5480", "", http.StatusUnauthorized},
		{"token from afar", "192.0.2.7:40000", "admin.example.com", "Bearer " + testSecret, http.StatusOK},
		{"wrong token from afar", "192.0.2.7:40000", "admin.example.com", "Bearer " + testSecret + "x", http.StatusUnauthorized},
		{"wrong token from loopback", localRemote, localHost, "Bearer nope", http.StatusUnauthorized},
		{"empty bearer", localRemote, localHost, "Bearer ", http.StatusUnauthorized},
		{"not a bearer", localRemote, localHost, "Basic " + testSecret, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hr := httptest.NewRequest(http.MethodGet, "/api/status", nil)
			hr.RemoteAddr, hr.Host = tc.remote, tc.host
			if tc.auth != "" {
				hr.Header.Set("Authorization", tc.auth)
			}
			w := httptest.NewRecorder()
			s.ServeHTTP(w, hr)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if w.Code == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
}

// TestAdmissionEveryRoute: no route but the probes answers a stranger.
func TestAdmissionEveryRoute(t *testing.T) {
	s, fb, _ := newTestServer(t)
	for _, r := range []req{
		{path: "/"}, {path: "/metrics"}, {path: "/api/status"}, {path: "/api/users"},
		{path: "/api/user/u1"}, {path: "/api/queues"}, {path: "/api/backup"},
		{method: http.MethodPost, path: "/api/revoke-device", ctype: "application/json", body: `{"uid":"u1","num":1}`},
		{method: http.MethodPost, path: "/api/receive-only", ctype: "application/json", body: `{"uid":"u1","on":true}`},
		{method: http.MethodPost, path: "/api/block", ctype: "application/json", body: `{"uid":"u1","name":"x"}`},
		{method: http.MethodPost, path: "/api/unblock", ctype: "application/json", body: `{"uid":"u1","name":"x"}`},
	} {
		r.remote = "192.0.2.7:40000"
		if w := s.do(r); w.Code != http.StatusUnauthorized {
			t.Errorf("%s %s from afar: %d", r.method, r.path, w.Code)
		}
	}
	if c := fb.lastCall(); c != "" {
		t.Fatalf("the backend was called: %s", c)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if w := s.do(req{path: path, remote: "192.0.2.7:40000", host: "example.com"}); w.Code != http.StatusOK {
			t.Errorf("%s from afar: %d", path, w.Code)
		}
	}
}

func TestChangeLoggedWithAdmin(t *testing.T) {
	s, fb, logs := newTestServer(t)
	w := s.do(req{method: http.MethodPost, path: "/api/revoke-device", ctype: "application/json", body: `{"uid":"u1","num":2}`})
	if w.Code != http.StatusOK || strings.TrimSpace(w.Body.String()) != "{}" {
		t.Fatalf("revoke: %d %s", w.Code, w.Body)
	}
	if c := fb.lastCall(); c != "RevokeDevice u1,2" {
		t.Fatalf("backend got %q", c)
	}
	if !strings.Contains(logs.String(), `msg="admin change" action=revoke-device by=local uid=u1 num=2`) {
		t.Fatalf("log:\n%s", logs)
	}

	w = s.do(req{method: http.MethodPost, path: "/api/block", remote: "192.0.2.7:40000", host: "admin.example.com",
		token: testSecret, ctype: "application/json", body: `{"uid":"u1","name":"spammer"}`})
	if w.Code != http.StatusOK {
		t.Fatalf("block: %d %s", w.Code, w.Body)
	}
	var reply struct{ Changed *bool }
	if err := json.Unmarshal(w.Body.Bytes(), &reply); err != nil || reply.Changed == nil || !*reply.Changed {
		t.Fatalf("block reply %s", w.Body)
	}
	if !strings.Contains(logs.String(), `action=block by=alice uid=u1 name=spammer changed=true`) {
		t.Fatalf("log:\n%s", logs)
	}
	if strings.Contains(logs.String(), testSecret) {
		t.Fatal("the token's secret was logged")
	}

	// A refused change is logged too, as refused.
	fb.err = fmt.Errorf("%w: no member has the uid %q", ErrNotFound, "u9")
	w = s.do(req{method: http.MethodPost, path: "/api/receive-only", ctype: "application/json", body: `{"uid":"u9","on":true}`})
	if w.Code != http.StatusNotFound {
		t.Fatalf("receive-only of an unknown member: %d", w.Code)
	}
	if !strings.Contains(logs.String(), `msg="admin change refused" action=receive-only by=local uid=u9 on=true`) {
		t.Fatalf("log:\n%s", logs)
	}
}

func TestChangeRequestRefused(t *testing.T) {
	s, fb, _ := newTestServer(t)
	big := `{"uid":"u1","name":"` + strings.Repeat("x", maxRequestBody) + `"}`
	for _, tc := range []struct {
		name  string
		ctype string
		body  string
	}{
		{"no content type", "", `{"uid":"u1","num":1}`},
		{"form", "application/x-www-form-urlencoded", `uid=u1&num=1`},
		{"text", "text/plain", `{"uid":"u1","num":1}`},
		{"bad media type", "application/json; =", `{"uid":"u1","num":1}`},
		{"unknown field", "application/json", `{"uid":"u1","num":1,"force":true}`},
		{"wrong type", "application/json", `{"uid":"u1","num":"1"}`},
		{"not an object", "application/json", `["u1",1]`},
		{"truncated", "application/json", `{"uid":"u1"`},
		{"empty", "application/json", ``},
		{"no uid", "application/json", `{"num":1}`},
		{"oversize", "application/json", big},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := s.do(req{method: http.MethodPost, path: "/api/revoke-device", ctype: tc.ctype, body: tc.body})
			if w.Code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", w.Code, w.Body)
			}
			if e := errorText(t, w); !strings.HasPrefix(e, ErrInvalid.Error()) {
				t.Fatalf("error %q", e)
			}
		})
	}
	if c := fb.lastCall(); c != "" {
		t.Fatalf("the backend was called: %s", c)
	}
	// A media type with parameters is JSON still.
	w := s.do(req{method: http.MethodPost, path: "/api/revoke-device", ctype: "application/json; charset=utf-8", body: `{"uid":"u1","num":1}`})
	if w.Code != http.StatusOK {
		t.Fatalf("charset parameter: %d %s", w.Code, w.Body)
	}
	// A change is a POST: a GET of it is no route.
	if w := s.do(req{path: "/api/revoke-device"}); w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET of a change: %d", w.Code)
	}
}

func TestListBounds(t *testing.T) {
	s, fb, _ := newTestServer(t)
	for _, tc := range []struct {
		path string
		want string // the backend's call; "" for a 400
	}{
		{"/api/users", "Users ,100"},
		{"/api/users?match=ali&limit=1", "Users ali,1"},
		{"/api/users?limit=10000", "Users ,10000"},
		{"/api/users?limit=10001", ""},
		{"/api/users?limit=0", ""},
		{"/api/users?limit=-1", ""},
		{"/api/users?limit=ten", ""},
		{"/api/users?limit=1e3", ""},
		{"/api/queues", "Queues 100"},
		{"/api/queues?top=7", "Queues 7"},
		{"/api/queues?top=10000", "Queues 10000"},
		{"/api/queues?top=10001", ""},
		{"/api/queues?top=0", ""},
		{"/api/queues?top=99999999999999999999", ""},
	} {
		fb.calls = nil
		w := s.do(req{path: tc.path})
		if tc.want == "" {
			if w.Code != http.StatusBadRequest || fb.lastCall() != "" {
				t.Errorf("%s: %d, backend %q; want 400 and no call", tc.path, w.Code, fb.lastCall())
			}
			continue
		}
		if w.Code != http.StatusOK || fb.lastCall() != tc.want {
			t.Errorf("%s: %d, backend %q; want %q", tc.path, w.Code, fb.lastCall(), tc.want)
		}
	}
}

func TestErrorStatus(t *testing.T) {
	s, fb, _ := newTestServer(t)
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("%w: no member has the uid or alias %q", ErrNotFound, "bob"), http.StatusNotFound},
		{fmt.Errorf("%w: top must be positive", ErrInvalid), http.StatusBadRequest},
		{errors.New("userdb: refusing writes after an earlier failure"), http.StatusInternalServerError},
	} {
		fb.err = tc.err
		for _, r := range []req{
			{path: "/api/user/bob"},
			{method: http.MethodPost, path: "/api/unblock", ctype: "application/json", body: `{"uid":"u1","name":"bob"}`},
		} {
			w := s.do(r)
			if w.Code != tc.want {
				t.Errorf("%s with %v: %d, want %d", r.path, tc.err, w.Code, tc.want)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s: content type %q", r.path, ct)
			}
			if e := errorText(t, w); e != tc.err.Error() {
				t.Errorf("%s: error %q, want %q", r.path, e, tc.err)
			}
		}
	}
}

// TestUserPathEscaped: an alias is any printable text, spaces and slashes
// included; the path carries it escaped and the backend gets it whole.
func TestUserPathEscaped(t *testing.T) {
	s, fb, _ := newTestServer(t)
	for path, want := range map[string]string{
		"/api/user/alice%20liddell": "User alice liddell",
		"/api/user/a%2Fb":           "User a/b",
		"/api/user/%C3%A9mile":      "User émile",
	} {
		if w := s.do(req{path: path}); w.Code != http.StatusOK || fb.lastCall() != want {
			t.Errorf("%s: %d, backend %q", path, w.Code, fb.lastCall())
		}
	}
}

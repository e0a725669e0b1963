// Package admin is mnm's admin listener: an HTTP server, for operators and
// their tools, beside the TMTP listener. It serves
//
//	GET  /             the status page, for a person (status.go)
//	GET  /metrics      Prometheus metrics
//	GET  /healthz      200 while the process serves HTTP at all
//	GET  /readyz       200 when the server can serve members, else 503
//	     /api/...      the JSON API that `mnm admin` drives (api.go)
//
// Who may call it: a request from a loopback address may go without a
// token; any other needs a bearer token from the token file (LoadTokens),
// and every change is logged with the token's name (or LocalAdmin). The
// probes /healthz and /readyz need nothing: they tell nothing but up or
// down.
package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where the admin listener listens unless the configuration
// says otherwise: loopback only, so that a first start exposes nothing.
const DefaultAddr = "127.0.0.1:5480"

// Timeouts of the admin listener. Its clients are an operator's tools on a
// short path; anything slower is stuck or hostile.
const (
	readHeaderTimeout = 5 * time.Second
	idleTimeout       = time.Minute
	// writeTimeout bounds every response but the backup's, which streams
	// the whole store and lifts it (api.go).
	writeTimeout = 30 * time.Second
)

// Options configure a Server.
type Options struct {
	Backend Backend
	// Gatherer is what /metrics serves and the status page reads.
	Gatherer prometheus.Gatherer
	// Tokens are the bearer tokens that admit requests not from loopback.
	// None: only loopback is admitted.
	Tokens []Token
	Logger *slog.Logger
	// Now is the clock of the status page's history; nil = time.Now.
	Now func() time.Time
	// Recent holds the latest warnings, shown on the status page; nil:
	// none are shown.
	Recent *Recent
	// SampleEvery is how often the status page samples the metrics for
	// its charts; 0 means DefaultSampleEvery.
	SampleEvery time.Duration
}

// Server is the admin listener's handler.
type Server struct {
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	tokens  []tokenHash
	metrics http.Handler
	page    *statusPage
}

// New returns the admin handler for opts. Call Close when done with it.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	for _, t := range opts.Tokens {
		s.tokens = append(s.tokens, tokenHash{name: t.Name, sum: sha256.Sum256([]byte(t.Secret))})
	}
	s.metrics = promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{ErrorLog: slogPrinter{s.log}})
	s.page = newStatusPage(opts)
	s.routes()
	return s
}

// Close stops the status page's sampler.
func (s *Server) Close() { s.page.close() }

// HTTPServer returns an http.Server for the handler, with the listener's
// timeouts.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.opts.Backend.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	s.mux.Handle("GET /metrics", s.admitted(s.metrics))
	s.mux.Handle("GET /{$}", s.admitted(http.HandlerFunc(s.page.serve)))
	s.apiRoutes()
}

// ServeHTTP serves the admin listener's routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r)
}

// Token is one entry of the token file: a name for the logs and a secret.
type Token struct {
	Name   string
	Secret string
}

type tokenHash struct {
	name string
	sum  [sha256.Size]byte
}

// adminKey is the context key of the admin's name in an admitted request.
type adminKey struct{}

// admitted wraps h with the admission check: a valid bearer token, or a
// request from loopback without one. A request with a wrong token is refused
// even from loopback: it is a mistake worth seeing.
//
// A tokenless loopback request must also name a loopback host: a web page
// in the operator's browser can make it send requests to 127.0.0.1 (and,
// through DNS rebinding, read the answers under another name), but cannot
// forge the Host header. Changes must be POSTs of JSON, which a page cannot
// send to another origin without the browser asking first (api.go).
func (s *Server) admitted(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := s.admit(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mnm admin"`)
			http.Error(w, "unauthorized: a token is needed from this address", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r.WithContext(withAdmin(r.Context(), name)))
	})
}

// admit reports who is asking, or false when the request is not admitted.
func (s *Server) admit(r *http.Request) (string, bool) {
	if auth := r.Header.Get("Authorization"); auth != "" {
		secret, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok {
			return "", false
		}
		sum := sha256.Sum256([]byte(secret))
		name, found := "", 0
		for _, t := range s.tokens {
			// Every token is compared, in constant time, so that
			// timing tells nothing about which one nearly matched.
			if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 {
				name, found = t.name, 1
			}
		}
		return name, found == 1
	}
	return LocalAdmin, isLoopback(r.RemoteAddr) && isLoopbackHost(r.Host)
}

// isLoopback reports whether addr ("ip:port", as in Request.RemoteAddr) is
// a loopback address.
func isLoopback(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// isLoopbackHost reports whether host (a Host header) names loopback.
func isLoopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// slogPrinter adapts a logger to promhttp's ErrorLog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) {
	p.log.Warn("metrics: gather failed", "err", errors.New(strings.TrimSpace(fmt.Sprintln(v...))))
}

package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"time"
)

// The JSON API, under /api/. Reads are GETs; changes are POSTs whose body is
// a JSON object (Content-Type application/json), which a web page cannot
// send to another origin without a CORS preflight that this listener never
// grants. Errors are {"error": "..."} with a status: 400 invalid, 401 not
// admitted, 404 not found, 500 the server's own failure.
//
//	GET  /api/status                     Status
//	GET  /api/users?match=S&limit=N      []UserSummary
//	GET  /api/user/{name}                UserDetail (name: uid or alias)
//	GET  /api/queues?top=N               []QueueInfo
//	POST /api/revoke-device  {"uid","num"}
//	POST /api/receive-only   {"uid","on"}         → {"changed"}
//	POST /api/block          {"uid","name"}       → {"changed"}
//	POST /api/unblock        {"uid","name"}       → {"changed"}
//	GET  /api/backup                     a tar stream (Backend.Backup)

// Bounds of the API's list requests: a page of users or queues is for a
// person or a script to read, and building one holds the backend's maps.
const (
	defaultListLimit = 100
	maxListLimit     = 10000
	// maxRequestBody bounds a change's JSON body: a uid, an alias, a
	// number.
	maxRequestBody = 4 << 10
)

func (s *Server) apiRoutes() {
	get := func(pattern string, fn func(r *http.Request) (any, error)) {
		s.mux.Handle("GET "+pattern, s.admitted(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r)
			writeJSON(w, v, err)
		})))
	}
	get("/api/status", func(r *http.Request) (any, error) { return s.opts.Backend.Status(), nil })
	get("/api/users", func(r *http.Request) (any, error) {
		limit, err := intParam(r, "limit", defaultListLimit, maxListLimit)
		if err != nil {
			return nil, err
		}
		return s.opts.Backend.Users(r.URL.Query().Get("match"), limit)
	})
	get("/api/user/{name}", func(r *http.Request) (any, error) { return s.opts.Backend.User(r.PathValue("name")) })
	get("/api/queues", func(r *http.Request) (any, error) {
		top, err := intParam(r, "top", defaultListLimit, maxListLimit)
		if err != nil {
			return nil, err
		}
		return s.opts.Backend.Queues(top)
	})

	s.change("/api/revoke-device", func(r *request) (any, error) {
		return nil, s.opts.Backend.RevokeDevice(r.UID, r.Num)
	})
	s.change("/api/receive-only", func(r *request) (any, error) {
		changed, err := s.opts.Backend.SetReceiveOnly(r.UID, r.On)
		return changedReply{changed}, err
	})
	s.change("/api/block", func(r *request) (any, error) {
		changed, err := s.opts.Backend.Block(r.UID, r.Name)
		return changedReply{changed}, err
	})
	s.change("/api/unblock", func(r *request) (any, error) {
		changed, err := s.opts.Backend.Unblock(r.UID, r.Name)
		return changedReply{changed}, err
	})

	s.mux.Handle("GET /api/backup", s.admitted(http.HandlerFunc(s.backup)))
}

// request is the body of a change: each change uses the fields it names.
type request struct {
	UID  string `json:"uid"`
	Num  int    `json:"num"`
	On   bool   `json:"on"`
	Name string `json:"name"`
}

type changedReply struct {
	Changed bool `json:"changed"`
}

// change registers a POST route that decodes a request, applies fn, and
// logs the change with who made it and how it went.
func (s *Server) change(pattern string, fn func(r *request) (any, error)) {
	s.mux.Handle("POST "+pattern, s.admitted(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decodeRequest(w, r)
		if err != nil {
			writeJSON(w, nil, err)
			return
		}
		v, err := fn(req)
		attrs := []any{"action", pattern[len("/api/"):], "by", adminName(r.Context()), "uid", req.UID}
		switch pattern {
		case "/api/revoke-device":
			attrs = append(attrs, "num", req.Num)
		case "/api/receive-only":
			attrs = append(attrs, "on", req.On)
		case "/api/block", "/api/unblock":
			attrs = append(attrs, "name", req.Name)
		}
		if c, ok := v.(changedReply); ok && err == nil {
			attrs = append(attrs, "changed", c.Changed)
		}
		if err != nil {
			s.log.Warn("admin change refused", append(attrs, "err", err)...)
		} else {
			s.log.Info("admin change", attrs...)
		}
		if v == nil && err == nil {
			v = struct{}{}
		}
		writeJSON(w, v, err)
	})))
}

// decodeRequest reads a change's JSON body.
func decodeRequest(w http.ResponseWriter, r *http.Request) (*request, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, fmt.Errorf("%w: the body must be application/json", ErrInvalid)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	var req request
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if req.UID == "" {
		return nil, fmt.Errorf("%w: uid is required", ErrInvalid)
	}
	return &req, nil
}

// backup streams Backend.Backup. The copy may take long, so the listener's
// write timeout is lifted for it; a client that stops reading is still
// bounded by TCP's own timeouts.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Time{})
	by := adminName(r.Context())
	s.log.Info("admin backup started", "by", by)
	w.Header().Set("Content-Type", "application/x-tar")
	start := time.Now()
	cw := &countingWriter{w: w}
	if err := s.opts.Backend.Backup(cw); err != nil {
		// The status line is gone once bytes are written; the client
		// sees a truncated stream (the tar has no end marker) and says
		// so. Before that, a clean error.
		s.log.Error("admin backup failed", "by", by, "err", err)
		if cw.n == 0 {
			writeJSON(w, nil, err)
		}
		return
	}
	s.log.Info("admin backup", "by", by, "bytes", cw.n, "seconds", time.Since(start).Seconds())
}

type countingWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// intParam reads a positive integer query parameter, def when absent.
func intParam(r *http.Request, key string, def, most int) (int, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > most {
		return 0, fmt.Errorf("%w: %s must be a number from 1 to %d", ErrInvalid, key, most)
	}
	return n, nil
}

// writeJSON writes v, or err as {"error"} with its status.
func writeJSON(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		status := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrNotFound):
			status = http.StatusNotFound
		case errors.Is(err, ErrInvalid):
			status = http.StatusBadRequest
		}
		w.WriteHeader(status)
		v = map[string]string{"error": err.Error()}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func withAdmin(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, adminKey{}, name)
}

// adminName is who made an admitted request.
func adminName(ctx context.Context) string {
	name, _ := ctx.Value(adminKey{}).(string)
	return name
}

package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Client calls a running server's admin listener: `mnm admin` and `mnm
// backup` use it.
type Client struct {
	base  string // "http://host:port"
	token string // sent as a bearer token when not empty
	http  *http.Client
}

// clientTimeout bounds each call but backups, which stream as long as the
// copy takes.
const clientTimeout = 30 * time.Second

// NewClient returns a client of the admin listener at addr ("host:port"),
// sending token (when not empty) with every request. With tc it speaks
// HTTPS, checking the listener's certificate as tc says; nil: plain HTTP.
func NewClient(addr, token string, tc *tls.Config) *Client {
	if tc == nil {
		return &Client{base: "http://" + addr, token: token, http: &http.Client{}}
	}
	return &Client{base: "https://" + addr, token: token, http: &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}}
}

// Get calls GET path and decodes the JSON reply into v.
func (c *Client) Get(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodGet, path, nil, v)
}

// Post calls POST path with body as JSON and decodes the reply into v
// (unless v is nil).
func (c *Client) Post(ctx context.Context, path string, body, v any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, path, b, v)
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, v any) error {
	ctx, cancel := context.WithTimeout(ctx, clientTimeout)
	defer cancel()
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if v == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("admin: %s %s: reply: %w", method, path, err)
	}
	return nil
}

// Stream calls GET path and returns the reply's body for the caller to
// read and close; no timeout but ctx's.
func (c *Client) Stream(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// send makes the request and turns a reply other than 200 into an error
// carrying the listener's message.
func (c *Client) send(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin: %w (is the server running, with its admin listener on?)", err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var e struct {
		Error string `json:"error"`
	}
	text := strings.TrimSpace(string(msg))
	if json.Unmarshal(msg, &e) == nil && e.Error != "" {
		text = e.Error
	}
	return nil, &StatusError{Code: resp.StatusCode, Message: text}
}

// StatusError is a reply other than 200 OK.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("admin: %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

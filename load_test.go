package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"mnm/testclient"
	"mnm/testclient/load"
)

// TestLoadAgainstServer runs the load engine against our server: every post
// is acked and every delivery arrives whole, once and in order.
func TestLoadAgainstServer(t *testing.T) {
	e, err := startEphemeral(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cfg := load.Config{
		Frontends: []load.Frontend{{Addr: e.Addr}}, Users: 4, Posts: 20, Size: 1000, Recipients: 2, Window: 4,
		Timeout: 30 * time.Second, ServerPIDs: []int{os.Getpid()}, Strict: true,
	}
	res, err := load.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Posted != 80 || res.Expected != 160 || res.Delivered != 160 || res.PostErrors != 0 {
		t.Errorf("posted %d, expected %d, delivered %d, post errors %d; want 80, 160, 160, 0", res.Posted, res.Expected, res.Delivered, res.PostErrors)
	}
	if res.Lost+res.Duplicates+res.Reordered+res.Corrupt != 0 || res.TimedOut || res.Err != "" {
		t.Errorf("trouble: %+v", res)
	}
	if res.DeliveryRate <= 0 || res.AckP50 <= 0 || res.AckP99 < res.AckP50 || res.DeliveryP99 < res.DeliveryP50 {
		t.Errorf("insane figures: %+v", res)
	}
	if res.ServerRSSPeak <= 0 || res.ServerHWM <= 0 {
		t.Errorf("no memory figures for this process: %+v", res)
	}
}

// TestLoadCommand runs `mnm load` with a small configuration against the
// in-process server and checks the JSON line it prints.
func TestLoadCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"load", "-users", "3", "-posts", "5", "-size", "300", "-recipients", "2", "-window", "2"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var res map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", stdout.String(), err)
	}
	if strings.Count(stdout.String(), "\n") != 1 {
		t.Errorf("output is not one line: %q", stdout.String())
	}
	for key, want := range map[string]float64{"delivered": 30, "expected": 30, "lost": 0, "duplicates": 0, "reordered": 0, "corrupt": 0} {
		if res[key] != want {
			t.Errorf("%s = %v, want %v", key, res[key], want)
		}
	}
	if rss, _ := res["server_rss_peak_bytes"].(float64); rss <= 0 {
		t.Errorf("server_rss_peak_bytes = %v; the in-process server is measurable", res["server_rss_peak_bytes"])
	}
}

// TestLoadIdleCommand runs `mnm load -idle` against the in-process server.
func TestLoadIdleCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"load", "-idle", "5", "-settle", "1ms"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var res map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", stdout.String(), err)
	}
	if res["links"] != 5.0 {
		t.Errorf("links = %v, want 5", res["links"])
	}
	for _, key := range []string{"server_rss_start_bytes", "server_rss_before_bytes", "server_rss_after_bytes", "login_s"} {
		if v, _ := res[key].(float64); v <= 0 {
			t.Errorf("%s = %v, want > 0", key, res[key])
		}
	}
}

func TestLoadFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"load", "-pid", "12"},                 // -pid without -addr
		{"load", "-serve", "-addr", "=a:1"},    // -serve with -addr
		{"load", "-users", "x"},                // not a number
		{"load", "extra"},                      // stray argument
		{"load", "-nosuchflag"},                // unknown flag
		{"load", "-users", "1", "-posts", "1"}, // rejected by the engine: exits 1
	} {
		t.Run(strings.Join(args[1:], " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(args, &stdout, &stderr); code == exitOK || stdout.Len() > 0 {
				t.Errorf("exit %d, stdout %q; want a failure and no result", code, stdout.String())
			}
		})
	}
}

// TestLoadSiteErrors: a list of frontends or processes that cannot be
// right is a usage error saying what is wrong, before anything starts.
func TestLoadSiteErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-addr", "=127.0.0.1:1,,=127.0.0.1:2"}, `address 2 is empty`},
		{[]string{"-addr", "=127.0.0.1:1,"}, `address 2 is empty`},
		{[]string{"-addr", "127.0.0.1:1,=127.0.0.1:2,+127.0.0.1:1"}, `127.0.0.1:1 is given twice`},
		{[]string{"-addr", "=127.0.0.1:1,no-port"}, `-addr "no-port"`},
		{[]string{"-addr", "=127.0.0.1:1", "-pid", "1,2"}, `-pid lists 2 processes for 1 -addr addresses`},
		{[]string{"-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "1,2,3"}, `-pid lists 3 processes for 2 -addr addresses`},
		{[]string{"-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "1,,2"}, `process 2 is empty`},
		{[]string{"-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "5,5"}, `5 is given twice`},
		{[]string{"-addr", "=127.0.0.1:1,=127.0.0.1:2", "-pid", "5,x"}, `-pid must be a process id, not "x"`},
		{[]string{"-pid", "1,2"}, "without -addr the server is this process"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(append([]string{"load"}, c.args...), &stdout, &stderr); code != exitUsage || stdout.Len() > 0 {
				t.Errorf("exit %d, stdout %q; want %d and no result", code, stdout.String(), exitUsage)
			}
			if !strings.Contains(stderr.String(), c.want) {
				t.Errorf("stderr %q, want %q", stderr.String(), c.want)
			}
		})
	}
}

// TestLoadTwoFrontends runs `mnm load` against two frontends of one site
// (cluster_frontends_test.go): members registered and logged in on both,
// every post delivered across from one to the other, whole, once and in
// order; the server figures are the sum of the two -pid processes (this
// one, serving both frontends, and its parent, to have two).
func TestLoadTwoFrontends(t *testing.T) {
	fes := testFrontends(t)
	pids := fmt.Sprintf("%d,%d", os.Getpid(), os.Getppid())
	var stdout, stderr bytes.Buffer
	code := run([]string{"load", "-addr", "=" + fes[0].addr + "," + fes[1].addr, "-pid", pids,
		"-users", "4", "-posts", "5", "-size", "300", "-recipients", "2", "-window", "2", "-strict", "-timeout", "60s"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var res map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", stdout.String(), err)
	}
	t.Log(stdout.String())
	for key, want := range map[string]any{"frontends": 2.0, "delivered": 40.0, "expected": 40.0, "post_errors": 0.0,
		"lost": 0.0, "duplicates": 0.0, "reordered": 0.0, "corrupt": 0.0, "timed_out": false} {
		if res[key] != want {
			t.Errorf("%s = %v, want %v", key, res[key], want)
		}
	}
	if got := fmt.Sprint(res["server_sum_of_pids"]); got != fmt.Sprintf("[%d %d]", os.Getpid(), os.Getppid()) {
		t.Errorf("server_sum_of_pids = %s, want this process and its parent", got)
	}
	if rss, _ := res["server_rss_peak_bytes"].(float64); rss <= 0 {
		t.Errorf("server_rss_peak_bytes = %v", res["server_rss_peak_bytes"])
	}
	checkBothServed(t, fes)
}

// TestLoadServe runs the -serve mode and loads it from "another process"
// (here: this one, through the printed site address).
func TestLoadServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	exit := make(chan int, 1)
	go func() {
		exit <- loadServe(ctx, pw, slog.New(slog.DiscardHandler))
		pw.Close()
	}()
	site, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	addr, tlsConf, err := testclient.ParseSite(strings.TrimSpace(site))
	if err != nil {
		t.Fatalf("site %q: %v", site, err)
	}
	res, err := load.Run(ctx, load.Config{
		Frontends: []load.Frontend{{Addr: addr, TLS: tlsConf}}, Users: 2, Posts: 3, Size: 100, Recipients: 1, Window: 1, Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Delivered != 6 || res.Lost != 0 {
		t.Errorf("delivered %d, lost %d; want 6, 0", res.Delivered, res.Lost)
	}
	cancel()
	if code := <-exit; code != exitOK {
		t.Errorf("serve exited %d", code)
	}
}

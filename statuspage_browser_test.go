//go:build unix

package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mnm/testclient"
)

// The status page as a browser renders it: a real daemon under load, its
// page opened by headless Chromium, the DOM it built and a screenshot
// checked. MNM_SCREENSHOT=path keeps the screenshot; the test skips without
// chromium unless MNM_REQUIRE_BROWSER=1 (set by .ci/run).

// Bounds of the browser test.
const (
	// browserTimeout bounds one chromium run: a cold start on a slow CI
	// machine takes seconds, never a minute.
	browserTimeout = 60 * time.Second
	// browserSampleEvery is the page's sampling interval under test, so
	// that the charts fill in a second or two rather than a minute.
	browserSampleEvery = 200 * time.Millisecond
	// loadMembers post to one another in a ring while the test runs.
	loadMembers = 4
	// browserW and browserH are the window, and so the screenshot's size.
	browserW, browserH = 1200, 1600
)

func TestStatusPageBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("MNM_REQUIRE_BROWSER") == "1" {
			t.Fatal("chromium is not on PATH and MNM_REQUIRE_BROWSER=1 (apt-get install chromium)")
		}
		t.Skip("chromium is not on PATH; install it (apt-get install chromium) to run the browser test")
	}

	dir := t.TempDir()
	cfg := testConfig(t, dir, "127.0.0.1:0")
	cfg["name"] = "status.example"
	logs := newLockedBuffer()
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	d, err := startDaemon(writeConfigFile(t, dir, cfg), logger, func(d *daemon) { d.statusEvery = browserSampleEvery })
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := d.shutdown(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	if d.adminAddr == "" {
		t.Fatal("the daemon has no admin listener")
	}
	url := "http://" + d.adminAddr + "/"

	startLoad(t, d.ln.Addr().String())
	d.log.Warn("a warning for the status page", "detail", "<b>shown escaped</b>")

	// Wait until the sampler has seen the load: the posts chart has a
	// few points and its latest interval had posts.
	waitFor(t, "the status page to chart the load", func() bool {
		page, err := httpGet(url)
		if err != nil {
			return false
		}
		c := chartOf(page, "Posts")
		return c.points >= 3 && c.current > 0
	})

	dom := runChromium(t, chromium, "--dump-dom", url)
	for _, want := range []string{"status.example", "ready", "Latest warnings", "a warning for the status page",
		"&lt;b&gt;shown escaped&lt;/b&gt;"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if n := tileNumber(t, dom, "Members online"); n != loadMembers {
		t.Errorf("members online %v, want %d", n, loadMembers)
	}
	if n := tileNumber(t, dom, "Links open"); n < loadMembers {
		t.Errorf("links open %v, want at least %d", n, loadMembers)
	}
	if c := chartOf(dom, "Posts"); c.max <= 0 || c.points < 3 {
		t.Errorf("posts chart: max %v/s over %d points, want posts", c.max, c.points)
	}
	if n, m := strings.Count(dom, "<svg"), strings.Count(dom, "<polyline"); n < 10 || m < 10 {
		t.Errorf("%d charts with %d lines, want at least 10 of each", n, m)
	}

	shot := filepath.Join(t.TempDir(), "status.png")
	runChromium(t, chromium, "--screenshot="+shot, url)
	checkScreenshot(t, shot)
	if keep := os.Getenv("MNM_SCREENSHOT"); keep != "" {
		b, err := os.ReadFile(shot)
		if err == nil {
			err = os.WriteFile(keep, b, 0o644)
		}
		if err != nil {
			t.Fatalf("keeping the screenshot: %v", err)
		}
		t.Logf("screenshot saved as %s", keep)
	}
}

// startLoad registers loadMembers members on addr, each posting to the
// next in a loop and acking what it receives, until the test ends.
func startLoad(t *testing.T, addr string) {
	t.Helper()
	opts := testclient.Options{AutoAck: true, OnMessage: func(*testclient.Frame) {}, OnOther: func(*testclient.Frame) {}}
	var clients []*testclient.Client
	for range loadMembers {
		c, _, err := testclient.Register(addr, "laptop", "_", opts)
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		clients = append(clients, c)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range clients {
		to := []testclient.Recipient{{ID: clients[(i+1)%len(clients)].UID(), Type: testclient.ToUser}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ack, err := c.Post(to, fmt.Appendf(nil, "load message %d from member %d", n, i))
				if err != nil || ack.Error != "" {
					select {
					case <-stop: // the link closed as the test ended
					default:
						t.Errorf("post: %v %s", err, ack.Error)
					}
					return
				}
			}
		}()
	}
	// Before the daemon's shutdown (cleanups run last first).
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
		for _, c := range clients {
			c.Close()
		}
	})
}

// httpGet returns the body at url.
func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// chartFigures are what a chart of the page shows.
type chartFigures struct {
	current, max float64 // per second
	points       int     // of its line
}

var (
	chartRE = regexp.MustCompile(`(?s)<span class="title">([^<]*)</span><span class="now">([^<]*)</span>.*?` +
		`<text[^>]*>max ([^<]*)</text>.*?(?:<polyline points="([^"]*)"|</svg>)`)
	tileRE = regexp.MustCompile(`<div class="label">([^<]*)</div><div class="value">([^<]*)</div>`)
)

// chartOf finds the chart titled title in page.
func chartOf(page, title string) chartFigures {
	for _, m := range chartRE.FindAllStringSubmatch(page, -1) {
		if m[1] == title {
			return chartFigures{current: pageNumber(m[2]), max: pageNumber(m[3]), points: len(strings.Fields(m[4]))}
		}
	}
	return chartFigures{}
}

// tileNumber is the figure of the tile labelled label in page.
func tileNumber(t *testing.T, page, label string) float64 {
	t.Helper()
	for _, m := range tileRE.FindAllStringSubmatch(page, -1) {
		if m[1] == label {
			return pageNumber(m[2])
		}
	}
	t.Errorf("the page has no tile %q", label)
	return -1
}

// pageNumber reads a figure as the page formats it ("1 234", "2.5k/s",
// "20/s"); -1 when it is none.
func pageNumber(s string) float64 {
	s = strings.TrimSuffix(strings.NewReplacer("\u202f", "", " ", "").Replace(s), "/s")
	mult := 1.0
	for suffix, m := range map[string]float64{"k": 1e3, "M": 1e6, "G": 1e9} {
		if v, ok := strings.CutSuffix(s, suffix); ok {
			s, mult = v, m
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return -1
	}
	return v * mult
}

// runChromium runs headless chromium on url with the extra flag and
// returns its output, failing the test if it fails or runs past
// browserTimeout. Chromium and every process it started are killed on the
// way out.
func runChromium(t *testing.T, chromium, flag, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-proxy-server", "--hide-scrollbars", "--user-data-dir="+t.TempDir(),
		fmt.Sprintf("--window-size=%d,%d", browserW, browserH), flag, url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Its own process group, so that its renderer and helpers go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Start()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	err = cmd.Wait()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // stragglers; ESRCH when none
	if err != nil || ctx.Err() != nil {
		t.Fatalf("chromium %s: %v (%v)\nstderr:\n%s", flag, err, ctx.Err(), stderr.String())
	}
	return stdout.String()
}

// checkScreenshot checks that the file is a PNG of the window's size with
// a page on it: many colours, not a blank or an error page in one tone.
func checkScreenshot(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != browserW || b.Dy() != browserH {
		t.Errorf("screenshot of %dx%d, want %dx%d", b.Dx(), b.Dy(), browserW, browserH)
	}
	colours := map[[3]uint32]bool{}
	var dark int
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, bl >> 8}] = true
			if r>>8 < 100 && g>>8 < 100 && bl>>8 < 100 {
				dark++
			}
		}
	}
	if len(colours) < 50 || dark < 1000 {
		t.Errorf("the screenshot looks blank: %d colours, %d dark pixels sampled", len(colours), dark)
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mnm/testclient"
)

// TestCrashKeepsAcked kills the server process (SIGKILL) in the middle of a
// load and checks, after a restart on the same data, that every post it had
// acknowledged is delivered, in order per sender.
func TestCrashKeepsAcked(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cfg := writeTestConfig(t, dir, "127.0.0.1:0")

	p := startProcess(t, bin, cfg)
	b, rb, err := testclient.Register(p.addr, "reader", "_", testclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close() // offline: everything queues

	const senders = 4
	var mu sync.Mutex
	acked := map[string]string{} // msgid → sender uid
	order := map[string][]string{}
	var wg sync.WaitGroup
	enough := make(chan struct{})
	var once sync.Once
	for range senders {
		c, _, err := testclient.Register(p.addr, "writer", "_", testclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for i := 0; ; i++ {
				ack, err := c.Post([]testclient.Recipient{{ID: rb.UID, Type: 1}}, fmt.Appendf(nil, "%s %d", c.UID(), i))
				if err != nil || ack.Error != "" {
					return // the server died under us
				}
				mu.Lock()
				acked[ack.MsgID] = c.UID()
				order[c.UID()] = append(order[c.UID()], ack.MsgID)
				if len(acked) >= 400 {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(60 * time.Second):
		t.Fatal("load did not get 400 acks within 60s")
	}
	p.kill()
	wg.Wait()

	p = startProcess(t, bin, cfg)
	defer p.stop()
	c, _, err := testclient.Login(p.addr, rb.UID, rb.NodeID, testclient.Options{AutoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seen := map[string]bool{}
	last := map[string]string{}
	missing := len(acked)
	deadline := time.After(60 * time.Second)
	for missing > 0 {
		select {
		case f, ok := <-c.Messages():
			if !ok {
				t.Fatalf("link ended: %v", c.Err())
			}
			if f.Op() != "delivery" {
				continue
			}
			id, from := f.Str("id"), f.Str("from")
			if seen[id] {
				t.Fatalf("message %s delivered twice", id)
			}
			seen[id] = true
			if id <= last[from] {
				t.Fatalf("message %s from %s after %s", id, from, last[from])
			}
			last[from] = id
			if _, ok := acked[id]; ok {
				missing--
			}
		case <-deadline:
			t.Fatalf("%d of %d acked messages not delivered after the crash", missing, len(acked))
		}
	}
	t.Logf("%d acked posts all delivered after SIGKILL (%d delivered in all)", len(acked), len(seen))
}

// process is the mnm binary running as a child.
type process struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	done chan struct{}
	tail func() string // the last lines of its log
}

// dump ends the process with SIGQUIT, which makes the Go runtime print
// every goroutine's stack, and returns the end of its log: for a test that
// found the server stuck.
func (p *process) dump() string {
	p.cmd.Process.Signal(syscall.SIGQUIT)
	<-p.done
	return p.tail()
}

var listenRE = regexp.MustCompile(`msg="mnm started".* listen=(\S+)`)

func startProcess(t *testing.T, bin, cfg string) *process {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-config", cfg)
	cmd.Dir = filepath.Dir(cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	var mu sync.Mutex
	// The last lines of the server's log and of anything else it printed
	// (a stack dump), for a failure.
	var logLines, other []string
	logTail := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(logLines, "\n") + "\n" + strings.Join(other, "\n")
	}
	p.tail = logTail
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			if line := sc.Text(); strings.HasPrefix(line, "time=") {
				logLines = append(logLines, line)
				if len(logLines) > 200 {
					logLines = logLines[1:]
				}
			} else if len(other) < 300 {
				other = append(other, line)
			}
			mu.Unlock()
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	select {
	case p.addr = <-addr:
	case <-p.done:
		t.Fatalf("server exited before listening; its log ends:\n%s", logTail())
	case <-time.After(30 * time.Second):
		t.Fatalf("server did not start within 30s; its log and stacks end:\n%s", p.dump())
	}
	return p
}

// kill ends the process with SIGKILL: no shutdown code runs.
func (p *process) kill() {
	p.cmd.Process.Signal(os.Kill)
	<-p.done
}

// stop asks for a graceful shutdown and checks the exit status.
func (p *process) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	<-p.done
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		p.t.Errorf("exit status %d after SIGINT, want 0", code)
	}
}

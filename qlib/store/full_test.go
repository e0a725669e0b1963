package store

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"mnm/durable"
)

// TestFullDiskWatermark: as the disk fills, new messages are refused with
// ErrFull before a write can fail (which would stop the store), while acks,
// reads and queue copies go on; nothing of a refused message survives; and
// messages are accepted again as soon as space returns.
func TestFullDiskWatermark(t *testing.T) {
	fsys := durable.NewMemFS()
	fsys.SetCapacity(1 << 20)
	l, _ := openMem(t, fsys, func(o *Options) { o.MinFree = 256 << 10 })
	l.pendMu.Lock()
	l.spaceEvery = 0 // ask the FS at every append
	l.pendMu.Unlock()

	data := bytes.Repeat([]byte("x"), 8<<10)
	var ids []ID
	for {
		d := l.Draft()
		d.Write(data)
		rs, err := d.Commit(Message{To: []string{"a", "b"}, Len: int64(len(data))})
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatalf("commit %d: %v", len(ids), err)
		}
		ids = append(ids, rs[0].ID)
		if len(ids) > 200 {
			t.Fatal("no ErrFull before 1.6 MB on a 1 MB disk")
		}
	}
	free, _ := fsys.Free(testDir)
	if free < 200<<10 {
		t.Errorf("refused with %d bytes free, want the watermark's room kept", free)
	}
	// A large post, written in chunks, is refused as it comes.
	d := l.Draft()
	_, werr := d.Write(bytes.Repeat([]byte("y"), 3*chunkSize))
	_, cerr := d.Commit(Message{To: []string{"a"}, Len: 3 * chunkSize})
	if !errors.Is(werr, ErrFull) && !errors.Is(cerr, ErrFull) {
		t.Errorf("chunked post on a full disk: write %v, commit %v", werr, cerr)
	}
	// Acks, reads and queue copies go on, and the store has not failed.
	if err := l.Ack("a", ids[0]); err != nil {
		t.Errorf("ack on a full disk: %v", err)
	}
	if got := content(t, l, ids[1]); !bytes.Equal(got, data) {
		t.Errorf("read on a full disk: %d bytes", len(got))
	}
	if err := l.CopyQueue("b", "c"); err != nil {
		t.Errorf("queue copy on a full disk: %v", err)
	}
	if err := l.Sync(); err != nil {
		t.Fatalf("sync on a full disk: %v", err)
	}
	if !slices.Equal(l.Queue("a"), ids[1:]) || !slices.Equal(l.Queue("c"), ids) {
		t.Errorf("queues after the refusals: a %d, c %d entries", len(l.Queue("a")), len(l.Queue("c")))
	}

	// Space returns: new messages are accepted at once.
	fsys.SetCapacity(4 << 20)
	if _, err := post2(l, data, "a"); err != nil {
		t.Fatalf("commit after space returned: %v", err)
	}
	l.Close()
	// Nothing of the refused messages survives a restart.
	l2, _ := openMem(t, fsys)
	if got := len(l2.Queue("a")); got != len(ids) {
		t.Errorf("after reopen a has %d entries, want %d", got, len(ids))
	}
}

// post2 commits data for devs and returns the error.
func post2(l *Log, data []byte, devs ...string) (ID, error) {
	d := l.Draft()
	d.Write(data)
	rs, err := d.Commit(Message{To: devs, Len: int64(len(data))})
	if err != nil {
		return 0, err
	}
	return rs[0].ID, nil
}

// TestFullDiskReal fills a real small filesystem (a tmpfs, which needs
// root): the store refuses new messages before the disk is full, and once
// the acked messages' segments are reclaimed it accepts them again by
// itself.
func TestFullDiskReal(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v: %s); TestFullDiskWatermark covers the same on MemFS", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	qdir := filepath.Join(dir, "qstore")
	l, err := Open(Options{Dir: qdir, Logger: quiet(), SegmentSize: 256 << 10, MinFree: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := bytes.Repeat([]byte("z"), 32<<10)
	var ids []ID
	for {
		id, err := post2(l, data, "a")
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatalf("post %d: %v", len(ids), err)
		}
		ids = append(ids, id)
		if len(ids) > 300 {
			t.Fatal("no ErrFull before 9.6 MB on an 8 MB disk")
		}
	}
	t.Logf("refused after %d posts of 32 KB on an 8 MB tmpfs", len(ids))
	for _, id := range ids {
		if err := l.Ack("a", id); err != nil {
			t.Fatal(err)
		}
	}
	// Compaction deletes the dead segments; posts are accepted again.
	deadline := time.Now().Add(20 * time.Second)
	for {
		l.kickCompactor()
		_, err := post2(l, data, "a")
		if err == nil {
			break
		}
		if !errors.Is(err, ErrFull) {
			t.Fatalf("post while space returns: %v", err)
		}
		if time.Now().After(deadline) {
			entries, _ := os.ReadDir(qdir)
			t.Fatalf("still full 20s after every message was acked (%d files)", len(entries))
		}
		time.Sleep(20 * time.Millisecond) // waiting for compaction, which the store runs by itself
	}
}

package proc

import (
	"errors"
	"os"
	"testing"
	"time"
)

func TestRead(t *testing.T) {
	ps, err := Read(os.Getpid())
	if err != nil {
		t.Skip("no /proc:", err)
	}
	if ps.RSS <= 0 || ps.HWM < ps.RSS || ps.CPU < 0 {
		t.Errorf("%+v", ps)
	}
	if _, err := Read(-1); err == nil {
		t.Error("stats of pid -1")
	}
}

// TestReadSum: one process counted twice is twice its figures (CPU and RSS
// move meanwhile, so only the memory, which a reading of an idle test
// barely changes, is compared loosely), and one unreadable pid fails it.
func TestReadSum(t *testing.T) {
	one, err := Read(os.Getpid())
	if err != nil {
		t.Skip("no /proc:", err)
	}
	two, err := ReadSum([]int{os.Getpid(), os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if two.HWM < 2*one.HWM || two.RSS < one.RSS+one.RSS/2 || two.CPU < 2*one.CPU {
		t.Errorf("sum of twice %+v: %+v", one, two)
	}
	if _, err := ReadSum([]int{os.Getpid(), -1}); err == nil {
		t.Error("a sum with pid -1")
	}
}

func TestParse(t *testing.T) {
	rss, hwm, err := parseStatus([]byte("Name:\tmnm\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t5\n"))
	if err != nil || rss != 1<<20 || hwm != 2<<20 {
		t.Errorf("status: %d %d %v", rss, hwm, err)
	}
	cpu, err := parseStat([]byte("42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 9 0 1 2 3"))
	if err != nil || cpu != 2*time.Second {
		t.Errorf("stat: %v %v", cpu, err)
	}
}

func TestParseStatusBad(t *testing.T) {
	for _, c := range []struct{ name, status string }{
		{"no VmHWM", "VmRSS:\t1024 kB\n"},
		{"not a number", "VmRSS:\tx kB\nVmHWM:\t1 kB\n"},
		{"unknown unit", "VmRSS:\t1 MB\nVmHWM:\t1 kB\n"},
		{"negative", "VmRSS:\t-1 kB\nVmHWM:\t1 kB\n"},
		{"extra field", "VmRSS:\t1 kB 2\nVmHWM:\t1 kB\n"},
		{"no space", "VmRSS:\t1kB\nVmHWM:\t1 kB\n"},
		{"beyond any memory", "VmRSS:\t99999999999999 kB\nVmHWM"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := parseStatus([]byte(c.status)); !errors.Is(err, ErrFormat) {
				t.Errorf("status %q: err %v, want ErrFormat", c.status, err)
			}
		})
	}
}

func TestParseStatBad(t *testing.T) {
	for _, c := range []struct{ name, stat string }{
		{"no parentheses", "42 mnm S 1"},
		{"too few fields", "42 (mnm) S 1 2 3"},
		{"utime not a number", "42 (mnm) S 1 2 3 4 5 6 7 8 9 10 x 1 2"},
		{"negative", "42 (mnm) S 1 2 3 4 5 6 7 8 9 10 -5 1 2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := parseStat([]byte(c.stat)); !errors.Is(err, ErrFormat) {
				t.Errorf("stat %q: err %v, want ErrFormat", c.stat, err)
			}
		})
	}
}

// FuzzParse: the /proc parsers return a value or an error, never panic,
// whatever the file holds.
func FuzzParse(f *testing.F) {
	f.Add([]byte("VmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n"))                    // a real status excerpt
	f.Add([]byte("42 (mnm) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 9 0")) // a real stat
	f.Add([]byte("42 (a) b) c) S"))                                                // a command name with ')'
	f.Add([]byte("VmRSS:"))                                                        // a key without a value
	f.Fuzz(func(t *testing.T, b []byte) {
		if rss, hwm, err := parseStatus(b); err == nil && (rss < 0 || hwm < 0) {
			t.Errorf("negative memory %d %d", rss, hwm)
		}
		if cpu, err := parseStat(b); err == nil && cpu < 0 {
			t.Errorf("negative cpu %v", cpu)
		}
	})
}

// TestSelfCPU: this process's CPU time grows with work, where it is
// measured at all.
func TestSelfCPU(t *testing.T) {
	before := SelfCPU()
	if before == 0 {
		t.Skip("CPU time not measured on this system")
	}
	deadline := time.Now().Add(time.Second)
	for SelfCPU() == before && time.Now().Before(deadline) {
	}
	if SelfCPU() <= before {
		t.Errorf("CPU time stayed at %v through a second of spinning", before)
	}
}

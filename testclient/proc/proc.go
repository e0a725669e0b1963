// Package proc reads what the operating system knows of a process's memory
// and CPU time, for the measurements of the simulation and the load
// benchmark: the server's process, or this one.
package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// userHZ is the unit of the CPU times in /proc/PID/stat. Linux fixes it at
// 100 for user space on every architecture Go runs on.
const userHZ = 100

// Stats is what /proc says about a process's memory and CPU.
type Stats struct {
	RSS int64         // resident set size now (VmRSS), octets
	HWM int64         // peak resident set size (VmHWM), octets
	CPU time.Duration // user + system time so far
}

// Read reads /proc/PID/status and /proc/PID/stat (Linux only).
func Read(pid int) (Stats, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	status, err := os.ReadFile(dir + "status")
	if err != nil {
		return Stats{}, fmt.Errorf("proc: %w", err)
	}
	stat, err := os.ReadFile(dir + "stat")
	if err != nil {
		return Stats{}, fmt.Errorf("proc: %w", err)
	}
	var ps Stats
	if ps.RSS, ps.HWM, err = parseStatus(status); err != nil {
		return Stats{}, err
	}
	if ps.CPU, err = parseStat(stat); err != nil {
		return Stats{}, err
	}
	return ps, nil
}

// ReadSum reads each of pids and adds their figures up: the processes of a
// site served by several frontends. HWM is then the sum of each process's
// own peak, an upper bound of the site's peak. One unreadable process fails
// the whole reading, so that a sum never silently leaves a frontend out.
func ReadSum(pids []int) (Stats, error) {
	var sum Stats
	for _, pid := range pids {
		ps, err := Read(pid)
		if err != nil {
			return Stats{}, err
		}
		sum.RSS += ps.RSS
		sum.HWM += ps.HWM
		sum.CPU += ps.CPU
	}
	return sum, nil
}

// ErrFormat is wrapped by the errors of parsing /proc files.
var ErrFormat = errors.New("proc: unexpected /proc format")

// parseStatus returns VmRSS and VmHWM from /proc/PID/status, whose lines
// read "VmRSS:\t   12345 kB".
func parseStatus(b []byte) (rss, hwm int64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	found := 0
	for sc.Scan() {
		key, val, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(key) {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &hwm
		default:
			continue
		}
		f := bytes.Fields(val)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, 0, fmt.Errorf("%w: status line %q", ErrFormat, sc.Bytes())
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return 0, 0, fmt.Errorf("%w: status line %q", ErrFormat, sc.Bytes())
		}
		*dst = kb << 10
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("%w: status without VmRSS and VmHWM", ErrFormat)
	}
	return rss, hwm, nil
}

// parseStat returns utime+stime from /proc/PID/stat. The command name
// (field 2) is in parentheses and may hold spaces and parentheses itself, so
// fields are counted from the last ')': utime and stime are fields 14 and 15.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%w: stat without a command name", ErrFormat)
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3 (state)
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, fmt.Errorf("%w: stat with %d fields", ErrFormat, len(f)+2)
	}
	var ticks int64
	for _, k := range []int{utime, stime} {
		n, err := strconv.ParseInt(string(f[k]), 10, 64)
		if err != nil || n < 0 || n > 1<<50 {
			return 0, fmt.Errorf("%w: stat field %d %q", ErrFormat, k+3, f[k])
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / userHZ), nil
}

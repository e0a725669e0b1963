//go:build unix

package main

import (
	"log/slog"
	"syscall"
)

// raiseFileLimit raises the soft limit on open files to the hard limit, or
// both to need if the hard limit is lower and the process may raise it
// (root), and returns the new soft limit.
func raiseFileLimit(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Max < need {
		want := syscall.Rlimit{Cur: need, Max: need}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			return need, nil
		}
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
	}
	return lim.Cur, nil
}

// The descriptors kept from links (linksForFiles). Every link is a
// descriptor; the rest of the server needs some too, and when a flood of
// connections took them all, a segment rotation failed with EMFILE and the
// server stopped.
const (
	// fileReserveMin is kept whatever the limit: the store's open segments
	// (one per 64 MiB of messages kept, so 6 GiB of queues in a hundred),
	// its directory and id-floor files, the user database's temporary
	// file and directory, the listener, the runtime's poller, the standard
	// streams, and outgoing NTP and key-set (JWKS) connections.
	fileReserveMin = 128
	// fileReserveDivisor: of a larger limit, an eighth is kept, since a
	// server given many descriptors keeps much data (segments) as well.
	fileReserveDivisor = 8
	// fileReserveMaxDivisor: of a very small limit, at most half is kept,
	// so that the server still takes links.
	fileReserveMaxDivisor = 2
)

// linksForFiles returns the links a soft limit of files allows, and the
// descriptors it keeps from them.
func linksForFiles(soft uint64) (links int, reserve uint64) {
	reserve = min(max(fileReserveMin, soft/fileReserveDivisor), soft/fileReserveMaxDivisor)
	// A limit beyond what an int holds is no limit that matters: the
	// configuration's own bound (maxLinksLimit) is far below it.
	return int(min(soft-reserve, maxLinksLimit)), reserve
}

// linkCap returns qlib.Config.MaxLinks for the daemon: configured (the
// configuration's maxLinks) if set, or else what the descriptor limit
// allows, after raising the soft limit to the hard one. A nil logger is
// slog.Default().
func linkCap(configured int, logger *slog.Logger) int {
	if logger == nil {
		logger = slog.Default() // as qlib.Config.Logger
	}
	soft, err := raiseFileLimit(0)
	if err != nil {
		if configured > 0 {
			return configured
		}
		logger.Warn("file descriptor limit unknown; using a fixed link cap", "err", err, "maxLinks", fallbackLinkCap)
		return fallbackLinkCap
	}
	links, reserve := linksForFiles(soft)
	if configured > 0 {
		if configured > links {
			logger.Warn("maxLinks leaves the store and user database fewer descriptors than they should keep; "+
				"a flood of connections may stop the server", "maxLinks", configured, "fileLimit", soft, "derived", links)
		}
		logger.Info("link cap", "maxLinks", configured, "from", "config", "fileLimit", soft)
		return configured
	}
	logger.Info("link cap", "maxLinks", links, "from", "file descriptor limit", "fileLimit", soft, "reserve", reserve)
	return links
}

// fallbackLinkCap is the link cap when the descriptor limit cannot be
// read: the one used where there is no such limit (filelimit_other.go says
// why this value).
const fallbackLinkCap = 16384

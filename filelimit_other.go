//go:build !unix

package main

import (
	"errors"
	"log/slog"
)

// raiseFileLimit: there is no such limit to raise here.
func raiseFileLimit(uint64) (uint64, error) {
	return 0, errors.ErrUnsupported
}

// fallbackLinkCap is the link cap where there is no descriptor limit to
// derive it from (Windows: a process may hold millions of handles). What
// runs out first then is memory: an idle link costs about 17 KiB
// (BENCHMARKS.md), so 16,384 links are under 300 MiB, which a small
// server has, and are more devices than a site on such a host serves.
const fallbackLinkCap = 16384

// linkCap returns qlib.Config.MaxLinks for the daemon: configured (the
// configuration's maxLinks) if set, else fallbackLinkCap. A nil logger is
// slog.Default().
func linkCap(configured int, logger *slog.Logger) int {
	if logger == nil {
		logger = slog.Default() // as qlib.Config.Logger
	}
	if configured > 0 {
		logger.Info("link cap", "maxLinks", configured, "from", "config")
		return configured
	}
	logger.Info("link cap", "maxLinks", fallbackLinkCap, "from", "default")
	return fallbackLinkCap
}

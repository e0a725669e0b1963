//go:build race

package tmtp

// raceEnabled skips allocation counts, which the race detector changes.
const raceEnabled = true

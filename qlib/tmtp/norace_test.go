//go:build !race

package tmtp

const raceEnabled = false

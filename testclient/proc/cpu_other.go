//go:build !unix

package proc

import "time"

// SelfCPU is not measured here; the figures that use it read 0.
func SelfCPU() time.Duration { return 0 }

//go:build !unix

package testclient

import "time"

// selfCPU is not measured here; the figures that use it read 0.
func selfCPU() time.Duration { return 0 }

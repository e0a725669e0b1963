package testclient

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	for attempt := -1; attempt < 70; attempt++ {
		ceil := backoffCap
		if a := max(attempt, 0); a < 20 {
			ceil = min(backoffBase<<a, backoffCap)
		}
		seen := map[time.Duration]bool{}
		for range 50 {
			d := Backoff(attempt)
			if d < ceil/2 || d > ceil {
				t.Fatalf("Backoff(%d) = %v, outside [%v, %v]", attempt, d, ceil/2, ceil)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("Backoff(%d) has no jitter", attempt)
		}
	}
	if Backoff(1000) > backoffCap {
		t.Error("cap exceeded")
	}
}

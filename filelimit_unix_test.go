//go:build unix

package main

import "testing"

// The link cap leaves the reserve to the rest of the server: at least
// fileReserveMin descriptors, an eighth of a large limit, and never more
// than half of a small one.
func TestLinksForFiles(t *testing.T) {
	cases := []struct {
		soft, reserve uint64
		links         int
	}{
		{256, 128, 128},           // half kept: the minimum would leave no links
		{1024, 128, 896},          // the minimum
		{65536, 8192, 57344},      // an eighth
		{1 << 20, 131072, 917504}, // an eighth of the usual hard limit
		{1 << 40, 1 << 37, maxLinksLimit},
		{0, 0, 0},
	}
	for _, c := range cases {
		links, reserve := linksForFiles(c.soft)
		if links != c.links || reserve != c.reserve {
			t.Errorf("linksForFiles(%d) = %d links, %d kept; want %d, %d", c.soft, links, reserve, c.links, c.reserve)
		}
	}
}

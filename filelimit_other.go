//go:build !unix

package main

import "errors"

// raiseFileLimit: there is no such limit to raise here.
func raiseFileLimit(uint64) (uint64, error) {
	return 0, errors.ErrUnsupported
}

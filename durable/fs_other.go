//go:build !unix

package durable

import "errors"

// Free implements SpaceFS where the system cannot be asked: no watermark.
func (OSFS) Free(string) (int64, error) { return 0, errors.ErrUnsupported }

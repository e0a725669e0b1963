//go:build !unix

package store

import "errors"

// Free implements SpaceFS where the store cannot ask: no watermark.
func (OSFS) Free(string) (int64, error) { return 0, errors.ErrUnsupported }

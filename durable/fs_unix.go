//go:build unix

package durable

import "syscall"

// Free implements SpaceFS: the blocks available to an unprivileged user, as
// df reports them (root's reserved blocks are not ours to fill).
func (OSFS) Free(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

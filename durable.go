package main

import "os"

// syncDir fsyncs a directory, making the creation, renaming or linking of
// its entries durable: the last step of every crash-safe write here (write
// a temporary file, fsync it, rename or link it into place, fsync the
// directory).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

package main

import "mnm/qlib/store"

// syncDir fsyncs a directory, making the creation, renaming or linking of
// its entries durable: the last step of every crash-safe write here (write
// a temporary file, fsync it, rename or link it into place, fsync the
// directory). The store's filesystem layer already does exactly this.
func syncDir(dir string) error { return store.OSFS{}.SyncDir(dir) }

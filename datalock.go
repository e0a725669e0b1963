package main

import "errors"

// dataLockName is the file in the data directory whose lock (lockDataDir)
// the server holds while it runs, so that a command that changes the data
// offline (mnm member) refuses to run beside it: the user database is
// loaded into memory at start and rewritten record by record, so a change
// made under a running server would be overwritten or contradicted.
const dataLockName = "mnm.lock"

// ErrDataDirInUse is lockDataDir's refusal: the server (or another
// command) is using the data directory. The error wrapping it names the
// holder's pid when the lock file tells it (the holder writes it there).
var ErrDataDirInUse = errors.New("another mnm is using this data directory")

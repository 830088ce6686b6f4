package restore

import "errors"

// Sentinel errors. Each is one of the clear refusals of DESIGN I7: the CLI
// maps each to its own exit status. Run refuses before its first write;
// the same causes found after writing began come wrapped in a
// *WrittenError (restore.go), which says how far the restore got.
var (
	// ErrOutOfRange: the restore point is outside the restorable range
	// [task start_ts, global checkpoint]. The message names the range.
	ErrOutOfRange = errors.New("restore point out of range")
	// ErrCorrupt: a meta, a data file or another durable object is not what
	// its writer wrote (wrong size, sha256 mismatch, undecodable bytes).
	ErrCorrupt = errors.New("corrupt backup")
	// ErrMissing: a file a meta references is not in storage, or the log's
	// coverage has a hole in the keys and timestamps a restore needs.
	ErrMissing = errors.New("incomplete backup")
	// ErrNotBackup: the storage root is not a pitr log backup (no pitr.lock
	// or task.pb) or belongs to another task.
	ErrNotBackup = errors.New("not a pitr backup")
	// ErrFormat: a durable object was written by a newer pitr whose format
	// this build cannot read.
	ErrFormat = errors.New("backup format too new")
	// ErrNoBase: restoring needs a base snapshot and there is none that
	// fits (the task did not start on empty ranges).
	ErrNoBase = errors.New("no base snapshot")
	// ErrChecksum: after the writes, the target's checksum of a range
	// (TiKV's coprocessor checksum) differs from what the backup says a
	// read at T returns. The message names the range and both sums.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrTargetNotEmpty: the target cluster already holds data in the task
	// ranges, and neither Force nor a matching progress file allows writing.
	ErrTargetNotEmpty = errors.New("target cluster not empty")
)

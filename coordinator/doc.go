// Package coordinator keeps the global checkpoint of every log backup task
// and holds PD's GC safepoint at it (DESIGN.md §5).
//
// Any number of coordinators run; one is elected through etcd
// (concurrency.Election on task.ElectionPrefix). Each election won starts a
// fresh term object with its own stop channel; every etcd write of a term
// is a transaction guarded by Compare(CreateRevision(election key) ==
// term revision), so a deposed leader's writes fail with ErrNotLeader (I6).
//
// Every tick (default 1 s) the leader, for each task:
//
//	running:  polls every registered agent's GetProgress (in parallel,
//	          bounded), computes the checkpoint with Compute (a pure
//	          function: newest epoch per key range, holes pin it, never
//	          lower than before: I2), writes it to etcd (fenced, compared
//	          with the previous value) and to checkpoint/global in storage
//	          (only upwards, by a background writer per task so a slow
//	          storage does not stall the tick), then holds the PD service
//	          safepoint "pitr-<task>" at it with a TTL (I3). If PD's GC
//	          safepoint is above the checkpoint, the task fails with a clear
//	          error.
//	paused:   refreshes the safepoint without advancing; a task paused for
//	          longer than the TTL fails.
//	failed:   keeps the safepoint held (the task still exists).
//	stopped:  removes the safepoint (once per term; `task stop` does too).
//
// and publishes a Status record (task.StatusKey, JSON) that `pitr task
// status` shows: checkpoint, lag, uncovered ranges, the slowest regions
// with their reasons, each agent's state and the last error.
//
// The GC calls are rate-limited (each legacy call is an etcd write or a
// deprecation WARN on PD): the service safepoint is set on a term's first
// tick, when the task record changes, when the checkpoint moved and 10
// ticks have passed, and at TTL/3; in between it stays at an earlier
// checkpoint of the term, which is at or below the current one (I3). PD's
// GC safepoint is read every 10 ticks and whenever a task has no hold of
// this term yet.
//
// The task lifecycle the CLI drives (start, pause, resume, stop) and the
// views `pitr task status` reads are in package task; the coordinator only
// advances and publishes.
//
// checkpoint/global is written with a read-compare-conditional-write
// (storage.PutIfMatch on the version read): a leader deposed between its
// fenced etcd write and its storage write cannot put an older checkpoint
// over a newer one. On an S3 server that ignores If-Match this degrades
// to read-compare-write, racy only between that read and that write.
package coordinator

// Package mvcc is the playground's storage engine: TiKV's three column
// families (lock, default, write) with Percolator transactions on top, a GC
// that really removes old versions, and an apply-order observer that the CDC
// service reads exactly as TiKV's CDC observer reads raft applies.
//
// Keys in this package are raw user keys (as client-go sends them on the
// tikvpb wire); timestamps are PD TSOs.
package mvcc

// CF names a column family.
type CF int

const (
	CFDefault CF = iota + 1
	CFLock
	CFWrite
)

func (c CF) String() string {
	switch c {
	case CFDefault:
		return "default"
	case CFLock:
		return "lock"
	case CFWrite:
		return "write"
	}
	return "cf?"
}

// ShortValueMaxLen is TiKV's limit for values kept inline in a lock or write
// record; longer values go to the default CF.
const ShortValueMaxLen = 255

// LockType is the kind of a lock, as in TiKV's txn_types::LockType.
type LockType byte

const (
	LockPut         LockType = 'P'
	LockDelete      LockType = 'D'
	LockLock        LockType = 'L'
	LockPessimistic LockType = 'S'
)

// Lock is a lock-CF record.
type Lock struct {
	Key            []byte
	Type           LockType
	Primary        []byte
	StartTS        uint64
	TTL            uint64
	ForUpdateTS    uint64
	MinCommitTS    uint64
	TxnSize        uint64
	UseAsyncCommit bool
	Secondaries    [][]byte
	// ShortValue is set when the value is ≤ ShortValueMaxLen; HasShortValue
	// tells an empty short value from none.
	ShortValue    []byte
	HasShortValue bool
	// TxnSource is the txn_source of the prewrite context.
	TxnSource uint64
}

// WriteType is the kind of a write record, as in TiKV's txn_types::WriteType.
type WriteType byte

const (
	WritePut      WriteType = 'P'
	WriteDelete   WriteType = 'D'
	WriteLock     WriteType = 'L'
	WriteRollback WriteType = 'R'
)

// Write is a write-CF record: the commit of the version started at StartTS.
type Write struct {
	Type          WriteType
	StartTS       uint64
	ShortValue    []byte
	HasShortValue bool
	TxnSource     uint64
	// OverlappedRollback marks a rollback folded into a commit record.
	OverlappedRollback bool
	// GCFence marks a record rewritten to carry the overlapped rollback of
	// the txn started at its commit ts (TiKV sets gc_fence on it; a commit
	// landing on a rollback sets OverlappedRollback without it). The CDC
	// observer reports such a rewrite as that txn's rollback.
	GCFence bool
}

// Modify is one column-family mutation of an applied command, in the form
// the TiKV CDC observer sees raft applies.
//   - CFLock Put: Key, Lock (decoded record).
//   - CFLock Delete: Key.
//   - CFDefault Put: Key, TS = start_ts, Value.
//   - CFWrite Put: Key, TS = commit_ts (= start_ts for rollbacks), Write.
//   - Deletes in default/write (GC) carry Key and TS.
//
// OldValue/HasOldValue are filled on lock Puts of Put/Delete locks and on
// 1PC write Puts: the newest committed value of the key visible before the
// change (at max(start_ts, for_update_ts) for prewrites, at commit_ts-1 for
// 1PC), which TiKV sends as old_value.
type Modify struct {
	CF          CF
	Delete      bool
	Key         []byte
	TS          uint64
	Lock        *Lock
	Write       *Write
	Value       []byte
	OldValue    []byte
	HasOldValue bool
}

// Command is one applied command: every mutation a single tikvpb request made
// to one region, applied atomically, in apply order.
type Command struct {
	// OnePC is set for a prewrite committed in one phase (TiKV flags such
	// raft commands ONE_PC; CDC turns their write Puts into COMMITTED rows).
	OnePC bool
	Mods  []Modify
}

// VersionedWrite is a committed version with its value resolved (the short
// value or the default-CF value); Value is nil for deletes.
type VersionedWrite struct {
	Key      []byte
	CommitTS uint64
	Write    Write
	Value    []byte
}

// DeltaEntry is one user key of a delta scan: its lock, if any (with the
// lock's value resolved from the short value or the default CF), then every
// Put/Delete version with commit_ts > fromTS, newest first. Rollback and Lock
// write records are skipped, as TiKV's DeltaScanner does.
type DeltaEntry struct {
	Key       []byte
	Lock      *Lock
	LockValue []byte
	// LockOldValue is the old value for the lock (newest committed value
	// before the lock's start ts), as TiKV's scanner computes it.
	LockOldValue    []byte
	HasLockOldValue bool
	Writes          []VersionedWrite
}

// Snapshot is a consistent, immutable read view of the engine.
type Snapshot interface {
	// DeltaScan calls fn for every user key in [start, end) (nil end = +inf)
	// in key order that has a lock or a Put/Delete version with commit_ts >
	// fromTS. Returning an error from fn stops the scan with that error.
	DeltaScan(start, end []byte, fromTS uint64, fn func(DeltaEntry) error) error
	// Locks calls fn for every lock in [start, end), in key order.
	Locks(start, end []byte, fn func(*Lock) error) error
	// Get returns the value of key visible at ts ignoring locks, and whether
	// it exists.
	Get(key []byte, ts uint64) ([]byte, bool, error)
	// Release frees the snapshot.
	Release()
}

// Observer receives every applied command, synchronously, in apply order. It
// must not block and must not call back into the engine.
type Observer func(*Command)

// IngestEntry is one committed version written by import (import_sstpb
// Write/MultiIngest or Apply): it lands in the default and write CFs directly,
// bypassing locks, and is not seen by observers (ingested data produces no
// raft KV events in TiKV, so CDC never sees it).
type IngestEntry struct {
	Key      []byte
	StartTS  uint64
	CommitTS uint64
	Delete   bool
	Value    []byte
}

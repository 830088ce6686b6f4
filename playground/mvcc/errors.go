package mvcc

import "fmt"

// Transaction errors, one type per kvrpcpb.KeyError variant. The tikv service
// maps them onto the wire with errors.As.

// KeyIsLockedError: the key is locked by another transaction (KeyError.locked).
type KeyIsLockedError struct {
	Lock *Lock // Lock.Key is the locked key
}

func (e *KeyIsLockedError) Error() string {
	return fmt.Sprintf("key %q is locked by txn %d (primary %q)", e.Lock.Key, e.Lock.StartTS, e.Lock.Primary)
}

// ConflictReason is why a write conflict happened, numbered as
// kvrpcpb.WriteConflict_Reason.
type ConflictReason int32

const (
	ConflictOptimistic     ConflictReason = 1
	ConflictSelfRolledBack ConflictReason = 3
)

// WriteConflictError: a newer committed version (or the txn's own rollback)
// exists (KeyError.conflict).
type WriteConflictError struct {
	StartTS          uint64
	ConflictStartTS  uint64
	ConflictCommitTS uint64
	Key              []byte
	Primary          []byte
	Reason           ConflictReason
}

func (e *WriteConflictError) Error() string {
	return fmt.Sprintf("write conflict on key %q: txn %d vs txn %d committed at %d (reason %d)",
		e.Key, e.StartTS, e.ConflictStartTS, e.ConflictCommitTS, e.Reason)
}

// AlreadyExistError: an Insert or CheckNotExists found a value (KeyError.already_exist).
type AlreadyExistError struct{ Key []byte }

func (e *AlreadyExistError) Error() string { return fmt.Sprintf("key %q already exists", e.Key) }

// TxnLockNotFoundError: commit found neither the lock nor a commit record
// (KeyError.txn_lock_not_found).
type TxnLockNotFoundError struct {
	StartTS, CommitTS uint64
	Key               []byte
}

func (e *TxnLockNotFoundError) Error() string {
	return fmt.Sprintf("txn %d lock not found on key %q (commit_ts %d)", e.StartTS, e.Key, e.CommitTS)
}

// CommitTSExpiredError: commit_ts < the lock's min_commit_ts (KeyError.commit_ts_expired).
type CommitTSExpiredError struct {
	StartTS, CommitTS, MinCommitTS uint64
	Key                            []byte
}

func (e *CommitTSExpiredError) Error() string {
	return fmt.Sprintf("txn %d commit_ts %d < min_commit_ts %d on key %q", e.StartTS, e.CommitTS, e.MinCommitTS, e.Key)
}

// TxnNotFoundError: the txn has neither a lock nor a record (KeyError.txn_not_found).
type TxnNotFoundError struct {
	StartTS uint64
	Key     []byte
}

func (e *TxnNotFoundError) Error() string {
	return fmt.Sprintf("txn %d not found on key %q", e.StartTS, e.Key)
}

// CommittedError: a cleanup or rollback met an already committed txn.
type CommittedError struct {
	StartTS, CommitTS uint64
	Key               []byte
}

func (e *CommittedError) Error() string {
	return fmt.Sprintf("txn %d already committed at %d on key %q", e.StartTS, e.CommitTS, e.Key)
}

// PrimaryMismatchError: CheckTxnStatus with verify_is_primary found a lock
// whose primary is another key (KeyError.primary_mismatch).
type PrimaryMismatchError struct{ Lock *Lock }

func (e *PrimaryMismatchError) Error() string {
	return fmt.Sprintf("key %q is not the primary of txn %d (primary %q)", e.Lock.Key, e.Lock.StartTS, e.Lock.Primary)
}

// InvalidTxnTSOError: commit_ts ≤ start_ts.
type InvalidTxnTSOError struct{ StartTS, CommitTS uint64 }

func (e *InvalidTxnTSOError) Error() string {
	return fmt.Sprintf("invalid txn tso: start_ts %d, commit_ts %d", e.StartTS, e.CommitTS)
}

package tikv

import (
	"errors"

	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/pingcap/kvproto/pkg/kvrpcpb"

	"github.com/pitr-io/pitr/playground/mvcc"
)

// closingError is the region error a closing TiKV returns
// (storage/errors.rs: "TiKV is Closing"): the client retries elsewhere.
func closingError() *errorpb.Error {
	return &errorpb.Error{Message: "TiKV is Closing"}
}

func lockOp(t mvcc.LockType) kvrpcpb.Op {
	switch t {
	case mvcc.LockPut:
		return kvrpcpb.Op_Put
	case mvcc.LockDelete:
		return kvrpcpb.Op_Del
	case mvcc.LockPessimistic:
		return kvrpcpb.Op_PessimisticLock
	default:
		return kvrpcpb.Op_Lock
	}
}

// lockInfo renders a lock as TiKV's Lock::into_lock_info does.
func lockInfo(l *mvcc.Lock) *kvrpcpb.LockInfo {
	return &kvrpcpb.LockInfo{
		PrimaryLock:     l.Primary,
		LockVersion:     l.StartTS,
		Key:             l.Key,
		LockTtl:         l.TTL,
		TxnSize:         l.TxnSize,
		LockType:        lockOp(l.Type),
		LockForUpdateTs: l.ForUpdateTS,
		UseAsyncCommit:  l.UseAsyncCommit,
		MinCommitTs:     l.MinCommitTS,
		Secondaries:     l.Secondaries,
	}
}

// keyError maps an engine error to a KeyError as TiKV's extract_key_error
// does. ok is false for errors that are not transaction errors.
func keyError(err error) (ke *kvrpcpb.KeyError, ok bool) {
	var (
		locked   *mvcc.KeyIsLockedError
		conflict *mvcc.WriteConflictError
		exist    *mvcc.AlreadyExistError
		lnf      *mvcc.TxnLockNotFoundError
		tnf      *mvcc.TxnNotFoundError
		expired  *mvcc.CommitTSExpiredError
		mismatch *mvcc.PrimaryMismatchError
	)
	switch {
	case errors.As(err, &locked):
		return &kvrpcpb.KeyError{Locked: lockInfo(locked.Lock)}, true
	case errors.As(err, &conflict):
		return &kvrpcpb.KeyError{
			Conflict: &kvrpcpb.WriteConflict{
				StartTs:          conflict.StartTS,
				ConflictTs:       conflict.ConflictStartTS,
				ConflictCommitTs: conflict.ConflictCommitTS,
				Key:              conflict.Key,
				Primary:          conflict.Primary,
				Reason:           kvrpcpb.WriteConflict_Reason(conflict.Reason),
			},
			// Set for compatibility with older clients, as TiKV does.
			Retryable: err.Error(),
		}, true
	case errors.As(err, &exist):
		return &kvrpcpb.KeyError{AlreadyExist: &kvrpcpb.AlreadyExist{Key: exist.Key}}, true
	case errors.As(err, &lnf):
		return &kvrpcpb.KeyError{
			Retryable:       err.Error(),
			TxnLockNotFound: &kvrpcpb.TxnLockNotFound{Key: lnf.Key},
		}, true
	case errors.As(err, &tnf):
		return &kvrpcpb.KeyError{TxnNotFound: &kvrpcpb.TxnNotFound{StartTs: tnf.StartTS, PrimaryKey: tnf.Key}}, true
	case errors.As(err, &expired):
		return &kvrpcpb.KeyError{CommitTsExpired: &kvrpcpb.CommitTsExpired{
			StartTs:           expired.StartTS,
			AttemptedCommitTs: expired.CommitTS,
			Key:               expired.Key,
			MinCommitTs:       expired.MinCommitTS,
		}}, true
	case errors.As(err, &mismatch):
		return &kvrpcpb.KeyError{PrimaryMismatch: &kvrpcpb.PrimaryMismatch{LockInfo: lockInfo(mismatch.Lock)}}, true
	}
	return nil, false
}

// splitErr turns an engine error into the response's region error (engine
// closed) or key error (everything else; unknown errors abort the txn, as
// TiKV's catch-all does).
func splitErr(err error) (*errorpb.Error, *kvrpcpb.KeyError) {
	if err == nil {
		return nil, nil
	}
	if errors.Is(err, mvcc.ErrClosed) {
		return closingError(), nil
	}
	if ke, ok := keyError(err); ok {
		return nil, ke
	}
	return nil, &kvrpcpb.KeyError{Abort: err.Error()}
}

func readOptions(ctx *kvrpcpb.Context) mvcc.ReadOptions {
	return mvcc.ReadOptions{
		ResolvedLocks:  ctx.GetResolvedLocks(),
		CommittedLocks: ctx.GetCommittedLocks(),
		IgnoreLocks:    ctx.GetIsolationLevel() == kvrpcpb.IsolationLevel_RC,
	}
}

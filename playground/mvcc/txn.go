package mvcc

import (
	"bytes"
	"math"
)

// Percolator write operations, following the semantics of TiKV's
// src/storage/txn/actions and commands. Each exported operation is one
// command: all of its mutations apply atomically, or none (on error).

// MaxTS is the timestamp point reads without a snapshot use (u64::MAX).
const MaxTS = uint64(math.MaxUint64)

// physical returns the physical (millisecond) part of a TSO.
func physical(ts uint64) uint64 { return ts >> 18 }

// protectedRollbackValue marks a protected rollback record, as TiKV does
// (a Rollback write with short value "p" is never collapsed).
var protectedRollbackValue = []byte{'p'}

// txn buffers the mutations of one command; reads see the state before it.
type txn struct {
	v     *view
	mods  []Modify
	onePC bool
}

func (t *txn) putLock(l *Lock) {
	m := Modify{CF: CFLock, Key: l.Key, Lock: l}
	if l.Type == LockPut || l.Type == LockDelete {
		m.OldValue, m.HasOldValue = t.v.read(l.Key, max(l.StartTS, l.ForUpdateTS))
	}
	t.mods = append(t.mods, m)
}

func (t *txn) unlock(key []byte) {
	t.mods = append(t.mods, Modify{CF: CFLock, Delete: true, Key: key})
}

func (t *txn) putWrite(key []byte, commitTS uint64, w *Write) {
	t.mods = append(t.mods, Modify{CF: CFWrite, Key: key, TS: commitTS, Write: w})
}

func (t *txn) putValue(key []byte, startTS uint64, val []byte) {
	t.mods = append(t.mods, Modify{CF: CFDefault, Key: key, TS: startTS, Value: val})
}

func (t *txn) deleteValue(key []byte, startTS uint64) {
	t.mods = append(t.mods, Modify{CF: CFDefault, Delete: true, Key: key, TS: startTS})
}

// MutationOp is the operation of a prewrite mutation.
type MutationOp int

const (
	OpPut MutationOp = iota + 1
	OpDelete
	OpLock
	OpInsert
	OpCheckNotExists
)

// Mutation is one key of a prewrite.
type Mutation struct {
	Op    MutationOp
	Key   []byte
	Value []byte
}

// PrewriteArgs are the fields of kvrpcpb.PrewriteRequest the engine uses.
type PrewriteArgs struct {
	Mutations           []Mutation
	Primary             []byte
	StartTS             uint64
	LockTTL             uint64
	TxnSize             uint64
	ForUpdateTS         uint64
	MinCommitTS         uint64
	MaxCommitTS         uint64
	SkipConstraintCheck bool
	UseAsyncCommit      bool
	Secondaries         [][]byte
	TryOnePC            bool
	TxnSource           uint64
}

// PrewriteResult is the outcome of a prewrite that did not fail outright.
type PrewriteResult struct {
	// Locked lists every key locked by another txn; when non-empty nothing
	// was written.
	Locked []*KeyIsLockedError
	// MinCommitTS is the async-commit min_commit_ts (0 when not async commit
	// or when it fell back to 2PC).
	MinCommitTS uint64
	// OnePCCommitTS is the commit ts of a 1PC commit (0 if not committed in
	// one phase).
	OnePCCommitTS uint64
}

type plannedLock struct {
	lock  *Lock
	value []byte // long value for the default CF
}

// Prewrite locks the mutations for the txn (or, with TryOnePC, commits them
// directly).
func (e *Engine) Prewrite(a PrewriteArgs) (PrewriteResult, error) {
	var res PrewriteResult
	err := e.write(func(t *txn) error {
		r, err := e.prewrite(t, &a)
		res = r
		return err
	})
	return res, err
}

func (e *Engine) prewrite(t *txn, a *PrewriteArgs) (PrewriteResult, error) {
	var res PrewriteResult
	asyncTS := a.UseAsyncCommit || a.TryOnePC
	maxTS := e.maxTS.Load()
	var finalMin uint64
	fallback := false
	var planned []plannedLock

	// alreadyCommitted handles a retried prewrite of a txn that has since
	// committed (TiKV's check_committed_record_on_err).
	alreadyCommitted := func(key []byte) (PrewriteResult, bool) {
		rec := t.v.txnRecord(key, a.StartTS)
		if rec.kind != recordCommitted {
			return PrewriteResult{}, false
		}
		t.mods = nil
		var r PrewriteResult
		if a.UseAsyncCommit {
			r.MinCommitTS = rec.commitTS
		}
		if a.TryOnePC {
			r.OnePCCommitTS = rec.commitTS
		}
		return r, true
	}

	for _, m := range a.Mutations {
		key := m.Key
		pessimisticLocked := false
		if l := t.v.getLock(key); l != nil {
			if l.StartTS != a.StartTS {
				if r, ok := alreadyCommitted(key); ok {
					return r, nil
				}
				res.Locked = append(res.Locked, &KeyIsLockedError{Lock: l})
				continue
			}
			if l.Type != LockPessimistic {
				// Already prewritten: idempotent.
				if l.UseAsyncCommit {
					finalMin = max(finalMin, l.MinCommitTS)
				}
				continue
			}
			pessimisticLocked = true
		}
		if !a.SkipConstraintCheck && !pessimisticLocked {
			if cts, w := t.v.newestWrite(key); w != nil {
				if cts == a.StartTS && (w.Type == WriteRollback || w.OverlappedRollback) {
					return res, &WriteConflictError{StartTS: a.StartTS, ConflictStartTS: w.StartTS, ConflictCommitTS: cts,
						Key: key, Primary: a.Primary, Reason: ConflictSelfRolledBack}
				}
				if cts > a.StartTS {
					if r, ok := alreadyCommitted(key); ok {
						return r, nil
					}
					return res, &WriteConflictError{StartTS: a.StartTS, ConflictStartTS: w.StartTS, ConflictCommitTS: cts,
						Key: key, Primary: a.Primary, Reason: ConflictOptimistic}
				}
			}
		}
		if m.Op == OpInsert || m.Op == OpCheckNotExists {
			if _, w := t.v.newestData(key, MaxTS); w != nil && w.Type == WritePut {
				return res, &AlreadyExistError{Key: key}
			}
		}
		if m.Op == OpCheckNotExists {
			continue
		}
		l := &Lock{
			Key:         key,
			Primary:     a.Primary,
			StartTS:     a.StartTS,
			TTL:         a.LockTTL,
			ForUpdateTS: a.ForUpdateTS,
			MinCommitTS: a.MinCommitTS,
			TxnSize:     a.TxnSize,
			TxnSource:   a.TxnSource,
		}
		var long []byte
		switch m.Op {
		case OpPut, OpInsert:
			l.Type = LockPut
			if len(m.Value) <= ShortValueMaxLen {
				l.ShortValue, l.HasShortValue = m.Value, true
				if l.ShortValue == nil {
					l.ShortValue = []byte{}
				}
			} else {
				long = m.Value
			}
		case OpDelete:
			l.Type = LockDelete
		default:
			l.Type = LockLock
		}
		if asyncTS {
			l.UseAsyncCommit = a.UseAsyncCommit
			if a.UseAsyncCommit && bytes.Equal(key, a.Primary) {
				l.Secondaries = a.Secondaries
			}
			mc := max(maxTS, a.StartTS, a.ForUpdateTS) + 1
			mc = max(mc, a.MinCommitTS)
			if a.MaxCommitTS != 0 && mc > a.MaxCommitTS {
				fallback = true
			}
			l.MinCommitTS = mc
			finalMin = max(finalMin, mc)
		}
		planned = append(planned, plannedLock{lock: l, value: long})
	}
	if len(res.Locked) > 0 {
		t.mods = nil
		return res, nil
	}
	if fallback {
		// commit_ts would exceed max_commit_ts: fall back to plain 2PC.
		for _, p := range planned {
			p.lock.UseAsyncCommit = false
			p.lock.Secondaries = nil
			p.lock.MinCommitTS = a.MinCommitTS
		}
		finalMin = 0
	}
	if a.TryOnePC && !fallback {
		commitTS := max(finalMin, a.StartTS+1)
		for _, p := range planned {
			l := p.lock
			w := &Write{StartTS: a.StartTS, ShortValue: l.ShortValue, HasShortValue: l.HasShortValue, TxnSource: l.TxnSource}
			switch l.Type {
			case LockPut:
				w.Type = WritePut
			case LockDelete:
				w.Type = WriteDelete
			default:
				w.Type = WriteLock
			}
			if old := t.v.writeAt(l.Key, commitTS); old != nil && old.Type == WriteRollback {
				w.OverlappedRollback = true
			}
			if p.value != nil {
				t.putValue(l.Key, a.StartTS, p.value)
			}
			m := Modify{CF: CFWrite, Key: l.Key, TS: commitTS, Write: w}
			if w.Type != WriteLock {
				m.OldValue, m.HasOldValue = t.v.read(l.Key, commitTS-1)
			}
			t.mods = append(t.mods, m)
		}
		t.onePC = true
		res.OnePCCommitTS = commitTS
		return res, nil
	}
	for _, p := range planned {
		if p.value != nil {
			t.putValue(p.lock.Key, a.StartTS, p.value)
		}
		t.putLock(p.lock)
	}
	if a.UseAsyncCommit && !fallback {
		res.MinCommitTS = finalMin
	}
	return res, nil
}

// Commit commits the txn's locks on keys at commitTS.
func (e *Engine) Commit(keys [][]byte, startTS, commitTS uint64) error {
	if commitTS <= startTS {
		return &InvalidTxnTSOError{StartTS: startTS, CommitTS: commitTS}
	}
	return e.write(func(t *txn) error {
		for _, k := range keys {
			if err := commitKey(t, k, startTS, commitTS); err != nil {
				return err
			}
		}
		return nil
	})
}

func commitKey(t *txn, key []byte, startTS, commitTS uint64) error {
	l := t.v.getLock(key)
	if l == nil || l.StartTS != startTS {
		rec := t.v.txnRecord(key, startTS)
		if rec.kind == recordCommitted {
			return nil // committed by a concurrent or earlier request
		}
		return &TxnLockNotFoundError{StartTS: startTS, CommitTS: commitTS, Key: key}
	}
	if commitTS < l.MinCommitTS {
		return &CommitTSExpiredError{StartTS: startTS, CommitTS: commitTS, MinCommitTS: l.MinCommitTS, Key: key}
	}
	w := &Write{StartTS: startTS, ShortValue: l.ShortValue, HasShortValue: l.HasShortValue, TxnSource: l.TxnSource}
	switch l.Type {
	case LockPut:
		w.Type = WritePut
	case LockDelete:
		w.Type = WriteDelete
	default: // Lock, and a stray pessimistic lock (committed as Lock, as TiKV does)
		w.Type = WriteLock
	}
	if old := t.v.writeAt(key, commitTS); old != nil && old.Type == WriteRollback {
		// Another txn's rollback sat at our commit ts: keep it as a flag.
		w.OverlappedRollback = true
	}
	t.putWrite(key, commitTS, w)
	t.unlock(key)
	return nil
}

// rollbackLock rolls back the txn's own lock l on key.
func rollbackLock(t *txn, key []byte, l *Lock, protect bool) {
	rec := t.v.txnRecord(key, l.StartTS)
	if rec.kind != recordNone {
		t.unlock(key)
		return
	}
	if l.Type == LockPut && !l.HasShortValue {
		t.deleteValue(key, l.StartTS)
	}
	protected := protect || (l.ForUpdateTS != 0 && bytes.Equal(key, l.Primary))
	writeRollback(t, key, l.StartTS, protected, rec.overlapped)
	t.unlock(key)
}

// writeRollback writes the rollback record of startTS on key. When another
// txn's commit record occupies (key, startTS), a protected rollback is
// folded into it as the overlapped-rollback flag and an unprotected one is
// dropped, as TiKV's make_rollback does.
func writeRollback(t *txn, key []byte, startTS uint64, protected bool, overlapped *Write) {
	if overlapped != nil {
		if protected {
			w := *overlapped
			w.OverlappedRollback, w.GCFence = true, true
			t.putWrite(key, startTS, &w)
		}
		return
	}
	w := &Write{Type: WriteRollback, StartTS: startTS}
	if protected {
		w.ShortValue, w.HasShortValue = protectedRollbackValue, true
	}
	t.putWrite(key, startTS, w)
}

type missingLockAction int

const (
	missingRollback missingLockAction = iota
	missingProtectedRollback
	missingReturnError
)

type txnState int

const (
	stateCommitted txnState = iota
	stateRolledBack
	stateLockNotExist // rolled back now because nothing was there
	stateUncommitted
	stateTTLExpired
)

// missingLock decides the fate of a txn whose lock is not on key, writing a
// rollback record when nothing is known about it.
func missingLock(t *txn, key []byte, startTS uint64, action missingLockAction) (txnState, uint64, error) {
	rec := t.v.txnRecord(key, startTS)
	switch rec.kind {
	case recordCommitted:
		return stateCommitted, rec.commitTS, nil
	case recordRolledBack:
		return stateRolledBack, 0, nil
	}
	if action == missingReturnError {
		return 0, 0, &TxnNotFoundError{StartTS: startTS, Key: key}
	}
	writeRollback(t, key, startTS, action == missingProtectedRollback, rec.overlapped)
	return stateLockNotExist, 0, nil
}

// cleanupKey rolls back the txn on key (TiKV's cleanup action). With
// currentTS ≠ 0 a live lock (TTL not expired) is reported as locked.
func cleanupKey(t *txn, key []byte, startTS, currentTS uint64, protect bool) error {
	l := t.v.getLock(key)
	if l != nil && l.StartTS == startTS {
		if currentTS != 0 && physical(l.StartTS)+l.TTL >= physical(currentTS) {
			return &KeyIsLockedError{Lock: l}
		}
		rollbackLock(t, key, l, false)
		return nil
	}
	action := missingRollback
	if protect {
		action = missingProtectedRollback
	}
	st, cts, err := missingLock(t, key, startTS, action)
	if err != nil {
		return err
	}
	if st == stateCommitted {
		return &CommittedError{StartTS: startTS, CommitTS: cts, Key: key}
	}
	return nil
}

// Cleanup rolls back the txn's lock on key if its TTL expired by currentTS
// (0: unconditionally). A committed txn yields *CommittedError.
func (e *Engine) Cleanup(key []byte, startTS, currentTS uint64) error {
	return e.write(func(t *txn) error {
		return cleanupKey(t, key, startTS, currentTS, true)
	})
}

// BatchRollback rolls back the txn on keys.
func (e *Engine) BatchRollback(keys [][]byte, startTS uint64) error {
	return e.write(func(t *txn) error {
		for _, k := range keys {
			if err := cleanupKey(t, k, startTS, 0, false); err != nil {
				return err
			}
		}
		return nil
	})
}

// TxnAction is what CheckTxnStatus did, numbered as kvrpcpb.Action.
type TxnAction int32

const (
	ActionNoAction                     TxnAction = 0
	ActionTTLExpireRollback            TxnAction = 1
	ActionLockNotExistRollback         TxnAction = 2
	ActionMinCommitTSPushed            TxnAction = 3
	ActionTTLExpirePessimisticRollback TxnAction = 4
	ActionLockNotExistDoNothing        TxnAction = 5
)

// CheckTxnStatusArgs are the fields of kvrpcpb.CheckTxnStatusRequest.
type CheckTxnStatusArgs struct {
	Primary                  []byte
	LockTS                   uint64
	CallerStartTS            uint64
	CurrentTS                uint64
	RollbackIfNotExist       bool
	ForceSyncCommit          bool
	ResolvingPessimisticLock bool
	VerifyIsPrimary          bool
}

// TxnStatus is the answer of CheckTxnStatus: committed (CommitTS ≠ 0),
// alive (LockTTL ≠ 0, Lock set) or rolled back.
type TxnStatus struct {
	Action   TxnAction
	LockTTL  uint64
	CommitTS uint64
	Lock     *Lock
}

// CheckTxnStatus checks (and possibly rolls back or pushes) the txn whose
// primary lock is on a.Primary.
func (e *Engine) CheckTxnStatus(a CheckTxnStatusArgs) (TxnStatus, error) {
	newMax := a.LockTS
	if a.CurrentTS != MaxTS {
		newMax = max(newMax, a.CurrentTS)
	}
	if a.CallerStartTS != MaxTS {
		newMax = max(newMax, a.CallerStartTS)
	}
	e.UpdateMaxTS(newMax)
	var st TxnStatus
	err := e.write(func(t *txn) error {
		l := t.v.getLock(a.Primary)
		if l != nil && l.StartTS == a.LockTS {
			if a.VerifyIsPrimary && !bytes.Equal(l.Primary, a.Primary) {
				return &PrimaryMismatchError{Lock: l}
			}
			if l.UseAsyncCommit && !a.ForceSyncCommit {
				st = TxnStatus{LockTTL: l.TTL, Lock: l}
				return nil
			}
			if physical(l.StartTS)+l.TTL < physical(a.CurrentTS) {
				if a.ResolvingPessimisticLock && l.Type == LockPessimistic {
					t.unlock(a.Primary)
					st = TxnStatus{Action: ActionTTLExpirePessimisticRollback}
					return nil
				}
				rollbackLock(t, a.Primary, l, false)
				st = TxnStatus{Action: ActionTTLExpireRollback}
				return nil
			}
			if l.MinCommitTS != 0 && a.CallerStartTS != MaxTS && a.CallerStartTS >= l.MinCommitTS {
				nl := *l
				nl.MinCommitTS = a.CallerStartTS + 1
				if nl.MinCommitTS < a.CurrentTS {
					nl.MinCommitTS = a.CurrentTS
				}
				t.putLock(&nl)
				l = &nl
			}
			st = TxnStatus{LockTTL: l.TTL, Lock: l}
			if (a.CallerStartTS != 0 && l.MinCommitTS > a.CallerStartTS) || a.CallerStartTS == MaxTS {
				st.Action = ActionMinCommitTSPushed
			}
			return nil
		}
		rec := t.v.txnRecord(a.Primary, a.LockTS)
		if rec.kind == recordNone && a.RollbackIfNotExist && a.ResolvingPessimisticLock {
			st = TxnStatus{Action: ActionLockNotExistDoNothing}
			return nil
		}
		action := missingReturnError
		if a.RollbackIfNotExist {
			action = missingProtectedRollback
		}
		state, cts, err := missingLock(t, a.Primary, a.LockTS, action)
		if err != nil {
			return err
		}
		switch state {
		case stateCommitted:
			st = TxnStatus{CommitTS: cts}
		case stateLockNotExist:
			st = TxnStatus{Action: ActionLockNotExistRollback}
		default:
			st = TxnStatus{Action: ActionNoAction}
		}
		return nil
	})
	return st, err
}

// TxnHeartBeat extends the TTL of the txn's primary lock to adviseTTL (if
// larger) and returns the lock's TTL.
func (e *Engine) TxnHeartBeat(primary []byte, startTS, adviseTTL uint64) (uint64, error) {
	var ttl uint64
	err := e.write(func(t *txn) error {
		l := t.v.getLock(primary)
		if l == nil || l.StartTS != startTS {
			return &TxnNotFoundError{StartTS: startTS, Key: primary}
		}
		if l.TTL < adviseTTL {
			nl := *l
			nl.TTL = adviseTTL
			t.putLock(&nl)
			l = &nl
		}
		ttl = l.TTL
		return nil
	})
	return ttl, err
}

// ResolveLock commits or rolls back locks. With keys, it resolves the txn
// startTS on exactly those keys at commitTS (0 = roll back), like
// ResolveLockLite. Otherwise txns maps start_ts → commit_ts (0 = roll back)
// and every lock in [start, end) of those txns is resolved.
func (e *Engine) ResolveLock(start, end []byte, txns map[uint64]uint64, keys [][]byte) error {
	return e.write(func(t *txn) error {
		if len(keys) > 0 {
			for startTS, commitTS := range txns {
				for _, k := range keys {
					var err error
					if commitTS == 0 {
						err = cleanupKey(t, k, startTS, 0, false)
					} else {
						err = commitKey(t, k, startTS, commitTS)
					}
					if err != nil {
						return err
					}
				}
			}
			return nil
		}
		var ferr error
		t.v.locksIn(start, end, func(l *Lock) bool {
			commitTS, ok := txns[l.StartTS]
			if !ok {
				return true
			}
			switch {
			case commitTS == 0:
				rollbackLock(t, l.Key, l, false)
			case commitTS > l.StartTS:
				if err := commitKey(t, l.Key, l.StartTS, commitTS); err != nil {
					ferr = err
				}
			default:
				ferr = &InvalidTxnTSOError{StartTS: l.StartTS, CommitTS: commitTS}
			}
			return ferr == nil
		})
		return ferr
	})
}

// CheckSecondaryLocks checks the async-commit txn's locks on keys. It returns
// the locks if all are still there, commitTS if the txn committed, or
// neither if it was rolled back (missing locks are rolled back, protected).
func (e *Engine) CheckSecondaryLocks(keys [][]byte, startTS uint64) ([]*Lock, uint64, error) {
	var locks []*Lock
	var commitTS uint64
	err := e.write(func(t *txn) error {
		for _, k := range keys {
			l := t.v.getLock(k)
			if l != nil && l.StartTS == startTS {
				if l.Type == LockPessimistic {
					rollbackLock(t, k, l, true)
					locks = nil
					return nil
				}
				locks = append(locks, l)
				continue
			}
			state, cts, err := missingLock(t, k, startTS, missingProtectedRollback)
			if err != nil {
				return err
			}
			switch state {
			case stateCommitted:
				locks, commitTS = nil, cts
				return nil
			default:
				locks = nil
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return locks, commitTS, nil
}

package mvcc

import (
	"bytes"
	"slices"
)

// ReadOptions carry the lock-related fields of a kvrpcpb.Context.
type ReadOptions struct {
	// ResolvedLocks are start ts of txns known rolled back or committed
	// after the read ts: their locks are ignored (Context.resolved_locks).
	ResolvedLocks []uint64
	// CommittedLocks are start ts of txns known committed before the read
	// ts: their locks' values are read (Context.committed_locks).
	CommittedLocks []uint64
	// IgnoreLocks reads committed data only (isolation level RC).
	IgnoreLocks bool
}

// KvPair is one result of BatchGet or Scan: a value, or the lock that
// blocks reading the key.
type KvPair struct {
	Key   []byte
	Value []byte
	Err   *KeyIsLockedError
}

// checkLock applies TiKV's SI lock check (txn_types Lock::check_ts_conflict
// plus the point getter's access_locks). It returns the value to use when a
// committed lock supplies it.
func (v *view) checkLock(key []byte, ts uint64, opt *ReadOptions) (val []byte, found, fromLock bool, err *KeyIsLockedError) {
	if opt.IgnoreLocks {
		return nil, false, false, nil
	}
	l := v.getLock(key)
	if l == nil {
		return nil, false, false, nil
	}
	if slices.Contains(opt.CommittedLocks, l.StartTS) {
		switch l.Type {
		case LockPut:
			return v.lockValue(l), true, true, nil
		case LockDelete:
			return nil, false, true, nil
		}
	}
	if l.StartTS > ts || l.Type == LockLock || l.Type == LockPessimistic || l.MinCommitTS > ts {
		return nil, false, false, nil
	}
	if slices.Contains(opt.ResolvedLocks, l.StartTS) {
		return nil, false, false, nil
	}
	if ts == MaxTS && bytes.Equal(key, l.Primary) && !l.UseAsyncCommit {
		return nil, false, false, nil
	}
	return nil, false, false, &KeyIsLockedError{Lock: l}
}

func (v *view) pointGet(key []byte, ts uint64, opt *ReadOptions) ([]byte, bool, *KeyIsLockedError) {
	val, found, fromLock, kerr := v.checkLock(key, ts, opt)
	if kerr != nil {
		return nil, false, kerr
	}
	if fromLock {
		return val, found, nil
	}
	val, found = v.read(key, ts)
	return val, found, nil
}

// Get reads key at ts with lock checks. A lock in the way is returned as
// *KeyIsLockedError.
func (e *Engine) Get(key []byte, ts uint64, opt ReadOptions) ([]byte, bool, error) {
	var val []byte
	var found bool
	err := e.read(ts, func(v *view) error {
		var kerr *KeyIsLockedError
		val, found, kerr = v.pointGet(key, ts, &opt)
		if kerr != nil {
			return kerr
		}
		return nil
	})
	return val, found, err
}

// BatchGet reads keys at ts. Missing keys are left out; locked keys come
// back with Err set.
func (e *Engine) BatchGet(keys [][]byte, ts uint64, opt ReadOptions) ([]KvPair, error) {
	var out []KvPair
	err := e.read(ts, func(v *view) error {
		for _, k := range keys {
			val, found, kerr := v.pointGet(k, ts, &opt)
			switch {
			case kerr != nil:
				out = append(out, KvPair{Key: k, Err: kerr})
			case found:
				out = append(out, KvPair{Key: k, Value: val})
			}
		}
		return nil
	})
	return out, err
}

// ScanArgs describe a scan of [Lower, Upper) (nil Upper = +inf) at TS,
// ascending or (Reverse) descending, returning at most Limit entries
// (found values and locked keys).
type ScanArgs struct {
	Lower, Upper []byte
	Limit        int
	TS           uint64
	KeyOnly      bool
	Reverse      bool
	Opt          ReadOptions
}

// Scan reads a key range at a ts with lock checks, like TiKV's scanner:
// a locked key yields a KvPair with Err and the scan goes on.
func (e *Engine) Scan(a ScanArgs) ([]KvPair, error) {
	var out []KvPair
	err := e.read(a.TS, func(v *view) error {
		out = v.scan(&a)
		return nil
	})
	return out, err
}

func (v *view) scan(a *ScanArgs) []KvPair {
	if a.Limit <= 0 {
		return nil
	}
	if a.Upper != nil && bytes.Compare(a.Lower, a.Upper) >= 0 {
		return nil
	}
	// Locks are few (in-flight txns): collect those in range and merge them
	// with the write CF's keys.
	var lockKeys [][]byte
	if !a.Opt.IgnoreLocks {
		v.locksIn(a.Lower, a.Upper, func(l *Lock) bool {
			lockKeys = append(lockKeys, l.Key)
			return true
		})
	}
	var out []KvPair
	emit := func(key []byte) {
		val, found, kerr := v.pointGet(key, a.TS, &a.Opt)
		switch {
		case kerr != nil:
			out = append(out, KvPair{Key: key, Err: kerr})
		case found:
			if a.KeyOnly {
				val = nil
			}
			out = append(out, KvPair{Key: key, Value: val})
		}
	}
	if !a.Reverse {
		li := 0
		wk := v.nextWriteKey(a.Lower, false)
		for len(out) < a.Limit {
			if wk != nil && a.Upper != nil && bytes.Compare(wk, a.Upper) >= 0 {
				wk = nil
			}
			var key []byte
			switch {
			case li < len(lockKeys) && (wk == nil || bytes.Compare(lockKeys[li], wk) <= 0):
				key = lockKeys[li]
				if wk != nil && bytes.Equal(key, wk) {
					wk = v.nextWriteKey(wk, true)
				}
				li++
			case wk != nil:
				key = wk
				wk = v.nextWriteKey(wk, true)
			default:
				return out
			}
			emit(key)
		}
		return out
	}
	li := len(lockKeys) - 1
	wk := v.prevWriteKey(a.Upper)
	for len(out) < a.Limit {
		if wk != nil && bytes.Compare(wk, a.Lower) < 0 {
			wk = nil
		}
		var key []byte
		switch {
		case li >= 0 && (wk == nil || bytes.Compare(lockKeys[li], wk) >= 0):
			key = lockKeys[li]
			if wk != nil && bytes.Equal(key, wk) {
				wk = v.prevWriteKey(wk)
			}
			li--
		case wk != nil:
			key = wk
			wk = v.prevWriteKey(wk)
		default:
			return out
		}
		emit(key)
	}
	return out
}

// ScanLock returns up to limit (0 = no limit) locks in [start, end) with
// start_ts ≤ maxTS, in key order.
func (e *Engine) ScanLock(start, end []byte, maxTS uint64, limit int) ([]*Lock, error) {
	var out []*Lock
	err := e.read(maxTS, func(v *view) error {
		v.locksIn(start, end, func(l *Lock) bool {
			if l.StartTS <= maxTS {
				out = append(out, l)
			}
			return limit <= 0 || len(out) < limit
		})
		return nil
	})
	return out, err
}

// KeyRecord is one record of a key's history (KeyHistory).
type KeyRecord struct {
	CommitTS uint64 // write records: the ts the record sits at
	Write    *Write // nil for the lock
	Lock     *Lock
}

// KeyHistory returns, for diagnosis, the key's lock (if any) and every
// write record of it, newest first.
func (e *Engine) KeyHistory(key []byte) ([]KeyRecord, error) {
	var out []KeyRecord
	err := e.read(0, func(v *view) error {
		if l := v.getLock(key); l != nil {
			out = append(out, KeyRecord{Lock: l})
		}
		v.versions(key, MaxTS, func(cts uint64, w *Write) bool {
			out = append(out, KeyRecord{CommitTS: cts, Write: w})
			return true
		})
		return nil
	})
	return out, err
}

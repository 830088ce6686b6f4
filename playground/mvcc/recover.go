package mvcc

import "bytes"

// What snapshot recovery (playground/recovery.go) needs of the engine: the
// raw state of a key range, loading it into another engine, and deleting
// what a volume backup's resolved ts does not cover.

// RangeRecords returns every record of the raw key range [start, end) (nil
// end = +inf) as put mutations: the locks, then the default-CF values, then
// the write-CF records (commits, rollbacks, lock records), each in key
// order. Loading them into an empty engine reproduces the range exactly.
func (e *Engine) RangeRecords(start, end []byte) ([]Modify, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return nil, ErrClosed
	}
	var mods []Modify
	in := func(k []byte) bool { return end == nil || bytes.Compare(k, end) < 0 }
	e.v.locksIn(start, end, func(l *Lock) bool {
		mods = append(mods, Modify{CF: CFLock, Key: l.Key, Lock: l})
		return true
	})
	pivot := verItem{key: start, ts: ^uint64(0)}
	e.v.data.AscendGreaterOrEqual(pivot, func(it verItem) bool {
		if !in(it.key) {
			return false
		}
		mods = append(mods, Modify{CF: CFDefault, Key: it.key, TS: it.ts, Value: it.val})
		return true
	})
	e.v.writes.AscendGreaterOrEqual(pivot, func(it verItem) bool {
		if !in(it.key) {
			return false
		}
		mods = append(mods, Modify{CF: CFWrite, Key: it.key, TS: it.ts, Write: it.w})
		return true
	})
	return mods, nil
}

// Load applies mods (puts and deletes of any column family, as
// RangeRecords returns them) as one logged command that observers do not
// see: restored data produces no CDC events, as an ingest does not.
func (e *Engine) Load(mods []Modify) error {
	if len(mods) == 0 {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	return e.applyLocked(&Command{Mods: mods}, false)
}

// ResolveStats reports what ResolveRange deleted.
type ResolveStats struct {
	// Writes is the number of write-CF records deleted (each with its
	// default-CF value when it had one).
	Writes int
	// Locks is the number of locks deleted.
	Locks int
	// MaxCommitTS is the largest commit_ts deleted (0: none).
	MaxCommitTS uint64
}

// ResolveRange deletes, in the raw key range [start, end), every write
// record with commit_ts > ts together with the default-CF value of its
// start_ts, and every lock, as TiKV's snapshot-recovery data resolver does
// (components/snap_recovery/src/data_resolver.rs: batch_resolve_write
// deletes the write key and the default key built from write.start_ts;
// cleanup_lock deletes the whole lock CF). It is idempotent. Deletes are
// logged but not observed.
func (e *Engine) ResolveRange(start, end []byte, ts uint64) (ResolveStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ResolveStats{}, ErrClosed
	}
	var st ResolveStats
	var mods []Modify
	e.v.writes.AscendGreaterOrEqual(verItem{key: start, ts: ^uint64(0)}, func(it verItem) bool {
		if end != nil && bytes.Compare(it.key, end) >= 0 {
			return false
		}
		if it.ts > ts {
			mods = append(mods, Modify{CF: CFWrite, Delete: true, Key: it.key, TS: it.ts},
				Modify{CF: CFDefault, Delete: true, Key: it.key, TS: it.w.StartTS})
			st.Writes++
			st.MaxCommitTS = max(st.MaxCommitTS, it.ts)
		}
		return true
	})
	e.v.locksIn(start, end, func(l *Lock) bool {
		mods = append(mods, Modify{CF: CFLock, Delete: true, Key: l.Key})
		st.Locks++
		return true
	})
	if len(mods) == 0 {
		return st, nil
	}
	return st, e.applyLocked(&Command{Mods: mods}, false)
}

package mvcc

import (
	"bytes"
	"math"

	"github.com/google/btree"
)

// The three column families are ordered trees. A lock item is keyed by the
// user key; a version item (write CF: ts = commit_ts, default CF: ts =
// start_ts) by the user key ascending, then ts descending, as TiKV's
// key+^ts encoding orders them. Items and the records they point to are
// immutable once inserted: snapshots share them.

type lockItem struct {
	key  []byte
	lock *Lock
}

type verItem struct {
	key []byte
	ts  uint64
	w   *Write // write CF
	val []byte // default CF
}

func lockLess(a, b lockItem) bool { return bytes.Compare(a.key, b.key) < 0 }

func verLess(a, b verItem) bool {
	if c := bytes.Compare(a.key, b.key); c != 0 {
		return c < 0
	}
	return a.ts > b.ts
}

const btreeDegree = 32

// view is one state of the three column families: the live engine state or
// a snapshot's frozen copy.
type view struct {
	locks  *btree.BTreeG[lockItem]
	writes *btree.BTreeG[verItem]
	data   *btree.BTreeG[verItem]
}

func newView() *view {
	return &view{
		locks:  btree.NewG(btreeDegree, lockLess),
		writes: btree.NewG(btreeDegree, verLess),
		data:   btree.NewG(btreeDegree, verLess),
	}
}

// clone returns an O(1) copy-on-write copy. The caller must hold the
// engine's write lock: btree.Clone mutates the source tree's header.
func (v *view) clone() *view {
	return &view{locks: v.locks.Clone(), writes: v.writes.Clone(), data: v.data.Clone()}
}

// apply applies one mutation.
func (v *view) apply(m *Modify) {
	switch m.CF {
	case CFLock:
		if m.Delete {
			v.locks.Delete(lockItem{key: m.Key})
		} else {
			v.locks.ReplaceOrInsert(lockItem{key: m.Key, lock: m.Lock})
		}
	case CFWrite:
		if m.Delete {
			v.writes.Delete(verItem{key: m.Key, ts: m.TS})
		} else {
			v.writes.ReplaceOrInsert(verItem{key: m.Key, ts: m.TS, w: m.Write})
		}
	case CFDefault:
		if m.Delete {
			v.data.Delete(verItem{key: m.Key, ts: m.TS})
		} else {
			v.data.ReplaceOrInsert(verItem{key: m.Key, ts: m.TS, val: m.Value})
		}
	}
}

func (v *view) getLock(key []byte) *Lock {
	it, ok := v.locks.Get(lockItem{key: key})
	if !ok {
		return nil
	}
	return it.lock
}

// writeAt returns the write record at exactly (key, commitTS).
func (v *view) writeAt(key []byte, commitTS uint64) *Write {
	it, ok := v.writes.Get(verItem{key: key, ts: commitTS})
	if !ok {
		return nil
	}
	return it.w
}

// versions calls fn for the write records of key with commit_ts ≤ ts,
// newest first, until fn returns false.
func (v *view) versions(key []byte, ts uint64, fn func(commitTS uint64, w *Write) bool) {
	v.writes.AscendGreaterOrEqual(verItem{key: key, ts: ts}, func(it verItem) bool {
		if !bytes.Equal(it.key, key) {
			return false
		}
		return fn(it.ts, it.w)
	})
}

// newestWrite returns the newest write record of key of any type.
func (v *view) newestWrite(key []byte) (uint64, *Write) {
	var cts uint64
	var w *Write
	v.versions(key, math.MaxUint64, func(ts uint64, wr *Write) bool {
		cts, w = ts, wr
		return false
	})
	return cts, w
}

// newestData returns the newest Put/Delete record of key with commit_ts ≤
// ts, skipping Lock and Rollback records.
func (v *view) newestData(key []byte, ts uint64) (uint64, *Write) {
	var cts uint64
	var w *Write
	v.versions(key, ts, func(t uint64, wr *Write) bool {
		if wr.Type == WritePut || wr.Type == WriteDelete {
			cts, w = t, wr
			return false
		}
		return true
	})
	return cts, w
}

// value returns the value a Put write record (or Put lock) stands for.
func (v *view) value(key []byte, startTS uint64, short []byte, hasShort bool) []byte {
	if hasShort {
		return short
	}
	it, ok := v.data.Get(verItem{key: key, ts: startTS})
	if !ok {
		return nil
	}
	return it.val
}

// read returns the newest committed value of key visible at ts, ignoring
// locks.
func (v *view) read(key []byte, ts uint64) ([]byte, bool) {
	_, w := v.newestData(key, ts)
	if w == nil || w.Type != WritePut {
		return nil, false
	}
	val := v.value(key, w.StartTS, w.ShortValue, w.HasShortValue)
	if val == nil {
		val = []byte{}
	}
	return val, true
}

// commitRecordKind classifies what the write CF says about a transaction.
type commitRecordKind int

const (
	recordNone       commitRecordKind = iota // no record of the txn
	recordCommitted                          // a Put/Delete/Lock record with StartTS = the txn
	recordRolledBack                         // a Rollback record or an overlapped rollback
)

type commitRecord struct {
	kind     commitRecordKind
	commitTS uint64
	write    *Write
	// overlapped is another txn's commit record sitting at commit_ts ==
	// the txn's start_ts (only with kind recordNone).
	overlapped *Write
}

// txnRecord finds the commit or rollback record of the txn started at
// startTS on key, as TiKV's get_txn_commit_record does.
func (v *view) txnRecord(key []byte, startTS uint64) commitRecord {
	var rec commitRecord
	v.versions(key, math.MaxUint64, func(cts uint64, w *Write) bool {
		if cts < startTS {
			return false
		}
		if w.StartTS == startTS {
			rec.commitTS, rec.write = cts, w
			if w.Type == WriteRollback {
				rec.kind = recordRolledBack
			} else {
				rec.kind = recordCommitted
			}
			return false
		}
		if cts == startTS {
			if w.OverlappedRollback {
				rec.kind, rec.commitTS, rec.write = recordRolledBack, cts, w
			} else {
				rec.overlapped = w
			}
			return false
		}
		return true
	})
	return rec
}

// lockValue returns the value of a Put lock (short value or default CF).
func (v *view) lockValue(l *Lock) []byte {
	if l.Type != LockPut {
		return nil
	}
	val := v.value(l.Key, l.StartTS, l.ShortValue, l.HasShortValue)
	if val == nil {
		val = []byte{}
	}
	return val
}

// locksIn returns the locks in [start, end) (nil end = +inf), in key order.
func (v *view) locksIn(start, end []byte, fn func(*Lock) bool) {
	v.locks.AscendGreaterOrEqual(lockItem{key: start}, func(it lockItem) bool {
		if end != nil && bytes.Compare(it.key, end) >= 0 {
			return false
		}
		return fn(it.lock)
	})
}

// nextWriteKey returns the smallest user key ≥ from (or > from when
// exclusive) that has a write record, or nil.
func (v *view) nextWriteKey(from []byte, exclusive bool) []byte {
	pivot := verItem{key: from, ts: math.MaxUint64}
	if exclusive {
		pivot.key = append(append(make([]byte, 0, len(from)+1), from...), 0)
	}
	var out []byte
	v.writes.AscendGreaterOrEqual(pivot, func(it verItem) bool {
		out = it.key
		return false
	})
	return out
}

// prevWriteKey returns the largest user key < before (nil before = +inf)
// that has a write record, or nil.
func (v *view) prevWriteKey(before []byte) []byte {
	var out []byte
	fn := func(it verItem) bool {
		if before != nil && bytes.Compare(it.key, before) >= 0 {
			return true
		}
		out = it.key
		return false
	}
	if before == nil {
		v.writes.Descend(fn)
	} else {
		v.writes.DescendLessOrEqual(verItem{key: before, ts: math.MaxUint64}, fn)
	}
	return out
}

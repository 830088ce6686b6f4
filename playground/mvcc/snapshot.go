package mvcc

import (
	"bytes"
	"math"
)

// snapshot is a frozen copy-on-write clone of the engine's trees.
type snapshot struct {
	v *view
}

var _ Snapshot = (*snapshot)(nil)

func (s *snapshot) Release() {}

func (s *snapshot) Get(key []byte, ts uint64) ([]byte, bool, error) {
	val, ok := s.v.read(key, ts)
	return val, ok, nil
}

func (s *snapshot) Locks(start, end []byte, fn func(*Lock) error) error {
	var err error
	s.v.locksIn(start, end, func(l *Lock) bool {
		err = fn(l)
		return err == nil
	})
	return err
}

// DeltaScan walks the write CF in key order, merging in the locks, the way
// TiKV's DeltaScanner does for CDC's incremental scan.
func (s *snapshot) DeltaScan(start, end []byte, fromTS uint64, fn func(DeltaEntry) error) error {
	v := s.v
	var locks []*Lock
	v.locksIn(start, end, func(l *Lock) bool {
		locks = append(locks, l)
		return true
	})
	li := 0
	var err error
	var cur *DeltaEntry
	lockEntry := func(l *Lock) *DeltaEntry {
		de := &DeltaEntry{Key: l.Key, Lock: l, LockValue: v.lockValue(l)}
		if l.Type == LockPut || l.Type == LockDelete {
			de.LockOldValue, de.HasLockOldValue = v.read(l.Key, max(l.StartTS, l.ForUpdateTS))
		}
		return de
	}
	flush := func() bool {
		if cur != nil && (cur.Lock != nil || len(cur.Writes) > 0) {
			err = fn(*cur)
		}
		cur = nil
		return err == nil
	}
	// emitLocksBefore emits lock-only entries for locks with keys < key
	// (all remaining ones when key is nil).
	emitLocksBefore := func(key []byte) bool {
		for li < len(locks) && (key == nil || bytes.Compare(locks[li].Key, key) < 0) {
			cur = lockEntry(locks[li])
			li++
			if !flush() {
				return false
			}
		}
		return true
	}
	for key := v.nextWriteKey(start, false); key != nil; key = v.nextWriteKey(key, true) {
		if end != nil && bytes.Compare(key, end) >= 0 {
			break
		}
		if !emitLocksBefore(key) {
			return err
		}
		if li < len(locks) && bytes.Equal(locks[li].Key, key) {
			cur = lockEntry(locks[li])
			li++
		} else {
			cur = &DeltaEntry{Key: key}
		}
		// Versions newer than fromTS, newest first.
		v.versions(key, math.MaxUint64, func(cts uint64, w *Write) bool {
			if cts <= fromTS {
				return false
			}
			if w.Type != WritePut && w.Type != WriteDelete {
				return true
			}
			vw := VersionedWrite{Key: key, CommitTS: cts, Write: *w}
			if w.Type == WritePut {
				vw.Value = v.value(key, w.StartTS, w.ShortValue, w.HasShortValue)
				if vw.Value == nil {
					vw.Value = []byte{}
				}
			}
			cur.Writes = append(cur.Writes, vw)
			return true
		})
		if !flush() {
			return err
		}
	}
	emitLocksBefore(nil)
	return err
}

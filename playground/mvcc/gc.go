package mvcc

// GCStats reports what a GC run removed.
type GCStats struct {
	Keys          int // user keys with write records examined
	DeletedWrites int // write-CF records removed
	DeletedValues int // default-CF values removed
}

// gcBatchKeys bounds the keys examined per hold of the write lock, so that
// GC of a large store does not stall transactions.
const gcBatchKeys = 256

// GC removes the versions no reader at or after safePoint can see, as TiKV's
// GC does (src/server/gc_worker/compaction_filter.rs do_filter, and
// gc_keys): per key it keeps every version with commit_ts > safePoint and
// the newest Put with commit_ts ≤ safePoint; a Delete that is the newest
// version ≤ safePoint is removed together with everything older (TiKV
// drops that Delete mark at the bottommost level; the playground at once,
// the strictest timing); Rollback and Lock records ≤ safePoint and every
// older write record go with their default-CF values. Locks are never
// touched. GC mutations are logged but not observed (TiKV's GC writes
// produce no CDC events). Whether GC runs at all (gc.ratio-threshold) is
// decided by the caller (playground.RunGC).
func (e *Engine) GC(safePoint uint64) (GCStats, error) {
	var st GCStats
	var cursor []byte
	first := true
	for {
		done, err := e.gcBatch(safePoint, &cursor, first, &st)
		if err != nil || done {
			return st, err
		}
		first = false
	}
}

func (e *Engine) gcBatch(safePoint uint64, cursor *[]byte, first bool, st *GCStats) (bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return true, ErrClosed
	}
	v := e.v
	var mods []Modify
	key := v.nextWriteKey(*cursor, !first)
	for n := 0; key != nil && n < gcBatchKeys; n++ {
		st.Keys++
		removeOlder := false
		v.versions(key, safePoint, func(cts uint64, w *Write) bool {
			remove := false
			switch {
			case removeOlder:
				remove = true
			case w.Type == WritePut:
				removeOlder = true
			case w.Type == WriteDelete:
				removeOlder = true
				remove = true
			default: // Lock, Rollback
				remove = true
			}
			if remove {
				mods = append(mods, Modify{CF: CFWrite, Delete: true, Key: key, TS: cts})
				st.DeletedWrites++
				if w.Type == WritePut && !w.HasShortValue {
					mods = append(mods, Modify{CF: CFDefault, Delete: true, Key: key, TS: w.StartTS})
					st.DeletedValues++
				}
			}
			return true
		})
		*cursor = key
		key = v.nextWriteKey(key, true)
	}
	if len(mods) > 0 {
		if err := e.applyLocked(&Command{Mods: mods}, false); err != nil {
			return true, err
		}
	}
	return key == nil, nil
}

// Ingest writes committed versions directly into the default and write
// CFs, bypassing locks and observers (TiKV's SST ingest). Values longer than
// ShortValueMaxLen go to the default CF.
func (e *Engine) Ingest(entries []IngestEntry) error {
	return e.IngestBatches([][]IngestEntry{entries})
}

// IngestBatches is Ingest of several batches as one atomic command (one SST
// built from several write batches).
func (e *Engine) IngestBatches(batches [][]IngestEntry) error {
	n := 0
	for _, b := range batches {
		n += len(b)
	}
	if n == 0 {
		return nil
	}
	mods := make([]Modify, 0, 2*n) // a write record each, a default value for long ones
	for _, entries := range batches {
		for _, en := range entries {
			w := &Write{Type: WritePut, StartTS: en.StartTS}
			if en.Delete {
				w.Type = WriteDelete
			} else if len(en.Value) <= ShortValueMaxLen {
				w.ShortValue, w.HasShortValue = en.Value, true
				if w.ShortValue == nil {
					w.ShortValue = []byte{}
				}
			} else {
				mods = append(mods, Modify{CF: CFDefault, Key: en.Key, TS: en.StartTS, Value: en.Value})
			}
			mods = append(mods, Modify{CF: CFWrite, Key: en.Key, TS: en.CommitTS, Write: w})
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	return e.applyLocked(&Command{Mods: mods}, false)
}

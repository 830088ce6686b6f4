package cdc

import (
	"bytes"
	"sort"

	"github.com/pingcap/kvproto/pkg/cdcpb"

	"github.com/pitr-io/pitr/playground/mvcc"
)

// txn_source bits (tikv components/cdc/src/txn_source.rs): the low 8 bits
// are the CDC write source, the next 8 the lossy DDL reorg source, bit 16
// Lightning physical import.
const (
	cdcWriteSourceMask      = 1<<8 - 1
	lossyDDLReorgShift      = 8
	lightningPhysicalImport = 1 << 16
)

// dropSource reports whether TiKV drops a row with this txn_source:
// Lightning physical import and lossy DDL reorg rows always, CDC-written
// rows when the downstream asked for filter_loop.
func dropSource(src uint64, filterLoop bool) bool {
	return src&lightningPhysicalImport != 0 ||
		src>>lossyDDLReorgShift != 0 ||
		(filterLoop && src&cdcWriteSourceMask != 0)
}

// rowSize is TiKV's size of a row for batching.
func rowSize(r *cdcpb.Event_Row) int { return len(r.Key) + len(r.Value) + len(r.OldValue) }

func lockOp2Row(t mvcc.LockType) cdcpb.Event_Row_OpType {
	if t == mvcc.LockDelete {
		return cdcpb.Event_Row_DELETE
	}
	return cdcpb.Event_Row_PUT
}

func writeOp2Row(t mvcc.WriteType) (cdcpb.Event_Row_OpType, bool) {
	switch t {
	case mvcc.WritePut:
		return cdcpb.Event_Row_PUT, true
	case mvcc.WriteDelete:
		return cdcpb.Event_Row_DELETE, true
	}
	return cdcpb.Event_Row_UNKNOWN, false
}

// lockOp is one change to a subscription's lock tracker.
type lockOp struct {
	key     string
	startTS uint64
	kind    lockOpKind
}

type lockOpKind int

// Only raft Put commands move TiKV's CDC lock tracker (delegate.rs
// sink_data → sink_txn_put): a Put/Delete lock in the lock CF tracks it
// (push_lock), a Commit or Rollback record in the write CF untracks the
// lock of the same key and start_ts (pop_lock). A lock-CF Delete is
// skipped like every other Delete command, so a lock that leaves the lock
// CF without a write record of its start_ts stays tracked and keeps
// holding the region's resolved ts.
const (
	opTrack   lockOpKind = iota + 1 // a Put/Delete lock was written
	opUntrack                       // a write record of startTS was written
)

// lockSet tracks the Put/Delete locks of a subscription's span, by key.
type lockSet map[string]uint64

func (l lockSet) track(key []byte, ts uint64) { l[string(key)] = ts }

func (l lockSet) apply(op lockOp) {
	switch op.kind {
	case opTrack:
		l[op.key] = op.startTS
	case opUntrack:
		if ts, ok := l[op.key]; ok && ts == op.startTS {
			delete(l, op.key)
		}
	}
}

// min returns the smallest start ts of the tracked locks.
func (l lockSet) min() (uint64, bool) {
	var m uint64
	ok := false
	for _, ts := range l {
		if !ok || ts < m {
			m, ok = ts, true
		}
	}
	return m, ok
}

// liveRow is a row being built from the mutations of one command.
type liveRow struct {
	row      *cdcpb.Event_Row
	typed    bool
	hasValue bool
}

// liveRows turns one applied command into the rows TiKV's delegate sends
// for the span (delegate.rs sink_txn_put + RowsBuilder) and the lock
// tracker changes it implies. Only Put mutations make rows; rows of a key
// are merged (lock or write record, plus the default-CF value). Lock
// tracking ignores txn_source; the returned rows are already filtered.
func liveRows(cmd *mvcc.Command, sp span, filterLoop bool) ([]*cdcpb.Event_Row, []lockOp) {
	var (
		byKey map[string]*liveRow
		ops   []lockOp
	)
	get := func(k []byte) *liveRow {
		if byKey == nil {
			byKey = map[string]*liveRow{}
		}
		r := byKey[string(k)]
		if r == nil {
			r = &liveRow{row: &cdcpb.Event_Row{Key: k}}
			byKey[string(k)] = r
		}
		return r
	}
	for i := range cmd.Mods {
		m := &cmd.Mods[i]
		if !sp.contains(m.Key) {
			continue
		}
		switch {
		case m.Delete:
			// TiKV skips Delete commands, for rows and for the lock
			// tracker alike (delegate.rs sink_data matches CmdType::Put
			// only): a lock is untracked by its commit or rollback record,
			// never by its deletion.
			continue
		case m.CF == mvcc.CFLock:
			l := m.Lock
			if l == nil || (l.Type != mvcc.LockPut && l.Type != mvcc.LockDelete) {
				continue // pessimistic and Lock-type locks make no row
			}
			r := get(m.Key)
			r.typed = true
			r.row.Type = cdcpb.Event_PREWRITE
			r.row.StartTs = l.StartTS
			r.row.OpType = lockOp2Row(l.Type)
			r.row.TxnSource = l.TxnSource
			r.row.OldValue = m.OldValue
			if l.HasShortValue {
				r.row.Value = l.ShortValue
				r.hasValue = true
			}
			ops = append(ops, lockOp{key: string(m.Key), startTS: l.StartTS, kind: opTrack})
		case m.CF == mvcc.CFWrite:
			w := m.Write
			if w == nil {
				continue
			}
			r := get(m.Key)
			if w.GCFence && !cmd.OnePC {
				// A commit record rewritten with a gc_fence to carry an
				// overlapped rollback: TiKV's observer reports only the
				// rollback of the txn whose start ts is the record's ts
				// (delegate.rs decode_write, make_overlapped_rollback),
				// whether or not the same command deletes that txn's lock.
				r.typed = true
				r.row.Type = cdcpb.Event_ROLLBACK
				r.row.StartTs = m.TS
				r.row.OpType = cdcpb.Event_Row_UNKNOWN
				ops = append(ops, lockOp{key: string(m.Key), startTS: m.TS, kind: opUntrack})
				continue
			}
			switch w.Type {
			case mvcc.WritePut, mvcc.WriteDelete:
				op, _ := writeOp2Row(w.Type)
				r.typed = true
				r.row.Type = cdcpb.Event_COMMIT
				r.row.StartTs = w.StartTS
				r.row.CommitTs = m.TS
				r.row.OpType = op
				r.row.TxnSource = w.TxnSource
				if w.HasShortValue {
					r.row.Value = w.ShortValue
					r.hasValue = true
				}
				if cmd.OnePC {
					r.row.Type = cdcpb.Event_COMMITTED
					r.row.OldValue = m.OldValue
				}
			case mvcc.WriteRollback:
				r.typed = true
				r.row.Type = cdcpb.Event_ROLLBACK
				r.row.StartTs = w.StartTS
				r.row.CommitTs = 0
				r.row.OpType = cdcpb.Event_Row_UNKNOWN
				r.row.TxnSource = w.TxnSource
			default:
				continue // Lock records make no row and hold no lock
			}
			if !cmd.OnePC {
				ops = append(ops, lockOp{key: string(m.Key), startTS: w.StartTS, kind: opUntrack})
			}
		case m.CF == mvcc.CFDefault:
			r := get(m.Key)
			if len(m.Value) > 0 {
				r.row.Value = m.Value
			}
			r.hasValue = true
		}
	}
	if len(byKey) == 0 {
		return nil, ops
	}
	out := make([]*cdcpb.Event_Row, 0, len(byKey))
	for _, r := range byKey {
		if !r.typed {
			continue
		}
		if r.row.Type == cdcpb.Event_PREWRITE && r.row.OpType == cdcpb.Event_Row_PUT && !r.hasValue {
			// A lock written without its value (heartbeat or min_commit_ts
			// push of a lock whose value is in the default CF, or a
			// pipelined flush): not a complete prewrite.
			continue
		}
		if r.row.Type == cdcpb.Event_ROLLBACK {
			r.row.Value = nil
		}
		if dropSource(r.row.TxnSource, filterLoop) {
			continue
		}
		out = append(out, r.row)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out, ops
}

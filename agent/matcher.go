package agent

import (
	"errors"
	"fmt"

	"github.com/pingcap/kvproto/pkg/cdcpb"

	"github.com/pitr-io/pitr/logfile"
)

// errUnmatchedCommit: a COMMIT after INITIALIZED had no PREWRITE. The
// subscription can no longer be trusted; the region is subscribed again.
var errUnmatchedCommit = errors.New("commit without prewrite after initialized")

// txnKey identifies a prewrite: one key of one transaction.
type txnKey struct {
	key     string
	startTS uint64
}

// matcher turns the rows of one subscription (one region, one request id)
// into committed changes, following TIKV-PROTOCOLS.md §1.5–1.6:
//
//   - PREWRITE rows are kept by (key, start_ts) until their transaction ends.
//     They survive flushes: a long transaction spans many.
//   - COMMIT takes value and old value from the matching PREWRITE (TiKV puts
//     a value on COMMIT only when it is short). A COMMIT without a match
//     before INITIALIZED is cached: the incremental scan may deliver the
//     PREWRITE after the live COMMIT. At INITIALIZED the cache is matched
//     again; what still has no PREWRITE is dropped, as TiCDC does (the scan's
//     snapshot then held the write record, so the scan sent it as COMMITTED).
//     After INITIALIZED an unmatched COMMIT is a protocol error.
//   - COMMITTED rows (scan output, 1PC) are final.
//   - ROLLBACK drops the PREWRITE. Before INITIALIZED a ROLLBACK may also
//     overtake the scan's PREWRITE, so it is remembered and applied again at
//     INITIALIZED.
//   - Rows with commit_ts ≤ checkpoint_ts are already covered by storage and
//     are dropped (TiCDC drops them as stale too).
//
// Resolved ts is only taken after INITIALIZED (TiKV never sends one before)
// and only moves forward.
//
// A matcher is not safe for concurrent use.
type matcher struct {
	checkpointTS uint64
	initialized  bool
	resolvedTS   uint64

	prewrites map[txnKey]*cdcpb.Event_Row
	// Before INITIALIZED only.
	commits   []*cdcpb.Event_Row
	rollbacks []txnKey

	// Counters for metrics and tests.
	droppedCommits int // unmatched COMMITs dropped at INITIALIZED
	lateRows       int // COMMIT/COMMITTED at or below the resolved ts (protocol violation)
}

func newMatcher(checkpointTS uint64) *matcher {
	return &matcher{checkpointTS: checkpointTS}
}

// handle processes one row, appending committed changes to out.
func (m *matcher) handle(row *cdcpb.Event_Row, out []logfile.Row) ([]logfile.Row, error) {
	switch row.Type {
	case cdcpb.Event_PREWRITE:
		m.prewrite(row)
	case cdcpb.Event_COMMIT:
		k := txnKey{string(row.Key), row.StartTs}
		pw, ok := m.prewrites[k]
		if !ok {
			if row.CommitTs <= m.checkpointTS {
				return out, nil // stale: covered by storage already
			}
			if !m.initialized {
				m.commits = append(m.commits, row)
				return out, nil
			}
			return out, fmt.Errorf("%w: key %q start_ts %d commit_ts %d", errUnmatchedCommit, row.Key, row.StartTs, row.CommitTs)
		}
		delete(m.prewrites, k)
		out = m.emitCommit(row, pw, out)
	case cdcpb.Event_COMMITTED:
		if len(m.prewrites) > 0 {
			delete(m.prewrites, txnKey{string(row.Key), row.StartTs})
		}
		out = m.emit(row, row.Value, row.OldValue, out)
	case cdcpb.Event_ROLLBACK:
		k := txnKey{string(row.Key), row.StartTs}
		delete(m.prewrites, k)
		if !m.initialized {
			m.rollbacks = append(m.rollbacks, k)
		}
	case cdcpb.Event_INITIALIZED:
		out = m.initialize(out)
	}
	return out, nil
}

func (m *matcher) prewrite(row *cdcpb.Event_Row) {
	k := txnKey{string(row.Key), row.StartTs}
	if m.prewrites == nil {
		m.prewrites = map[txnKey]*cdcpb.Event_Row{}
	}
	// An older TiKV re-sends a PUT prewrite without its value when a lock
	// is rewritten (heartbeat); keep the one with the value (TiCDC does).
	if old, ok := m.prewrites[k]; ok && row.OpType == cdcpb.Event_Row_PUT && len(row.Value) == 0 && len(old.Value) > 0 {
		return
	}
	m.prewrites[k] = row
}

func (m *matcher) initialize(out []logfile.Row) []logfile.Row {
	if m.initialized {
		return out
	}
	m.initialized = true
	for _, c := range m.commits {
		k := txnKey{string(c.Key), c.StartTs}
		pw, ok := m.prewrites[k]
		if !ok {
			m.droppedCommits++
			continue
		}
		delete(m.prewrites, k)
		out = m.emitCommit(c, pw, out)
	}
	for _, k := range m.rollbacks {
		delete(m.prewrites, k)
	}
	m.commits, m.rollbacks = nil, nil
	return out
}

func (m *matcher) emitCommit(c, pw *cdcpb.Event_Row, out []logfile.Row) []logfile.Row {
	value := pw.Value
	if len(value) == 0 && len(c.Value) > 0 {
		value = c.Value
	}
	return m.emit(c, value, pw.OldValue, out)
}

// emit appends one committed change. Lock-only operations never reach here
// (TiKV drops them); a row without a known op is ignored.
func (m *matcher) emit(row *cdcpb.Event_Row, value, old []byte, out []logfile.Row) []logfile.Row {
	if row.CommitTs <= m.checkpointTS {
		return out
	}
	if m.initialized && row.CommitTs <= m.resolvedTS {
		m.lateRows++
	}
	r := logfile.Row{Key: row.Key, CommitTS: row.CommitTs, StartTS: row.StartTs, OldValue: old, HasOldValue: len(old) > 0}
	switch row.OpType {
	case cdcpb.Event_Row_PUT:
		r.Op = logfile.OpPut
		r.Value = value
		if r.Value == nil {
			r.Value = []byte{}
		}
	case cdcpb.Event_Row_DELETE:
		r.Op = logfile.OpDelete
	default:
		return out
	}
	if !r.HasOldValue {
		r.OldValue = nil
	}
	return append(out, r)
}

// resolve records a resolved ts; it reports whether the ts was taken.
func (m *matcher) resolve(ts uint64) bool {
	if !m.initialized {
		return false
	}
	if ts > m.resolvedTS {
		m.resolvedTS = ts
	}
	return true
}

// oldestPending returns the smallest start_ts of the pending prewrites, 0
// when there are none.
func (m *matcher) oldestPending() uint64 {
	var min uint64
	for k := range m.prewrites {
		if min == 0 || k.startTS < min {
			min = k.startTS
		}
	}
	return min
}

package agent

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

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
	// bytes is the accounted size of prewrites (pendingSize of each), also
	// counted in acct (nil: not accounted) under the budget, or outside it
	// while exempt.
	bytes  int64
	acct   *pendingAcct
	exempt bool
	// rescan: this subscription replaced one ended for the prewrite
	// budget. emptied: bytes fell back to 0 at some point, so what is
	// pending now came after.
	rescan  bool
	emptied bool
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
		m.forget(k)
		out = m.emitCommit(row, pw, out)
	case cdcpb.Event_COMMITTED:
		if len(m.prewrites) > 0 {
			m.forget(txnKey{string(row.Key), row.StartTs})
		}
		out = m.emit(row, row.Value, row.OldValue, out)
	case cdcpb.Event_ROLLBACK:
		k := txnKey{string(row.Key), row.StartTs}
		m.forget(k)
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
	old, ok := m.prewrites[k]
	if ok && row.OpType == cdcpb.Event_Row_PUT && len(row.Value) == 0 && len(old.Value) > 0 {
		return
	}
	delta := pendingSize(row)
	if ok {
		delta -= pendingSize(old)
	}
	m.prewrites[k] = row
	m.account(delta)
}

// forget drops a prewrite.
func (m *matcher) forget(k txnKey) {
	if pw, ok := m.prewrites[k]; ok {
		delete(m.prewrites, k)
		m.account(-pendingSize(pw))
	}
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
		m.forget(k)
		out = m.emitCommit(c, pw, out)
	}
	for _, k := range m.rollbacks {
		m.forget(k)
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

// pendingRowOverhead is the accounted memory of a pending prewrite beyond
// its key, value and old value: the row, its map entry and the key copy in
// txnKey (counted with the key below).
const pendingRowOverhead = int64(unsafe.Sizeof(cdcpb.Event_Row{})) + int64(unsafe.Sizeof(txnKey{})) + 16

// pendingSize is the accounted size of one pending prewrite.
func pendingSize(row *cdcpb.Event_Row) int64 {
	return 2*int64(len(row.Key)) + int64(len(row.Value)+len(row.OldValue)) + pendingRowOverhead
}

// pendingAcct counts the pending prewrites of every matcher of one agent
// (one store, all tasks).
type pendingAcct struct {
	counted atomic.Int64 // against Config.PrewriteBudget
	exempt  atomic.Int64 // held by the region kept over the budget
	// peak is the highest counted value seen (tests, metrics).
	peak       atomic.Int64
	exemptPeak atomic.Int64
	// slot is held by the one matcher kept over the budget (exempt).
	slot atomic.Bool
}

func raise(peak *atomic.Int64, v int64) {
	for {
		p := peak.Load()
		if v <= p || peak.CompareAndSwap(p, v) {
			return
		}
	}
}

// account adds delta to the matcher's accounted bytes.
func (m *matcher) account(delta int64) {
	if delta == 0 {
		return
	}
	m.bytes += delta
	if m.acct != nil {
		if m.exempt {
			raise(&m.acct.exemptPeak, m.acct.exempt.Add(delta))
		} else {
			raise(&m.acct.peak, m.acct.counted.Add(delta))
		}
	}
	if m.bytes == 0 {
		m.emptied = true
		if m.exempt {
			m.exempt = false
			m.acct.slot.Store(false)
		}
	}
}

// release drops every pending prewrite and gives its bytes back. A
// released matcher takes no more rows. nil-safe.
func (m *matcher) release() {
	if m == nil {
		return
	}
	m.account(-m.bytes)
	m.prewrites = nil
}

// budgetState is a region's standing against the prewrite budget.
type budgetState struct {
	stopped bool // its subscription was ended for the budget; the next one is a rescan
	drops   int  // budget stops since its pending prewrites last emptied
}

// newMatcherLocked makes the matcher of a new subscription of r.
func (c *capture) newMatcherLocked(r *region, cp uint64) *matcher {
	m := newMatcher(cp)
	m.acct = c.pending
	m.rescan = r.budget.stopped
	r.budget.stopped = false
	return m
}

// releaseAll gives back the pending prewrites of every region, when the
// capture has ended.
func (c *capture) releaseAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.regions {
		r.m.release()
	}
}

// enforcePrewriteBudgetLocked keeps the pending prewrites the agent counts
// within cfg.PrewriteBudget; it runs after every PREWRITE row, so they stay
// within the budget plus one row. c.mu is held; the returned Deregister
// requests are for the caller to send.
//
// Over the budget, the region of this capture holding the most is released:
// its prewrites are dropped and it is subscribed again from its checkpoint.
// That loses nothing: TiKV's incremental scan sends every lock again with
// its value, whatever its start_ts (tikv src/storage/mvcc/reader/scanner/
// forward.rs DeltaEntryPolicy::handle_lock skips only lock.ts > the scan
// ts), and what committed meanwhile comes as COMMITTED rows, which go to
// the flusher and its budgets. Each further release of the same region
// waits longer before it subscribes again (its failure count, see
// classify), until its pending prewrites empty.
//
// A region whose rescan brings back more than the whole budget holds open
// transactions larger than the budget; releasing it again would only
// repeat the scan, and its checkpoint is pinned by those locks anyway. The
// first such region is kept: its prewrites leave the budget (they are
// counted as over it) and GetProgress reports it, until they empty. Only
// one region per agent is kept at a time; others are released again with
// the growing delay, so memory stays within the budget plus that region.
//
// The budget is shared by the agent's tasks; a capture releases only its
// own regions.
func (c *capture) enforcePrewriteBudgetLocked(now time.Time) []*cdcpb.ChangeDataRequest {
	budget := c.cfg.PrewriteBudget
	acct := c.pending
	var out []*cdcpb.ChangeDataRequest
	for budget > 0 && acct.counted.Load() > budget {
		var big *region
		for _, r := range c.regions {
			if (r.state == statePending || r.state == stateNormal) && r.m != nil && !r.m.exempt && r.m.bytes > 0 &&
				(big == nil || r.m.bytes > big.m.bytes) {
				big = r
			}
		}
		if big == nil {
			return out
		}
		m := big.m
		if m.emptied {
			big.budget.drops = 0 // earlier pressure ended; this is new
		}
		if m.rescan && !m.emptied && m.bytes > budget && acct.slot.CompareAndSwap(false, true) {
			raise(&acct.exemptPeak, acct.exempt.Add(m.bytes))
			acct.counted.Add(-m.bytes)
			m.exempt = true
			c.met.prewriteKept.Inc()
			c.log.Warn("open transactions of a region exceed the prewrite budget; keeping them over it",
				"region", big.id, "pending_bytes", m.bytes, "budget", budget)
			continue
		}
		n := m.bytes
		m.release()
		big.budget.stopped = true
		big.budget.drops++
		big.failures = big.budget.drops
		c.met.prewriteReleases.Inc()
		c.log.Warn("pending prewrites over the budget; subscribing the region again from its checkpoint",
			"region", big.id, "pending_bytes", n, "budget", budget, "releases", big.budget.drops)
		// Deregister on TiKV ≥ 7.3; below it, a new stream (releaseLocked).
		if req := c.releaseLocked(big, fmt.Sprintf("pending prewrites of %s over the prewrite budget of %s; subscribing again",
			mib(n), mib(budget)), now); req != nil {
			out = append(out, req)
		}
	}
	return out
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

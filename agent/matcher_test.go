package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pingcap/kvproto/pkg/cdcpb"
	"github.com/pingcap/kvproto/pkg/errorpb"
	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/logfile"
)

// Row builders for recorded-style event sequences (TIKV-PROTOCOLS §1.5-1.6).
func prewrite(key string, start uint64, value string) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, OpType: cdcpb.Event_Row_PUT, Key: []byte(key), StartTs: start, Value: []byte(value), OldValue: []byte("old-" + key)}
}

func prewriteDel(key string, start uint64) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_PREWRITE, OpType: cdcpb.Event_Row_DELETE, Key: []byte(key), StartTs: start}
}

func commit(key string, start, commitTS uint64) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_COMMIT, OpType: cdcpb.Event_Row_PUT, Key: []byte(key), StartTs: start, CommitTs: commitTS}
}

func commitDel(key string, start, commitTS uint64) *cdcpb.Event_Row {
	r := commit(key, start, commitTS)
	r.OpType = cdcpb.Event_Row_DELETE
	return r
}

func committed(key string, start, commitTS uint64, value string) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_COMMITTED, OpType: cdcpb.Event_Row_PUT, Key: []byte(key), StartTs: start, CommitTs: commitTS, Value: []byte(value)}
}

func rollback(key string, start uint64) *cdcpb.Event_Row {
	return &cdcpb.Event_Row{Type: cdcpb.Event_ROLLBACK, Key: []byte(key), StartTs: start}
}

func initialized() *cdcpb.Event_Row { return &cdcpb.Event_Row{Type: cdcpb.Event_INITIALIZED} }

// step is one thing the stream delivers: a row or a resolved ts.
type step struct {
	row      *cdcpb.Event_Row
	resolved uint64
}

func rows(rs ...*cdcpb.Event_Row) []step {
	out := make([]step, len(rs))
	for i, r := range rs {
		out[i] = step{row: r}
	}
	return out
}

// change is what a test expects out: key@commit_ts=value ("" value and del
// for deletes).
type change struct {
	key      string
	commitTS uint64
	value    string
	del      bool
}

func TestMatcher(t *testing.T) {
	for _, tc := range []struct {
		name       string
		checkpoint uint64
		steps      []step
		want       []change
		resolved   uint64
		pending    uint64 // oldest pending prewrite start_ts
		dropped    int
		err        bool
	}{
		{
			name:       "scan rows interleaved with live rows",
			checkpoint: 100,
			steps: rows(
				prewrite("a", 110, "va"),        // scan: lock on a
				commit("b", 120, 125),           // live: commit of b before the scan reached b
				committed("a", 101, 105, "va0"), // scan: older version of a
				prewrite("b", 120, "vb"),        // scan: lock on b
				committed("c", 102, 106, "vc"),  // scan
				initialized(),
				commit("a", 110, 130), // live
			),
			want: []change{{"a", 105, "va0", false}, {"c", 106, "vc", false}, {"b", 125, "vb", false}, {"a", 130, "va", false}},
		},
		{
			name:       "unmatched COMMIT before INITIALIZED is dropped at INITIALIZED",
			checkpoint: 100,
			steps: rows(
				commit("x", 110, 115),
				committed("x", 110, 115, "vx"), // the scan had the write record
				initialized(),
			),
			want:    []change{{"x", 115, "vx", false}},
			dropped: 1,
		},
		{
			name:       "ROLLBACK drops the prewrite",
			checkpoint: 100,
			steps: rows(
				initialized(),
				prewrite("k", 110, "v"),
				rollback("k", 110),
				prewrite("k", 120, "v2"),
				commit("k", 120, 125),
			),
			want: []change{{"k", 125, "v2", false}},
		},
		{
			name:       "ROLLBACK before the scan's PREWRITE is applied at INITIALIZED",
			checkpoint: 100,
			steps: rows(
				rollback("k", 110),      // live, overtakes the scan
				prewrite("k", 110, "v"), // scan
				initialized(),
			),
			pending: 0,
		},
		{
			name:       "1PC COMMITTED is final",
			checkpoint: 100,
			steps:      rows(initialized(), committed("p", 130, 131, "one-pc")),
			want:       []change{{"p", 131, "one-pc", false}},
		},
		{
			name:       "duplicate delivery is passed on (dedup is downstream)",
			checkpoint: 100,
			steps:      rows(committed("d", 101, 105, "v"), initialized(), committed("d", 101, 105, "v")),
			want:       []change{{"d", 105, "v", false}, {"d", 105, "v", false}},
		},
		{
			name:       "duplicate PUT prewrite without value keeps the value",
			checkpoint: 100,
			steps:      rows(initialized(), prewrite("k", 110, "big"), prewrite("k", 110, ""), commit("k", 110, 115)),
			want:       []change{{"k", 115, "big", false}},
		},
		{
			name:       "resolved ts before INITIALIZED is ignored",
			checkpoint: 100,
			steps:      []step{{resolved: 150}, {row: initialized()}, {resolved: 140}, {resolved: 120}},
			resolved:   140,
		},
		{
			name:       "delete",
			checkpoint: 100,
			steps:      rows(initialized(), prewriteDel("k", 110), commitDel("k", 110, 115)),
			want:       []change{{"k", 115, "", true}},
		},
		{
			name:       "COMMIT with a short value and no prewrite value",
			checkpoint: 100,
			steps: rows(initialized(), prewrite("k", 110, ""), func() *cdcpb.Event_Row {
				c := commit("k", 110, 115)
				c.Value = []byte("short")
				return c
			}()),
			want: []change{{"k", 115, "short", false}},
		},
		{
			name:       "pending prewrite survives, long transaction",
			checkpoint: 100,
			steps:      []step{{row: prewrite("k", 90, "v")}, {row: initialized()}, {row: prewrite("j", 130, "v")}, {resolved: 89}},
			resolved:   89,
			pending:    90,
		},
		{
			name:       "stale COMMIT at or below checkpoint is dropped",
			checkpoint: 100,
			steps:      rows(prewrite("k", 90, "v"), initialized(), commit("k", 90, 100)),
		},
		{
			name:       "unmatched COMMIT after INITIALIZED is a protocol error",
			checkpoint: 100,
			steps:      rows(initialized(), commit("z", 110, 115)),
			err:        true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMatcher(tc.checkpoint)
			acct := &pendingAcct{}
			m.acct = acct
			var out []logfile.Row
			var err error
			for _, s := range tc.steps {
				if s.row == nil {
					m.resolve(s.resolved)
					continue
				}
				out, err = m.handle(s.row, out)
				if err != nil {
					break
				}
			}
			if tc.err {
				require.ErrorIs(t, err, errUnmatchedCommit)
				return
			}
			require.NoError(t, err)
			var got []change
			for _, r := range out {
				require.NoError(t, r.Validate())
				got = append(got, change{string(r.Key), r.CommitTS, string(r.Value), r.Op == logfile.OpDelete})
				if r.Op == logfile.OpPut {
					require.NotNil(t, r.Value, "a put has a non-nil value")
				}
			}
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.resolved, m.resolvedTS)
			require.Equal(t, tc.pending, m.oldestPending())
			require.Equal(t, tc.dropped, m.droppedCommits)

			// The accounted bytes are those of the prewrites still held.
			var held int64
			for _, pw := range m.prewrites {
				held += pendingSize(pw)
			}
			require.Equal(t, held, m.bytes, "accounted bytes")
			require.Equal(t, held, acct.counted.Load(), "bytes counted against the budget")
			m.release()
			require.Zero(t, acct.counted.Load(), "bytes counted after release")
		})
	}
}

func TestMatcherOldValue(t *testing.T) {
	m := newMatcher(1)
	out, err := m.handle(initialized(), nil)
	require.NoError(t, err)
	out, err = m.handle(prewrite("k", 10, "v"), out)
	require.NoError(t, err)
	out, err = m.handle(commit("k", 10, 11), out)
	require.NoError(t, err)
	require.Len(t, out, 1)
	require.True(t, out[0].HasOldValue)
	require.Equal(t, "old-k", string(out[0].OldValue))
	require.Equal(t, uint64(10), out[0].StartTS)
}

// TestPrewriteBudgetRelease drives a capture over the prewrite budget: the
// region holding the most is released and subscribed again; after its
// rescan it is kept over the budget (one region only) and reported; a
// second region is released again with a growing delay instead; the kept
// region's slot frees once its transactions end.
func TestPrewriteBudgetRelease(t *testing.T) {
	c, _, fs, f := testCapture(t)
	c.cfg.PrewriteBudget = 1000
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.recv(ctx, f, newBackoff(time.Millisecond, time.Millisecond)) }()
	handled := func() { fs.in <- &cdcpb.ChangeDataEvent{} } // the previous message is handled
	big := strings.Repeat("v", 600)
	acct := c.pending
	deregistered := func() int {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		n := 0
		for _, r := range fs.sent {
			if r.GetDeregister() != nil {
				n++
			}
		}
		return n
	}
	// resubscribe ends the stopped subscription and subscribes again, as
	// reconcile would.
	resubscribe := func(id, req uint64) uint64 {
		fs.in <- regionErr(id, req, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: id}})
		handled()
		c.mu.Lock()
		defer c.mu.Unlock()
		r := c.regions[id]
		require.Equal(t, stateIdle, r.state)
		c.subscribeLocked(r, 100, time.Now())
		return r.requestID
	}

	req1 := addRegion(c, 1, "a", "m")
	req2 := addRegion(c, 2, "m", "z")
	fs.in <- entries(1, req1, initialized(), prewrite("a1", 110, big))
	fs.in <- entries(2, req2, initialized(), prewrite("m1", 111, "small"))
	fs.in <- entries(1, req1, prewrite("a2", 110, big))
	handled()
	c.mu.Lock()
	require.Equal(t, stateStopping, c.regions[1].state, "the biggest region is released")
	require.Equal(t, stateNormal, c.regions[2].state)
	c.mu.Unlock()
	require.Equal(t, 1, deregistered())
	require.LessOrEqual(t, acct.counted.Load(), int64(1000))

	// Its rescan brings the same locks back: it is kept over the budget.
	req1 = resubscribe(1, req1)
	fs.in <- entries(1, req1, prewrite("a1", 110, big), prewrite("a2", 110, big), initialized())
	handled()
	c.mu.Lock()
	require.Equal(t, stateNormal, c.regions[1].state)
	require.True(t, c.regions[1].m.exempt)
	c.mu.Unlock()
	require.Equal(t, 1, deregistered())
	require.Contains(t, c.progress()[0].Reason, "kept over the prewrite budget")
	require.Greater(t, acct.exempt.Load(), int64(1000))

	// A second region over the budget is released, and after its rescan
	// released again (the slot is taken), each time waiting longer.
	fs.in <- entries(2, req2, prewrite("m2", 111, big), prewrite("m3", 111, big))
	handled()
	require.Equal(t, 2, deregistered())
	req2 = resubscribe(2, req2)
	fs.in <- entries(2, req2, prewrite("m1", 111, "small"), prewrite("m2", 111, big), prewrite("m3", 111, big))
	handled()
	require.Equal(t, 3, deregistered())
	fs.in <- regionErr(2, req2, &cdcpb.Error{RegionNotFound: &errorpb.RegionNotFound{RegionId: 2}})
	handled()
	c.mu.Lock()
	r2 := c.regions[2]
	require.Equal(t, stateIdle, r2.state)
	require.Greater(t, r2.retryAt.Sub(r2.since), time.Duration(0), "a repeated release waits before subscribing again")
	c.mu.Unlock()
	require.LessOrEqual(t, acct.counted.Load(), int64(1000))

	// Region 1's transaction commits: its bytes and the slot are free.
	fs.in <- entries(1, req1, commit("a1", 110, 120), commit("a2", 110, 120))
	handled()
	require.Zero(t, acct.exempt.Load())
	require.False(t, acct.slot.Load())
	c.mu.Lock()
	require.False(t, c.regions[1].m.exempt)
	c.mu.Unlock()
}

package agent

import (
	"testing"

	"github.com/pingcap/kvproto/pkg/cdcpb"
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

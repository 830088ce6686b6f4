package cdc

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pitr-io/pitr/playground/cluster"
	"github.com/pitr-io/pitr/playground/mvcc"
)

// Row shapes of commands the store's tikvpb surface cannot produce yet
// (pessimistic locks) or only in races (overlapped rollbacks), straight on
// liveRows.
func TestLiveRowsTable(t *testing.T) {
	all := span{start: []byte{}}
	lockPut := func(k string, typ mvcc.LockType, start uint64, short []byte) mvcc.Modify {
		return mvcc.Modify{CF: mvcc.CFLock, Key: []byte(k), Lock: &mvcc.Lock{Key: []byte(k), Type: typ, StartTS: start, ShortValue: short, HasShortValue: short != nil}}
	}
	writePut := func(k string, typ mvcc.WriteType, start, commit uint64, overlapped bool) mvcc.Modify {
		return mvcc.Modify{CF: mvcc.CFWrite, Key: []byte(k), TS: commit, Write: &mvcc.Write{Type: typ, StartTS: start, OverlappedRollback: overlapped}}
	}
	unlock := func(k string) mvcc.Modify { return mvcc.Modify{CF: mvcc.CFLock, Delete: true, Key: []byte(k)} }
	// rewrite is another txn's commit record at commit, rewritten to carry
	// the overlapped rollback of the txn started there (TiKV sets gc_fence).
	rewrite := func(k string, start, commit uint64) mvcc.Modify {
		m := writePut(k, mvcc.WritePut, start, commit, true)
		m.Write.GCFence = true
		return m
	}
	def := func(k string, start uint64, v string) mvcc.Modify {
		return mvcc.Modify{CF: mvcc.CFDefault, Key: []byte(k), TS: start, Value: []byte(v)}
	}
	for _, tc := range []struct {
		name string
		cmd  mvcc.Command
		rows []string
		ops  []lockOp
	}{
		{"pessimistic lock", mvcc.Command{Mods: []mvcc.Modify{lockPut("k", mvcc.LockPessimistic, 5, nil)}}, nil, nil},
		{"lock-type lock", mvcc.Command{Mods: []mvcc.Modify{lockPut("k", mvcc.LockLock, 5, nil)}}, nil, nil},
		{"prewrite long value", mvcc.Command{Mods: []mvcc.Modify{def("k", 5, "long"), lockPut("k", mvcc.LockPut, 5, nil)}},
			[]string{"PREWRITE PUT k 5/0 long"}, []lockOp{{"k", 5, opTrack}}},
		{"lock rewrite without value", mvcc.Command{Mods: []mvcc.Modify{lockPut("k", mvcc.LockPut, 5, nil)}},
			nil, []lockOp{{"k", 5, opTrack}}},
		{"delete lock rewrite", mvcc.Command{Mods: []mvcc.Modify{lockPut("k", mvcc.LockDelete, 5, nil)}},
			[]string{"PREWRITE DELETE k 5/0 "}, []lockOp{{"k", 5, opTrack}}},
		{"commit of a lock record", mvcc.Command{Mods: []mvcc.Modify{writePut("k", mvcc.WriteLock, 5, 6, false), unlock("k")}},
			nil, nil},
		{"1pc lock record", mvcc.Command{OnePC: true, Mods: []mvcc.Modify{writePut("k", mvcc.WriteLock, 5, 6, false)}}, nil, nil},
		{"commit on another txn's rollback", mvcc.Command{Mods: []mvcc.Modify{writePut("k", mvcc.WritePut, 5, 6, true), unlock("k")}},
			[]string{"COMMIT PUT k 5/6 "}, []lockOp{{"k", 5, opUntrack}}},
		{"lock deleted without a write record", mvcc.Command{Mods: []mvcc.Modify{unlock("k")}}, nil, nil},
		{"overlapped rollback rewrite", mvcc.Command{Mods: []mvcc.Modify{rewrite("k", 3, 6)}},
			[]string{"ROLLBACK UNKNOWN k 6/0 "}, []lockOp{{"k", 6, opUntrack}}},
		// A txn started at 6 whose lock sits on a key another txn committed
		// at 6, rolled back protected (a pessimistic primary, Cleanup,
		// CheckSecondaryLocks): the commit record is rewritten with a
		// gc_fence and the lock deleted in one command. TiKV reports the
		// rollback of 6 and pops its lock (delegate.rs decode_write,
		// make_overlapped_rollback), not a second commit of 3.
		{"protected rollback of a lock over another txn's commit", mvcc.Command{Mods: []mvcc.Modify{rewrite("k", 3, 6), unlock("k")}},
			[]string{"ROLLBACK UNKNOWN k 6/0 "}, []lockOp{{"k", 6, opUntrack}}},
		{"rows in key order", mvcc.Command{Mods: []mvcc.Modify{lockPut("b", mvcc.LockPut, 5, []byte("1")), lockPut("a", mvcc.LockPut, 5, []byte("2"))}},
			[]string{"PREWRITE PUT a 5/0 2", "PREWRITE PUT b 5/0 1"}, []lockOp{{"b", 5, opTrack}, {"a", 5, opTrack}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, ops := liveRows(&tc.cmd, all, false)
			var got []string
			for _, r := range rows {
				got = append(got, fmt.Sprintf("%s %s %s %d/%d %s", r.Type, r.OpType, r.Key, r.StartTs, r.CommitTs, r.Value))
			}
			require.Equal(t, tc.rows, got)
			require.Equal(t, tc.ops, ops)
		})
	}
}

// TestLockTrackerIgnoresLockDeletes: TiKV's CDC delegate untracks a lock
// only on a write-CF Put of its start_ts (delegate.rs sink_txn_put →
// pop_lock); a lock-CF Delete without one, e.g. a rollback that TiKV's
// make_rollback drops because another txn's commit record sits at the
// same ts, leaves the lock tracked and the resolved ts where it was.
func TestLockTrackerIgnoresLockDeletes(t *testing.T) {
	all := span{start: []byte{}}
	locks := lockSet{}
	apply := func(mods ...mvcc.Modify) {
		_, ops := liveRows(&mvcc.Command{Mods: mods}, all, false)
		for _, op := range ops {
			locks.apply(op)
		}
	}
	minTS := func() uint64 {
		m, ok := locks.min()
		if !ok {
			return 0
		}
		return m
	}
	apply(mvcc.Modify{CF: mvcc.CFLock, Key: []byte("k"), Lock: &mvcc.Lock{Key: []byte("k"), Type: mvcc.LockPut, StartTS: 5, ShortValue: []byte("v"), HasShortValue: true}})
	require.Equal(t, uint64(5), minTS())

	apply(mvcc.Modify{CF: mvcc.CFLock, Delete: true, Key: []byte("k")})
	require.Equal(t, uint64(5), minTS(), "a lock Delete alone does not untrack the lock")

	apply(mvcc.Modify{CF: mvcc.CFWrite, Key: []byte("k"), TS: 4, Write: &mvcc.Write{Type: mvcc.WriteRollback, StartTS: 4}})
	require.Equal(t, uint64(5), minTS(), "a write record of another start_ts does not untrack it")

	apply(mvcc.Modify{CF: mvcc.CFWrite, Key: []byte("k"), TS: 5, Write: &mvcc.Write{Type: mvcc.WriteRollback, StartTS: 5}})
	require.Zero(t, minTS(), "its rollback record does")
}

func TestDropSource(t *testing.T) {
	for _, tc := range []struct {
		src        uint64
		filterLoop bool
		drop       bool
	}{
		{0, true, false},
		{1, false, false},
		{1, true, true},
		{255, true, true},
		{1 << 8, false, true},  // lossy DDL reorg
		{1 << 16, false, true}, // Lightning physical import
		{1 << 20, false, true}, // reserved bits count as reorg in TiKV too
	} {
		require.Equal(t, tc.drop, dropSource(tc.src, tc.filterLoop), "%#x filter_loop=%v", tc.src, tc.filterLoop)
	}
}

func TestSemverGates(t *testing.T) {
	for _, tc := range []struct {
		v           string
		batch, ccid bool
	}{
		{"", false, false},
		{"4.0.7", false, false},
		{"4.0.8", true, false},
		{"4.0.8-rc.1", false, false},
		{"v5.3.0", false, false}, // not semver: 0.0.0
		{"5.3.0-alpha", true, false},
		{"5.3.0", true, true},
		{"8.5.0+build.7", true, true},
		{"05.3.0", false, false},
	} {
		v, _ := parseSemver(tc.v)
		require.Equal(t, tc.batch, !v.less(semver{4, 0, 8, ""}), tc.v)
		require.Equal(t, tc.ccid, !v.less(semver{5, 3, 0, ""}), tc.v)
	}
}

func TestObservedSpan(t *testing.T) {
	enc := func(s string) []byte { return cluster.EncodeKey([]byte(s)) }
	r := &cluster.Region{StartKey: enc("b"), EndKey: enc("m")}
	for _, tc := range []struct {
		name       string
		start, end []byte
		in, out    []string
	}{
		{"whole region", nil, nil, []string{"b", "l"}, []string{"a", "m"}},
		{"clipped", enc("a"), enc("d"), []string{"b", "c"}, []string{"d", "m"}},
		{"inside", enc("c"), enc("e"), []string{"c", "d"}, []string{"b", "e"}},
		{"disjoint", enc("x"), enc("z"), nil, []string{"b", "x"}},
		{"not memcomparable: whole region", []byte("c"), nil, []string{"b", "l"}, []string{"m"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp := observedSpan(r, tc.start, tc.end)
			for _, k := range tc.in {
				require.True(t, sp.contains([]byte(k)), k)
			}
			for _, k := range tc.out {
				require.False(t, sp.contains([]byte(k)), k)
			}
		})
	}
}

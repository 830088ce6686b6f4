package mvcc

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func newMem(t *testing.T) *Engine {
	t.Helper()
	e, err := Open("", nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	return e
}

// ts composes a TSO from a physical millisecond and a logical part.
func ts(phys, logical uint64) uint64 { return phys<<18 | logical }

func put(k, v string) Mutation { return Mutation{Op: OpPut, Key: []byte(k), Value: []byte(v)} }
func del(k string) Mutation    { return Mutation{Op: OpDelete, Key: []byte(k)} }

func mustPrewrite(t *testing.T, e *Engine, startTS uint64, primary string, ms ...Mutation) {
	t.Helper()
	res, err := e.Prewrite(PrewriteArgs{Mutations: ms, Primary: []byte(primary), StartTS: startTS, LockTTL: 3000})
	require.NoError(t, err)
	require.Empty(t, res.Locked)
}

func mustCommit(t *testing.T, e *Engine, startTS, commitTS uint64, keys ...string) {
	t.Helper()
	require.NoError(t, e.Commit(bkeys(keys...), startTS, commitTS))
}

func bkeys(keys ...string) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = []byte(k)
	}
	return out
}

func mustGet(t *testing.T, e *Engine, key string, at uint64) (string, bool) {
	t.Helper()
	v, ok, err := e.Get([]byte(key), at, ReadOptions{})
	require.NoError(t, err)
	return string(v), ok
}

func writeTxn(t *testing.T, e *Engine, startTS, commitTS uint64, ms ...Mutation) {
	t.Helper()
	mustPrewrite(t, e, startTS, string(ms[0].Key), ms...)
	var keys []string
	for _, m := range ms {
		keys = append(keys, string(m.Key))
	}
	mustCommit(t, e, startTS, commitTS, keys...)
}

func TestPrewriteCommitValues(t *testing.T) {
	long := string(bytes.Repeat([]byte("x"), ShortValueMaxLen+1))
	short := string(bytes.Repeat([]byte("y"), ShortValueMaxLen))
	tests := []struct {
		name      string
		value     string
		wantValue bool // a default-CF put expected
	}{
		{"empty", "", false},
		{"short max", short, false},
		{"long", long, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newMem(t)
			var cmds []*Command
			_, cancel := e.Observe(func(c *Command) { cmds = append(cmds, c) })
			defer cancel()
			mustPrewrite(t, e, 10, "k", put("k", tc.value))
			require.Len(t, cmds, 1)
			var lockPut *Modify
			sawDefault := false
			for i, m := range cmds[0].Mods {
				switch m.CF {
				case CFDefault:
					sawDefault = true
					require.Equal(t, uint64(10), m.TS)
					require.Equal(t, tc.value, string(m.Value))
				case CFLock:
					lockPut = &cmds[0].Mods[i]
				}
			}
			require.Equal(t, tc.wantValue, sawDefault)
			require.NotNil(t, lockPut)
			require.Equal(t, LockPut, lockPut.Lock.Type)
			require.Equal(t, !tc.wantValue, lockPut.Lock.HasShortValue)
			require.False(t, lockPut.HasOldValue)

			mustCommit(t, e, 10, 20, "k")
			require.Len(t, cmds, 2)
			require.Len(t, cmds[1].Mods, 2)
			require.Equal(t, CFWrite, cmds[1].Mods[0].CF)
			require.Equal(t, uint64(20), cmds[1].Mods[0].TS)
			require.Equal(t, !tc.wantValue, cmds[1].Mods[0].Write.HasShortValue)
			require.True(t, cmds[1].Mods[1].CF == CFLock && cmds[1].Mods[1].Delete)

			_, ok := mustGet(t, e, "k", 19)
			require.False(t, ok)
			v, ok := mustGet(t, e, "k", 20)
			require.True(t, ok)
			require.Equal(t, tc.value, v)

			// The next prewrite carries the old value.
			mustPrewrite(t, e, 30, "k", del("k"))
			lm := cmds[2].Mods[0]
			require.True(t, lm.HasOldValue)
			require.Equal(t, tc.value, string(lm.OldValue))
		})
	}
}

func TestPrewriteRules(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, e *Engine)
		args  PrewriteArgs
		check func(t *testing.T, res PrewriteResult, err error)
	}{
		{
			name:  "newer commit is a write conflict",
			setup: func(t *testing.T, e *Engine) { writeTxn(t, e, 10, 20, put("k", "a")) },
			args:  PrewriteArgs{Mutations: []Mutation{put("k", "b")}, Primary: []byte("k"), StartTS: 15},
			check: func(t *testing.T, res PrewriteResult, err error) {
				var wc *WriteConflictError
				require.ErrorAs(t, err, &wc)
				require.Equal(t, uint64(10), wc.ConflictStartTS)
				require.Equal(t, uint64(20), wc.ConflictCommitTS)
				require.Equal(t, ConflictOptimistic, wc.Reason)
			},
		},
		{
			name:  "older commit is fine",
			setup: func(t *testing.T, e *Engine) { writeTxn(t, e, 10, 20, put("k", "a")) },
			args:  PrewriteArgs{Mutations: []Mutation{put("k", "b")}, Primary: []byte("k"), StartTS: 25},
			check: func(t *testing.T, res PrewriteResult, err error) {
				require.NoError(t, err)
				require.Empty(t, res.Locked)
			},
		},
		{
			name: "other txn's locks are all reported and nothing is written",
			setup: func(t *testing.T, e *Engine) {
				mustPrewrite(t, e, 10, "a", put("a", "1"), put("c", "1"))
			},
			args: PrewriteArgs{Mutations: []Mutation{put("a", "2"), put("b", "2"), put("c", "2")}, Primary: []byte("a"), StartTS: 15},
			check: func(t *testing.T, res PrewriteResult, err error) {
				require.NoError(t, err)
				require.Len(t, res.Locked, 2)
				require.Equal(t, "a", string(res.Locked[0].Lock.Key))
				require.Equal(t, "c", string(res.Locked[1].Lock.Key))
				require.Equal(t, uint64(10), res.Locked[0].Lock.StartTS)
			},
		},
		{
			name:  "re-prewrite is idempotent",
			setup: func(t *testing.T, e *Engine) { mustPrewrite(t, e, 10, "k", put("k", "a")) },
			args:  PrewriteArgs{Mutations: []Mutation{put("k", "a")}, Primary: []byte("k"), StartTS: 10},
			check: func(t *testing.T, res PrewriteResult, err error) {
				require.NoError(t, err)
				require.Empty(t, res.Locked)
			},
		},
		{
			name:  "re-prewrite after commit succeeds without writing",
			setup: func(t *testing.T, e *Engine) { writeTxn(t, e, 10, 20, put("k", "a")) },
			args:  PrewriteArgs{Mutations: []Mutation{put("k", "a")}, Primary: []byte("k"), StartTS: 10},
			check: func(t *testing.T, res PrewriteResult, err error) {
				require.NoError(t, err)
				require.Empty(t, res.Locked)
			},
		},
		{
			name: "prewrite after own rollback is a self-rolled-back conflict",
			setup: func(t *testing.T, e *Engine) {
				require.NoError(t, e.BatchRollback(bkeys("k"), 10))
			},
			args: PrewriteArgs{Mutations: []Mutation{put("k", "a")}, Primary: []byte("k"), StartTS: 10},
			check: func(t *testing.T, res PrewriteResult, err error) {
				var wc *WriteConflictError
				require.ErrorAs(t, err, &wc)
				require.Equal(t, ConflictSelfRolledBack, wc.Reason)
			},
		},
		{
			name:  "insert over a value",
			setup: func(t *testing.T, e *Engine) { writeTxn(t, e, 10, 20, put("k", "a")) },
			args:  PrewriteArgs{Mutations: []Mutation{{Op: OpInsert, Key: []byte("k"), Value: []byte("b")}}, Primary: []byte("k"), StartTS: 25},
			check: func(t *testing.T, res PrewriteResult, err error) {
				var ae *AlreadyExistError
				require.ErrorAs(t, err, &ae)
				require.Equal(t, "k", string(ae.Key))
			},
		},
		{
			name: "insert over a delete",
			setup: func(t *testing.T, e *Engine) {
				writeTxn(t, e, 10, 20, put("k", "a"))
				writeTxn(t, e, 21, 22, del("k"))
				writeTxn(t, e, 23, 24, Mutation{Op: OpLock, Key: []byte("k")})
			},
			args:  PrewriteArgs{Mutations: []Mutation{{Op: OpInsert, Key: []byte("k"), Value: []byte("b")}}, Primary: []byte("k"), StartTS: 25},
			check: func(t *testing.T, res PrewriteResult, err error) { require.NoError(t, err) },
		},
		{
			name:  "check-not-exists over a value",
			setup: func(t *testing.T, e *Engine) { writeTxn(t, e, 10, 20, put("k", "a")) },
			args:  PrewriteArgs{Mutations: []Mutation{{Op: OpCheckNotExists, Key: []byte("k")}}, Primary: []byte("k"), StartTS: 25},
			check: func(t *testing.T, res PrewriteResult, err error) {
				var ae *AlreadyExistError
				require.ErrorAs(t, err, &ae)
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newMem(t)
			tc.setup(t, e)
			before := e.Stats()
			a := tc.args
			a.LockTTL = 3000
			res, err := e.Prewrite(a)
			tc.check(t, res, err)
			if err != nil || len(res.Locked) > 0 {
				require.Equal(t, before, e.Stats(), "a failed prewrite writes nothing")
			}
		})
	}
}

func TestCheckNotExistsWritesNoLock(t *testing.T) {
	e := newMem(t)
	mustPrewrite(t, e, 10, "a", put("a", "1"), Mutation{Op: OpCheckNotExists, Key: []byte("b")}, Mutation{Op: OpLock, Key: []byte("c")})
	locks, err := e.ScanLock(nil, nil, MaxTS, 0)
	require.NoError(t, err)
	require.Len(t, locks, 2)
	require.Equal(t, LockLock, locks[1].Type)
	mustCommit(t, e, 10, 11, "a", "c")
	_, ok := mustGet(t, e, "c", 20)
	require.False(t, ok, "a Lock record has no value")
}

func TestCommitRules(t *testing.T) {
	e := newMem(t)
	var notFound *TxnLockNotFoundError
	require.ErrorAs(t, e.Commit(bkeys("k"), 10, 20), &notFound, "never prewritten")

	mustPrewrite(t, e, 10, "k", put("k", "v"))
	require.ErrorAs(t, e.Commit(bkeys("k"), 9, 20), &notFound, "start ts mismatch")
	var inv *InvalidTxnTSOError
	require.ErrorAs(t, e.Commit(bkeys("k"), 10, 10), &inv)

	mustCommit(t, e, 10, 20, "k")
	mustCommit(t, e, 10, 20, "k") // idempotent

	require.NoError(t, e.BatchRollback(bkeys("r"), 30))
	require.ErrorAs(t, e.Commit(bkeys("r"), 30, 40), &notFound, "commit after rollback")

	// A failed key fails the whole request: nothing is committed.
	mustPrewrite(t, e, 50, "a", put("a", "1"))
	require.ErrorAs(t, e.Commit(bkeys("a", "missing"), 50, 60), &notFound)
	locks, err := e.ScanLock(nil, nil, MaxTS, 0)
	require.NoError(t, err)
	require.Len(t, locks, 1)
}

func TestRollbackRules(t *testing.T) {
	e := newMem(t)
	long := bytes.Repeat([]byte("v"), 300)
	mustPrewrite(t, e, 10, "k", Mutation{Op: OpPut, Key: []byte("k"), Value: long})
	require.Equal(t, 1, e.Stats().Values)
	require.NoError(t, e.BatchRollback(bkeys("k"), 10))
	st := e.Stats()
	require.Equal(t, Stats{Locks: 0, Writes: 1, Values: 0}, st, "rollback deletes the long value and writes a record")
	require.NoError(t, e.BatchRollback(bkeys("k"), 10), "idempotent")

	// A late prewrite of the rolled back txn must fail.
	_, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("k", "v")}, Primary: []byte("k"), StartTS: 10, LockTTL: 1})
	var wc *WriteConflictError
	require.ErrorAs(t, err, &wc)

	// Rolling back a committed txn fails.
	writeTxn(t, e, 20, 30, put("c", "v"))
	var ce *CommittedError
	require.ErrorAs(t, e.BatchRollback(bkeys("c"), 20), &ce)
	require.Equal(t, uint64(30), ce.CommitTS)
	require.ErrorAs(t, e.Cleanup([]byte("c"), 20, 0), &ce)

	// Cleanup respects the TTL when current ts is given.
	require.NoError(t, func() error {
		_, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("t", "v")}, Primary: []byte("t"), StartTS: ts(1000, 0), LockTTL: 100})
		return err
	}())
	var kl *KeyIsLockedError
	require.ErrorAs(t, e.Cleanup([]byte("t"), ts(1000, 0), ts(1050, 0)), &kl)
	require.NoError(t, e.Cleanup([]byte("t"), ts(1000, 0), ts(1101, 0)))
	rec := e.v.txnRecord([]byte("t"), ts(1000, 0))
	require.Equal(t, recordRolledBack, rec.kind)
}

func TestRollbackOverlappingCommit(t *testing.T) {
	e := newMem(t)
	// Txn 10 commits k at 20; then txn 20 (start ts == that commit ts) is
	// rolled back on k with protection: the flag lands on the commit record.
	writeTxn(t, e, 10, 20, put("k", "v"))
	st, err := e.CheckTxnStatus(CheckTxnStatusArgs{Primary: []byte("k"), LockTS: 20, CurrentTS: 30, RollbackIfNotExist: true})
	require.NoError(t, err)
	require.Equal(t, ActionLockNotExistRollback, st.Action)
	w := e.v.writeAt([]byte("k"), 20)
	require.Equal(t, WritePut, w.Type)
	require.True(t, w.OverlappedRollback)
	v, ok := mustGet(t, e, "k", 25)
	require.True(t, ok)
	require.Equal(t, "v", v)
	// Txn 20 now counts as rolled back.
	_, err = e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("k", "x")}, Primary: []byte("k"), StartTS: 20, LockTTL: 1})
	var wc *WriteConflictError
	require.ErrorAs(t, err, &wc)
	require.Equal(t, ConflictSelfRolledBack, wc.Reason)

	// The other way round: txn 35 holds the lock, txn 40 is rolled back on
	// the key, then txn 35 commits at 40.
	mustPrewrite(t, e, 35, "j", put("j", "v"))
	require.NoError(t, e.BatchRollback(bkeys("j"), 40))
	mustCommit(t, e, 35, 40, "j")
	w = e.v.writeAt([]byte("j"), 40)
	require.Equal(t, WritePut, w.Type)
	require.True(t, w.OverlappedRollback)
}

func TestCheckTxnStatus(t *testing.T) {
	start := ts(1000, 0)
	tests := []struct {
		name     string
		setup    func(t *testing.T, e *Engine)
		args     CheckTxnStatusArgs
		want     TxnStatus
		wantErr  error
		wantLock bool // primary lock still present after
	}{
		{
			name:     "alive",
			setup:    func(t *testing.T, e *Engine) { prewriteTTL(t, e, start, 100, 0) },
			args:     CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CallerStartTS: 0, CurrentTS: ts(1050, 0)},
			want:     TxnStatus{LockTTL: 100},
			wantLock: true,
		},
		{
			name:  "ttl expired",
			setup: func(t *testing.T, e *Engine) { prewriteTTL(t, e, start, 100, 0) },
			args:  CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CurrentTS: ts(1101, 0)},
			want:  TxnStatus{Action: ActionTTLExpireRollback},
		},
		{
			name:    "missing without rollback",
			setup:   func(t *testing.T, e *Engine) {},
			args:    CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CurrentTS: ts(1101, 0)},
			wantErr: &TxnNotFoundError{},
		},
		{
			name:  "missing with rollback",
			setup: func(t *testing.T, e *Engine) {},
			args:  CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CurrentTS: ts(1101, 0), RollbackIfNotExist: true},
			want:  TxnStatus{Action: ActionLockNotExistRollback},
		},
		{
			name: "committed",
			setup: func(t *testing.T, e *Engine) {
				prewriteTTL(t, e, start, 100, 0)
				mustCommit(t, e, start, start+5, "p")
			},
			args: CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CurrentTS: ts(2000, 0), RollbackIfNotExist: true},
			want: TxnStatus{CommitTS: start + 5},
		},
		{
			name: "rolled back",
			setup: func(t *testing.T, e *Engine) {
				require.NoError(t, e.BatchRollback(bkeys("p"), start))
			},
			args: CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CurrentTS: ts(2000, 0)},
			want: TxnStatus{Action: ActionNoAction},
		},
		{
			name:     "push min commit ts",
			setup:    func(t *testing.T, e *Engine) { prewriteTTL(t, e, start, 100, start+1) },
			args:     CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CallerStartTS: start + 10, CurrentTS: start + 7},
			want:     TxnStatus{Action: ActionMinCommitTSPushed, LockTTL: 100},
			wantLock: true,
		},
		{
			name:     "no push without min commit ts",
			setup:    func(t *testing.T, e *Engine) { prewriteTTL(t, e, start, 100, 0) },
			args:     CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CallerStartTS: start + 10, CurrentTS: start + 7},
			want:     TxnStatus{LockTTL: 100},
			wantLock: true,
		},
		{
			name:     "async commit locks are never rolled back here",
			setup:    func(t *testing.T, e *Engine) { prewriteAsync(t, e, start, 100) },
			args:     CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CurrentTS: ts(9000, 0)},
			want:     TxnStatus{LockTTL: 100},
			wantLock: true,
		},
		{
			name:    "verify primary",
			setup:   func(t *testing.T, e *Engine) { mustPrewrite(t, e, start, "other", put("p", "v")) },
			args:    CheckTxnStatusArgs{Primary: []byte("p"), LockTS: start, CurrentTS: start, VerifyIsPrimary: true},
			wantErr: &PrimaryMismatchError{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newMem(t)
			tc.setup(t, e)
			st, err := e.CheckTxnStatus(tc.args)
			if tc.wantErr != nil {
				require.IsType(t, tc.wantErr, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want.Action, st.Action)
			require.Equal(t, tc.want.LockTTL, st.LockTTL)
			require.Equal(t, tc.want.CommitTS, st.CommitTS)
			l := e.v.getLock([]byte("p"))
			require.Equal(t, tc.wantLock, l != nil)
			if tc.want.Action == ActionMinCommitTSPushed {
				require.Equal(t, tc.args.CallerStartTS+1, l.MinCommitTS)
				require.Equal(t, l, st.Lock)
			}
			if tc.want.Action == ActionTTLExpireRollback || tc.want.Action == ActionLockNotExistRollback {
				require.Equal(t, recordRolledBack, e.v.txnRecord([]byte("p"), start).kind)
			}
		})
	}
}

func prewriteTTL(t *testing.T, e *Engine, startTS, ttl, minCommitTS uint64) {
	t.Helper()
	res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("p", "v")}, Primary: []byte("p"), StartTS: startTS, LockTTL: ttl, MinCommitTS: minCommitTS})
	require.NoError(t, err)
	require.Empty(t, res.Locked)
}

func prewriteAsync(t *testing.T, e *Engine, startTS, ttl uint64) PrewriteResult {
	t.Helper()
	res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("p", "v"), put("s", "v")}, Primary: []byte("p"), StartTS: startTS,
		LockTTL: ttl, UseAsyncCommit: true, Secondaries: bkeys("s"), MinCommitTS: startTS + 1})
	require.NoError(t, err)
	require.Empty(t, res.Locked)
	return res
}

func TestAsyncCommitAndOnePC(t *testing.T) {
	t.Run("async commit min_commit_ts follows max_ts", func(t *testing.T) {
		e := newMem(t)
		_, _, err := e.Get([]byte("x"), 100, ReadOptions{})
		require.NoError(t, err)
		res := prewriteAsync(t, e, 50, 1000)
		require.Equal(t, uint64(101), res.MinCommitTS)
		p := e.v.getLock([]byte("p"))
		require.True(t, p.UseAsyncCommit)
		require.Equal(t, bkeys("s"), p.Secondaries)
		require.Empty(t, e.v.getLock([]byte("s")).Secondaries)
		var exp *CommitTSExpiredError
		require.ErrorAs(t, e.Commit(bkeys("p", "s"), 50, 100), &exp)
		require.NoError(t, e.Commit(bkeys("p", "s"), 50, 101))
	})
	t.Run("async commit without reads uses start_ts+1", func(t *testing.T) {
		e := newMem(t)
		res := prewriteAsync(t, e, 50, 1000)
		require.Equal(t, uint64(51), res.MinCommitTS)
		// Idempotent retry returns the same min_commit_ts.
		res2 := prewriteAsync(t, e, 50, 1000)
		require.Equal(t, res.MinCommitTS, res2.MinCommitTS)
	})
	t.Run("async commit falls back past max_commit_ts", func(t *testing.T) {
		e := newMem(t)
		e.UpdateMaxTS(500)
		res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("p", "v")}, Primary: []byte("p"), StartTS: 50,
			LockTTL: 10, UseAsyncCommit: true, MaxCommitTS: 100, MinCommitTS: 51})
		require.NoError(t, err)
		require.Zero(t, res.MinCommitTS)
		require.False(t, e.v.getLock([]byte("p")).UseAsyncCommit)
	})
	t.Run("1pc commits directly", func(t *testing.T) {
		e := newMem(t)
		writeTxn(t, e, 10, 20, put("a", "old"))
		var cmds []*Command
		_, cancel := e.Observe(func(c *Command) { cmds = append(cmds, c) })
		defer cancel()
		e.UpdateMaxTS(70)
		res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("a", "new"), del("b")}, Primary: []byte("a"),
			StartTS: 50, LockTTL: 10, TryOnePC: true, MinCommitTS: 51})
		require.NoError(t, err)
		require.Equal(t, uint64(71), res.OnePCCommitTS)
		require.Zero(t, res.MinCommitTS)
		require.Len(t, cmds, 1)
		require.True(t, cmds[0].OnePC)
		require.Len(t, cmds[0].Mods, 2)
		require.Equal(t, CFWrite, cmds[0].Mods[0].CF)
		require.Equal(t, uint64(71), cmds[0].Mods[0].TS)
		require.True(t, cmds[0].Mods[0].HasOldValue)
		require.Equal(t, "old", string(cmds[0].Mods[0].OldValue))
		require.Equal(t, WriteDelete, cmds[0].Mods[1].Write.Type)
		require.Equal(t, 0, e.Stats().Locks)
		v, ok := mustGet(t, e, "a", 71)
		require.True(t, ok)
		require.Equal(t, "new", v)
		v, _ = mustGet(t, e, "a", 70)
		require.Equal(t, "old", v)
	})
	t.Run("1pc commit ts is at least start_ts+1", func(t *testing.T) {
		e := newMem(t)
		res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("a", "v")}, Primary: []byte("a"), StartTS: 50, LockTTL: 10, TryOnePC: true})
		require.NoError(t, err)
		require.Equal(t, uint64(51), res.OnePCCommitTS)
	})
	t.Run("1pc falls back to 2pc past max_commit_ts", func(t *testing.T) {
		e := newMem(t)
		e.UpdateMaxTS(500)
		res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("a", "v")}, Primary: []byte("a"), StartTS: 50, LockTTL: 10,
			TryOnePC: true, UseAsyncCommit: true, MaxCommitTS: 100})
		require.NoError(t, err)
		require.Zero(t, res.OnePCCommitTS)
		require.Zero(t, res.MinCommitTS)
		require.Equal(t, 1, e.Stats().Locks)
	})
}

func TestReadLockChecks(t *testing.T) {
	e := newMem(t)
	writeTxn(t, e, 10, 20, put("k", "old"))
	mustPrewrite(t, e, 30, "k", put("k", "new"))
	tests := []struct {
		name    string
		at      uint64
		opt     ReadOptions
		want    string
		wantErr bool
	}{
		{"before lock", 25, ReadOptions{}, "old", false},
		{"after lock", 35, ReadOptions{}, "", true},
		{"resolved lock bypassed", 35, ReadOptions{ResolvedLocks: []uint64{30}}, "old", false},
		{"committed lock read", 35, ReadOptions{CommittedLocks: []uint64{30}}, "new", false},
		{"read committed ignores locks", 35, ReadOptions{IgnoreLocks: true}, "old", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, _, err := e.Get([]byte("k"), tc.at, tc.opt)
			if tc.wantErr {
				var kl *KeyIsLockedError
				require.ErrorAs(t, err, &kl)
				require.Equal(t, uint64(30), kl.Lock.StartTS)
				require.Equal(t, "k", string(kl.Lock.Key))
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, string(v))
		})
	}
	// Point get at max ts ignores a non-async primary lock.
	v, _, err := e.Get([]byte("k"), MaxTS, ReadOptions{})
	require.NoError(t, err)
	require.Equal(t, "old", string(v))
	require.NotEqual(t, MaxTS, e.MaxTS(), "max ts reads do not bump max_ts")
	// A pushed min_commit_ts lets the read through.
	_, err = e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("m", "x")}, Primary: []byte("m"), StartTS: 40, LockTTL: 1000, MinCommitTS: 41})
	require.NoError(t, err)
	_, _, err = e.Get([]byte("m"), 45, ReadOptions{})
	require.Error(t, err)
	st, err := e.CheckTxnStatus(CheckTxnStatusArgs{Primary: []byte("m"), LockTS: 40, CallerStartTS: 45, CurrentTS: 45})
	require.NoError(t, err)
	require.Equal(t, ActionMinCommitTSPushed, st.Action)
	_, found, err := e.Get([]byte("m"), 45, ReadOptions{})
	require.NoError(t, err)
	require.False(t, found)
}

func TestScan(t *testing.T) {
	e := newMem(t)
	for i, k := range []string{"a", "b", "c", "d", "e"} {
		writeTxn(t, e, uint64(10+2*i), uint64(11+2*i), put(k, "v"+k))
	}
	writeTxn(t, e, 30, 31, del("c"))
	mustPrewrite(t, e, 40, "b", put("b", "locked"))
	mustPrewrite(t, e, 40, "b", put("bb", "locked")) // lock-only key
	keys := func(ps []KvPair) string {
		var s string
		for _, p := range ps {
			if p.Err != nil {
				s += "!"
			}
			s += string(p.Key) + " "
		}
		return s
	}
	tests := []struct {
		name string
		args ScanArgs
		want string
	}{
		{"all before lock", ScanArgs{Limit: 100, TS: 35}, "a b d e "},
		{"all with locks", ScanArgs{Limit: 100, TS: 45}, "a !b !bb d e "},
		{"range", ScanArgs{Lower: []byte("b"), Upper: []byte("d"), Limit: 100, TS: 35}, "b "},
		{"limit", ScanArgs{Limit: 2, TS: 45}, "a !b "},
		{"reverse", ScanArgs{Limit: 100, TS: 45, Reverse: true}, "e d !bb !b a "},
		{"reverse range", ScanArgs{Lower: []byte("b"), Upper: []byte("e"), Limit: 2, TS: 35, Reverse: true}, "d b "},
		{"old snapshot", ScanArgs{Limit: 100, TS: 14}, "a b "},
		{"zero limit", ScanArgs{Limit: 0, TS: 45}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.Scan(tc.args)
			require.NoError(t, err)
			require.Equal(t, tc.want, keys(got))
		})
	}
	got, err := e.Scan(ScanArgs{Limit: 1, TS: 35, KeyOnly: true})
	require.NoError(t, err)
	require.Nil(t, got[0].Value)
}

func TestResolveAndSecondaries(t *testing.T) {
	e := newMem(t)
	mustPrewrite(t, e, 10, "a", put("a", "1"), put("b", "1"), put("c", "1"))
	mustPrewrite(t, e, 12, "x", put("x", "1"))
	// Resolve txn 10 in [a, c): commits a, b; c stays.
	require.NoError(t, e.ResolveLock([]byte("a"), []byte("c"), map[uint64]uint64{10: 15}, nil))
	locks, err := e.ScanLock(nil, nil, MaxTS, 0)
	require.NoError(t, err)
	require.Len(t, locks, 2)
	require.Equal(t, "c", string(locks[0].Key))
	// Lite resolve with rollback.
	require.NoError(t, e.ResolveLock(nil, nil, map[uint64]uint64{12: 0}, bkeys("x")))
	require.Equal(t, recordRolledBack, e.v.txnRecord([]byte("x"), 12).kind)
	// ScanLock honours max_version and limit.
	mustPrewrite(t, e, 20, "y", put("y", "1"))
	locks, err = e.ScanLock(nil, nil, 15, 0)
	require.NoError(t, err)
	require.Len(t, locks, 1)
	locks, err = e.ScanLock(nil, nil, MaxTS, 1)
	require.NoError(t, err)
	require.Len(t, locks, 1)

	// Heartbeat.
	ttl, err := e.TxnHeartBeat([]byte("y"), 20, 10000)
	require.NoError(t, err)
	require.Equal(t, uint64(10000), ttl)
	ttl, err = e.TxnHeartBeat([]byte("y"), 20, 5)
	require.NoError(t, err)
	require.Equal(t, uint64(10000), ttl)
	var tnf *TxnNotFoundError
	_, err = e.TxnHeartBeat([]byte("y"), 21, 5)
	require.ErrorAs(t, err, &tnf)

	// Check secondary locks: all locked, then committed, then rolled back.
	prewriteAsync(t, e, 30, 100)
	ls, cts, err := e.CheckSecondaryLocks(bkeys("s"), 30)
	require.NoError(t, err)
	require.Len(t, ls, 1)
	require.Zero(t, cts)
	require.NoError(t, e.Commit(bkeys("s"), 30, 40))
	ls, cts, err = e.CheckSecondaryLocks(bkeys("s"), 30)
	require.NoError(t, err)
	require.Empty(t, ls)
	require.Equal(t, uint64(40), cts)
	ls, cts, err = e.CheckSecondaryLocks(bkeys("never"), 30)
	require.NoError(t, err)
	require.Empty(t, ls)
	require.Zero(t, cts)
	w := e.v.writeAt([]byte("never"), 30)
	require.Equal(t, WriteRollback, w.Type)
	require.Equal(t, protectedRollbackValue, w.ShortValue, "missing secondary rollback is protected")
}

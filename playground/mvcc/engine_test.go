package mvcc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGC(t *testing.T) {
	e := newMem(t)
	long := string(bytes.Repeat([]byte("L"), 300))
	// k: put@20 (long), put@40, rollback@45, put@60 (long); safepoint 50.
	writeTxn(t, e, 10, 20, put("k", long+"1"))
	writeTxn(t, e, 30, 40, put("k", "v2"))
	require.NoError(t, e.BatchRollback(bkeys("k"), 45))
	writeTxn(t, e, 55, 60, put("k", long+"3"))
	// d: put@20, delete@30: both gone at safepoint 50.
	writeTxn(t, e, 11, 20, put("d", "x"))
	writeTxn(t, e, 25, 30, del("d"))
	// l: put@20, lock@30: the lock record goes, the put stays.
	writeTxn(t, e, 12, 20, put("l", "x"))
	writeTxn(t, e, 26, 30, Mutation{Op: OpLock, Key: []byte("l")})
	// n: delete@70 above the safepoint stays, and so does put@20 below it.
	writeTxn(t, e, 13, 20, put("n", "x"))
	writeTxn(t, e, 65, 70, del("n"))
	// A lock below the safepoint is never touched.
	mustPrewrite(t, e, 48, "z", put("z", long))

	var observed int
	_, cancel := e.Observe(func(*Command) { observed++ })
	defer cancel()
	st, err := e.GC(50)
	require.NoError(t, err)
	require.Zero(t, observed, "GC is not observed")
	require.Equal(t, 4, st.Keys)
	// k@20, k@45(rollback), d@30, d@20, l@30.
	require.Equal(t, 5, st.DeletedWrites)
	require.Equal(t, 1, st.DeletedValues)

	for _, tc := range []struct {
		key  string
		at   uint64
		want string
		ok   bool
	}{
		{"k", 50, "v2", true},
		{"k", 60, long + "3", true},
		{"d", 50, "", false},
		{"l", 50, "x", true},
		{"n", 50, "x", true},
		{"n", 70, "", false},
	} {
		v, ok, err := e.Get([]byte(tc.key), tc.at, ReadOptions{})
		require.NoError(t, err, tc.key)
		require.Equal(t, tc.ok, ok, "%s@%d", tc.key, tc.at)
		require.Equal(t, tc.want, string(v), "%s@%d", tc.key, tc.at)
	}
	require.Nil(t, e.v.writeAt([]byte("k"), 20))
	_, ok := e.v.data.Get(verItem{key: []byte("k"), ts: 10})
	require.False(t, ok, "the old long value is gone")
	_, ok = e.v.data.Get(verItem{key: []byte("k"), ts: 55})
	require.True(t, ok)
	require.NotNil(t, e.v.getLock([]byte("z")))
	_, ok = e.v.data.Get(verItem{key: []byte("z"), ts: 48})
	require.True(t, ok, "the locked txn's value stays")

	// GC is idempotent.
	st, err = e.GC(50)
	require.NoError(t, err)
	require.Zero(t, st.DeletedWrites)
}

func TestGCManyKeys(t *testing.T) {
	e := newMem(t)
	const n = gcBatchKeys*3 + 7
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("k%05d", i)
		writeTxn(t, e, 10, 11, put(k, "a"))
		writeTxn(t, e, 12, 13, put(k, "b"))
	}
	st, err := e.GC(100)
	require.NoError(t, err)
	require.Equal(t, n, st.Keys)
	require.Equal(t, n, st.DeletedWrites)
	require.Equal(t, n, e.Stats().Writes)
}

// history records, per key, every committed version, for comparing a
// snapshot plus observed commands with the final state.
type history map[string]map[uint64]string // key -> commit ts -> value ("" = delete)

func (h history) addWrite(key []byte, cts uint64, val string) {
	m := h[string(key)]
	if m == nil {
		m = map[uint64]string{}
		h[string(key)] = m
	}
	m[cts] = val
}

func TestObserveAtomicity(t *testing.T) {
	e := newMem(t)
	const writers, perWriter, keys = 4, 300, 16
	var tsMu sync.Mutex
	next := uint64(100)
	alloc := func() uint64 {
		tsMu.Lock()
		defer tsMu.Unlock()
		next++
		return next
	}
	run := func(w int, wg *sync.WaitGroup) {
		defer wg.Done()
		for i := 0; i < perWriter; i++ {
			k := fmt.Sprintf("k%02d", (w*7+i)%keys)
			start := alloc()
			res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put(k, fmt.Sprintf("%d-%d", w, i))}, Primary: []byte(k), StartTS: start, LockTTL: 100})
			if err != nil || len(res.Locked) > 0 {
				_ = e.BatchRollback([][]byte{[]byte(k)}, start)
				continue
			}
			if err := e.Commit([][]byte{[]byte(k)}, start, alloc()); err != nil {
				t.Errorf("commit: %v", err)
				return
			}
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go run(w, &wg)
	}
	// Subscribe in the middle of the writes.
	for e.Stats().Writes < 200 {
		_, _, _ = e.Get([]byte("k00"), 1, ReadOptions{})
	}
	var mu sync.Mutex
	got := history{}
	snap, cancel := e.Observe(func(c *Command) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range c.Mods {
			if m.CF == CFWrite && !m.Delete && m.Write.Type == WritePut {
				got.addWrite(m.Key, m.TS, string(m.Write.ShortValue))
			}
		}
	})
	require.NoError(t, snap.DeltaScan(nil, nil, 0, func(de DeltaEntry) error {
		for _, w := range de.Writes {
			mu.Lock()
			if _, dup := got[string(de.Key)][w.CommitTS]; dup {
				t.Errorf("version %s@%d both in snapshot and observed", de.Key, w.CommitTS)
			}
			got.addWrite(de.Key, w.CommitTS, string(w.Value))
			mu.Unlock()
		}
		return nil
	}))
	wg.Wait()
	cancel()

	want := history{}
	require.NoError(t, e.Snapshot().DeltaScan(nil, nil, 0, func(de DeltaEntry) error {
		for _, w := range de.Writes {
			want.addWrite(de.Key, w.CommitTS, string(w.Value))
		}
		return nil
	}))
	require.Equal(t, want, got)
}

func TestDeltaScan(t *testing.T) {
	e := newMem(t)
	long := string(bytes.Repeat([]byte("L"), 300))
	writeTxn(t, e, 10, 20, put("a", "a1"))
	writeTxn(t, e, 30, 40, put("a", long))
	require.NoError(t, e.BatchRollback(bkeys("a"), 45))
	writeTxn(t, e, 50, 60, Mutation{Op: OpLock, Key: []byte("a")})
	writeTxn(t, e, 51, 61, del("b"))
	writeTxn(t, e, 5, 6, put("c", "old")) // only ≤ fromTS: skipped
	mustPrewrite(t, e, 70, "a", put("a", "new"))
	mustPrewrite(t, e, 70, "a", put("bb", long))                        // lock-only key
	mustPrewrite(t, e, 70, "a", Mutation{Op: OpLock, Key: []byte("d")}) // lock-only, after all writes
	mustPrewrite(t, e, 3, "cc", del("cc"))                              // lock older than fromTS still shows

	var got []string
	snap := e.Snapshot()
	defer snap.Release()
	require.NoError(t, snap.DeltaScan(nil, nil, 10, func(de DeltaEntry) error {
		s := string(de.Key) + ":"
		if de.Lock != nil {
			val := string(de.LockValue)
			if len(val) > 8 {
				val = fmt.Sprintf("long%d", len(val))
			}
			s += fmt.Sprintf(" lock(%c,%d,%s,old=%s/%v)", de.Lock.Type, de.Lock.StartTS, val, de.LockOldValue, de.HasLockOldValue)
		}
		for _, w := range de.Writes {
			val := string(w.Value)
			if len(val) > 8 {
				val = fmt.Sprintf("long%d", len(val))
			}
			s += fmt.Sprintf(" %c@%d/%d=%s", w.Write.Type, w.CommitTS, w.Write.StartTS, val)
		}
		got = append(got, s)
		return nil
	}))
	require.Equal(t, []string{
		"a: lock(P,70,new,old=" + long + "/true) P@40/30=long300 P@20/10=a1",
		"b: D@61/51=",
		"bb: lock(P,70,long300,old=/false)",
		"cc: lock(D,3,,old=/false)",
		"d: lock(L,70,,old=/false)",
	}, got)

	// fromTS is exclusive; ranges clip; fn errors stop the scan.
	got = nil
	require.NoError(t, snap.DeltaScan([]byte("a"), []byte("bb"), 40, func(de DeltaEntry) error {
		got = append(got, fmt.Sprintf("%s:%d", de.Key, len(de.Writes)))
		return nil
	}))
	require.Equal(t, []string{"a:0", "b:1"}, got)
	stop := fmt.Errorf("stop")
	n := 0
	require.ErrorIs(t, snap.DeltaScan(nil, nil, 0, func(DeltaEntry) error { n++; return stop }), stop)
	require.Equal(t, 1, n)

	// Snapshots are frozen.
	writeTxn(t, e, 80, 90, put("e", "v"))
	_, ok, _ := snap.Get([]byte("e"), 100)
	require.False(t, ok)
	var locks []string
	require.NoError(t, snap.Locks(nil, nil, func(l *Lock) error { locks = append(locks, string(l.Key)); return nil }))
	require.Equal(t, []string{"a", "bb", "cc", "d"}, locks)
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	e, err := Open(dir, nil)
	require.NoError(t, err)
	long := string(bytes.Repeat([]byte("L"), 300))
	writeTxn(t, e, 10, 20, put("a", "1"), put("b", long))
	mustPrewrite(t, e, 30, "c", put("c", "locked"))
	require.NoError(t, e.BatchRollback(bkeys("r"), 31))
	e.UpdateMaxTS(77)
	require.NoError(t, e.Close())
	_, _, err = e.Get([]byte("a"), 100, ReadOptions{})
	require.ErrorIs(t, err, ErrClosed)

	check := func(e *Engine) {
		t.Helper()
		v, ok := mustGet(t, e, "a", 25)
		require.True(t, ok)
		require.Equal(t, "1", v)
		v, _ = mustGet(t, e, "b", 25)
		require.Equal(t, long, v)
		require.Equal(t, recordRolledBack, e.v.txnRecord([]byte("r"), 31).kind)
	}
	e, err = Open(dir, nil)
	require.NoError(t, err)
	check(e)
	require.NotNil(t, e.v.getLock([]byte("c")))
	require.GreaterOrEqual(t, e.MaxTS(), uint64(77))
	// More writes go to the log only; then a crash (no Close): recovery
	// replays the log on top of the checkpoint.
	writeTxn(t, e, 40, 50, put("d", "4"))
	mustCommit(t, e, 30, 35, "c")
	crash(e)

	e, err = Open(dir, nil)
	require.NoError(t, err)
	check2 := func(e *Engine) {
		t.Helper()
		v, _ := mustGet(t, e, "d", 60)
		require.Equal(t, "4", v)
		v, _ = mustGet(t, e, "c", 60)
		require.Equal(t, "locked", v)
		require.Nil(t, e.v.getLock([]byte("c")))
	}
	check2(e)
	// A checkpoint mid-way, more writes, then a torn tail.
	require.NoError(t, e.Checkpoint())
	writeTxn(t, e, 70, 80, put("e", "5"))
	seg := e.wal.seg
	crash(e)
	f, err := os.OpenFile(filepath.Join(dir, walName(seg)), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write([]byte{200, 0, 0, 0, 1, 2, 3}) // a frame header cut short
	require.NoError(t, err)
	require.NoError(t, f.Close())

	e, err = Open(dir, nil)
	require.NoError(t, err)
	check(e)
	check2(e)
	v, _ := mustGet(t, e, "e", 90)
	require.Equal(t, "5", v)
	writeTxn(t, e, 100, 110, put("f", "6"))
	require.NoError(t, e.Close())

	e, err = Open(dir, nil)
	require.NoError(t, err)
	v, _ = mustGet(t, e, "f", 120)
	require.Equal(t, "6", v)
	require.NoError(t, e.Close())
	segs, err := listSegments(dir)
	require.NoError(t, err)
	require.Empty(t, segs, "Close checkpoints and removes every segment")
}

// crash abandons the engine as a killed process would: the log is written
// (to the OS) but nothing is flushed or checkpointed.
func crash(e *Engine) {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	close(e.stop)
	e.bg.Wait()
	e.wal.f.Close()
}

func TestCodecRoundTrip(t *testing.T) {
	mods := []Modify{
		{CF: CFLock, Key: []byte("k"), Lock: &Lock{Key: []byte("k"), Type: LockPut, Primary: []byte("p"), StartTS: 1, TTL: 2, ForUpdateTS: 3,
			MinCommitTS: 4, TxnSize: 5, UseAsyncCommit: true, Secondaries: [][]byte{[]byte("s1"), []byte("s2")}, ShortValue: []byte{}, HasShortValue: true, TxnSource: 9}},
		{CF: CFLock, Key: []byte("k2"), Lock: &Lock{Key: []byte("k2"), Type: LockLock, Primary: []byte("p"), StartTS: 1}},
		{CF: CFLock, Delete: true, Key: []byte("k")},
		{CF: CFWrite, Key: []byte("k"), TS: 7, Write: &Write{Type: WritePut, StartTS: 1, ShortValue: []byte("v"), HasShortValue: true, TxnSource: 2, OverlappedRollback: true}},
		{CF: CFWrite, Key: []byte("k"), TS: 8, Write: &Write{Type: WriteRollback, StartTS: 8}},
		{CF: CFDefault, Key: []byte("k"), TS: 1, Value: bytes.Repeat([]byte("x"), 1000)},
		{CF: CFDefault, Delete: true, Key: []byte("k"), TS: 1},
	}
	got, err := decodeBatch(encodeBatch(nil, mods))
	require.NoError(t, err)
	require.Equal(t, mods, got)
	enc := encodeBatch(nil, mods)
	for i := 0; i < len(enc); i++ {
		_, _ = decodeBatch(enc[:i]) // must not panic
	}
}

func TestIngest(t *testing.T) {
	e := newMem(t)
	var observed int
	_, cancel := e.Observe(func(*Command) { observed++ })
	defer cancel()
	long := bytes.Repeat([]byte("L"), 300)
	require.NoError(t, e.Ingest([]IngestEntry{
		{Key: []byte("a"), StartTS: 5, CommitTS: 6, Value: []byte("1")},
		{Key: []byte("b"), StartTS: 5, CommitTS: 6, Value: long},
		{Key: []byte("a"), StartTS: 7, CommitTS: 8, Delete: true},
	}))
	require.Zero(t, observed)
	v, ok := mustGet(t, e, "a", 6)
	require.True(t, ok)
	require.Equal(t, "1", v)
	_, ok = mustGet(t, e, "a", 8)
	require.False(t, ok)
	v, _ = mustGet(t, e, "b", 8)
	require.Equal(t, string(long), v)
	require.Equal(t, 1, e.Stats().Values)
}

// TestProtectedRollbackOverCommitSetsGCFence: a pessimistic txn started at
// the commit ts of another txn's record on the same key, whose primary is
// rolled back (protected),
// rewrites that record with the overlapped-rollback flag and a gc_fence
// (TiKV make_rollback with protected and an overlapped write), and the
// fence survives a restart.
func TestProtectedRollbackOverCommitSetsGCFence(t *testing.T) {
	dir := t.TempDir()
	e, err := Open(dir, nil)
	require.NoError(t, err)
	writeTxn(t, e, 10, 20, put("k", "b"))
	// A pessimistic txn's primary: its rollback is protected.
	res, err := e.Prewrite(PrewriteArgs{Mutations: []Mutation{put("k", "a")}, Primary: []byte("k"), StartTS: 20, ForUpdateTS: 20, LockTTL: 3000})
	require.NoError(t, err)
	require.Empty(t, res.Locked)
	require.NoError(t, e.Cleanup([]byte("k"), 20, 0))
	check := func(e *Engine) {
		t.Helper()
		w := e.v.writeAt([]byte("k"), 20)
		require.NotNil(t, w)
		require.Equal(t, uint64(10), w.StartTS, "still the other txn's record")
		require.True(t, w.OverlappedRollback)
		require.True(t, w.GCFence)
		require.Nil(t, e.v.getLock([]byte("k")))
		v, ok := mustGet(t, e, "k", 25)
		require.True(t, ok)
		require.Equal(t, "b", v)
	}
	check(e)
	crash(e)
	e, err = Open(dir, nil)
	require.NoError(t, err)
	check(e)
	require.NoError(t, e.Close())
}
